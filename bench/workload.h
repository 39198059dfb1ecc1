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
 *   points-mix    the ledger's other writes too: 40 EARN 1..500 EXPIRES 30..365
 *                 days ahead, 15 EARN 1..500, 20 REDEEM 1..200, 10 HOLD 1..200
 *                 then CAPTURE of that hold, 15 REVERSE of an earlier EARN or
 *                 REDEEM of this stream that succeeded (an EARN while there
 *                 is none yet)
 *   points-transfer  60 EARN 1..500, 20 REDEEM 1..200, 20 TRANSFER 1..200 to
 *                 another account of the same merchant (household pooling)
 *   ping          PING only: the cost of the loop and the server's parser
 *   prefill       EARN of a fixed amount to every account once, in order
 *
 * Accounts are numbered 0..accounts-1; account k belongs to merchant
 * k % merchants + 1 and is that merchant's account k / merchants + 1, so
 * every merchant has the same number of accounts and the hot accounts of
 * a skewed run are spread over merchants.
 *
 * Ids: sequential "<run nonce>-<stream>-<counter>" (base 36), or with
 * WORKLOAD_IDS_RANDOM "order-<64 bits, base 36>" in no order: a bijective
 * mix of (stream, counter) keyed by the run nonce, so ids of one run never
 * repeat and ids of two runs collide with probability n1 * n2 / 2^64.
 *
 * Which refusals are expected answers depends on the operation
 * (workload_expects): -INSUFFICIENT for REDEEM and HOLD, -NOTFOUND for a
 * CAPTURE whose HOLD was refused; anything else is an error.
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
/* Succeeded EARN/REDEEM ids a points-mix stream keeps as REVERSE targets. */
#define WORKLOAD_REVERSIBLE_MAX 256
/* points-mix expiries: this many days ahead of the run's start, uniform. */
#define WORKLOAD_EXPIRY_DAYS_MIN 30
#define WORKLOAD_EXPIRY_DAYS_MAX 365

enum workload_mix {
    WORKLOAD_POINTS_V1 = 0,
    WORKLOAD_EARN_ONLY,
    WORKLOAD_REDEEM_HEAVY,
    WORKLOAD_READ_HEAVY,
    WORKLOAD_HOLD_CAPTURE,
    WORKLOAD_PING,
    WORKLOAD_PREFILL,
    WORKLOAD_POINTS_MIX,
    WORKLOAD_POINTS_TRANSFER,
    WORKLOAD_MIX_COUNT,
};

enum workload_kind {
    WORKLOAD_OP_EARN = 0,
    WORKLOAD_OP_REDEEM,
    WORKLOAD_OP_BALANCE,
    WORKLOAD_OP_HOLD,
    WORKLOAD_OP_CAPTURE,
    WORKLOAD_OP_PING,
    WORKLOAD_OP_REVERSE,
    WORKLOAD_OP_TRANSFER,
    WORKLOAD_OP_COUNT,
};

enum workload_ids { WORKLOAD_IDS_SEQUENTIAL = 0, WORKLOAD_IDS_RANDOM = 1 };

/* A ledger refusal, as the reply's error code names it. */
enum workload_refusal {
    WORKLOAD_REFUSAL_NONE = 0,
    WORKLOAD_REFUSAL_INSUFFICIENT,
    WORKLOAD_REFUSAL_NOTFOUND,
};

typedef struct workload_config {
    int mix;              /* enum workload_mix */
    uint64_t accounts;    /* total accounts, >= merchants */
    uint64_t merchants;   /* >= 1 */
    double zipf_s;        /* 0 = uniform; e.g. 0.99 for a hot set */
    int64_t prefill_points; /* points per account for WORKLOAD_PREFILL */
    int ids;              /* enum workload_ids */
    uint64_t now_s;       /* unix s the expiries count from; 0 = the clock at init */
    uint64_t seed;
    char nonce[16];       /* run nonce: keeps ids of separate runs apart */
    /* Merchant i (0..merchants-1) is merchant_of[i]; NULL: i + 1.  A
     * cluster's run gives each group's leader the merchants its slots
     * hold (groups.h). */
    const uint64_t *merchant_of;
} workload_config;

/* One logical operation.  For CAPTURE, ref is the hold's id; for REVERSE,
 * the reversed entry's id. */
typedef struct workload_op {
    uint8_t kind; /* enum workload_kind */
    uint8_t id_len;
    uint8_t ref_len;
    uint64_t merchant;
    uint64_t account;
    uint64_t account2; /* TRANSFER: the receiving account */
    int64_t points;
    uint64_t expires; /* EARN: unix s, 0 = never */
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
    uint64_t id_key;   /* WORKLOAD_IDS_RANDOM: from the run nonce */
    workload_zipf zipf;
    /* points-mix: ids of succeeded EARN/REDEEMs not reversed yet */
    uint32_t reversible_count;
    uint32_t reversible_next; /* slot the next one overwrites when full */
    uint64_t reversible_merchant[WORKLOAD_REVERSIBLE_MAX];
    uint8_t reversible_len[WORKLOAD_REVERSIBLE_MAX];
    char reversible_id[WORKLOAD_REVERSIBLE_MAX][WORKLOAD_ID_BYTES_MAX];
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

/* Whether the driver must report completions (workload_done): the mix
 * picks REVERSE targets among writes that succeeded. */
bool workload_tracks(const workload_config *cfg);

/* Tells the stream op completed; ok = applied (not refused, no error). */
void workload_done(workload *w, const workload_op *op, bool ok);

/* Whether refusal (enum workload_refusal) is an expected answer to an
 * operation of this kind; any other refusal is an error. */
bool workload_expects(int kind, int refusal);

/* The refusal an error reply's code names ("INSUFFICIENT not enough" ->
 * WORKLOAD_REFUSAL_INSUFFICIENT), WORKLOAD_REFUSAL_NONE for other codes. */
int workload_refusal_of(const char *error);

/* A fresh run nonce from the clock and the pid (base 36, NUL-ended). */
void workload_nonce(char out[16]);

/* A uniform 64-bit random number from the stream's generator. */
uint64_t workload_random(workload *w);

#endif
