/*
 * workload.h — what the benchmark asks for: named operation mixes over a
 * population of accounts spread across merchants, with optional Zipf skew,
 * each write carrying a fresh, unique idempotency id.
 *
 * Mixes (percentages of logical operations):
 *   points-v1     80 EARN 1..500, 20 REDEEM 1..200 (SPEC §7)
 *   earn-only     100 EARN 1..500
 *   redeem-heavy  30 EARN 1..500, 70 REDEEM 1..200 (many refusals)
 *   read-heavy    90 BALANCE, 8 EARN 1..500, 2 REDEEM 1..200
 *   hold-capture  pairs HOLD 1..200 then CAPTURE of that hold, with one
 *                 EARN 1..500 before each pair (so 1/3 of each)
 *   ping          PING only: the cost of the loop and the server's parser
 *   prefill       EARN of a fixed amount to every account once, in order
 *
 * Accounts are numbered 0..accounts-1; account k belongs to merchant
 * k % merchants + 1 and is that merchant's account k / merchants + 1, so
 * every merchant has the same number of accounts and the hot accounts of
 * a skewed run are spread over merchants.
 */
#ifndef TALLY_BENCH_WORKLOAD_H
#define TALLY_BENCH_WORKLOAD_H

#include <stdbool.h>
#include <stdint.h>

/* Ids are "<run nonce>-<stream>-<counter>": always shorter than this. */
#define WORKLOAD_ID_BYTES_MAX 48
/* A generator emits at most this many operations per call (HOLD+CAPTURE
 * after an EARN). */
#define WORKLOAD_BURST_MAX 3

enum workload_mix {
    WORKLOAD_POINTS_V1 = 0,
    WORKLOAD_EARN_ONLY,
    WORKLOAD_REDEEM_HEAVY,
    WORKLOAD_READ_HEAVY,
    WORKLOAD_HOLD_CAPTURE,
    WORKLOAD_PING,
    WORKLOAD_PREFILL,
    WORKLOAD_MIX_COUNT,
};

enum workload_kind {
    WORKLOAD_OP_EARN = 0,
    WORKLOAD_OP_REDEEM,
    WORKLOAD_OP_BALANCE,
    WORKLOAD_OP_HOLD,
    WORKLOAD_OP_CAPTURE,
    WORKLOAD_OP_PING,
    WORKLOAD_OP_COUNT,
};

typedef struct workload_config {
    int mix;              /* enum workload_mix */
    uint64_t accounts;    /* total accounts, >= merchants */
    uint64_t merchants;   /* >= 1 */
    double zipf_s;        /* 0 = uniform; e.g. 0.99 for a hot set */
    int64_t prefill_points; /* points per account for WORKLOAD_PREFILL */
    uint64_t seed;
    char nonce[16];       /* run nonce: keeps ids of separate runs apart */
} workload_config;

/* One logical operation.  For CAPTURE, ref is the hold's id. */
typedef struct workload_op {
    uint8_t kind; /* enum workload_kind */
    uint8_t id_len;
    uint8_t ref_len;
    uint64_t merchant;
    uint64_t account;
    int64_t points;
    char id[WORKLOAD_ID_BYTES_MAX];
    char ref[WORKLOAD_ID_BYTES_MAX];
} workload_op;

/* Zipf sampler over 1..n by rejection-inversion (Hörmann and Derflinger,
 * 1996): O(1) time and memory whatever n is. */
typedef struct workload_zipf {
    uint64_t n;
    double s;
    double h_integral_x1;
    double h_integral_n;
    double s_val;
} workload_zipf;

/* One stream of operations; streams never share ids. */
typedef struct workload {
    workload_config cfg;
    uint32_t stream;
    uint64_t rng[2];
    uint64_t counter;  /* ids issued */
    uint64_t prefill_next;
    workload_zipf zipf;
} workload;

/* Parses a mix name ("points-v1", ...); -1 when unknown. */
int workload_mix_parse(const char *name);
const char *workload_mix_name(int mix);
const char *workload_kind_name(int kind);

/* Checks cfg and prepares stream number `stream`.  Returns 0 or -EINVAL. */
int workload_init(workload *w, const workload_config *cfg, uint32_t stream);

/* Writes the next 1..WORKLOAD_BURST_MAX operations into ops[] and returns
 * how many; operations of one call must be sent in order on one
 * connection (a CAPTURE follows its HOLD).  Returns 0 when a prefill has
 * covered every account. */
uint32_t workload_next(workload *w, workload_op ops[WORKLOAD_BURST_MAX]);

/* A fresh run nonce from the clock and the pid (base 36, NUL-ended). */
void workload_nonce(char out[16]);

/* A uniform 64-bit random number from the stream's generator. */
uint64_t workload_random(workload *w);

#endif
