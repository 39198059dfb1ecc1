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
    tally_options ro = {.dir = dir, .read_only = true, .log = eu_log};
    cr_assert_eq(tally_open(&ro, &t), 0);
    char msg[256];
    cr_assert_eq(tally_verify_full(t, msg, sizeof(msg)), 0, "%s", msg);
    tally_close(t);
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

static int hold(uint64_t a, int64_t pts, const char *id, uint64_t timeout_s)
{
    tally_request r;
    eu_write(&r, TALLY_OP_HOLD, 1, a, pts, id);
    r.timeout_s = timeout_s;
    r.flags |= TALLY_REQ_TIMEOUT;
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

Test(ledger, a_month_end_expiry_of_many_lots_is_swept_in_bounded_chunks, .init = up,
     .fini = down)
{
    enum { N = 5000 };
    for (int i = 0; i < N; i++) {
        char id[32];
        snprintf(id, sizeof(id), "bulk-%d", i);
        cr_assert_eq(earn_exp(1000 + (uint64_t)i, 7, id, now_s() + 50), 0);
    }
    advance_s(51);
    /* Writes go on while the sweep works through the lots. */
    cr_assert_eq(eu_earn(t, 1, 99, 1, "during", NULL), 0);
    char last[40];
    snprintf(last, sizeof(last), "~exp:bulk-%d", N - 1);
    for (int i = 0; i < 1000 && eu_find(t, 1, last, NULL) != 1; i++)
        usleep(10000);
    int found = 0;
    for (int i = 0; i < N; i += 97) {
        char id[40];
        snprintf(id, sizeof(id), "~exp:bulk-%d", i);
        found += eu_find(t, 1, id, NULL) == 1;
    }
    cr_assert_eq(found, (N + 96) / 97, "every lot expired");
    tally_shard_stats st;
    tally_shard_stats_get(t, 0, &st);
    cr_assert_geq(st.sweep_entries, N);
    cr_assert_gt(st.batches, N / LIMIT_SWEEP_CHUNK, "in chunks, not one batch");
}
