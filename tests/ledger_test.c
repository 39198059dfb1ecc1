/*
 * ledger_test.c — loyalty semantics that depend on time (engine/ledger.c),
 * driven through the public API with a controllable engine clock: FIFO by
 * expiry, hold timeouts, points returned into lots that have expired, and
 * after each scenario a full offline check that the stored state equals a
 * fresh replay of the log (tally_verify_full).
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "engine_util.h"

/* ---- a controllable clock ------------------------------------------------ */

static uint64_t clock_ms;

static uint64_t test_clock(void *ctx)
{
    (void)ctx;
    return __atomic_load_n(&clock_ms, __ATOMIC_SEQ_CST);
}

static void advance_s(uint64_t s) { __atomic_add_fetch(&clock_ms, s * 1000, __ATOMIC_SEQ_CST); }
static uint64_t now_s(void) { return test_clock(NULL) / 1000; }

static char dir[64];
static tally *t;

static void up(void)
{
    clock_ms = 1700000000000ull; /* 2023-11-14 */
    eu_tmpdir(dir, "ledger");
    tally_options o = {.dir = dir, .shards = 1, .log = eu_log, .clock = test_clock,
                       .segment_bytes = 1u << 20, .state_map_bytes = 1ull << 30};
    cr_assert_eq(tally_open(&o, &t), 0);
}

/* Closes, then checks state == replay of the whole log, offline. */
static void down(void)
{
    tally_close(t);
    char msg[256];
    cr_assert_eq(eu_verify_offline(dir, msg, sizeof(msg)), 0, "%s", msg);
    eu_rmrf(dir);
}

/* ---- request helpers ------------------------------------------------------ */

static int earn_exp(uint64_t a, int64_t pts, const char *id, uint64_t expires)
{
    tally_request r;
    eu_write(&r, TALLY_OP_EARN, 1, a, pts, id);
    if (expires) {
        r.expires = expires;
        r.flags |= TALLY_REQ_EXPIRES;
    }
    int rc = tally_call(t, &r);
    tally_result_free(&r.res);
    return rc;
}

/* timeout_s 0: no TIMEOUT given (the default applies). */
static int hold(uint64_t a, int64_t pts, const char *id, uint64_t timeout_s)
{
    tally_request r;
    eu_write(&r, TALLY_OP_HOLD, 1, a, pts, id);
    if (timeout_s) {
        r.timeout_s = timeout_s;
        r.flags |= TALLY_REQ_TIMEOUT;
    }
    int rc = tally_call(t, &r);
    tally_result_free(&r.res);
    return rc;
}

static int by_ref(int op, const char *ref, const char *id, tally_entry *out)
{
    tally_request r;
    eu_ref(&r, op, 1, ref, id);
    int rc = tally_call(t, &r);
    if (rc == 0 && out)
        *out = r.res.entry;
    tally_result_free(&r.res);
    return rc;
}

static tally_balance balance(uint64_t a)
{
    tally_balance b;
    cr_assert_eq(eu_balance(t, 1, a, &b), 0);
    return b;
}

/* Waits (real time) for the sweep to write an engine entry. */
static tally_entry wait_entry(const char *id)
{
    tally_entry e;
    for (int i = 0; i < 400; i++) {
        if (eu_find(t, 1, id, &e) == 1)
            return e;
        usleep(10000);
    }
    cr_assert_fail("the engine did not write %s", id);
    return e;
}

/* ---- tests ------------------------------------------------------------------ */

Test(ledger, debits_take_the_soonest_expiring_lot_first_and_never_expiring_last, .init = up,
     .fini = down)
{
    cr_assert_eq(earn_exp(1, 100, "never", 0), 0);
    cr_assert_eq(earn_exp(1, 100, "late", now_s() + 7200), 0);
    cr_assert_eq(earn_exp(1, 100, "soon", now_s() + 3600), 0);
    cr_assert_eq(eu_redeem(t, 1, 1, 150, "r1", NULL), 0); /* soon 100, late 50 */
    tally_balance b = balance(1);
    cr_assert_eq(b.available, 150);
    cr_assert_eq(b.next_expiry, now_s() + 7200);
    cr_assert_eq(b.expiring, 50);
    advance_s(7201); /* both dated lots have passed: only "never" is left */
    b = balance(1);
    cr_assert_eq(b.available, 100);
    cr_assert_eq(b.expired, 50, "as of now, before the sweep");
    tally_entry e = wait_entry("~exp:late");
    cr_assert_eq(e.points, -50);
    cr_assert_eq(eu_find(t, 1, "~exp:soon", NULL), 0, "an emptied lot does not expire");
    cr_assert_eq(eu_redeem(t, 1, 1, 100, "r2", NULL), 0);
    cr_assert_eq(eu_redeem(t, 1, 1, 1, "r3", NULL), TALLY_EINSUFFICIENT);
}

Test(ledger, an_unresolved_hold_is_voided_at_its_timeout_into_its_original_lots, .init = up,
     .fini = down)
{
    cr_assert_eq(earn_exp(2, 100, "e1", now_s() + 86400), 0);
    cr_assert_eq(hold(2, 60, "h1", 30), 0);
    tally_balance b = balance(2);
    cr_assert_eq(b.available, 40);
    cr_assert_eq(b.held, 60);
    advance_s(31);
    b = balance(2);
    cr_assert_eq(b.available, 100, "released as of now, before the sweep");
    cr_assert_eq(b.held, 0);
    tally_entry v = wait_entry("~void:h1");
    cr_assert_eq(v.kind, TALLY_KIND_VOID);
    cr_assert_eq(v.points, 60);
    cr_assert_eq(v.held, 0);
    cr_assert_eq(by_ref(TALLY_OP_CAPTURE, "h1", "c1", NULL), TALLY_EINVALID, "closed hold");
    b = balance(2);
    cr_assert_eq(b.expiring, 100, "back in the lot with its original expiry");
}

Test(ledger, a_hold_without_timeout_is_voided_after_the_default_900_seconds, .init = up,
     .fini = down)
{
    cr_assert_eq(earn_exp(4, 100, "e1", 0), 0);
    cr_assert_eq(hold(4, 70, "h1", 0), 0);
    advance_s(899);
    tally_balance b = balance(4);
    cr_assert_eq(b.held, 70, "still held at 899 s");
    cr_assert_eq(eu_find(t, 1, "~void:h1", NULL), 0);
    advance_s(2);
    b = balance(4);
    cr_assert_eq(b.held, 0, "released at 901 s");
    cr_assert_eq(b.available, 100);
    tally_entry v = wait_entry("~void:h1");
    cr_assert_eq(v.points, 70);
    cr_assert_eq(by_ref(TALLY_OP_CAPTURE, "h1", "c1", NULL), TALLY_EINVALID, "closed hold");
}

Test(ledger, a_write_settles_the_accounts_due_entries_before_itself, .init = up, .fini = down)
{
    cr_assert_eq(earn_exp(3, 100, "e1", now_s() + 60), 0);
    cr_assert_eq(hold(3, 10, "h1", 30), 0);
    advance_s(61);
    /* The write comes first, before any sweep: its entry follows the
     * engine's (the void, then the expiry of what is left). */
    tally_entry e;
    cr_assert_eq(eu_earn(t, 1, 3, 5, "e2", &e), 0);
    cr_assert_eq(e.balance, 5, "the expired lot is gone before e2 lands");
    tally_entry v, x;
    cr_assert_eq(eu_find(t, 1, "~void:h1", &v), 1);
    cr_assert_eq(eu_find(t, 1, "~exp:e1", &x), 1);
    cr_assert_lt(x.seq, e.seq);
    cr_assert_lt(v.seq, e.seq);
    cr_assert_eq(x.points, -100, "the released hold went back and expired with its lot");
}

Test(ledger, points_refunded_into_an_expired_lot_expire_at_once, .init = up, .fini = down)
{
    cr_assert_eq(earn_exp(4, 100, "e1", now_s() + 100), 0);
    cr_assert_eq(eu_redeem(t, 1, 4, 40, "r1", NULL), 0);
    advance_s(101);
    wait_entry("~exp:e1");
    tally_entry refund;
    cr_assert_eq(by_ref(TALLY_OP_REVERSE, "r1", "rv1", &refund), 0);
    cr_assert_eq(refund.points, 40);
    tally_entry again = wait_entry("~exp:e1#2");
    cr_assert_eq(again.points, -40);
    tally_balance b = balance(4);
    cr_assert_eq(b.available, 0);
    cr_assert_eq(b.expired, 100);
    cr_assert_eq(b.redeemed, 0);
}

Test(ledger, a_void_into_an_expired_lot_expires_at_once, .init = up, .fini = down)
{
    cr_assert_eq(earn_exp(5, 100, "e1", now_s() + 100), 0);
    cr_assert_eq(hold(5, 50, "h1", 1000), 0);
    advance_s(200);
    wait_entry("~exp:e1"); /* the 50 not held */
    tally_entry v;
    cr_assert_eq(by_ref(TALLY_OP_VOID, "h1", "v1", &v), 0);
    cr_assert_eq(v.points, 50);
    wait_entry("~exp:e1#2");
    tally_balance b = balance(5);
    cr_assert_eq(b.available, 0);
    cr_assert_eq(b.held, 0);
    cr_assert_eq(b.expired, 100);
}

/* ---- a month-end expiry of a million lots (issue 13) ------------------------ */

typedef struct sw_load {
    uint64_t expires;
    uint32_t accounts;
} sw_load;

static void sw_fill(void *ctx, uint64_t i, tally_request *r)
{
    const sw_load *l = ctx;
    char id[32];
    snprintf(id, sizeof(id), "lot-%llu", (unsigned long long)i);
    eu_write(r, TALLY_OP_EARN, 1, 1 + i % l->accounts, 7, id);
    r->expires = l->expires;
    r->flags |= TALLY_REQ_EXPIRES;
}

/* What the log says about the sweep: its expire entries' seqs. */
typedef struct sw_scan {
    uint64_t expired, first_seq, last_seq;
} sw_scan;

static int sw_scan_one(void *ctx, const tally_entry *e, bool refusal, int status)
{
    (void)status;
    sw_scan *s = ctx;
    if (refusal || e->kind != TALLY_KIND_EXPIRE)
        return 0;
    s->expired++;
    if (!s->first_seq)
        s->first_seq = e->seq;
    s->last_seq = e->seq;
    return 0;
}

/* Every lot comes due at the same second.  The sweep writes their expire
 * entries at most LIMIT_SWEEP_CHUNK per turn of the shard, and a write
 * that arrives meanwhile is applied, and answered, between two turns
 * rather than after the last: asserted with the shard's sweep counters
 * and with the seqs the log gives the writes and the expiries, never with
 * a clock.  (Before the counters, this test counted every batch since the
 * shard opened, which no chunking could fail.) */
Test(ledger, a_month_end_expiry_of_a_million_lots_is_swept_in_bounded_chunks_between_writes,
     .timeout = 1200)
{
#if defined(__SANITIZE_THREAD__)
    /* ThreadSanitizer runs this 10x slower (~4 minutes): a tenth of the
     * lots, still ~100 turns; the plain and ASan builds sweep a million. */
    enum { LOTS = 100000, WRITES_MAX = 100000 };
#else
    enum { LOTS = 1000000, WRITES_MAX = 100000 };
#endif
    clock_ms = 1700000000000ull;
    eu_tmpdir_mem(dir, "sweep");
    tally_options o = {.dir = dir, .shards = 1, .log = eu_log, .clock = test_clock,
                       .segment_bytes = 64u << 20, .state_map_bytes = 4ull << 30};
    cr_assert_eq(tally_open(&o, &t), 0);
    sw_load l = {.expires = now_s() + 50, .accounts = LOTS / 100};
    int err = 0;
    char msg[160];
    uint64_t bad = eu_pipeline(t, LOTS, 2048, sw_fill, &l, &err, msg, sizeof(msg));
    cr_assert_eq(bad, 0, "%llu lots refused: %s %s", (unsigned long long)bad,
                 tally_strerror(err), msg);
    tally_shard_stats st;
    tally_shard_stats_get(t, 0, &st);
    cr_assert_eq(st.sweep_entries, 0, "nothing due yet");

    /* Due now: writes to other accounts, one at a time, until the sweep
     * has written every expiry. */
    advance_s(51);
    static uint64_t seqs[WRITES_MAX];
    int n = 0;
    do {
        char id[32];
        snprintf(id, sizeof(id), "during-%d", n);
        tally_entry e;
        cr_assert_eq(eu_earn(t, 1, 2000000 + (uint64_t)n, 1, id, &e), 0);
        seqs[n++] = e.seq;
        tally_shard_stats_get(t, 0, &st);
    } while (st.sweep_entries < LOTS && n < WRITES_MAX);
    cr_assert_eq(st.sweep_entries, LOTS, "every lot expired (%d writes meanwhile)", n);
    cr_assert_leq(st.sweep_chunk_entries_max, LIMIT_SWEEP_CHUNK, "no turn wrote over a chunk");
    cr_assert_eq(st.sweep_chunk_entries_max, LIMIT_SWEEP_CHUNK, "full chunks");
    cr_assert_geq(st.sweep_chunks, (LOTS + LIMIT_SWEEP_CHUNK - 1) / LIMIT_SWEEP_CHUNK);
    tally_close(t);

    tally_options ro = {.dir = dir, .read_only = true, .log = eu_log};
    cr_assert_eq(tally_open(&ro, &t), 0);
    sw_scan sc = {0};
    cr_assert_eq(tally_scan(t, 0, 0, sw_scan_one, &sc), 0);
    tally_close(t);
    cr_assert_eq(sc.expired, LOTS, "one expire entry per lot in the log");
    int between = 0;
    for (int i = 0; i < n; i++)
        between += seqs[i] > sc.first_seq && seqs[i] < sc.last_seq;
    cr_log_info("sweep of %d lots: %llu turns, at most %llu entries each; %d of %d writes "
                "applied between its first and last expiry",
                LOTS, (unsigned long long)st.sweep_chunks,
                (unsigned long long)st.sweep_chunk_entries_max, between, n);
    cr_assert_geq(between, 1,
                  "a write issued while the sweep ran was answered before its last chunk "
                  "(expiries at seqs %llu..%llu)",
                  (unsigned long long)sc.first_seq, (unsigned long long)sc.last_seq);
    eu_rmrf(dir);
}

/* Issue 10: a member who earned daily for years has thousands of lots; a
 * redemption of all of them is one entry (its allocation continues in
 * allocation parts), and a refund gives every lot back its points. */
Test(ledger, one_redeem_takes_a_hundred_thousand_lots_and_its_refund_gives_them_back,
     .timeout = 600)
{
    clock_ms = 1700000000000ull;
    eu_tmpdir(dir, "ledger");
    tally_options o = {.dir = dir, .shards = 1, .log = eu_log, .clock = test_clock,
                       .sync = TALLY_SYNC_NONE, .segment_bytes = 64u << 20,
                       .state_map_bytes = 1ull << 30};
    cr_assert_eq(tally_open(&o, &t), 0);
    enum { N = 100000 };
    uint64_t base = now_s() + 86400;
    for (int i = 0; i < N; i++) {
        char id[32];
        snprintf(id, sizeof(id), "lot-%d", i);
        /* Distinct expiries, each its own lot (earned out of order: the
         * account keeps them sorted). */
        cr_assert_eq(earn_exp(9, 1 + i % 3, id, base + (uint64_t)((i * 7919) % N)), 0);
    }
    int64_t total = 0;
    for (int i = 0; i < N; i++)
        total += 1 + i % 3;
    tally_balance b = balance(9);
    cr_assert_eq(b.available, total);
    cr_assert_eq(b.next_expiry, base);
    tally_entry r;
    cr_assert_eq(eu_redeem(t, 1, 9, total, "all", &r), 0);
    cr_assert_eq(r.points, -total);
    cr_assert_eq(r.amount, total);
    b = balance(9);
    cr_assert_eq(b.available, 0);
    cr_assert_eq(b.next_expiry, 0, "no lot is left");
    tally_entry rv;
    cr_assert_eq(by_ref(TALLY_OP_REVERSE, "all", "refund", &rv), 0);
    cr_assert_eq(rv.points, total);
    b = balance(9);
    cr_assert_eq(b.available, total);
    cr_assert_eq(b.next_expiry, base, "every lot back with its own expiry");
    cr_assert_eq(b.expiring, 1 + 0 % 3, "lot-0's points in the soonest lot");
    /* A half of it again, then the soonest expiry passes. */
    cr_assert_eq(eu_redeem(t, 1, 9, total / 2, "half", NULL), 0);
    advance_s(86400 + N);
    b = balance(9);
    cr_assert_eq(b.available, 0, "everything left expired as of now");
    cr_assert_eq(b.expired, total - total / 2);
    down();
}

/* ---- the audit trail (issue 12) --------------------------------------------- */

/* Every entry of an account, oldest first (HISTORY paged to the start). */
static tally_entry *audit_history(uint64_t a, uint32_t *n)
{
    tally_entry *all = NULL;
    uint32_t count = 0, cap = 0;
    uint64_t before = 0;
    for (;;) {
        tally_request r;
        eu_read(&r, TALLY_OP_HISTORY, 1, a);
        r.limit = 100;
        if (before) {
            r.before_seq = before;
            r.flags |= TALLY_REQ_BEFORE;
        }
        cr_assert_eq(tally_call(t, &r), 0);
        if (count + r.res.items_count > cap) {
            cap = (count + r.res.items_count) * 2;
            all = realloc(all, cap * sizeof(*all));
        }
        memcpy(all + count, r.res.items, r.res.items_count * sizeof(*all));
        count += r.res.items_count;
        uint32_t got = r.res.items_count;
        if (got)
            before = r.res.items[got - 1].seq;
        tally_result_free(&r.res);
        if (got < 100)
            break;
    }
    for (uint32_t i = 0; i < count / 2; i++) { /* oldest first */
        tally_entry x = all[i];
        all[i] = all[count - 1 - i];
        all[count - 1 - i] = x;
    }
    *n = count;
    return all;
}

/* From an account's HISTORY alone: Σ points = available, and each entry's
 * balance, held and pending follow from the one before by what it says. */
static void audit_account(uint64_t a)
{
    uint32_t n;
    tally_entry *h = audit_history(a, &n);
    int64_t bal = 0, held = 0, pending = 0, sum = 0;
    for (uint32_t i = 0; i < n; i++) {
        const tally_entry *e = &h[i];
        int64_t dh, dp;
        tally_entry_moves(e, &dh, &dp); /* the reference's table (log_test pins it) */
        sum += e->points;
        cr_assert_eq(e->balance, bal + e->points, "account %llu seq %llu (%s %.*s): balance",
                     (unsigned long long)a, (unsigned long long)e->seq,
                     tally_kind_name(e->kind), e->id_len, e->id);
        cr_assert_eq(e->held, held + dh, "account %llu seq %llu (%s %.*s): held %lld, was %lld",
                     (unsigned long long)a, (unsigned long long)e->seq,
                     tally_kind_name(e->kind), e->id_len, e->id, (long long)e->held,
                     (long long)held);
        cr_assert_eq(e->pending, pending + dp,
                     "account %llu seq %llu (%s %.*s): pending %lld, was %lld (points %lld "
                     "amount %lld)",
                     (unsigned long long)a, (unsigned long long)e->seq,
                     tally_kind_name(e->kind), e->id_len, e->id, (long long)e->pending,
                     (long long)pending, (long long)e->points, (long long)e->amount);
        bal = e->balance;
        held = e->held;
        pending = e->pending;
    }
    tally_balance b = balance(a);
    cr_assert_eq(sum, b.available, "account %llu: Σ points = available", (unsigned long long)a);
    cr_assert_eq(held, b.held);
    cr_assert_eq(pending, b.pending);
    free(h);
}

static int audit_write(tally_request *r)
{
    int rc = tally_call(t, r);
    tally_result_free(&r->res);
    return rc;
}

/* What a transfer must leave as it was: merchant 1's totals and its
 * liability by month, as one comparable text. */
static void audit_totals(char *out, size_t cap)
{
    tally_request r;
    eu_read(&r, TALLY_OP_MERCHANT, 1, 0);
    cr_assert_eq(tally_call(t, &r), 0);
    const tally_merchant *m = &r.res.merchant;
    size_t n = (size_t)snprintf(out, cap, "outstanding %lld earned %lld redeemed %lld expired %lld|",
                                (long long)m->outstanding, (long long)m->earned,
                                (long long)m->redeemed, (long long)m->expired);
    tally_result_free(&r.res);
    eu_read(&r, TALLY_OP_LIABILITY, 1, 0);
    cr_assert_eq(tally_call(t, &r), 0);
    for (uint32_t i = 0; i < r.res.rows_count && n < cap; i++)
        n += (size_t)snprintf(out + n, cap - n, "%d-%d=%lld;", r.res.rows[i].year,
                              r.res.rows[i].month, (long long)r.res.rows[i].points);
    tally_result_free(&r.res);
}

static uint64_t audit_last_seq(void)
{
    tally_shard_stats st;
    cr_assert_eq(tally_shard_stats_get(t, 0, &st), 0);
    return st.seq;
}

Test(ledger, every_change_of_available_held_and_pending_is_an_entry_that_says_it,
     .init = up, .fini = down, .timeout = 300)
{
    enum { ACCOUNTS = 5, STEPS = 4000 };
    unsigned seed = 424242;
    char id[32], ref[32];
    int ids = 0, transfers_checked = 0;
    for (int step = 0; step < STEPS; step++) {
        uint64_t a = 1 + (uint64_t)(rand_r(&seed) % ACCOUNTS);
        int what = rand_r(&seed) % 100;
        tally_request r;
        snprintf(id, sizeof(id), "w%d", ++ids);
        /* An earlier write of ours to refer to (maybe refused, maybe of
         * another kind: the ledger decides). */
        snprintf(ref, sizeof(ref), "w%d", 1 + rand_r(&seed) % ids);
        int64_t pts = 1 + rand_r(&seed) % 300;
        if (what < 30) {
            eu_write(&r, TALLY_OP_EARN, 1, a, pts, id);
            int v = rand_r(&seed) % 4;
            if (v == 1 || v == 3) {
                r.expires = now_s() + 60 + (uint64_t)(rand_r(&seed) % 3000);
                r.flags |= TALLY_REQ_EXPIRES;
            }
            if (v >= 2) {
                r.available_at = now_s() + 1 + (uint64_t)(rand_r(&seed) % 50);
                r.flags |= TALLY_REQ_AVAILABLE_AT;
                if (r.flags & TALLY_REQ_EXPIRES && r.expires <= r.available_at)
                    r.expires = r.available_at + 100;
            }
        } else if (what < 45) {
            eu_write(&r, TALLY_OP_REDEEM, 1, a, pts, id);
        } else if (what < 58) {
            eu_write(&r, TALLY_OP_HOLD, 1, a, pts, id);
            r.timeout_s = 1 + (uint64_t)(rand_r(&seed) % 200);
            r.flags |= TALLY_REQ_TIMEOUT;
        } else if (what < 68) {
            eu_ref(&r, rand_r(&seed) % 2 ? TALLY_OP_CAPTURE : TALLY_OP_VOID, 1, ref, id);
            if (r.op == TALLY_OP_CAPTURE && rand_r(&seed) % 2) {
                r.points = 1 + rand_r(&seed) % 100;
                r.flags |= TALLY_REQ_POINTS;
            }
        } else if (what < 78) {
            eu_ref(&r, TALLY_OP_REVERSE, 1, ref, id);
            if (rand_r(&seed) % 2) {
                r.points = 1 + rand_r(&seed) % 100;
                r.flags |= TALLY_REQ_POINTS;
            }
        } else if (what < 84) {
            eu_write(&r, TALLY_OP_ADJUST, 1, a, rand_r(&seed) % 3 ? -pts : pts, id);
        } else if (what < 92) {
            eu_write(&r, TALLY_OP_TRANSFER, 1, a, pts, id);
            r.account2 = 1 + (a + (uint64_t)(rand_r(&seed) % (ACCOUNTS - 1))) % ACCOUNTS;
            if (rand_r(&seed) % 5 == 0) {
                r.flags |= TALLY_REQ_ALL;
                r.points = 0;
            }
        } else {
            advance_s(1 + (uint64_t)(rand_r(&seed) % 120));
            continue;
        }
        /* Σ balances and liability by month are unchanged by a transfer:
         * compared where nothing else (the sweep, an expiry due first) was
         * written between the two readings. */
        bool transfer = r.op == TALLY_OP_TRANSFER;
        char before[512], after[512];
        uint64_t seq0 = 0;
        tally_request retry = r;
        if (transfer) {
            seq0 = audit_last_seq();
            audit_totals(before, sizeof(before));
        }
        int rc = audit_write(&r);
        cr_assert(rc == 0 || rc == TALLY_EINSUFFICIENT || rc == TALLY_EINVALID ||
                      rc == TALLY_ENOTFOUND,
                  "step %d: %s", step, tally_strerror(rc));
        if (transfer) {
            audit_totals(after, sizeof(after));
            if (rc == 0 && audit_last_seq() == seq0 + 2) {
                cr_assert_str_eq(after, before, "step %d: a transfer changed the totals: %s -> %s",
                                 step, before, after);
                transfers_checked++;
            }
            /* Idempotency and remembered refusals, as for every write. */
            int again = audit_write(&retry);
            cr_assert_eq(again, rc, "step %d: a retried transfer answered %s, first %s", step,
                         tally_strerror(again), tally_strerror(rc));
        }
    }
    cr_log_info("audit: %d transfers left the totals and liability as they were", transfers_checked);
    cr_assert_gt(transfers_checked, 50, "transfers whose totals were compared");
    /* Everything due is written before a write to the account: one each. */
    advance_s(4000);
    for (uint64_t a = 1; a <= ACCOUNTS; a++) {
        tally_request r;
        snprintf(id, sizeof(id), "settle-%llu", (unsigned long long)a);
        eu_write(&r, TALLY_OP_ADJUST, 1, a, 1, id);
        cr_assert_eq(audit_write(&r), 0);
        audit_account(a);
    }
}
