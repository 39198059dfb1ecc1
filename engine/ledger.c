/*
 * ledger.c — the loyalty semantics of one shard (SPEC §1–3) over its
 * state (state.h) and its log (log.h).
 *
 * Every write is executed in three steps: plan (read the state, decide the
 * outcome: an entry or a refusal), emit (append the record to the log's
 * filling batch — or, when replaying, check it against the logged record),
 * apply (change the state).  Emitting before applying means a failed
 * append leaves the state as it was.
 *
 * Tables (keys big-endian so they sort numerically; values are fixed
 * structs in host byte order, which is little-endian on every platform
 * tally builds for — asserted below):
 *   accounts   (m,a)            → ledger_account
 *   lots       (m,a,expkey,seq) → ledger_lot      expkey = expires or MAX
 *   pending    (m,a,avail,seq)  → ""              lots not yet spendable
 *   expiry     (exp,m,a,seq)    → ""              lots for the sweep
 *   ids        (m,xxh128(id))   → ledger_idref    every entry and refusal
 *   history    (m,a,seq)        → log loc
 *   refs       (m,seq)          → ledger_ref [+ allocations]
 *   holds_due  (deadline,m,seq) → ""              open holds, for the sweep
 *   acct_holds (m,a,seq)        → deadline        open holds by account
 *   merchants  m                → ledger_merchant
 *   liability  (m,month)        → int64 points    month = yyyymm or MAX
 *   meta       "seq", "ts", "format"
 *
 * Lots whose remaining reaches zero are deleted; a refund or release
 * recreates them from the allocation lists, which name the lot's key.
 *
 * The write path reads no old log record: a reference row (refs) carries
 * what expiries, hold timeouts, captures and reversals need, the entry's
 * id included, so log segments dropped by retention (snapshot.h) never
 * stop the ledger.  Only replies that show a whole old entry (ENTRY,
 * HISTORY, an idempotent retry) read the log, and say so when the record
 * lies before the retained log (TALLY_EARCHIVED).
 *
 * Merchant totals and liability by month change with nearly every entry
 * but are few rows: their changes accumulate in memory (deltas) and are
 * written at checkpoints; reads add the delta to the stored row.  Each
 * account row keeps the soonest expiry of its lots and the soonest
 * deadline of its open holds (exact, maintained where lots and holds
 * change), so a write finds "nothing due" without a cursor seek.
 */
#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "checksum.h"
#include "ledger.h"
#include "state.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "state values are little-endian");

/* The layout of the tables below and of their values.  Changing either
 * changes the format: bump it (open refuses other formats). */
#define LEDGER_FORMAT 2

/* ---- stored values ------------------------------------------------------ */

typedef struct ledger_account {
    int64_t earned, redeemed, expired;
    int64_t held;
    int64_t debt;          /* >= 0: points owed (available below zero) */
    int64_t lots_total;    /* Σ remaining of all lots, pending included */
    int64_t pending_total; /* Σ remaining of lots not yet normalised spendable */
    uint64_t lots_min_exp; /* soonest expiry of its lots, UINT64_MAX: none */
    uint64_t holds_min_deadline; /* soonest deadline of open holds, or MAX */
} ledger_account;

typedef struct ledger_lot {
    int64_t remaining;
    uint64_t available_at; /* unix s; 0 = spendable */
} ledger_lot;

typedef struct ledger_idref {
    uint64_t seq;
    uint64_t loc;
    uint64_t type; /* RECORD_ENTRY or RECORD_REFUSAL */
} ledger_idref;

typedef struct ledger_alloc {
    uint64_t expkey;
    uint64_t seq; /* the lot's seq (its earn) */
    int64_t points;
} ledger_alloc;

enum { HOLD_OPEN = 0, HOLD_CAPTURED = 1, HOLD_VOIDED = 2 };

/* State of an entry that others refer to: an earn/adjust credit (its lot),
 * a redeem/capture (what a refund gives back), a hold. */
typedef struct ledger_ref {
    uint64_t account;
    uint64_t loc;
    uint32_t kind;
    uint32_t state;        /* holds */
    int64_t amount;        /* credited / debited / held / captured */
    int64_t reversed;      /* clawed back or refunded so far */
    uint64_t deadline_s;   /* holds */
    uint64_t lot_expkey;   /* credits: their lot */
    uint64_t expire_count; /* credits: times their lot expired */
    uint32_t alloc_count;
    uint32_t id_len;
    /* then ledger_alloc allocs[alloc_count], then the entry's id */
} ledger_ref;

typedef struct ledger_merchant {
    int64_t accounts, outstanding, earned, redeemed, expired, entries;
} ledger_merchant;

/* An uncheckpointed change: of a merchant's totals (month 0) or of its
 * liability in one month (yyyymm, or UINT64_MAX for never).  One table,
 * open addressing with linear probing; merchant 0 marks an empty slot
 * (merchants start at 1). */
typedef struct ledger_delta {
    uint64_t merchant;
    uint64_t month;
    ledger_merchant totals; /* month 0 */
    int64_t points;         /* a month */
} ledger_delta;

#define LEDGER_TOTALS 0 /* the month key of a merchant's totals */

/* ---- the ledger --------------------------------------------------------- */

struct ledger {
    ledger_options opts;
    char dir[4096];
    state *st;
    log_t *log;
    uint64_t checkpoint_seq;
    uint64_t frozen_seq; /* a checkpoint set aside, being committed; 0: none */
    uint64_t delta_records;
    uint64_t last_ts_ms;
    ledger_alloc *allocs; /* scratch, LIMIT_LOTS_PER_DEBIT_MAX */
    ledger_alloc *allocs2;
    uint8_t *refbuf;      /* scratch for a ref with allocations */
    ledger_delta *delta;
    uint32_t delta_cap, delta_count;
    tally_request *scratch; /* replay's request */
    /* The account read or written last: a write reads its account two or
     * three times (engine entries, then the write). acct_put keeps it
     * current; a rollback drops it. */
    bool acct_cached;
    uint64_t acct_m, acct_a;
    ledger_account acct;
};

/* One execution: the time and, when replaying, the record to match. */
typedef struct ledger_x {
    uint64_t ts_ms;
    const record *replay;
    log_loc replay_loc;
    bool engine_entries; /* live: write due expiries/voids first */
} ledger_x;

/* Refusal reasons: index stored in the record, so a replayed refusal
 * answers byte-identically.  Append only (format). */
static const char *const ledger_reasons[] = {
    "",
    "not enough available points",
    "referenced entry not found",
    "referenced entry is not a hold",
    "hold is already closed",
    "capture exceeds the held points",
    "entry cannot be reversed",
    "reversal exceeds the original amount",
    "balance limit exceeded",
    "too many lots for one debit",
    "expiry is already past",
    "the referenced entry belongs to another merchant's request",
};
enum {
    R_NONE, R_INSUFFICIENT, R_NOTFOUND, R_NOT_HOLD, R_CLOSED, R_CAPTURE_EXCEEDS,
    R_NOT_REVERSIBLE, R_OVER_REVERSAL, R_BALANCE_LIMIT, R_FRAGMENTED, R_EXPIRED,
    R_COUNT_,
};

/* ---- keys --------------------------------------------------------------- */

static void be64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (56 - 8 * i));
}

static uint64_t get_be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

static size_t key2(uint8_t *k, uint64_t a, uint64_t b)
{
    be64(k, a);
    be64(k + 8, b);
    return 16;
}

static size_t key3(uint8_t *k, uint64_t a, uint64_t b, uint64_t c)
{
    key2(k, a, b);
    be64(k + 16, c);
    return 24;
}

static size_t key4(uint8_t *k, uint64_t a, uint64_t b, uint64_t c, uint64_t d)
{
    key3(k, a, b, c);
    be64(k + 24, d);
    return 32;
}

static uint64_t expkey_of(uint64_t expires) { return expires ? expires : UINT64_MAX; }

static size_t key_ids(uint8_t *k, uint64_t m, const char *id, size_t id_len)
{
    be64(k, m);
    checksum128(id, id_len, k + 8);
    return 24;
}

/* yyyymm of a unix time in UTC; MAX for never. */
static uint64_t month_of(uint64_t expkey)
{
    if (expkey == UINT64_MAX)
        return UINT64_MAX;
    time_t t = (time_t)expkey;
    struct tm tm;
    gmtime_r(&t, &tm);
    return (uint64_t)(tm.tm_year + 1900) * 100 + (uint64_t)(tm.tm_mon + 1);
}

/* ---- small helpers ------------------------------------------------------ */

static void ledger_say(ledger *l, int level, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (l->opts.log)
        l->opts.log(l->opts.log_ctx, level, msg);
}

static bool ledger_due(uint64_t unix_s, uint64_t ts_ms)
{
    return unix_s != 0 && unix_s != UINT64_MAX && unix_s <= ts_ms / 1000;
}

static int acct_get(ledger *l, uint64_t m, uint64_t a, ledger_account *out, bool *is_new)
{
    if (l->acct_cached && l->acct_m == m && l->acct_a == a) {
        *out = l->acct;
        if (is_new)
            *is_new = false;
        return 0;
    }
    uint8_t k[16];
    const void *v;
    size_t vl;
    int rc = state_get(l->st, STATE_ACCOUNTS, k, key2(k, m, a), &v, &vl);
    if (rc < 0)
        return rc;
    if (rc == 1) {
        *out = (ledger_account){.lots_min_exp = UINT64_MAX, .holds_min_deadline = UINT64_MAX};
        if (is_new)
            *is_new = true;
        return 0;
    }
    if (vl != sizeof(*out))
        return TALLY_ECORRUPT;
    memcpy(out, v, sizeof(*out));
    l->acct_cached = true;
    l->acct_m = m;
    l->acct_a = a;
    l->acct = *out;
    if (is_new)
        *is_new = false;
    return 0;
}

static int acct_put(ledger *l, uint64_t m, uint64_t a, const ledger_account *ac)
{
    uint8_t k[16];
    int rc = state_put(l->st, STATE_ACCOUNTS, k, key2(k, m, a), ac, sizeof(*ac));
    l->acct_cached = rc == 0;
    l->acct_m = m;
    l->acct_a = a;
    l->acct = *ac;
    return rc;
}

/* ---- in-memory deltas: merchant totals, liability by month ---------------- */

static uint64_t ledger_mix(uint64_t a, uint64_t b)
{
    uint64_t h = a * 0x9E3779B97F4A7C15ull ^ (b + 0x632BE59BD9B4E019ull);
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ull;
    return h ^ h >> 32;
}

/* Doubles the delta table (or makes the first one) and re-inserts. */
static int ledger_delta_grow(ledger *l)
{
    uint32_t cap = l->delta_cap ? l->delta_cap * 2 : 256;
    ledger_delta *n = calloc(cap, sizeof(*n));
    if (!n)
        return -ENOMEM;
    for (uint32_t i = 0; i < l->delta_cap; i++) {
        const ledger_delta *d = &l->delta[i];
        if (!d->merchant)
            continue;
        uint32_t k = (uint32_t)ledger_mix(d->merchant, d->month) & (cap - 1);
        while (n[k].merchant)
            k = (k + 1) & (cap - 1);
        n[k] = *d;
    }
    free(l->delta);
    l->delta = n;
    l->delta_cap = cap;
    return 0;
}

/* The delta of (merchant m, month), created if create; NULL if absent. */
static ledger_delta *ledger_delta_slot(ledger *l, uint64_t m, uint64_t month, bool create)
{
    if (create && (l->delta_count + 1) * 2 > l->delta_cap && ledger_delta_grow(l) < 0)
        return NULL;
    if (!l->delta_cap)
        return NULL;
    uint32_t k = (uint32_t)ledger_mix(m, month) & (l->delta_cap - 1);
    while (l->delta[k].merchant && (l->delta[k].merchant != m || l->delta[k].month != month))
        k = (k + 1) & (l->delta_cap - 1);
    if (l->delta[k].merchant == m)
        return &l->delta[k];
    if (!create)
        return NULL;
    l->delta[k] = (ledger_delta){.merchant = m, .month = month};
    l->delta_count++;
    return &l->delta[k];
}

static void ledger_deltas_clear(ledger *l)
{
    if (l->delta)
        memset(l->delta, 0, l->delta_cap * sizeof(*l->delta));
    l->delta_count = 0;
}

static void merchant_sum(ledger_merchant *a, const ledger_merchant *d)
{
    a->accounts += d->accounts;
    a->outstanding += d->outstanding;
    a->earned += d->earned;
    a->redeemed += d->redeemed;
    a->expired += d->expired;
    a->entries += d->entries;
}

/* The stored totals only (without the delta). */
static int merchant_stored(ledger *l, uint64_t m, ledger_merchant *out)
{
    uint8_t k[8];
    be64(k, m);
    const void *v;
    size_t vl;
    int rc = state_get(l->st, STATE_MERCHANTS, k, 8, &v, &vl);
    if (rc < 0)
        return rc;
    if (rc == 0 && vl != sizeof(*out))
        return TALLY_ECORRUPT;
    if (rc == 1)
        *out = (ledger_merchant){0};
    else
        memcpy(out, v, sizeof(*out));
    return 0;
}

static int merchant_get(ledger *l, uint64_t m, ledger_merchant *out)
{
    int rc = merchant_stored(l, m, out);
    const ledger_delta *d = rc == 0 ? ledger_delta_slot(l, m, LEDGER_TOTALS, false) : NULL;
    if (d)
        merchant_sum(out, &d->totals);
    return rc;
}

static int merchant_add(ledger *l, uint64_t m, const ledger_merchant *d)
{
    ledger_delta *slot = ledger_delta_slot(l, m, LEDGER_TOTALS, true);
    if (!slot)
        return -ENOMEM;
    merchant_sum(&slot->totals, d);
    return 0;
}

static int liability_add(ledger *l, uint64_t m, uint64_t expkey, int64_t delta)
{
    if (delta == 0)
        return 0;
    ledger_delta *slot = ledger_delta_slot(l, m, month_of(expkey), true);
    if (!slot)
        return -ENOMEM;
    slot->points += delta;
    return 0;
}

/* Writes the deltas into the open transaction and forgets them (before a
 * checkpoint's commit, or a comparison of two states). */
static int ledger_flush_deltas(ledger *l)
{
    for (uint32_t i = 0; i < l->delta_cap; i++) {
        const ledger_delta *d = &l->delta[i];
        if (!d->merchant)
            continue;
        int rc;
        if (d->month == LEDGER_TOTALS) {
            ledger_merchant mm;
            rc = merchant_stored(l, d->merchant, &mm);
            merchant_sum(&mm, &d->totals);
            uint8_t k[8];
            be64(k, d->merchant);
            if (rc == 0)
                rc = state_put(l->st, STATE_MERCHANTS, k, 8, &mm, sizeof(mm));
        } else {
            if (d->points == 0)
                continue;
            uint8_t k[16];
            size_t kl = key2(k, d->merchant, d->month);
            const void *v;
            size_t vl;
            int64_t cur = 0;
            rc = state_get(l->st, STATE_LIABILITY, k, kl, &v, &vl);
            if (rc == 0 && vl == 8)
                memcpy(&cur, v, 8);
            cur += d->points;
            if (rc >= 0)
                rc = cur == 0 ? state_del(l->st, STATE_LIABILITY, k, kl)
                              : state_put(l->st, STATE_LIABILITY, k, kl, &cur, 8);
        }
        if (rc < 0)
            return rc;
    }
    ledger_deltas_clear(l);
    return 0;
}

/* A reference row: the header, its allocations (if allocs) and its id (if
 * id, LIMIT_ENGINE_ID_BYTES_MAX bytes).  0, 1 if absent. */
static int ref_get(ledger *l, uint64_t m, uint64_t seq, ledger_ref *out, ledger_alloc *allocs,
                   char *id)
{
    uint8_t k[16];
    const void *v;
    size_t vl;
    int rc = state_get(l->st, STATE_REFS, k, key2(k, m, seq), &v, &vl);
    if (rc != 0)
        return rc;
    if (vl < sizeof(*out))
        return TALLY_ECORRUPT;
    memcpy(out, v, sizeof(*out));
    size_t alloc_bytes = (size_t)out->alloc_count * sizeof(ledger_alloc);
    if (out->alloc_count > LIMIT_LOTS_PER_DEBIT_MAX || out->id_len == 0 ||
        out->id_len > LIMIT_ENGINE_ID_BYTES_MAX || vl != sizeof(*out) + alloc_bytes + out->id_len)
        return TALLY_ECORRUPT;
    const uint8_t *p = (const uint8_t *)v + sizeof(*out);
    if (allocs && out->alloc_count)
        memcpy(allocs, p, alloc_bytes);
    if (id)
        memcpy(id, p + alloc_bytes, out->id_len);
    return 0;
}

static int ref_put(ledger *l, uint64_t m, uint64_t seq, const ledger_ref *r,
                   const ledger_alloc *allocs, const char *id)
{
    assert(r->id_len >= 1 && r->id_len <= LIMIT_ENGINE_ID_BYTES_MAX);
    assert(r->alloc_count <= LIMIT_LOTS_PER_DEBIT_MAX);
    size_t alloc_bytes = (size_t)r->alloc_count * sizeof(ledger_alloc);
    memcpy(l->refbuf, r, sizeof(*r));
    if (r->alloc_count)
        memcpy(l->refbuf + sizeof(*r), allocs, alloc_bytes);
    memcpy(l->refbuf + sizeof(*r) + alloc_bytes, id, r->id_len);
    uint8_t k[16];
    return state_put(l->st, STATE_REFS, k, key2(k, m, seq), l->refbuf,
                     sizeof(*r) + alloc_bytes + r->id_len);
}

/* ---- lots --------------------------------------------------------------- */

/* Walks one account's lots in key order: soonest expiry first, then by
 * the seq of the entry that made the lot. */
typedef struct lot_iter {
    state_cursor *c;
    uint64_t m, a;
    bool started;
    uint64_t expkey, seq; /* the current lot's key */
    ledger_lot lot;       /* and its value */
} lot_iter;

static int lot_iter_open(ledger *l, uint64_t m, uint64_t a, lot_iter *it)
{
    *it = (lot_iter){.m = m, .a = a};
    return state_cursor_open(l->st, STATE_LOTS, &it->c);
}

/* 0: the next lot is in it; 1: the account has no more; < 0: error. */
static int lot_iter_next(lot_iter *it)
{
    const void *kk, *v;
    size_t kl, vl;
    int rc;
    if (!it->started) {
        uint8_t k[32];
        key4(k, it->m, it->a, 0, 0);
        rc = state_cursor_seek(it->c, k, 32, &kk, &kl, &v, &vl);
        it->started = true;
    } else {
        rc = state_cursor_step(it->c, 1, &kk, &kl, &v, &vl);
    }
    if (rc != 0)
        return rc;
    const uint8_t *p = kk;
    if (kl != 32 || get_be64(p) != it->m || get_be64(p + 8) != it->a)
        return 1;
    if (vl != sizeof(it->lot))
        return TALLY_ECORRUPT;
    it->expkey = get_be64(p + 16);
    it->seq = get_be64(p + 24);
    memcpy(&it->lot, v, sizeof(it->lot));
    return 0;
}

static void lot_iter_close(lot_iter *it) { state_cursor_close(it->c); }

/* The account's first lot (lots sort by expiry: the soonest-expiring):
 * its expiry key (UINT64_MAX if it has no lots) and seq (0). */
static int lots_first(ledger *l, uint64_t m, uint64_t a, uint64_t *expkey, uint64_t *seq)
{
    lot_iter it;
    int rc = lot_iter_open(l, m, a, &it);
    if (rc < 0)
        return rc;
    rc = lot_iter_next(&it);
    *expkey = rc == 0 ? it.expkey : UINT64_MAX;
    if (seq)
        *seq = rc == 0 ? it.seq : 0;
    lot_iter_close(&it);
    return rc < 0 ? rc : 0;
}

/* Changes a lot's remaining by delta (creating or deleting the row), with
 * the account's totals, the expiry and pending indexes and, if liab, the
 * liability by month.  ts decides whether the lot is still pending. */
static int lot_apply(ledger *l, uint64_t m, uint64_t a, ledger_account *ac, uint64_t expkey,
                     uint64_t seq, int64_t delta, uint64_t available_at, bool liab,
                     uint64_t ts_ms, bool fresh)
{
    uint8_t k[32];
    size_t kl = key4(k, m, a, expkey, seq);
    const void *v;
    size_t vl;
    ledger_lot lot = {0, available_at};
    /* A fresh lot (an earn's own, seq just assigned) cannot exist yet. */
    int rc = fresh ? 1 : state_get(l->st, STATE_LOTS, k, kl, &v, &vl);
    if (rc < 0)
        return rc;
    bool existed = rc == 0;
    if (existed)
        memcpy(&lot, v, sizeof(lot));
    bool pending = lot.available_at && lot.available_at > ts_ms / 1000;
    lot.remaining += delta;
    assert(lot.remaining >= 0);
    ac->lots_total += delta;
    if (pending)
        ac->pending_total += delta;
    uint8_t ek[32], pk[32];
    size_t ekl = key4(ek, expkey, m, a, seq), pkl = key4(pk, m, a, lot.available_at, seq);
    if (lot.remaining == 0) {
        rc = state_del(l->st, STATE_LOTS, k, kl);
        if (rc >= 0 && expkey != UINT64_MAX)
            rc = state_del(l->st, STATE_EXPIRY, ek, ekl);
        if (rc >= 0 && pending)
            rc = state_del(l->st, STATE_PENDING, pk, pkl);
        /* The soonest lot went: the next one is now the soonest. */
        if (rc >= 0 && expkey == ac->lots_min_exp && expkey != UINT64_MAX)
            rc = lots_first(l, m, a, &ac->lots_min_exp, NULL);
    } else {
        rc = state_put(l->st, STATE_LOTS, k, kl, &lot, sizeof(lot));
        if (rc == 0 && !existed && expkey != UINT64_MAX)
            rc = state_put(l->st, STATE_EXPIRY, ek, ekl, "", 0);
        if (rc == 0 && !existed && pending)
            rc = state_put(l->st, STATE_PENDING, pk, pkl, "", 0);
        if (expkey < ac->lots_min_exp)
            ac->lots_min_exp = expkey;
    }
    if (rc < 0)
        return rc;
    return liab ? liability_add(l, m, expkey, delta) : 0;
}

static int lot_change(ledger *l, uint64_t m, uint64_t a, ledger_account *ac, uint64_t expkey,
                      uint64_t seq, int64_t delta, uint64_t available_at, bool liab,
                      uint64_t ts_ms)
{
    return lot_apply(l, m, a, ac, expkey, seq, delta, available_at, liab, ts_ms, false);
}

/* Lots whose AVAILABLE_AT has passed become spendable (no record: it
 * follows from the time alone, so replay does the same). */
static int pending_normalise(ledger *l, uint64_t m, uint64_t a, ledger_account *ac,
                             uint64_t ts_ms)
{
    if (ac->pending_total == 0)
        return 0;
    state_cursor *c;
    int rc = state_cursor_open(l->st, STATE_PENDING, &c);
    if (rc < 0)
        return rc;
    uint8_t k[32];
    key4(k, m, a, 0, 0);
    const void *kk, *v;
    size_t kl, vl;
    uint8_t done[64][32];
    int n = 0;
    rc = state_cursor_seek(c, k, 32, &kk, &kl, &v, &vl);
    while (rc == 0 && n < 64) {
        const uint8_t *p = kk;
        if (kl != 32 || get_be64(p) != m || get_be64(p + 8) != a ||
            get_be64(p + 16) > ts_ms / 1000)
            break;
        memcpy(done[n++], p, 32);
        rc = state_cursor_step(c, 1, &kk, &kl, &v, &vl);
    }
    state_cursor_close(c);
    if (rc < 0)
        return rc;
    for (int i = 0; i < n; i++) {
        uint64_t seq = get_be64(done[i] + 24);
        /* Find the lot (its expiry is not in this key): scan the account's
         * lots for that seq. */
        lot_iter it;
        rc = lot_iter_open(l, m, a, &it);
        if (rc < 0)
            return rc;
        while ((rc = lot_iter_next(&it)) == 0) {
            if (it.seq == seq) {
                ac->pending_total -= it.lot.remaining;
                break;
            }
        }
        lot_iter_close(&it);
        if (rc < 0)
            return rc;
        rc = state_del(l->st, STATE_PENDING, done[i], 32);
        if (rc < 0)
            return rc;
    }
    return n == 64 ? pending_normalise(l, m, a, ac, ts_ms) : 0;
}

static int64_t acct_available(const ledger_account *ac)
{
    return ac->lots_total - ac->pending_total - ac->debt;
}

/* Plans a debit of amount from the account's spendable lots, soonest
 * expiry first (then by seq): writes allocations; *taken is what the lots
 * had (< amount if short).  Returns TALLY_ETOOBIG if too fragmented. */
static int lots_plan_debit(ledger *l, uint64_t m, uint64_t a, int64_t amount, uint64_t ts_ms,
                           uint64_t skip_seq, ledger_alloc *out, uint32_t *count,
                           int64_t *taken)
{
    lot_iter it;
    int rc = lot_iter_open(l, m, a, &it);
    if (rc < 0)
        return rc;
    uint32_t n = 0;
    int64_t got = 0;
    while (got < amount && (rc = lot_iter_next(&it)) == 0) {
        const ledger_lot *lot = &it.lot;
        bool spendable = !(lot->available_at && lot->available_at > ts_ms / 1000) &&
                         !ledger_due(it.expkey, ts_ms) && it.seq != skip_seq;
        if (spendable && lot->remaining > 0) {
            if (n == LIMIT_LOTS_PER_DEBIT_MAX) {
                lot_iter_close(&it);
                return TALLY_ETOOBIG;
            }
            int64_t take = amount - got < lot->remaining ? amount - got : lot->remaining;
            out[n++] = (ledger_alloc){it.expkey, it.seq, take};
            got += take;
        }
    }
    lot_iter_close(&it);
    if (rc < 0)
        return rc;
    *count = n;
    *taken = got;
    return 0;
}

/* ---- records ------------------------------------------------------------ */

static int op_kind(int op)
{
    switch (op) {
    case TALLY_OP_EARN: return TALLY_KIND_EARN;
    case TALLY_OP_REDEEM: return TALLY_KIND_REDEEM;
    case TALLY_OP_HOLD: return TALLY_KIND_HOLD;
    case TALLY_OP_CAPTURE: return TALLY_KIND_CAPTURE;
    case TALLY_OP_VOID: return TALLY_KIND_VOID;
    case TALLY_OP_REVERSE: return TALLY_KIND_REVERSE;
    case TALLY_OP_ADJUST: return TALLY_KIND_ADJUST;
    default: return TALLY_KIND_NONE;
    }
}

/* The record of a request: every argument, so a retry can be compared. */
static void record_from_request(const tally_request *q, record *r)
{
    *r = (record){.type = RECORD_ENTRY, .kind = (uint8_t)op_kind(q->op),
                  .merchant = q->merchant, .account = q->account, .amount = q->points,
                  .expires = q->expires, .available_at = q->available_at,
                  .timeout_s = q->timeout_s, .flags = q->flags, .id_len = q->id_len,
                  .ref_len = q->ref_len, .memo_len = q->memo_len};
    memcpy(r->id, q->id, q->id_len);
    memcpy(r->ref, q->ref, q->ref_len);
    memcpy(r->memo, q->memo, q->memo_len);
}

void ledger_entry_from_record(const record *r, tally_entry *e)
{
    *e = (tally_entry){
        .seq = r->seq, .ts_ms = r->ts_ms, .merchant = r->merchant, .account = r->account,
        .points = r->points, .balance = r->balance, .held = r->held, .expires = r->expires,
        .kind = r->kind, .id_len = r->id_len, .ref_len = r->ref_len, .memo_len = r->memo_len,
    };
    memcpy(e->id, r->id, r->id_len);
    memcpy(e->ref, r->ref, r->ref_len);
    memcpy(e->memo, r->memo, r->memo_len);
}

/* Appends r (live) or checks it against the logged record (replay).
 * Sets r->seq, r->ts_ms and *loc. */
static int ledger_emit(ledger *l, ledger_x *x, record *r, log_loc *loc)
{
    if (x->replay) {
        const record *g = x->replay;
        if (g->type != r->type || g->kind != r->kind || g->error != r->error ||
            g->reason != r->reason || g->points != r->points || g->balance != r->balance ||
            g->held != r->held || g->account != r->account) {
            ledger_say(l, 2,
                       "replay diverges at seq %llu (%s %.*s): log says points %lld balance "
                       "%lld held %lld error %u, replay gives %lld %lld %lld error %u",
                       (unsigned long long)g->seq, tally_kind_name(g->kind), (int)g->id_len,
                       g->id, (long long)g->points, (long long)g->balance, (long long)g->held,
                       g->error, (long long)r->points, (long long)r->balance,
                       (long long)r->held, r->error);
            return TALLY_ECORRUPT;
        }
        r->seq = g->seq;
        r->ts_ms = g->ts_ms;
        r->prev = g->prev;
        r->batch_seq = g->batch_seq;
        *loc = x->replay_loc;
        x->replay = NULL; /* one record per replay */
    } else {
        if (!log_batch_room(l->log, record_size(r)))
            return TALLY_ETOOBIG;
        int rc = log_append(l->log, r, x->ts_ms, loc);
        if (rc < 0)
            return rc;
    }
    l->delta_records++;
    if (r->ts_ms > l->last_ts_ms)
        l->last_ts_ms = r->ts_ms;
    return 0;
}

/* Indexes an emitted record's id (and, for entries, history + counts). */
static int ledger_index(ledger *l, const record *r, log_loc loc, bool account_new)
{
    uint8_t k[24];
    ledger_idref ir = {r->seq, loc, r->type};
    int rc = state_put(l->st, STATE_IDS, k, key_ids(k, r->merchant, r->id, r->id_len), &ir,
                       sizeof(ir));
    if (rc < 0 || r->type != RECORD_ENTRY)
        return rc;
    uint8_t hk[24];
    rc = state_put(l->st, STATE_HISTORY, hk, key3(hk, r->merchant, r->account, r->seq), &loc,
                   sizeof(loc));
    if (rc < 0)
        return rc;
    ledger_merchant d = {.entries = 1, .accounts = account_new ? 1 : 0};
    return merchant_add(l, r->merchant, &d);
}

static void ledger_answer_entry(tally_request *q, const record *r)
{
    q->res.status = 0;
    q->res.message[0] = 0;
    q->res.found = true;
    ledger_entry_from_record(r, &q->res.entry);
}

static void ledger_answer_refusal(tally_request *q, int code, int reason)
{
    q->res.status = code;
    snprintf(q->res.message, sizeof(q->res.message), "%s",
             reason > 0 && reason < R_COUNT_ ? ledger_reasons[reason] : "refused");
}

/* Emits a refusal record for the request and indexes its id. */
static int ledger_refuse(ledger *l, ledger_x *x, tally_request *q, record *r, int code,
                         int reason)
{
    r->type = RECORD_REFUSAL;
    r->error = (uint8_t)(TALLY_EBASE - code);
    r->reason = (uint8_t)reason;
    r->points = r->balance = r->held = 0;
    log_loc loc;
    int rc = ledger_emit(l, x, r, &loc);
    if (rc < 0)
        return rc;
    rc = ledger_index(l, r, loc, false);
    if (rc < 0)
        return rc;
    if (q)
        ledger_answer_refusal(q, code, reason);
    return 0;
}

static bool ledger_balance_ok(const ledger_account *ac)
{
    int64_t av = acct_available(ac);
    return av <= LIMIT_BALANCE_ABS_MAX && av >= -LIMIT_BALANCE_ABS_MAX &&
           ac->held <= LIMIT_BALANCE_ABS_MAX && ac->lots_total <= LIMIT_BALANCE_ABS_MAX &&
           ac->debt <= LIMIT_BALANCE_ABS_MAX;
}

/* ---- engine entries: expiries and timed-out holds ------------------------ */

static size_t engine_id(char *out, const char *prefix, const char *id, size_t id_len,
                        uint64_t n)
{
    int k = snprintf(out, LIMIT_ENGINE_ID_BYTES_MAX, "%s%.*s", prefix, (int)id_len, id);
    if (n > 1)
        k += snprintf(out + k, (size_t)(LIMIT_ENGINE_ID_BYTES_MAX - k), "#%llu",
                      (unsigned long long)n);
    return (size_t)k;
}

/* Expires what is left in one lot: an `expire` entry. */
static int ledger_expire_lot(ledger *l, ledger_x *x, uint64_t m, uint64_t a, uint64_t expkey,
                             uint64_t seq)
{
    uint8_t k[32];
    const void *v;
    size_t vl;
    int rc = state_get(l->st, STATE_LOTS, k, key4(k, m, a, expkey, seq), &v, &vl);
    if (rc != 0)
        return rc < 0 ? rc : 0;
    ledger_lot lot;
    memcpy(&lot, v, sizeof(lot));
    ledger_ref src;
    char src_id[LIMIT_ENGINE_ID_BYTES_MAX];
    rc = ref_get(l, m, seq, &src, NULL, src_id);
    if (rc != 0)
        return rc < 0 ? rc : TALLY_ECORRUPT;
    ledger_account ac;
    rc = acct_get(l, m, a, &ac, NULL);
    if (rc < 0)
        return rc;
    rc = pending_normalise(l, m, a, &ac, x->ts_ms);
    if (rc < 0)
        return rc;
    bool pending = lot.available_at && lot.available_at > x->ts_ms / 1000;
    record r = {.type = RECORD_ENTRY, .kind = TALLY_KIND_EXPIRE, .merchant = m, .account = a,
                .expires = expkey, .ref_len = (uint8_t)src.id_len};
    memcpy(r.ref, src_id, src.id_len);
    r.id_len = (uint8_t)engine_id(r.id, "~exp:", src_id, src.id_len, src.expire_count + 1);
    r.points = pending ? 0 : -lot.remaining;
    ledger_account after = ac;
    after.lots_total -= lot.remaining;
    if (pending)
        after.pending_total -= lot.remaining;
    r.balance = acct_available(&after);
    r.held = ac.held;
    log_loc loc;
    rc = ledger_emit(l, x, &r, &loc);
    if (rc < 0)
        return rc;
    int64_t gone = lot.remaining;
    rc = lot_change(l, m, a, &ac, expkey, seq, -gone, lot.available_at, true, x->ts_ms);
    if (rc < 0)
        return rc;
    ac.expired += gone;
    src.expire_count++;
    rc = ref_put(l, m, seq, &src, NULL, src_id);
    if (rc == 0)
        rc = acct_put(l, m, a, &ac);
    if (rc == 0)
        rc = ledger_index(l, &r, loc, false);
    ledger_merchant d = {.expired = gone, .outstanding = -gone};
    if (rc == 0)
        rc = merchant_add(l, m, &d);
    return rc;
}

static int ledger_release(ledger *l, ledger_x *x, tally_request *q, uint64_t m,
                          uint64_t hold_seq, int64_t capture);

/* The seq of the account's open hold with the soonest deadline, and that
 * deadline (UINT64_MAX: none). */
static int holds_first(ledger *l, uint64_t m, uint64_t a, uint64_t *seq, uint64_t *deadline)
{
    state_cursor *c;
    int rc = state_cursor_open(l->st, STATE_ACCT_HOLDS, &c);
    if (rc < 0)
        return rc;
    uint8_t k[24];
    key3(k, m, a, 0);
    const void *kk, *v;
    size_t kl, vl;
    *seq = 0;
    *deadline = UINT64_MAX;
    rc = state_cursor_seek(c, k, 24, &kk, &kl, &v, &vl);
    while (rc == 0 && kl == 24 && get_be64(kk) == m && get_be64((const uint8_t *)kk + 8) == a) {
        uint64_t d;
        memcpy(&d, v, 8);
        if (d < *deadline) {
            *deadline = d;
            *seq = get_be64((const uint8_t *)kk + 16);
        }
        rc = state_cursor_step(c, 1, &kk, &kl, &v, &vl);
    }
    state_cursor_close(c);
    return rc < 0 ? rc : 0;
}

/* Live only: the account's lots whose expiry passed and holds whose
 * timeout passed get their engine entries before the account's write.
 * The account row says when the soonest of each is due, so the usual
 * case ("nothing due") costs one read. */
static int ledger_engine_entries(ledger *l, ledger_x *x, uint64_t m, uint64_t a)
{
    if (!x->engine_entries)
        return 0;
    for (;;) {
        ledger_account ac;
        int rc = acct_get(l, m, a, &ac, NULL);
        if (rc < 0)
            return rc;
        /* The earliest due first, as time ran: a hold that timed out
         * before its lot expired goes back to the lot, then expires. */
        bool lot_due = ledger_due(ac.lots_min_exp, x->ts_ms);
        bool hold_due = ledger_due(ac.holds_min_deadline, x->ts_ms);
        if (lot_due && !(hold_due && ac.holds_min_deadline <= ac.lots_min_exp)) {
            uint64_t expkey, seq;
            rc = lots_first(l, m, a, &expkey, &seq);
            if (rc < 0)
                return rc;
            if (expkey != ac.lots_min_exp)
                return TALLY_ECORRUPT; /* the row's soonest expiry is wrong */
            rc = ledger_expire_lot(l, x, m, a, expkey, seq);
        } else if (hold_due) {
            uint64_t seq, deadline;
            rc = holds_first(l, m, a, &seq, &deadline);
            if (rc < 0)
                return rc;
            if (deadline != ac.holds_min_deadline)
                return TALLY_ECORRUPT;
            rc = ledger_release(l, x, NULL, m, seq, 0);
        } else {
            return 0;
        }
        if (rc < 0)
            return rc;
    }
}

/* ---- credits: earn, positive adjust -------------------------------------- */

static int ledger_credit(ledger *l, ledger_x *x, tally_request *q)
{
    uint64_t m = q->merchant, a = q->account;
    record r;
    record_from_request(q, &r);
    ledger_account ac;
    bool is_new;
    int rc = acct_get(l, m, a, &ac, &is_new);
    if (rc == 0)
        rc = pending_normalise(l, m, a, &ac, x->ts_ms);
    if (rc < 0)
        return rc;
    int64_t amount = q->points;
    if (q->expires && q->expires <= x->ts_ms / 1000)
        return ledger_refuse(l, x, q, &r, TALLY_EINVALID, R_EXPIRED);
    bool pending = q->available_at && q->available_at > x->ts_ms / 1000;
    int64_t repay = pending ? 0 : (ac.debt < amount ? ac.debt : amount);
    ledger_account after = ac;
    after.debt -= repay;
    after.lots_total += amount - repay;
    if (pending)
        after.pending_total += amount;
    after.earned += amount;
    if (!ledger_balance_ok(&after))
        return ledger_refuse(l, x, q, &r, TALLY_EINVALID, R_BALANCE_LIMIT);
    r.points = pending ? 0 : amount;
    r.balance = acct_available(&after);
    r.held = ac.held;
    log_loc loc;
    rc = ledger_emit(l, x, &r, &loc);
    if (rc < 0)
        return rc;
    uint64_t expkey = expkey_of(q->expires);
    ac.debt -= repay;
    ac.earned += amount;
    if (amount - repay > 0)
        rc = lot_apply(l, m, a, &ac, expkey, r.seq, amount - repay,
                       pending ? q->available_at : 0, true, x->ts_ms, true);
    if (rc == 0)
        rc = liability_add(l, m, UINT64_MAX, repay);
    ledger_ref ref = {.account = a, .loc = loc, .kind = r.kind, .amount = amount,
                      .lot_expkey = expkey, .id_len = r.id_len};
    if (rc == 0)
        rc = ref_put(l, m, r.seq, &ref, NULL, r.id);
    if (rc == 0)
        rc = acct_put(l, m, a, &ac);
    if (rc == 0)
        rc = ledger_index(l, &r, loc, is_new);
    ledger_merchant d = {.earned = amount, .outstanding = amount};
    if (rc == 0)
        rc = merchant_add(l, m, &d);
    if (rc == 0)
        ledger_answer_entry(q, &r);
    return rc;
}

/* ---- debits: redeem, hold, negative adjust -------------------------------- */

static int ledger_debit(ledger *l, ledger_x *x, tally_request *q)
{
    uint64_t m = q->merchant, a = q->account;
    bool hold = q->op == TALLY_OP_HOLD, adjust = q->op == TALLY_OP_ADJUST;
    int64_t amount = adjust ? -q->points : q->points;
    record r;
    record_from_request(q, &r);
    ledger_account ac;
    bool is_new;
    int rc = acct_get(l, m, a, &ac, &is_new);
    if (rc == 0)
        rc = pending_normalise(l, m, a, &ac, x->ts_ms);
    if (rc < 0)
        return rc;
    if (!adjust && acct_available(&ac) < amount)
        return ledger_refuse(l, x, q, &r, TALLY_EINSUFFICIENT, R_INSUFFICIENT);
    uint32_t n = 0;
    int64_t taken = 0;
    rc = lots_plan_debit(l, m, a, amount, x->ts_ms, 0, l->allocs, &n, &taken);
    if (rc == TALLY_ETOOBIG)
        return ledger_refuse(l, x, q, &r, TALLY_EINVALID, R_FRAGMENTED);
    if (rc < 0)
        return rc;
    if (!adjust && taken < amount) /* debt makes available < lots */
        return ledger_refuse(l, x, q, &r, TALLY_EINSUFFICIENT, R_INSUFFICIENT);
    ledger_account after = ac;
    after.lots_total -= taken;
    after.debt += amount - taken;
    if (hold)
        after.held += amount;
    else
        after.redeemed += amount;
    if (!ledger_balance_ok(&after))
        return ledger_refuse(l, x, q, &r, TALLY_EINVALID, R_BALANCE_LIMIT);
    r.points = -amount;
    r.balance = acct_available(&after);
    r.held = after.held;
    log_loc loc;
    rc = ledger_emit(l, x, &r, &loc);
    if (rc < 0)
        return rc;
    for (uint32_t i = 0; rc == 0 && i < n; i++)
        rc = lot_change(l, m, a, &ac, l->allocs[i].expkey, l->allocs[i].seq,
                        -l->allocs[i].points, 0, !hold, x->ts_ms);
    ac.debt += amount - taken;
    if (rc == 0)
        rc = liability_add(l, m, UINT64_MAX, -(amount - taken));
    ledger_ref ref = {.account = a, .loc = loc, .kind = r.kind, .amount = amount,
                      .alloc_count = n, .id_len = r.id_len};
    if (hold) {
        ac.held += amount;
        uint64_t timeout = q->flags & TALLY_REQ_TIMEOUT ? q->timeout_s
                                                         : LIMIT_HOLD_TIMEOUT_DEFAULT_S;
        ref.deadline_s = r.ts_ms / 1000 + timeout;
        if (ref.deadline_s < ac.holds_min_deadline)
            ac.holds_min_deadline = ref.deadline_s;
        uint8_t k[24];
        if (rc == 0)
            rc = state_put(l->st, STATE_HOLDS_DUE, k, key3(k, ref.deadline_s, m, r.seq), "", 0);
        if (rc == 0)
            rc = state_put(l->st, STATE_ACCT_HOLDS, k, key3(k, m, a, r.seq), &ref.deadline_s, 8);
    } else {
        ac.redeemed += amount;
    }
    if (rc == 0)
        rc = ref_put(l, m, r.seq, &ref, l->allocs, r.id);
    if (rc == 0)
        rc = acct_put(l, m, a, &ac);
    if (rc == 0)
        rc = ledger_index(l, &r, loc, is_new);
    ledger_merchant d = {.redeemed = hold ? 0 : amount, .outstanding = hold ? 0 : -amount};
    if (rc == 0)
        rc = merchant_add(l, m, &d);
    if (rc == 0)
        ledger_answer_entry(q, &r);
    return rc;
}

/* ---- holds: capture, void (client or engine) ----------------------------- */

/* Returns allocations [from, to) of a list (by points, in list order) to
 * their lots, last first; liab: also to the liability. */
static int ledger_return_allocs(ledger *l, uint64_t m, uint64_t a, ledger_account *ac,
                                const ledger_alloc *al, uint32_t n, int64_t from, int64_t to,
                                bool liab, uint64_t ts_ms)
{
    int64_t pos = 0;
    /* Walk forward to compute each alloc's [pos, pos+points) range, then
     * return the overlap with [from, to), iterating backwards. */
    int64_t total = 0;
    for (uint32_t i = 0; i < n; i++)
        total += al[i].points;
    pos = total;
    for (uint32_t i = n; i-- > 0;) {
        int64_t hi = pos, lo = pos - al[i].points;
        pos = lo;
        int64_t s = lo > from ? lo : from, e = hi < to ? hi : to;
        if (e <= s)
            continue;
        int rc = lot_change(l, m, a, ac, al[i].expkey, al[i].seq, e - s, 0, liab, ts_ms);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Copies allocations [from, to) of a list into out; returns the count. */
static uint32_t ledger_slice_allocs(const ledger_alloc *al, uint32_t n, int64_t from, int64_t to,
                                    ledger_alloc *out)
{
    int64_t pos = 0;
    uint32_t k = 0;
    for (uint32_t i = 0; i < n; i++) {
        int64_t lo = pos, hi = pos + al[i].points;
        pos = hi;
        int64_t s = lo > from ? lo : from, e = hi < to ? hi : to;
        if (e > s)
            out[k++] = (ledger_alloc){al[i].expkey, al[i].seq, e - s};
    }
    return k;
}

/* Capture (capture > 0: that many points of the hold) or void (0) of the
 * open hold at hold_seq.  q NULL: an engine void of a timed-out hold. */
static int ledger_release(ledger *l, ledger_x *x, tally_request *q, uint64_t m,
                          uint64_t hold_seq, int64_t capture)
{
    ledger_ref h;
    char hold_id[LIMIT_ENGINE_ID_BYTES_MAX];
    int rc = ref_get(l, m, hold_seq, &h, l->allocs, hold_id);
    if (rc != 0)
        return rc < 0 ? rc : TALLY_ECORRUPT;
    uint64_t a = h.account;
    record r;
    if (q) {
        record_from_request(q, &r);
    } else {
        r = (record){.type = RECORD_ENTRY, .kind = TALLY_KIND_VOID, .merchant = m,
                     .ref_len = (uint8_t)h.id_len};
        memcpy(r.ref, hold_id, h.id_len);
        r.id_len = (uint8_t)engine_id(r.id, "~void:", hold_id, h.id_len, 1);
    }
    r.account = a;
    if (!q && h.state != HOLD_OPEN)
        return TALLY_ECORRUPT; /* the engine voids open holds only */
    if (h.state != HOLD_OPEN)
        return ledger_refuse(l, x, q, &r, TALLY_EINVALID, R_CLOSED);
    if (capture > h.amount)
        return ledger_refuse(l, x, q, &r, TALLY_EINVALID, R_CAPTURE_EXCEEDS);
    ledger_account ac;
    rc = acct_get(l, m, a, &ac, NULL);
    if (rc == 0)
        rc = pending_normalise(l, m, a, &ac, x->ts_ms);
    if (rc < 0)
        return rc;
    int64_t released = h.amount - capture;
    ledger_account after = ac;
    after.held -= h.amount;
    after.lots_total += released;
    after.redeemed += capture;
    r.points = released;
    r.balance = acct_available(&after);
    r.held = after.held;
    log_loc loc;
    rc = ledger_emit(l, x, &r, &loc);
    if (rc < 0)
        return rc;
    ac.held -= h.amount;
    ac.redeemed += capture;
    /* The first `capture` points of the hold are kept; the rest go back. */
    rc = ledger_return_allocs(l, m, a, &ac, l->allocs, h.alloc_count, capture, h.amount, false,
                              x->ts_ms);
    uint32_t kept = ledger_slice_allocs(l->allocs, h.alloc_count, 0, capture, l->allocs2);
    for (uint32_t i = 0; rc == 0 && i < kept; i++)
        rc = liability_add(l, m, l->allocs2[i].expkey, -l->allocs2[i].points);
    h.state = capture > 0 ? HOLD_CAPTURED : HOLD_VOIDED;
    if (rc == 0)
        rc = ref_put(l, m, hold_seq, &h, l->allocs, hold_id);
    uint8_t k[24];
    if (rc == 0)
        rc = state_del(l->st, STATE_HOLDS_DUE, k, key3(k, h.deadline_s, m, hold_seq));
    if (rc >= 0)
        rc = state_del(l->st, STATE_ACCT_HOLDS, k, key3(k, m, a, hold_seq));
    if (rc >= 0 && h.deadline_s == ac.holds_min_deadline) {
        uint64_t next_seq;
        rc = holds_first(l, m, a, &next_seq, &ac.holds_min_deadline);
    }
    if (rc >= 0 && capture > 0) {
        ledger_ref cref = {.account = a, .loc = loc, .kind = TALLY_KIND_CAPTURE,
                           .amount = capture, .alloc_count = kept, .id_len = r.id_len};
        rc = ref_put(l, m, r.seq, &cref, l->allocs2, r.id);
    }
    if (rc >= 0)
        rc = acct_put(l, m, a, &ac);
    if (rc == 0)
        rc = ledger_index(l, &r, loc, false);
    ledger_merchant d = {.redeemed = capture, .outstanding = -capture};
    if (rc == 0)
        rc = merchant_add(l, m, &d);
    if (rc == 0 && q)
        ledger_answer_entry(q, &r);
    if (rc == 0)
        rc = ledger_engine_entries(l, x, m, a); /* released into expired lots */
    return rc;
}

/* The entry an id names, as a target of CAPTURE, VOID or REVERSE (or of
 * an engine entry being replayed): its seq and, if it is a referable kind
 * (earn, adjust, redeem, capture, hold), its reference row.
 * 0: found (*has_ref says whether it is referable); 1: no such entry. */
static int ledger_target(ledger *l, uint64_t m, const char *id, size_t id_len, uint64_t *seq,
                         ledger_ref *ref, bool *has_ref)
{
    uint8_t k[24];
    const void *v;
    size_t vl;
    int rc = state_get(l->st, STATE_IDS, k, key_ids(k, m, id, id_len), &v, &vl);
    if (rc != 0)
        return rc;
    ledger_idref ir;
    if (vl != sizeof(ir))
        return TALLY_ECORRUPT;
    memcpy(&ir, v, sizeof(ir));
    if (ir.type != RECORD_ENTRY)
        return 1; /* a remembered refusal is not an entry */
    char stored[LIMIT_ENGINE_ID_BYTES_MAX];
    rc = ref_get(l, m, ir.seq, ref, NULL, stored);
    if (rc < 0)
        return rc;
    *has_ref = rc == 0;
    /* A 128-bit hash collision would name another id: check the id where
     * it is at hand (the reference row, else the retained log record). */
    if (*has_ref && (ref->id_len != id_len || memcmp(stored, id, id_len) != 0))
        return 1;
    if (!*has_ref) {
        record r;
        rc = log_read(l->log, ir.loc, &r);
        if (rc == 0 && (r.id_len != id_len || memcmp(r.id, id, id_len) != 0))
            return 1;
        if (rc < 0 && rc != TALLY_EARCHIVED)
            return rc;
    }
    *seq = ir.seq;
    return 0;
}

static int ledger_hold_op(ledger *l, ledger_x *x, tally_request *q)
{
    record r;
    uint64_t seq = 0;
    ledger_ref h;
    bool has_ref = false;
    int rc = ledger_target(l, q->merchant, q->ref, q->ref_len, &seq, &h, &has_ref);
    if (rc < 0)
        return rc;
    record_from_request(q, &r);
    if (rc == 1)
        return ledger_refuse(l, x, q, &r, TALLY_ENOTFOUND, R_NOTFOUND);
    r.account = has_ref ? h.account : 0;
    if (!has_ref || h.kind != TALLY_KIND_HOLD)
        return ledger_refuse(l, x, q, &r, TALLY_EINVALID, R_NOT_HOLD);
    rc = ledger_engine_entries(l, x, q->merchant, h.account);
    if (rc < 0)
        return rc;
    /* The engine may just have voided it (timed out): read it again. */
    rc = ref_get(l, q->merchant, seq, &h, NULL, NULL);
    if (rc != 0)
        return rc < 0 ? rc : TALLY_ECORRUPT;
    int64_t capture = 0;
    if (q->op == TALLY_OP_CAPTURE) {
        capture = q->flags & TALLY_REQ_POINTS ? q->points : h.amount;
        if (capture == 0)
            capture = h.amount;
    }
    return ledger_release(l, x, q, q->merchant, seq, capture);
}

/* ---- reverse ------------------------------------------------------------- */

static int ledger_reverse(ledger *l, ledger_x *x, tally_request *q)
{
    uint64_t m = q->merchant;
    record r;
    uint64_t seq = 0;
    ledger_ref ref;
    bool has_ref = false;
    int rc = ledger_target(l, m, q->ref, q->ref_len, &seq, &ref, &has_ref);
    if (rc < 0)
        return rc;
    record_from_request(q, &r);
    if (rc == 1)
        return ledger_refuse(l, x, q, &r, TALLY_ENOTFOUND, R_NOTFOUND);
    uint64_t a = has_ref ? ref.account : 0;
    r.account = a;
    bool credit = has_ref && ref.kind == TALLY_KIND_EARN;
    bool debit = has_ref && (ref.kind == TALLY_KIND_REDEEM || ref.kind == TALLY_KIND_CAPTURE);
    if (!credit && !debit)
        return ledger_refuse(l, x, q, &r, TALLY_EINVALID, R_NOT_REVERSIBLE);
    rc = ledger_engine_entries(l, x, m, a);
    if (rc < 0)
        return rc;
    char ref_id[LIMIT_ENGINE_ID_BYTES_MAX];
    rc = ref_get(l, m, seq, &ref, l->allocs, ref_id);
    if (rc != 0)
        return rc < 0 ? rc : TALLY_ECORRUPT;
    int64_t left = ref.amount - ref.reversed;
    int64_t n = q->flags & TALLY_REQ_POINTS ? q->points : left;
    if (n <= 0 || n > left)
        return ledger_refuse(l, x, q, &r, TALLY_EINVALID, R_OVER_REVERSAL);
    ledger_account ac;
    rc = acct_get(l, m, a, &ac, NULL);
    if (rc == 0)
        rc = pending_normalise(l, m, a, &ac, x->ts_ms);
    if (rc < 0)
        return rc;
    ledger_account after = ac;
    uint32_t cnt = 0;
    int64_t from_own = 0, own_pending = 0, from_lots = 0;
    if (credit) {
        /* Claw back: the earn's own lot first, then other lots, then debt. */
        uint8_t k[32];
        const void *v;
        size_t vl;
        rc = state_get(l->st, STATE_LOTS, k, key4(k, m, a, ref.lot_expkey, seq), &v, &vl);
        if (rc < 0)
            return rc;
        ledger_lot own = {0, 0};
        if (rc == 0)
            memcpy(&own, v, sizeof(own));
        from_own = own.remaining < n ? own.remaining : n;
        bool pend = own.available_at && own.available_at > x->ts_ms / 1000;
        own_pending = pend ? from_own : 0;
        rc = lots_plan_debit(l, m, a, n - from_own, x->ts_ms, seq, l->allocs2, &cnt,
                             &from_lots);
        if (rc == TALLY_ETOOBIG)
            return ledger_refuse(l, x, q, &r, TALLY_EINVALID, R_FRAGMENTED);
        if (rc < 0)
            return rc;
        after.lots_total -= from_own + from_lots;
        after.pending_total -= own_pending;
        after.debt += n - from_own - from_lots;
        after.earned -= n;
        r.points = -(n - own_pending);
    } else {
        after.lots_total += n;
        after.redeemed -= n;
        r.points = n;
    }
    if (!ledger_balance_ok(&after))
        return ledger_refuse(l, x, q, &r, TALLY_EINVALID, R_BALANCE_LIMIT);
    r.balance = acct_available(&after);
    r.held = ac.held;
    log_loc loc;
    rc = ledger_emit(l, x, &r, &loc);
    if (rc < 0)
        return rc;
    if (credit) {
        if (from_own > 0)
            rc = lot_change(l, m, a, &ac, ref.lot_expkey, seq, -from_own, 0, true, x->ts_ms);
        for (uint32_t i = 0; rc == 0 && i < cnt; i++)
            rc = lot_change(l, m, a, &ac, l->allocs2[i].expkey, l->allocs2[i].seq,
                            -l->allocs2[i].points, 0, true, x->ts_ms);
        int64_t owed = n - from_own - from_lots;
        ac.debt += owed;
        ac.earned -= n;
        if (rc == 0)
            rc = liability_add(l, m, UINT64_MAX, -owed);
    } else {
        /* Refund: the most recently refunded part is the end of the list. */
        rc = ledger_return_allocs(l, m, a, &ac, l->allocs, ref.alloc_count,
                                  left - n, left, true, x->ts_ms);
        ac.redeemed -= n;
    }
    ref.reversed += n;
    if (rc == 0)
        rc = ref_put(l, m, seq, &ref, l->allocs, ref_id);
    if (rc == 0)
        rc = acct_put(l, m, a, &ac);
    if (rc == 0)
        rc = ledger_index(l, &r, loc, false);
    ledger_merchant d = credit ? (ledger_merchant){.earned = -n, .outstanding = -n}
                               : (ledger_merchant){.redeemed = -n, .outstanding = n};
    if (rc == 0)
        rc = merchant_add(l, m, &d);
    if (rc == 0)
        ledger_answer_entry(q, &r);
    if (rc == 0 && !credit)
        rc = ledger_engine_entries(l, x, m, a); /* refunded into expired lots */
    return rc;
}

/* ---- idempotency ---------------------------------------------------------- */

/* Same command and arguments as the logged record? */
static bool ledger_same_request(const tally_request *q, const record *r)
{
    record want;
    record_from_request(q, &want);
    bool by_ref = q->op == TALLY_OP_CAPTURE || q->op == TALLY_OP_VOID ||
                  q->op == TALLY_OP_REVERSE;
    return want.kind == r->kind && (by_ref || want.account == r->account) &&
           want.amount == r->amount && want.expires == r->expires &&
           want.available_at == r->available_at && want.timeout_s == r->timeout_s &&
           want.flags == r->flags && want.id_len == r->id_len &&
           memcmp(want.id, r->id, r->id_len) == 0 && want.ref_len == r->ref_len &&
           memcmp(want.ref, r->ref, r->ref_len) == 0 && want.memo_len == r->memo_len &&
           memcmp(want.memo, r->memo, r->memo_len) == 0;
}

/* 0: answered from the index (q->res filled); 1: a new id; < 0 error. */
static int ledger_idempotent(ledger *l, tally_request *q)
{
    uint8_t k[24];
    const void *v;
    size_t vl;
    int rc = state_get(l->st, STATE_IDS, k, key_ids(k, q->merchant, q->id, q->id_len), &v, &vl);
    if (rc != 0)
        return rc;
    ledger_idref ir;
    if (vl != sizeof(ir))
        return TALLY_ECORRUPT;
    memcpy(&ir, v, sizeof(ir));
    record r;
    rc = log_read(l->log, ir.loc, &r);
    q->res.replayed = true;
    if (rc == TALLY_EARCHIVED) {
        /* Retention dropped the record: the id stays used (nothing is
         * applied twice) but the first reply cannot be repeated. */
        q->res.status = TALLY_EARCHIVED;
        snprintf(q->res.message, sizeof(q->res.message),
                 "id already used at seq %llu, before the retained log: the original reply "
                 "is no longer available (nothing was applied again)",
                 (unsigned long long)ir.seq);
        return 0;
    }
    if (rc < 0)
        return rc;
    if (r.id_len != q->id_len || memcmp(r.id, q->id, q->id_len) != 0)
        return TALLY_ECORRUPT; /* a 128-bit collision is not expected */
    if (!ledger_same_request(q, &r)) {
        q->res.status = TALLY_ECONFLICT;
        snprintf(q->res.message, sizeof(q->res.message),
                 "id already used by a different request (seq %llu)",
                 (unsigned long long)r.seq);
        return 0;
    }
    if (r.type == RECORD_REFUSAL)
        ledger_answer_refusal(q, TALLY_EBASE - (int)r.error, r.reason);
    else
        ledger_answer_entry(q, &r);
    return 0;
}

/* ---- reads ---------------------------------------------------------------- */

/* BALANCE as of now: lots past their expiry count as expired, matured
 * pending lots as available, holds past their deadline as released —
 * before the sweep has written their entries (SPEC §3). */
static int ledger_balance(ledger *l, uint64_t m, uint64_t a, uint64_t now_ms, tally_balance *b)
{
    ledger_account ac;
    int rc = acct_get(l, m, a, &ac, NULL);
    if (rc < 0)
        return rc;
    int64_t expired_now = 0, pending_now = 0, next_pts = 0;
    uint64_t next_exp = 0;
    lot_iter it;
    rc = lot_iter_open(l, m, a, &it);
    if (rc < 0)
        return rc;
    while ((rc = lot_iter_next(&it)) == 0) {
        const ledger_lot *lot = &it.lot;
        if (ledger_due(it.expkey, now_ms)) {
            expired_now += lot->remaining;
        } else {
            if (lot->available_at && lot->available_at > now_ms / 1000)
                pending_now += lot->remaining;
            if (it.expkey != UINT64_MAX && (next_exp == 0 || it.expkey == next_exp)) {
                next_exp = it.expkey;
                next_pts += lot->remaining;
            }
        }
    }
    lot_iter_close(&it);
    if (rc < 0)
        return rc;
    int64_t held = ac.held, released = 0, released_expired = 0;
    state_cursor *c;
    uint8_t k[24];
    const void *kk, *v;
    size_t kl, vl;
    rc = state_cursor_open(l->st, STATE_ACCT_HOLDS, &c);
    if (rc < 0)
        return rc;
    key3(k, m, a, 0);
    rc = state_cursor_seek(c, k, 24, &kk, &kl, &v, &vl);
    while (rc == 0 && kl == 24 && get_be64(kk) == m && get_be64((const uint8_t *)kk + 8) == a) {
        uint64_t deadline;
        memcpy(&deadline, v, 8);
        if (ledger_due(deadline, now_ms)) {
            ledger_ref h;
            int r2 = ref_get(l, m, get_be64((const uint8_t *)kk + 16), &h, l->allocs, NULL);
            if (r2 != 0) {
                rc = r2 < 0 ? r2 : TALLY_ECORRUPT;
                break;
            }
            held -= h.amount;
            for (uint32_t i = 0; i < h.alloc_count; i++) {
                if (ledger_due(l->allocs[i].expkey, now_ms))
                    released_expired += l->allocs[i].points;
                else
                    released += l->allocs[i].points;
            }
        }
        rc = state_cursor_step(c, 1, &kk, &kl, &v, &vl);
    }
    state_cursor_close(c);
    if (rc < 0)
        return rc;
    *b = (tally_balance){
        .available = ac.lots_total - expired_now - pending_now - ac.debt + released,
        .held = held,
        .pending = pending_now,
        .earned = ac.earned,
        .redeemed = ac.redeemed,
        .expired = ac.expired + expired_now + released_expired,
        .next_expiry = next_exp,
        .expiring = next_pts,
    };
    return 0;
}

static int ledger_read_entry(ledger *l, tally_request *q)
{
    uint8_t k[24];
    const void *v;
    size_t vl;
    int rc = state_get(l->st, STATE_IDS, k, key_ids(k, q->merchant, q->ref, q->ref_len), &v,
                       &vl);
    if (rc < 0)
        return rc;
    q->res.found = false;
    if (rc == 1)
        return 0;
    ledger_idref ir;
    if (vl != sizeof(ir))
        return TALLY_ECORRUPT;
    memcpy(&ir, v, sizeof(ir));
    if (ir.type != RECORD_ENTRY)
        return 0; /* a remembered refusal is not an entry */
    record r;
    rc = log_read(l->log, ir.loc, &r);
    if (rc == TALLY_EARCHIVED) {
        q->res.status = TALLY_EARCHIVED;
        snprintf(q->res.message, sizeof(q->res.message),
                 "entry %.*s (seq %llu) lies before the retained log", (int)q->ref_len, q->ref,
                 (unsigned long long)ir.seq);
        return 0;
    }
    if (rc < 0)
        return rc;
    if (r.id_len != q->ref_len || memcmp(r.id, q->ref, q->ref_len) != 0)
        return 0; /* a 128-bit hash collision: not this id */
    q->res.found = true;
    ledger_entry_from_record(&r, &q->res.entry);
    return 0;
}

static int ledger_history(ledger *l, tally_request *q)
{
    uint32_t limit = q->limit ? q->limit : LIMIT_HISTORY_DEFAULT;
    /* Room grows with what is found: a pipeline of HISTORY requests for
     * short histories must not pin LIMIT entries each. */
    uint32_t cap = 0;
    uint64_t m = q->merchant, a = q->account;
    state_cursor *c;
    int rc = state_cursor_open(l->st, STATE_HISTORY, &c);
    if (rc < 0)
        return rc;
    uint8_t k[24];
    const void *kk, *v;
    size_t kl, vl;
    uint64_t before = q->flags & TALLY_REQ_BEFORE ? q->before_seq : UINT64_MAX;
    key3(k, m, a, before);
    rc = state_cursor_seek(c, k, 24, &kk, &kl, &v, &vl);
    if (rc == 1)
        rc = state_cursor_last(c, &kk, &kl, &v, &vl);
    else if (rc == 0)
        rc = state_cursor_step(c, -1, &kk, &kl, &v, &vl);
    while (rc == 0 && q->res.items_count < limit) {
        if (kl != 24 || get_be64(kk) != m || get_be64((const uint8_t *)kk + 8) != a)
            break;
        uint64_t seq = get_be64((const uint8_t *)kk + 16);
        if (seq < before) {
            if (q->res.items_count == cap) {
                cap = cap ? (cap * 2 < limit ? cap * 2 : limit) : (limit < 8 ? limit : 8);
                tally_entry *n = realloc(q->res.items, cap * sizeof(*n));
                if (!n) {
                    rc = -ENOMEM;
                    break;
                }
                q->res.items = n;
            }
            log_loc loc;
            memcpy(&loc, v, sizeof(loc));
            record r;
            int r2 = log_read(l->log, loc, &r);
            if (r2 == TALLY_EARCHIVED) {
                /* Older entries lie before the retained log: a page ends
                 * here, and a page that would start here says so. */
                if (q->res.items_count == 0) {
                    q->res.status = TALLY_EARCHIVED;
                    snprintf(q->res.message, sizeof(q->res.message),
                             "entries before seq %llu lie before the retained log",
                             (unsigned long long)(seq + 1));
                }
                rc = 1;
                break;
            }
            if (r2 < 0) {
                rc = r2;
                break;
            }
            ledger_entry_from_record(&r, &q->res.items[q->res.items_count++]);
        }
        rc = state_cursor_step(c, -1, &kk, &kl, &v, &vl);
    }
    state_cursor_close(c);
    return rc < 0 ? rc : 0;
}

static int ledger_cmp_row(const void *a, const void *b)
{
    const tally_liability_row *x = a, *y = b;
    /* "never" (year 0) sorts last. */
    uint64_t kx = x->year ? (uint64_t)x->year * 100 + (uint64_t)x->month : UINT64_MAX;
    uint64_t ky = y->year ? (uint64_t)y->year * 100 + (uint64_t)y->month : UINT64_MAX;
    return kx < ky ? -1 : kx > ky;
}

/* Adds points to the row of a month (yyyymm or MAX), making it if new. */
static int ledger_liability_row(tally_result *res, uint32_t *cap, uint64_t month, int64_t pts)
{
    int32_t year = month == UINT64_MAX ? 0 : (int32_t)(month / 100);
    int32_t mon = month == UINT64_MAX ? 0 : (int32_t)(month % 100);
    for (uint32_t i = 0; i < res->rows_count; i++)
        if (res->rows[i].year == year && res->rows[i].month == mon) {
            res->rows[i].points += pts;
            return 0;
        }
    if (res->rows_count == *cap) {
        *cap = *cap ? *cap * 2 : 16;
        tally_liability_row *n = realloc(res->rows, *cap * sizeof(*n));
        if (!n)
            return -ENOMEM;
        res->rows = n;
    }
    res->rows[res->rows_count++] = (tally_liability_row){year, mon, pts};
    return 0;
}

/* Stored rows plus the uncheckpointed delta, in month order, "never" last,
 * months with nothing outstanding left out. */
static int ledger_liability(ledger *l, tally_request *q)
{
    uint64_t m = q->merchant;
    state_cursor *c;
    int rc = state_cursor_open(l->st, STATE_LIABILITY, &c);
    if (rc < 0)
        return rc;
    uint8_t k[16];
    key2(k, m, 0);
    const void *kk, *v;
    size_t kl, vl;
    uint32_t cap = 0;
    rc = state_cursor_seek(c, k, 16, &kk, &kl, &v, &vl);
    while (rc == 0 && kl == 16 && get_be64(kk) == m) {
        int64_t pts;
        memcpy(&pts, v, 8);
        rc = ledger_liability_row(&q->res, &cap, get_be64((const uint8_t *)kk + 8), pts);
        if (rc == 0)
            rc = state_cursor_step(c, 1, &kk, &kl, &v, &vl);
    }
    state_cursor_close(c);
    for (uint32_t i = 0; rc >= 0 && i < l->delta_cap; i++)
        if (l->delta[i].merchant == m && l->delta[i].month != LEDGER_TOTALS &&
            l->delta[i].points != 0)
            rc = ledger_liability_row(&q->res, &cap, l->delta[i].month, l->delta[i].points);
    if (rc < 0)
        return rc;
    uint32_t n = 0;
    for (uint32_t i = 0; i < q->res.rows_count; i++)
        if (q->res.rows[i].points != 0)
            q->res.rows[n++] = q->res.rows[i];
    q->res.rows_count = n;
    if (n > 1)
        qsort(q->res.rows, n, sizeof(*q->res.rows), ledger_cmp_row);
    return 0;
}

/* ---- public: lifecycle ---------------------------------------------------- */

int ledger_open(const ledger_options *opts, log_t *log, ledger **out)
{
    ledger *l = calloc(1, sizeof(*l));
    if (!l)
        return -ENOMEM;
    l->opts = *opts;
    snprintf(l->dir, sizeof(l->dir), "%s", opts->dir);
    l->opts.dir = l->dir;
    l->log = log;
    l->allocs = calloc(LIMIT_LOTS_PER_DEBIT_MAX, sizeof(ledger_alloc));
    l->allocs2 = calloc(LIMIT_LOTS_PER_DEBIT_MAX, sizeof(ledger_alloc));
    l->refbuf = malloc(sizeof(ledger_ref) + LIMIT_LOTS_PER_DEBIT_MAX * sizeof(ledger_alloc) +
                       LIMIT_ENGINE_ID_BYTES_MAX);
    l->scratch = calloc(1, sizeof(*l->scratch));
    int rc = l->allocs && l->allocs2 && l->refbuf && l->scratch ? 0 : -ENOMEM;
    if (rc == 0)
        rc = state_open(l->dir, opts->map_bytes ? opts->map_bytes : LIMIT_STATE_MAP_BYTES_DEFAULT,
                        &l->st);
    if (rc == 0) {
        const void *v;
        size_t vl;
        int g = state_get(l->st, STATE_META, "seq", 3, &v, &vl);
        if (g < 0)
            rc = g;
        else if (g == 0 && vl == 8)
            memcpy(&l->checkpoint_seq, v, 8);
        bool used = g == 0;
        g = rc == 0 ? state_get(l->st, STATE_META, "ts", 2, &v, &vl) : 1;
        if (g == 0 && vl == 8)
            memcpy(&l->last_ts_ms, v, 8);
        uint64_t format = 0;
        g = rc == 0 ? state_get(l->st, STATE_META, "format", 6, &v, &vl) : 1;
        if (g < 0)
            rc = g;
        else if (g == 0 && vl == 8)
            memcpy(&format, v, 8);
        if (rc == 0 && used && format != LEDGER_FORMAT) {
            ledger_say(l, 2, "%s: state format %llu, this build reads format %d", l->dir,
                       (unsigned long long)format, LEDGER_FORMAT);
            rc = TALLY_EFORMAT;
        }
    }
    if (rc < 0) {
        ledger_close(l);
        return rc;
    }
    *out = l;
    return 0;
}

void ledger_attach_log(ledger *l, log_t *log) { l->log = log; }

void ledger_close(ledger *l)
{
    if (!l)
        return;
    state_close(l->st);
    free(l->allocs);
    free(l->allocs2);
    free(l->refbuf);
    free(l->delta);
    free(l->scratch);
    free(l);
}

uint64_t ledger_checkpoint_seq(const ledger *l) { return l->checkpoint_seq; }
struct state *ledger_state(ledger *l) { return l->st; }
const char *ledger_state_error(const ledger *l) { return state_error(l->st); }
uint64_t ledger_delta_records(const ledger *l) { return l->delta_records; }

/* The deltas and the meta rows of a checkpoint at seq, into the state. */
static int ledger_checkpoint_rows(ledger *l, uint64_t seq)
{
    static const uint64_t format = LEDGER_FORMAT;
    int rc = ledger_flush_deltas(l);
    if (rc == 0)
        rc = state_put(l->st, STATE_META, "seq", 3, &seq, 8);
    if (rc == 0)
        rc = state_put(l->st, STATE_META, "ts", 2, &l->last_ts_ms, 8);
    if (rc == 0)
        rc = state_put(l->st, STATE_META, "format", 6, &format, 8);
    return rc;
}

int ledger_checkpoint(ledger *l, uint64_t seq)
{
    int rc = ledger_checkpoint_rows(l, seq);
    if (rc == 0)
        rc = state_commit(l->st);
    if (rc < 0)
        return rc;
    l->checkpoint_seq = seq;
    l->frozen_seq = 0;
    l->delta_records = 0;
    return 0;
}

int ledger_checkpoint_freeze(ledger *l, uint64_t seq)
{
    if (state_has_frozen(l->st))
        return -EBUSY;
    int rc = ledger_checkpoint_rows(l, seq);
    if (rc == 0)
        rc = state_freeze(l->st);
    if (rc < 0)
        return rc;
    l->frozen_seq = seq;
    l->delta_records = 0;
    return 0;
}

int ledger_checkpoint_commit(ledger *l, void (*done)(void *ctx), void *ctx)
{
    return state_commit_frozen(l->st, done, ctx);
}

int ledger_checkpoint_finish(ledger *l)
{
    int rc = state_commit_finish(l->st);
    if (rc == 0) {
        l->checkpoint_seq = l->frozen_seq;
        l->frozen_seq = 0;
    }
    return rc;
}

bool ledger_checkpoint_frozen(const ledger *l) { return state_has_frozen(l->st); }
size_t ledger_pending_bytes(const ledger *l) { return state_active_bytes(l->st); }

void ledger_rollback(ledger *l)
{
    state_abort(l->st);
    ledger_deltas_clear(l);
    l->acct_cached = false;
    l->delta_records = 0;
    /* What LMDB holds now (a commit may have finished meanwhile). */
    const void *v;
    size_t vl;
    l->last_ts_ms = 0;
    if (state_get(l->st, STATE_META, "ts", 2, &v, &vl) == 0 && vl == 8)
        memcpy(&l->last_ts_ms, v, 8);
    if (state_get(l->st, STATE_META, "seq", 3, &v, &vl) == 0 && vl == 8)
        memcpy(&l->checkpoint_seq, v, 8);
    l->frozen_seq = 0;
}

/* ---- public: execute, replay, sweep ---------------------------------------- */

static int ledger_write(ledger *l, ledger_x *x, tally_request *q)
{
    switch (q->op) {
    case TALLY_OP_EARN:
        return ledger_credit(l, x, q);
    case TALLY_OP_ADJUST:
        return q->points > 0 ? ledger_credit(l, x, q) : ledger_debit(l, x, q);
    case TALLY_OP_REDEEM:
    case TALLY_OP_HOLD:
        return ledger_debit(l, x, q);
    case TALLY_OP_CAPTURE:
    case TALLY_OP_VOID:
        return ledger_hold_op(l, x, q);
    case TALLY_OP_REVERSE:
        return ledger_reverse(l, x, q);
    default:
        return -EINVAL;
    }
}

int ledger_execute(ledger *l, tally_request *q, uint64_t now_ms)
{
    uint64_t ts = now_ms > l->last_ts_ms ? now_ms : l->last_ts_ms;
    if (!tally_op_is_write(q->op)) {
        switch (q->op) {
        case TALLY_OP_BALANCE:
            return ledger_balance(l, q->merchant, q->account, ts, &q->res.balance);
        case TALLY_OP_ENTRY:
            return ledger_read_entry(l, q);
        case TALLY_OP_HISTORY:
            return ledger_history(l, q);
        case TALLY_OP_MERCHANT: {
            ledger_merchant mm;
            int rc = merchant_get(l, q->merchant, &mm);
            if (rc == 0)
                q->res.merchant = (tally_merchant){mm.accounts, mm.outstanding, mm.earned,
                                                   mm.redeemed, mm.expired, mm.entries};
            return rc;
        }
        case TALLY_OP_LIABILITY:
            return ledger_liability(l, q);
        default:
            q->res.status = TALLY_ESYNTAX;
            snprintf(q->res.message, sizeof(q->res.message), "not supported here");
            return 0;
        }
    }
    int rc = ledger_idempotent(l, q);
    if (rc <= 0)
        return rc;
    ledger_x x = {.ts_ms = ts, .engine_entries = true};
    if (q->op == TALLY_OP_EARN || q->op == TALLY_OP_REDEEM || q->op == TALLY_OP_HOLD ||
        q->op == TALLY_OP_ADJUST) {
        rc = ledger_engine_entries(l, &x, q->merchant, q->account);
        if (rc < 0)
            return rc;
    }
    return ledger_write(l, &x, q);
}

/* The request a logged record came from. */
static void request_from_record(const record *r, tally_request *q)
{
    static const uint8_t ops[TALLY_KIND_COUNT] = {
        [TALLY_KIND_EARN] = TALLY_OP_EARN,       [TALLY_KIND_REDEEM] = TALLY_OP_REDEEM,
        [TALLY_KIND_HOLD] = TALLY_OP_HOLD,       [TALLY_KIND_CAPTURE] = TALLY_OP_CAPTURE,
        [TALLY_KIND_VOID] = TALLY_OP_VOID,       [TALLY_KIND_REVERSE] = TALLY_OP_REVERSE,
        [TALLY_KIND_ADJUST] = TALLY_OP_ADJUST,
    };
    memset(q, 0, sizeof(*q));
    q->op = ops[r->kind];
    q->merchant = r->merchant;
    q->account = r->account;
    q->points = r->amount;
    q->expires = r->expires;
    q->available_at = r->available_at;
    q->timeout_s = r->timeout_s;
    q->flags = r->flags;
    q->id_len = r->id_len;
    q->ref_len = r->ref_len;
    q->memo_len = r->memo_len;
    memcpy(q->id, r->id, r->id_len);
    memcpy(q->ref, r->ref, r->ref_len);
    memcpy(q->memo, r->memo, r->memo_len);
}

int ledger_replay(ledger *l, const record *r, log_loc loc)
{
    ledger_x x = {.ts_ms = r->ts_ms, .replay = r, .replay_loc = loc};
    int rc;
    bool engine = r->id[0] == '~';
    if (engine && (r->kind == TALLY_KIND_EXPIRE || r->kind == TALLY_KIND_VOID)) {
        /* The earn whose lot expired / the hold that timed out. */
        uint64_t seq = 0;
        ledger_ref ref;
        bool has_ref = false;
        rc = ledger_target(l, r->merchant, r->ref, r->ref_len, &seq, &ref, &has_ref);
        if (rc == 0 && !has_ref)
            rc = 1;
        if (rc == 0 && r->kind == TALLY_KIND_EXPIRE)
            rc = ledger_expire_lot(l, &x, r->merchant, r->account, expkey_of(r->expires), seq);
        else if (rc == 0)
            rc = ledger_release(l, &x, NULL, r->merchant, seq, 0);
        if (rc == 1)
            rc = TALLY_ECORRUPT;
    } else {
        request_from_record(r, l->scratch);
        rc = ledger_write(l, &x, l->scratch);
        tally_result_free(&l->scratch->res);
    }
    if (rc == 0 && x.replay != NULL) {
        ledger_say(l, 2, "replay of seq %llu (%.*s) produced no record",
                   (unsigned long long)r->seq, (int)r->id_len, r->id);
        rc = TALLY_ECORRUPT;
    }
    return rc;
}

int ledger_sweep(ledger *l, uint64_t now_ms, uint32_t max, uint32_t *count, bool *more)
{
    uint64_t ts = now_ms > l->last_ts_ms ? now_ms : l->last_ts_ms;
    ledger_x x = {.ts_ms = ts, .engine_entries = true};
    *count = 0;
    *more = false;
    uint64_t start = l->delta_records;
    for (int table = STATE_EXPIRY; table <= STATE_HOLDS_DUE; table += STATE_HOLDS_DUE - STATE_EXPIRY) {
        for (;;) {
            if ((uint32_t)(l->delta_records - start) >= max ||
                !log_batch_room(l->log, 64u * LIMIT_RECORD_BYTES_MAX)) {
                *more = true;
                break;
            }
            state_cursor *c;
            int rc = state_cursor_open(l->st, table, &c);
            if (rc < 0)
                return rc;
            const void *kk, *v;
            size_t kl, vl;
            rc = state_cursor_seek(c, NULL, 0, &kk, &kl, &v, &vl);
            uint8_t key[32];
            size_t keyl = rc == 0 ? kl : 0;
            if (rc == 0)
                memcpy(key, kk, kl < 32 ? kl : 32);
            state_cursor_close(c);
            if (rc < 0)
                return rc;
            if (rc == 1 || !ledger_due(get_be64(key), ts))
                break;
            if (table == STATE_EXPIRY && keyl == 32) {
                /* Through the account, so its other due entries come too. */
                rc = ledger_engine_entries(l, &x, get_be64(key + 8), get_be64(key + 16));
                if (rc == 0) /* not removed by the account pass: expire it here */
                    rc = ledger_expire_lot(l, &x, get_be64(key + 8), get_be64(key + 16),
                                           get_be64(key), get_be64(key + 24));
                uint8_t lk[32];
                const void *lv;
                size_t lvl;
                if (rc == 0 && state_get(l->st, STATE_LOTS, lk,
                                         key4(lk, get_be64(key + 8), get_be64(key + 16),
                                              get_be64(key), get_be64(key + 24)),
                                         &lv, &lvl) == 1)
                    state_del(l->st, STATE_EXPIRY, key, 32); /* stale index row */
            } else if (table == STATE_HOLDS_DUE && keyl == 24) {
                uint64_t m = get_be64(key + 8), seq = get_be64(key + 16);
                ledger_ref h;
                rc = ref_get(l, m, seq, &h, NULL, NULL);
                if (rc == 0) {
                    rc = ledger_engine_entries(l, &x, m, h.account);
                    /* A row left by a closed hold must not stop the sweep. */
                    if (rc == 0 && state_del(l->st, STATE_HOLDS_DUE, key, 24) < 0)
                        rc = TALLY_EFAILED;
                } else if (rc == 1) {
                    rc = state_del(l->st, STATE_HOLDS_DUE, key, 24) < 0 ? TALLY_EFAILED : 0;
                }
            } else {
                rc = TALLY_ECORRUPT;
            }
            if (rc == TALLY_ETOOBIG) {
                *more = true;
                break;
            }
            if (rc < 0)
                return rc;
        }
    }
    *count = (uint32_t)(l->delta_records - start);
    return 0;
}

/* ---- public: verify, compare -------------------------------------------- */

typedef struct ledger_sum {
    ledger_merchant m;
} ledger_sum;

static int ledger_verify_account(ledger *l, uint64_t m, uint64_t a, const ledger_account *ac,
                                 char *msg, size_t cap)
{
    lot_iter it;
    int rc = lot_iter_open(l, m, a, &it);
    if (rc < 0)
        return rc;
    int64_t lots = 0;
    uint64_t first_exp = UINT64_MAX;
    while ((rc = lot_iter_next(&it)) == 0) {
        if (lots == 0)
            first_exp = it.expkey;
        lots += it.lot.remaining;
        if (it.lot.remaining <= 0) {
            rc = TALLY_ECORRUPT;
            break;
        }
    }
    lot_iter_close(&it);
    if (rc < 0 && rc != TALLY_ECORRUPT)
        return rc;
    uint64_t hold_seq, first_deadline;
    int hrc = holds_first(l, m, a, &hold_seq, &first_deadline);
    if (hrc < 0)
        return hrc;
    if (first_exp != ac->lots_min_exp || first_deadline != ac->holds_min_deadline) {
        snprintf(msg, cap,
                 "merchant %llu account %llu: soonest expiry %llu / hold deadline %llu "
                 "recorded, %llu / %llu found",
                 (unsigned long long)m, (unsigned long long)a,
                 (unsigned long long)ac->lots_min_exp,
                 (unsigned long long)ac->holds_min_deadline, (unsigned long long)first_exp,
                 (unsigned long long)first_deadline);
        return TALLY_ECORRUPT;
    }
    int64_t total = ac->lots_total - ac->debt + ac->held;
    if (rc == TALLY_ECORRUPT || lots != ac->lots_total || ac->debt < 0 || ac->held < 0 ||
        total != ac->earned - ac->redeemed - ac->expired) {
        snprintf(msg, cap,
                 "merchant %llu account %llu: lots %lld vs total %lld, debt %lld, held %lld, "
                 "earned %lld redeemed %lld expired %lld do not add up",
                 (unsigned long long)m, (unsigned long long)a, (long long)lots,
                 (long long)ac->lots_total, (long long)ac->debt, (long long)ac->held,
                 (long long)ac->earned, (long long)ac->redeemed, (long long)ac->expired);
        return TALLY_ECORRUPT;
    }
    return 0;
}

static int ledger_verify_merchant_totals(ledger *l, uint64_t m, const ledger_merchant *sum,
                                         char *msg, size_t cap)
{
    ledger_merchant mm;
    int rc = merchant_get(l, m, &mm);
    if (rc < 0)
        return rc;
    int64_t liab = 0;
    tally_request q;
    memset(&q, 0, sizeof(q));
    q.merchant = m;
    rc = ledger_liability(l, &q);
    for (uint32_t i = 0; i < q.res.rows_count; i++)
        liab += q.res.rows[i].points;
    free(q.res.rows);
    if (rc < 0)
        return rc;
    if (mm.accounts != sum->accounts || mm.outstanding != sum->outstanding ||
        mm.earned != sum->earned || mm.redeemed != sum->redeemed ||
        mm.expired != sum->expired || liab != mm.outstanding) {
        snprintf(msg, cap,
                 "merchant %llu: totals (accounts %lld outstanding %lld earned %lld redeemed "
                 "%lld expired %lld, liability %lld) differ from its accounts (%lld %lld %lld "
                 "%lld %lld)",
                 (unsigned long long)m, (long long)mm.accounts, (long long)mm.outstanding,
                 (long long)mm.earned, (long long)mm.redeemed, (long long)mm.expired,
                 (long long)liab, (long long)sum->accounts, (long long)sum->outstanding,
                 (long long)sum->earned, (long long)sum->redeemed, (long long)sum->expired);
        return TALLY_ECORRUPT;
    }
    return 0;
}

int ledger_verify(ledger *l, uint64_t merchant, char *msg, size_t cap)
{
    state_cursor *c;
    int rc = state_cursor_open(l->st, STATE_ACCOUNTS, &c);
    if (rc < 0)
        return rc;
    uint8_t k[16];
    key2(k, merchant, 0);
    const void *kk, *v;
    size_t kl, vl;
    uint64_t cur_m = 0;
    ledger_merchant sum = {0};
    rc = state_cursor_seek(c, k, merchant ? 16 : 0, &kk, &kl, &v, &vl);
    while (rc == 0 && kl == 16) {
        uint64_t m = get_be64(kk), a = get_be64((const uint8_t *)kk + 8);
        if (merchant && m != merchant)
            break;
        if (m != cur_m) {
            if (cur_m && (rc = ledger_verify_merchant_totals(l, cur_m, &sum, msg, cap)) != 0)
                break;
            cur_m = m;
            sum = (ledger_merchant){0};
        }
        ledger_account ac;
        memcpy(&ac, v, sizeof(ac));
        rc = ledger_verify_account(l, m, a, &ac, msg, cap);
        if (rc != 0)
            break;
        sum.accounts++;
        sum.outstanding += ac.lots_total - ac.debt + ac.held;
        sum.earned += ac.earned;
        sum.redeemed += ac.redeemed;
        sum.expired += ac.expired;
        rc = state_cursor_step(c, 1, &kk, &kl, &v, &vl);
    }
    state_cursor_close(c);
    if (rc == 1)
        rc = 0;
    if (rc == 0 && cur_m)
        rc = ledger_verify_merchant_totals(l, cur_m, &sum, msg, cap);
    return rc;
}

int ledger_compare(ledger *a, ledger *b, char *msg, size_t cap)
{
    /* Uncheckpointed totals live in memory: into both transactions first. */
    int rc = ledger_flush_deltas(a);
    if (rc == 0)
        rc = ledger_flush_deltas(b);
    if (rc < 0)
        return rc;
    return state_compare(a->st, b->st, msg, cap);
}
