/*
 * workload.c — operation mixes, Zipf sampling and unique ids (workload.h).
 */
#include <assert.h>
#include <errno.h>
#include <math.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

static const char *const workload_mix_names[WORKLOAD_MIX_COUNT] = {
    [WORKLOAD_POINTS_V1] = "points-v1",     [WORKLOAD_EARN_ONLY] = "earn-only",
    [WORKLOAD_REDEEM_HEAVY] = "redeem-heavy", [WORKLOAD_READ_HEAVY] = "read-heavy",
    [WORKLOAD_HOLD_CAPTURE] = "hold-capture", [WORKLOAD_PING] = "ping",
    [WORKLOAD_PREFILL] = "prefill",     [WORKLOAD_POINTS_MIX] = "points-mix",
    [WORKLOAD_POINTS_TRANSFER] = "points-transfer",
};

static const char *const workload_kind_names[WORKLOAD_OP_COUNT] = {
    [WORKLOAD_OP_EARN] = "earn",     [WORKLOAD_OP_REDEEM] = "redeem",
    [WORKLOAD_OP_BALANCE] = "balance", [WORKLOAD_OP_HOLD] = "hold",
    [WORKLOAD_OP_CAPTURE] = "capture", [WORKLOAD_OP_PING] = "ping",
    [WORKLOAD_OP_REVERSE] = "reverse", [WORKLOAD_OP_TRANSFER] = "transfer",
};

/* The refusals each operation may meet as an expected answer (a bit per
 * enum workload_refusal). */
static const uint8_t workload_expected[WORKLOAD_OP_COUNT] = {
    [WORKLOAD_OP_REDEEM] = 1u << WORKLOAD_REFUSAL_INSUFFICIENT,
    [WORKLOAD_OP_HOLD] = 1u << WORKLOAD_REFUSAL_INSUFFICIENT,
    [WORKLOAD_OP_CAPTURE] = 1u << WORKLOAD_REFUSAL_NOTFOUND,
    [WORKLOAD_OP_TRANSFER] = 1u << WORKLOAD_REFUSAL_INSUFFICIENT,
};

static const char digits36[] = "0123456789abcdefghijklmnopqrstuvwxyz";

/* ---- random numbers: xoroshiro128+ seeded by splitmix64 ----------------- */

/* splitmix64's finalizer: a bijection of 64-bit values (each xor-shift and
 * each multiplication by an odd constant is invertible). */
static uint64_t workload_mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t workload_splitmix(uint64_t *x)
{
    return workload_mix64(*x += 0x9e3779b97f4a7c15ull);
}

static uint64_t workload_rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t workload_random(workload *w)
{
    uint64_t s0 = w->rng[0];
    uint64_t s1 = w->rng[1];
    uint64_t result = s0 + s1;
    s1 ^= s0;
    w->rng[0] = workload_rotl(s0, 24) ^ s1 ^ (s1 << 16);
    w->rng[1] = workload_rotl(s1, 37);
    return result;
}

/* Uniform in [lo, hi]; the modulo bias is below 2^-40 for our ranges. */
static uint64_t workload_range(workload *w, uint64_t lo, uint64_t hi)
{
    assert(hi >= lo);
    return lo + workload_random(w) % (hi - lo + 1);
}

static double workload_unit(workload *w)
{
    return (double)(workload_random(w) >> 11) * (1.0 / 9007199254740992.0);
}

/* ---- Zipf by rejection-inversion ---------------------------------------- */

static double workload_helper1(double x)
{
    return fabs(x) > 1e-8 ? log1p(x) / x : 1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x));
}

static double workload_helper2(double x)
{
    return fabs(x) > 1e-8 ? expm1(x) / x : 1.0 + x * 0.5 * (1.0 + x / 3.0 * (1.0 + 0.25 * x));
}

static double workload_h(const workload_zipf *z, double x)
{
    return exp(-z->s * log(x));
}

static double workload_h_integral(const workload_zipf *z, double x)
{
    double log_x = log(x);
    return workload_helper2((1.0 - z->s) * log_x) * log_x;
}

static double workload_h_integral_inverse(const workload_zipf *z, double x)
{
    double t = x * (1.0 - z->s);
    if (t < -1.0)
        t = -1.0; /* rounding near the end of the range */
    return exp(workload_helper1(t) * x);
}

static void workload_zipf_init(workload_zipf *z, uint64_t n, double s)
{
    z->n = n;
    z->s = s;
    z->h_integral_x1 = workload_h_integral(z, 1.5) - 1.0;
    z->h_integral_n = workload_h_integral(z, (double)n + 0.5);
    z->s_val = 2.0 - workload_h_integral_inverse(z, workload_h_integral(z, 2.5) -
                                                         workload_h(z, 2.0));
}

/* A rank in 1..n, rank 1 the most frequent. */
static uint64_t workload_zipf_sample(workload *w)
{
    const workload_zipf *z = &w->zipf;
    for (;;) {
        double u = z->h_integral_n + workload_unit(w) * (z->h_integral_x1 - z->h_integral_n);
        double x = workload_h_integral_inverse(z, u);
        double kd = floor(x + 0.5);
        uint64_t k = kd < 1.0 ? 1 : kd > (double)z->n ? z->n : (uint64_t)kd;
        if ((double)k - x <= z->s_val || u >= workload_h_integral(z, (double)k + 0.5) -
                                                   workload_h(z, (double)k))
            return k;
    }
}

/* ---- operations --------------------------------------------------------- */

int workload_mix_parse(const char *name)
{
    for (int i = 0; i < WORKLOAD_MIX_COUNT; i++)
        if (strcmp(name, workload_mix_names[i]) == 0)
            return i;
    return -1;
}

const char *workload_mix_name(int mix)
{
    return mix >= 0 && mix < WORKLOAD_MIX_COUNT ? workload_mix_names[mix] : "";
}

const char *workload_kind_name(int kind)
{
    return kind >= 0 && kind < WORKLOAD_OP_COUNT ? workload_kind_names[kind] : "";
}

bool workload_expects(int kind, int refusal)
{
    assert(kind >= 0 && kind < WORKLOAD_OP_COUNT);
    return refusal != WORKLOAD_REFUSAL_NONE && (workload_expected[kind] >> refusal & 1u);
}

int workload_refusal_of(const char *error)
{
    if (strncmp(error, "INSUFFICIENT", 12) == 0)
        return WORKLOAD_REFUSAL_INSUFFICIENT;
    if (strncmp(error, "NOTFOUND", 8) == 0)
        return WORKLOAD_REFUSAL_NOTFOUND;
    return WORKLOAD_REFUSAL_NONE;
}

bool workload_tracks(const workload_config *cfg)
{
    return cfg->mix == WORKLOAD_POINTS_MIX;
}

void workload_done(workload *w, const workload_op *op, bool ok)
{
    if (!ok || !workload_tracks(&w->cfg) ||
        (op->kind != WORKLOAD_OP_EARN && op->kind != WORKLOAD_OP_REDEEM))
        return;
    uint32_t slot = w->reversible_count;
    if (slot == WORKLOAD_REVERSIBLE_MAX) {
        slot = w->reversible_next;
        w->reversible_next = (w->reversible_next + 1) % WORKLOAD_REVERSIBLE_MAX;
    } else {
        w->reversible_count++;
    }
    assert(op->id_len > 0 && op->id_len < WORKLOAD_ID_BYTES_MAX);
    w->reversible_merchant[slot] = op->merchant;
    w->reversible_len[slot] = op->id_len;
    memcpy(w->reversible_id[slot], op->id, op->id_len);
}

/* Base 36 digits of x, most significant first; returns their count. */
static size_t workload_base36(char *out, uint64_t x)
{
    char tmp[16];
    size_t n = 0;
    do {
        tmp[n++] = digits36[x % 36];
        x /= 36;
    } while (x);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

void workload_nonce(char out[16])
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t seed = (uint64_t)ts.tv_sec * 1000000007ull ^ (uint64_t)ts.tv_nsec ^
                    ((uint64_t)getpid() << 32);
    uint64_t x = workload_splitmix(&seed);
    for (int i = 0; i < 8; i++) {
        out[i] = digits36[x % 36];
        x /= 36;
    }
    out[8] = '\0';
}

int workload_init(workload *w, const workload_config *cfg, uint32_t stream)
{
    if (cfg->mix < 0 || cfg->mix >= WORKLOAD_MIX_COUNT || cfg->merchants == 0 ||
        cfg->accounts < cfg->merchants || cfg->zipf_s < 0.0 || cfg->zipf_s > 10.0 ||
        strlen(cfg->nonce) > 12 || stream >= 1u << 16)
        return -EINVAL;
    memset(w, 0, sizeof(*w));
    w->cfg = *cfg;
    w->stream = stream;
    if (w->cfg.now_s == 0)
        w->cfg.now_s = (uint64_t)time(NULL);
    uint64_t seed = cfg->seed ^ ((uint64_t)stream * 0x9e3779b97f4a7c15ull);
    w->rng[0] = workload_splitmix(&seed);
    w->rng[1] = workload_splitmix(&seed);
    /* The nonce, not the seed, keys random ids: runs that share a seed
     * (every system of one comparison) still write new ids. */
    for (const char *c = cfg->nonce; *c; c++)
        w->id_key = workload_mix64(w->id_key ^ (uint8_t)*c) + 0x9e3779b97f4a7c15ull;
    /* The sampler divides by (1 - s) near s = 1 through helper functions
     * that stay finite; s = 0 is plain uniform and skips it. */
    if (cfg->zipf_s > 0.0)
        workload_zipf_init(&w->zipf, cfg->accounts, cfg->zipf_s);
    return 0;
}

/* Writes "<nonce>-<stream>-<counter>", or "order-<random>", in base 36
 * without snprintf: this is on the hot path of every write.  A random id
 * is mix64(key + (stream << 48 | counter)): distinct (stream, counter)
 * pairs give distinct ids while counters stay below 2^48. */
static uint8_t workload_make_id(workload *w, char *out)
{
    uint64_t counter = ++w->counter;
    size_t len;
    if (w->cfg.ids == WORKLOAD_IDS_RANDOM) {
        assert(counter < 1ull << 48);
        memcpy(out, "order-", 6);
        len = 6 + workload_base36(out + 6,
                                  workload_mix64(w->id_key + ((uint64_t)w->stream << 48 | counter)));
    } else {
        size_t nonce_len = strlen(w->cfg.nonce);
        memcpy(out, w->cfg.nonce, nonce_len);
        len = nonce_len;
        out[len++] = '-';
        len += workload_base36(out + len, w->stream);
        out[len++] = '-';
        len += workload_base36(out + len, counter);
    }
    assert(len < WORKLOAD_ID_BYTES_MAX);
    return (uint8_t)len;
}

/* Account k of the population: its merchant and account numbers. */
static void workload_place(const workload *w, uint64_t k, workload_op *op)
{
    uint64_t i = k % w->cfg.merchants;
    op->merchant = w->cfg.merchant_of ? w->cfg.merchant_of[i] : i + 1;
    op->account = k / w->cfg.merchants + 1;
}

static void workload_pick_account(workload *w, workload_op *op)
{
    uint64_t k = w->cfg.zipf_s > 0.0 ? workload_zipf_sample(w) - 1
                                     : workload_range(w, 0, w->cfg.accounts - 1);
    workload_place(w, k, op);
}

static void workload_write(workload *w, workload_op *op, int kind, int64_t lo, int64_t hi)
{
    op->kind = (uint8_t)kind;
    op->account2 = 0;
    op->points = (int64_t)workload_range(w, (uint64_t)lo, (uint64_t)hi);
    op->id_len = workload_make_id(w, op->id);
    op->ref_len = 0;
    op->expires = 0;
}

/* HOLD 1..200 of op[0]'s account, then CAPTURE of that hold. */
static uint32_t workload_hold_capture(workload *w, workload_op ops[2])
{
    workload_write(w, &ops[0], WORKLOAD_OP_HOLD, 1, 200);
    ops[1] = ops[0];
    ops[1].kind = WORKLOAD_OP_CAPTURE;
    memcpy(ops[1].ref, ops[0].id, ops[0].id_len);
    ops[1].ref_len = ops[0].id_len;
    ops[1].id_len = workload_make_id(w, ops[1].id);
    return 2;
}

/* REVERSE of a random succeeded EARN/REDEEM, which leaves the pool (an
 * entry is reversed once); false when the pool is empty. */
static bool workload_reverse(workload *w, workload_op *op)
{
    if (w->reversible_count == 0)
        return false;
    uint32_t i = (uint32_t)workload_range(w, 0, w->reversible_count - 1);
    uint32_t last = --w->reversible_count;
    op->kind = WORKLOAD_OP_REVERSE;
    op->merchant = w->reversible_merchant[i];
    op->account = 0;
    op->account2 = 0;
    op->points = 0;
    op->expires = 0;
    op->ref_len = w->reversible_len[i];
    memcpy(op->ref, w->reversible_id[i], op->ref_len);
    op->id_len = workload_make_id(w, op->id);
    w->reversible_merchant[i] = w->reversible_merchant[last];
    w->reversible_len[i] = w->reversible_len[last];
    memcpy(w->reversible_id[i], w->reversible_id[last], w->reversible_len[last]);
    return true;
}

/* points-mix: see workload.h for the percentages. */
static uint32_t workload_mixed(workload *w, workload_op ops[WORKLOAD_BURST_MAX], uint64_t pct)
{
    if (pct >= 85 && workload_reverse(w, &ops[0]))
        return 1;
    workload_pick_account(w, &ops[0]);
    if (pct >= 75 && pct < 85)
        return workload_hold_capture(w, ops);
    if (pct >= 55 && pct < 75) {
        workload_write(w, &ops[0], WORKLOAD_OP_REDEEM, 1, 200);
        return 1;
    }
    workload_write(w, &ops[0], WORKLOAD_OP_EARN, 1, 500);
    if (pct < 40)
        ops[0].expires = w->cfg.now_s + 86400 * workload_range(w, WORKLOAD_EXPIRY_DAYS_MIN,
                                                               WORKLOAD_EXPIRY_DAYS_MAX);
    return 1;
}

/* points-transfer: TRANSFER to another account of the same merchant. */
static uint32_t workload_transfer(workload *w, workload_op ops[WORKLOAD_BURST_MAX], uint64_t pct)
{
    workload_op *op = &ops[0];
    workload_pick_account(w, op);
    uint64_t per = w->cfg.accounts / w->cfg.merchants;
    if (pct < 60 || per < 2) {
        workload_write(w, op, WORKLOAD_OP_EARN, 1, 500);
    } else if (pct < 80) {
        workload_write(w, op, WORKLOAD_OP_REDEEM, 1, 200);
    } else {
        workload_write(w, op, WORKLOAD_OP_TRANSFER, 1, 200);
        uint64_t to = workload_range(w, 1, per - 1);
        op->account2 = to >= op->account ? to + 1 : to;
    }
    return 1;
}

uint32_t workload_next(workload *w, workload_op ops[WORKLOAD_BURST_MAX])
{
    workload_op *op = &ops[0];
    uint64_t pct = workload_range(w, 0, 99);
    switch (w->cfg.mix) {
    case WORKLOAD_PREFILL: {
        if (w->prefill_next >= w->cfg.accounts)
            return 0;
        uint64_t k = w->prefill_next++;
        workload_place(w, k, op);
        op->kind = WORKLOAD_OP_EARN;
        op->points = w->cfg.prefill_points;
        op->id_len = workload_make_id(w, op->id);
        op->ref_len = 0;
        op->expires = 0;
        return 1;
    }
    case WORKLOAD_POINTS_MIX:
        return workload_mixed(w, ops, pct);
    case WORKLOAD_POINTS_TRANSFER:
        return workload_transfer(w, ops, pct);
    case WORKLOAD_PING:
        memset(op, 0, sizeof(*op));
        op->kind = WORKLOAD_OP_PING;
        return 1;
    case WORKLOAD_HOLD_CAPTURE:
        workload_pick_account(w, &ops[0]);
        workload_write(w, &ops[0], WORKLOAD_OP_EARN, 1, 500);
        ops[1].merchant = ops[0].merchant;
        ops[1].account = ops[0].account;
        return 1 + workload_hold_capture(w, &ops[1]);
    default:
        break;
    }
    workload_pick_account(w, op);
    int mix = w->cfg.mix;
    uint64_t earn_pct = mix == WORKLOAD_EARN_ONLY ? 100 : mix == WORKLOAD_REDEEM_HEAVY ? 30 : 80;
    if (mix == WORKLOAD_READ_HEAVY) {
        if (pct < 90) {
            op->kind = WORKLOAD_OP_BALANCE;
            op->id_len = op->ref_len = 0;
            op->points = 0;
            op->expires = 0;
            return 1;
        }
        earn_pct = 98; /* 8 of the remaining 10 */
    }
    if (pct < earn_pct)
        workload_write(w, op, WORKLOAD_OP_EARN, 1, 500);
    else
        workload_write(w, op, WORKLOAD_OP_REDEEM, 1, 200);
    return 1;
}
