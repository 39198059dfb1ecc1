/*
 * command_test.c — every command of SPEC §2 and every error of §3, over
 * TCP against a real tallyd (engine/command.c through engine/server.c).
 */
#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tallyd_util.h"

/* ---- helpers ------------------------------------------------------------ */

static td srv;
static redisContext *rc;

static void up(void)
{
    td_init(&srv, "cmd");
    td_start(&srv, NULL);
    rc = td_connect(&srv);
}

static void down(void)
{
    redisFree(rc);
    td_stop(&srv);
    td_cleanup(&srv);
}

static void expect_error(const char *prefix, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(rc, fmt, ap);
    va_end(ap);
    cr_assert_not_null(r, "no reply to %s", fmt);
    cr_assert_eq(r->type, REDIS_REPLY_ERROR, "'%s' should fail with %s", fmt, prefix);
    cr_assert(strncmp(r->str, prefix, strlen(prefix)) == 0, "'%s': got '%s', want '%s...'",
              fmt, r->str, prefix);
    freeReplyObject(r);
}

/* The reply as an entry (flat field/value array), asserted. */
static redisReply *entry_cmd(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(rc, fmt, ap);
    va_end(ap);
    cr_assert_not_null(r);
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY, "'%s' failed: %s", fmt,
                 r->type == REDIS_REPLY_ERROR ? r->str : "not an array");
    cr_assert_eq(r->elements, 30, "an entry has 15 fields");
    return r;
}

static const char *str_field(const redisReply *r, const char *name)
{
    const redisReply *f = td_field(r, name);
    cr_assert_not_null(f, "no field %s", name);
    cr_assert_eq(f->type, REDIS_REPLY_STRING, "field %s is not a string", name);
    return f->str;
}

static long long now_s(void) { return (long long)time(NULL); }

/* ---- writes and reads ----------------------------------------------------- */

Test(command, earn_redeem_balance_and_entry_carry_every_field, .init = up, .fini = down)
{
    long long exp = now_s() + 86400 * 400;
    redisReply *e = entry_cmd("EARN 1 100 500 e1 EXPIRES %lld MEMO %s", exp, "till 4, aisle 2");
    cr_assert_str_eq(str_field(e, "id"), "e1");
    cr_assert_str_eq(str_field(e, "kind"), "earn");
    cr_assert_eq(td_int_field(e, "merchant"), 1);
    cr_assert_eq(td_int_field(e, "account"), 100);
    cr_assert_eq(td_int_field(e, "points"), 500);
    cr_assert_eq(td_int_field(e, "balance"), 500);
    cr_assert_eq(td_int_field(e, "held"), 0);
    cr_assert_eq(td_int_field(e, "seq"), 1);
    cr_assert_eq(td_int_field(e, "expires"), exp);
    cr_assert_str_eq(str_field(e, "ref"), "");
    cr_assert_str_eq(str_field(e, "memo"), "till 4, aisle 2");
    long long ts = td_int_field(e, "ts");
    cr_assert(ts / 1000 >= now_s() - 60 && ts / 1000 <= now_s() + 60, "ts is engine ms now");

    redisReply *d = entry_cmd("REDEEM 1 100 120 r1");
    cr_assert_eq(td_int_field(d, "points"), -120);
    cr_assert_eq(td_int_field(d, "balance"), 380);
    cr_assert_gt(td_int_field(d, "seq"), 1);
    cr_assert_geq(td_int_field(d, "ts"), ts, "ts never goes backwards");

    redisReply *b = td_cmd(rc, "BALANCE 1 100");
    cr_assert_eq(b->elements, 16);
    cr_assert_eq(td_int_field(b, "available"), 380);
    cr_assert_eq(td_int_field(b, "held"), 0);
    cr_assert_eq(td_int_field(b, "pending"), 0);
    cr_assert_eq(td_int_field(b, "earned"), 500);
    cr_assert_eq(td_int_field(b, "redeemed"), 120);
    cr_assert_eq(td_int_field(b, "expired"), 0);
    cr_assert_eq(td_int_field(b, "next_expiry"), exp);
    cr_assert_eq(td_int_field(b, "expiring"), 380);

    redisReply *again = entry_cmd("ENTRY 1 e1");
    for (size_t i = 0; i < 30; i++) {
        cr_assert_eq(again->element[i]->type, e->element[i]->type);
        if (e->element[i]->type == REDIS_REPLY_INTEGER)
            cr_assert_eq(again->element[i]->integer, e->element[i]->integer);
        else
            cr_assert_str_eq(again->element[i]->str, e->element[i]->str);
    }
    redisReply *nil = td_cmd(rc, "ENTRY 1 no-such-id");
    cr_assert_eq(nil->type, REDIS_REPLY_NIL);
    freeReplyObject(e);
    freeReplyObject(d);
    freeReplyObject(b);
    freeReplyObject(again);
    freeReplyObject(nil);
}

Test(command, a_retry_replays_the_original_and_a_refusal_stays_refused, .init = up,
     .fini = down)
{
    redisReply *e = entry_cmd("EARN 1 7 100 x1");
    redisReply *again = entry_cmd("EARN 1 7 100 x1");
    cr_assert_eq(td_int_field(again, "seq"), td_int_field(e, "seq"));
    cr_assert_eq(td_int_field(again, "ts"), td_int_field(e, "ts"));
    expect_error("CONFLICT", "EARN 1 7 101 x1");
    expect_error("CONFLICT", "REDEEM 1 7 100 x1");
    expect_error("INSUFFICIENT", "REDEEM 1 7 1000 big");
    freeReplyObject(entry_cmd("EARN 1 7 5000 x2"));
    expect_error("INSUFFICIENT", "REDEEM 1 7 1000 big"); /* remembered */
    redisReply *ok = entry_cmd("REDEEM 1 7 1000 big2");
    cr_assert_eq(td_int_field(ok, "balance"), 4100);
    expect_error("CONFLICT", "REDEEM 1 7 999 big"); /* other request, refused id */
    redisReply *m = td_cmd(rc, "MERCHANT 1");
    cr_assert_eq(td_int_field(m, "entries"), 3, "refusals and replays are not entries");
    freeReplyObject(e);
    freeReplyObject(again);
    freeReplyObject(ok);
    freeReplyObject(m);
}

Test(command, hold_capture_void_follow_the_hold_lifecycle, .init = up, .fini = down)
{
    freeReplyObject(entry_cmd("EARN 2 7 1000 he1"));
    redisReply *h = entry_cmd("HOLD 2 7 300 h1 TIMEOUT 600 MEMO pos-9");
    cr_assert_str_eq(str_field(h, "kind"), "hold");
    cr_assert_eq(td_int_field(h, "points"), -300);
    cr_assert_eq(td_int_field(h, "balance"), 700);
    cr_assert_eq(td_int_field(h, "held"), 300);
    redisReply *b = td_cmd(rc, "BALANCE 2 7");
    cr_assert_eq(td_int_field(b, "available"), 700);
    cr_assert_eq(td_int_field(b, "held"), 300);
    redisReply *c = entry_cmd("CAPTURE 2 h1 c1 POINTS 200");
    cr_assert_str_eq(str_field(c, "kind"), "capture");
    cr_assert_str_eq(str_field(c, "ref"), "h1");
    cr_assert_eq(td_int_field(c, "account"), 7);
    cr_assert_eq(td_int_field(c, "points"), 100, "the uncaptured rest is released");
    cr_assert_eq(td_int_field(c, "balance"), 800);
    cr_assert_eq(td_int_field(c, "held"), 0);
    expect_error("INVALID", "CAPTURE 2 h1 c2");
    expect_error("INVALID", "VOID 2 h1 v1");
    freeReplyObject(entry_cmd("HOLD 2 7 100 h2"));
    expect_error("INVALID", "CAPTURE 2 h2 c3 POINTS 101");
    redisReply *v = entry_cmd("VOID 2 h2 v2");
    cr_assert_str_eq(str_field(v, "kind"), "void");
    cr_assert_eq(td_int_field(v, "points"), 100);
    cr_assert_eq(td_int_field(v, "balance"), 800);
    expect_error("NOTFOUND", "CAPTURE 2 nope c4");
    expect_error("INVALID", "CAPTURE 2 he1 c5"); /* not a hold */
    expect_error("INSUFFICIENT", "HOLD 2 7 5000 h3");
    expect_error("INVALID", "HOLD 2 7 5 h4 TIMEOUT 0");
    /* Idempotency compares the request as sent (issue 12): a capture of a
     * whole hold of 50 and one with POINTS 50 capture the same amount but
     * are different requests. */
    freeReplyObject(entry_cmd("HOLD 2 7 50 h5"));
    redisReply *whole = entry_cmd("CAPTURE 2 h5 c6");
    cr_assert_eq(td_int_field(whole, "amount"), 50);
    expect_error("CONFLICT", "CAPTURE 2 h5 c6 POINTS 50");
    redisReply *again = entry_cmd("CAPTURE 2 h5 c6");
    cr_assert_eq(td_int_field(again, "seq"), td_int_field(whole, "seq"), "the same replays");
    freeReplyObject(whole);
    freeReplyObject(again);
    redisReply *b2 = td_cmd(rc, "BALANCE 2 7");
    cr_assert_eq(td_int_field(b2, "redeemed"), 250);
    cr_assert_eq(td_int_field(b2, "held"), 0);
    freeReplyObject(h);
    freeReplyObject(b);
    freeReplyObject(c);
    freeReplyObject(v);
    freeReplyObject(b2);
}

/* The month rows of LIABILITY m as "YYYY-MM=points;..." for comparison. */
static void liability_text(int merchant, char *out, size_t cap)
{
    redisReply *l = td_cmd(rc, "LIABILITY %d", merchant);
    cr_assert_eq(l->type, REDIS_REPLY_ARRAY);
    size_t n = 0;
    out[0] = '\0';
    for (size_t i = 0; i < l->elements; i++)
        n += (size_t)snprintf(out + n, n < cap ? cap - n : 0, "%s=%lld;",
                              l->element[i]->element[0]->str,
                              l->element[i]->element[1]->integer);
    freeReplyObject(l);
}

Test(command, transfer_moves_lots_with_their_expiries_and_changes_no_total, .init = up,
     .fini = down)
{
    /* 2030-01-15 and 2030-03-01, UTC; a pending lot; a never-expiring one. */
    long long soon = 1894665600, later = 1898553600, avail = now_s() + 3600;
    freeReplyObject(entry_cmd("EARN 8 1 100 t1 EXPIRES %lld", soon));
    freeReplyObject(entry_cmd("EARN 8 1 40 t2 EXPIRES %lld", later));
    freeReplyObject(entry_cmd("EARN 8 1 25 t3"));
    freeReplyObject(entry_cmd("EARN 8 1 60 t4 AVAILABLE_AT %lld EXPIRES %lld", avail, later));
    redisReply *m0 = td_cmd(rc, "MERCHANT 8");
    char liab0[256], liab[256];
    liability_text(8, liab0, sizeof(liab0));

    /* 120 points: all of the soonest lot, then 20 of the next. */
    redisReply *x = entry_cmd("TRANSFER 8 1 2 120 gift-1 MEMO %s", "for mum");
    cr_assert_str_eq(str_field(x, "kind"), "transfer");
    cr_assert_eq(td_int_field(x, "points"), -120);
    cr_assert_eq(td_int_field(x, "amount"), 120);
    cr_assert_eq(td_int_field(x, "balance"), 45);
    cr_assert_eq(td_int_field(x, "pending"), 60);
    cr_assert_str_eq(str_field(x, "ref"), "~to:gift-1");
    redisReply *to = entry_cmd("ENTRY 8 ~to:gift-1");
    cr_assert_str_eq(str_field(to, "kind"), "transfer");
    cr_assert_eq(td_int_field(to, "account"), 2);
    cr_assert_eq(td_int_field(to, "points"), 120);
    cr_assert_eq(td_int_field(to, "balance"), 120);
    cr_assert_str_eq(str_field(to, "ref"), "gift-1");
    cr_assert_str_eq(str_field(to, "memo"), "for mum");
    cr_assert_eq(td_int_field(to, "seq"), td_int_field(x, "seq") + 1, "one batch, adjacent");
    redisReply *b2 = td_cmd(rc, "BALANCE 8 2");
    cr_assert_eq(td_int_field(b2, "available"), 120);
    cr_assert_eq(td_int_field(b2, "next_expiry"), soon, "the lots keep their expiries");
    cr_assert_eq(td_int_field(b2, "expiring"), 100);
    cr_assert_eq(td_int_field(b2, "earned"), 0, "a transfer is not an earn");
    freeReplyObject(b2);

    /* Totals do not move: outstanding, earned, redeemed, liability by month. */
    redisReply *m1 = td_cmd(rc, "MERCHANT 8");
    cr_assert_eq(td_int_field(m1, "outstanding"), td_int_field(m0, "outstanding"));
    cr_assert_eq(td_int_field(m1, "earned"), td_int_field(m0, "earned"));
    cr_assert_eq(td_int_field(m1, "redeemed"), td_int_field(m0, "redeemed"));
    cr_assert_eq(td_int_field(m1, "entries"), td_int_field(m0, "entries") + 2);
    cr_assert_eq(td_int_field(m1, "accounts"), td_int_field(m0, "accounts") + 1);
    liability_text(8, liab, sizeof(liab));
    cr_assert_str_eq(liab, liab0);

    /* A retry answers the same entry; another request under the id conflicts. */
    redisReply *again = entry_cmd("TRANSFER 8 1 2 120 gift-1 MEMO %s", "for mum");
    cr_assert_eq(td_int_field(again, "seq"), td_int_field(x, "seq"));
    cr_assert_eq(td_int_field(again, "ts"), td_int_field(x, "ts"));
    expect_error("CONFLICT", "TRANSFER 8 1 2 121 gift-1 MEMO %s", "for mum");
    /* A refusal is remembered, even once the sender could pay. */
    expect_error("INSUFFICIENT", "TRANSFER 8 1 2 500 gift-2");
    freeReplyObject(entry_cmd("EARN 8 1 1000 t5"));
    expect_error("INSUFFICIENT", "TRANSFER 8 1 2 500 gift-2");
    freeReplyObject(entry_cmd("REDEEM 8 1 1000 t6"));
    expect_error("INVALID", "TRANSFER 8 1 1 5 self");
    expect_error("INVALID", "REVERSE 8 gift-1 undo-gift-1");

    /* ALL is refused while the sender has an open hold, then moves every
     * available and pending lot. */
    freeReplyObject(entry_cmd("HOLD 8 1 10 h1"));
    expect_error("INVALID", "TRANSFER 8 1 3 ALL swap-1");
    freeReplyObject(entry_cmd("VOID 8 h1 h1-void"));
    liability_text(8, liab0, sizeof(liab0));
    redisReply *all = entry_cmd("TRANSFER 8 1 3 ALL swap-2");
    cr_assert_eq(td_int_field(all, "points"), -45);
    cr_assert_eq(td_int_field(all, "amount"), 105, "available and pending");
    cr_assert_eq(td_int_field(all, "balance"), 0);
    cr_assert_eq(td_int_field(all, "pending"), 0);
    redisReply *b1 = td_cmd(rc, "BALANCE 8 1"), *b3 = td_cmd(rc, "BALANCE 8 3");
    cr_assert_eq(td_int_field(b1, "available") + td_int_field(b1, "pending"), 0);
    cr_assert_eq(td_int_field(b3, "available"), 45);
    cr_assert_eq(td_int_field(b3, "pending"), 60, "pending lots keep AVAILABLE_AT");
    liability_text(8, liab, sizeof(liab));
    cr_assert_str_eq(liab, liab0);
    freeReplyObject(b1);
    freeReplyObject(b3);
    freeReplyObject(all);
    freeReplyObject(x);
    freeReplyObject(to);
    freeReplyObject(again);
    freeReplyObject(m0);
    freeReplyObject(m1);
}

Test(command, reverse_claws_back_earns_and_refunds_redeems_up_to_the_original, .init = up,
     .fini = down)
{
    freeReplyObject(entry_cmd("EARN 3 1 100 re1"));
    redisReply *p = entry_cmd("REVERSE 3 re1 rv1 POINTS 30");
    cr_assert_str_eq(str_field(p, "kind"), "reverse");
    cr_assert_eq(td_int_field(p, "points"), -30);
    cr_assert_eq(td_int_field(p, "balance"), 70);
    redisReply *rest = entry_cmd("REVERSE 3 re1 rv2");
    cr_assert_eq(td_int_field(rest, "points"), -70);
    expect_error("INVALID", "REVERSE 3 re1 rv3 POINTS 1");
    freeReplyObject(entry_cmd("EARN 3 1 100 re2"));
    freeReplyObject(entry_cmd("REDEEM 3 1 40 rd1"));
    redisReply *refund = entry_cmd("REVERSE 3 rd1 rv4");
    cr_assert_eq(td_int_field(refund, "points"), 40);
    cr_assert_eq(td_int_field(refund, "balance"), 100);
    /* A returned purchase after its points were spent: negative balance. */
    freeReplyObject(entry_cmd("EARN 3 2 100 cb1"));
    freeReplyObject(entry_cmd("REDEEM 3 2 100 cbr"));
    redisReply *neg = entry_cmd("REVERSE 3 cb1 cbv");
    cr_assert_eq(td_int_field(neg, "balance"), -100);
    expect_error("NOTFOUND", "REVERSE 3 nothing rv5");
    expect_error("INVALID", "REVERSE 3 rv1 rv6"); /* a reversal is not reversible */
    freeReplyObject(p);
    freeReplyObject(rest);
    freeReplyObject(refund);
    freeReplyObject(neg);
}

Test(command, adjust_may_go_below_zero_and_pending_points_are_not_spendable, .init = up,
     .fini = down)
{
    redisReply *a = entry_cmd("ADJUST 4 1 -50 a1 MEMO %s", "goodwill correction");
    cr_assert_str_eq(str_field(a, "kind"), "adjust");
    cr_assert_eq(td_int_field(a, "balance"), -50);
    redisReply *a2 = entry_cmd("ADJUST 4 1 200 a2");
    cr_assert_eq(td_int_field(a2, "balance"), 150);
    expect_error("INVALID", "ADJUST 4 1 0 a3");
    expect_error("ERR", "ADJUST 4 1 -abc a4");
    redisReply *p = entry_cmd("EARN 5 1 100 p1 AVAILABLE_AT %lld", now_s() + 3600);
    cr_assert_eq(td_int_field(p, "points"), 0, "pending: no change to available");
    redisReply *b = td_cmd(rc, "BALANCE 5 1");
    cr_assert_eq(td_int_field(b, "pending"), 100);
    cr_assert_eq(td_int_field(b, "available"), 0);
    expect_error("INSUFFICIENT", "REDEEM 5 1 10 pr1");
    freeReplyObject(a);
    freeReplyObject(a2);
    freeReplyObject(p);
    freeReplyObject(b);
}

Test(command, history_is_newest_first_with_a_cursor_and_a_bounded_limit, .init = up,
     .fini = down)
{
    long long seqs[6];
    for (int i = 0; i < 6; i++) {
        redisReply *e = entry_cmd("EARN 8 1 %d hist-%d", 10 + i, i);
        seqs[i] = td_int_field(e, "seq");
        freeReplyObject(e);
    }
    freeReplyObject(entry_cmd("EARN 8 2 5 other-account"));
    redisReply *h = td_cmd(rc, "HISTORY 8 1");
    cr_assert_eq(h->type, REDIS_REPLY_ARRAY);
    cr_assert_eq(h->elements, 6);
    for (int i = 0; i < 6; i++)
        cr_assert_eq(td_int_field(h->element[i], "seq"), seqs[5 - i]);
    redisReply *page = td_cmd(rc, "HISTORY 8 1 BEFORE %lld LIMIT 2", seqs[3]);
    cr_assert_eq(page->elements, 2);
    cr_assert_eq(td_int_field(page->element[0], "seq"), seqs[2]);
    cr_assert_eq(td_int_field(page->element[1], "seq"), seqs[1]);
    redisReply *none = td_cmd(rc, "HISTORY 8 99");
    cr_assert_eq(none->elements, 0);
    expect_error("INVALID LIMIT must be 1..1000", "HISTORY 8 1 LIMIT 0");
    expect_error("INVALID LIMIT must be 1..1000", "HISTORY 8 1 LIMIT 1001");
    expect_error("ERR value is not an integer or out of range", "HISTORY 8 1 LIMIT ten");
    expect_error("INVALID BEFORE must be 1..18446744073709551615", "HISTORY 8 1 BEFORE 0");
    redisReply *max = td_cmd(rc, "HISTORY 8 1 LIMIT 1000");
    cr_assert_eq(max->elements, 6);
    freeReplyObject(h);
    freeReplyObject(page);
    freeReplyObject(none);
    freeReplyObject(max);
}

Test(command, merchant_totals_and_liability_by_expiry_month, .init = up, .fini = down)
{
    /* 2030-01-15 and 2030-03-01, UTC. */
    freeReplyObject(entry_cmd("EARN 6 1 100 l1 EXPIRES 1894665600"));
    freeReplyObject(entry_cmd("EARN 6 2 50 l2"));
    freeReplyObject(entry_cmd("EARN 6 1 30 l3 EXPIRES 1898553600"));
    freeReplyObject(entry_cmd("REDEEM 6 1 20 l4")); /* from the soonest lot */
    redisReply *m = td_cmd(rc, "MERCHANT 6");
    cr_assert_eq(td_int_field(m, "accounts"), 2);
    cr_assert_eq(td_int_field(m, "outstanding"), 160);
    cr_assert_eq(td_int_field(m, "earned"), 180);
    cr_assert_eq(td_int_field(m, "redeemed"), 20);
    cr_assert_eq(td_int_field(m, "expired"), 0);
    cr_assert_eq(td_int_field(m, "entries"), 4);
    redisReply *l = td_cmd(rc, "LIABILITY 6");
    cr_assert_eq(l->type, REDIS_REPLY_ARRAY);
    cr_assert_eq(l->elements, 3);
    const char *months[] = {"2030-01", "2030-03", "never"};
    long long pts[] = {80, 30, 50};
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(l->element[i]->elements, 2);
        cr_assert_str_eq(l->element[i]->element[0]->str, months[i]);
        cr_assert_eq(l->element[i]->element[1]->integer, pts[i]);
    }
    redisReply *empty = td_cmd(rc, "LIABILITY 77");
    cr_assert_eq(empty->elements, 1, "never is always there");
    cr_assert_eq(empty->element[0]->element[1]->integer, 0);
    freeReplyObject(m);
    freeReplyObject(l);
    freeReplyObject(empty);
}

/* ---- refused before the ledger: -ERR / -INVALID, nothing recorded ----------- */

Test(command, malformed_requests_get_clear_errors_and_record_nothing, .init = up,
     .fini = down)
{
    expect_error("ERR unknown command 'FROB', with args beginning with: 'x' ", "FROB x");
    expect_error("ERR wrong number of arguments for 'earn' command", "EARN 1");
    expect_error("ERR wrong number of arguments for 'void' command", "VOID 1 h x extra");
    expect_error("ERR syntax error", "EARN 1 1 10 s1 COLOUR red");
    expect_error("ERR syntax error", "EARN 1 1 10 s1 MEMO");
    expect_error("ERR syntax error", "EARN 1 1 10 s1 MEMO a MEMO b");
    expect_error("ERR syntax error", "REDEEM 1 1 10 s1 EXPIRES 4000000000");
    expect_error("INVALID merchant", "EARN 0 1 10 s1");
    expect_error("ERR value is not an integer", "EARN 18446744073709551616 1 10 s1");
    expect_error("INVALID merchant must be 1..18446744073709551615", "EARN -1 1 10 s1");
    expect_error("ERR value is not an integer", "EARN 1 1 1e3 s1");
    expect_error("ERR value is not an integer", "EARN 1 1 +5 s1");
    expect_error("INVALID account", "EARN 1 0 10 s1");
    expect_error("INVALID points", "EARN 1 1 0 s1");
    expect_error("INVALID points", "EARN 1 1 1000000000000001 s1");
    expect_error("ERR value is not an integer", "EARN 1 1 99999999999999999999999 s1");
    expect_error("INVALID", "EARN 1 1 10 %s", "~engine");
    expect_error("INVALID", "EARN 1 1 10 %s", "has space");
    expect_error("INVALID", "EARN 1 1 10 %s",
                 "12345678901234567890123456789012345678901234567890123456789012345");
    char memo[200];
    memset(memo, 'm', 129);
    memo[129] = 0;
    expect_error("INVALID MEMO must be 0..128 bytes", "EARN 1 1 10 s1 MEMO %s", memo);
    expect_error("INVALID EXPIRES", "EARN 1 1 10 s1 EXPIRES 0");
    expect_error("INVALID EXPIRES", "EARN 1 1 10 s1 EXPIRES 253402300800");
    expect_error("INVALID", "CAPTURE 1 h1 s1 POINTS 0");
    redisReply *m = td_cmd(rc, "MERCHANT 1");
    cr_assert_eq(td_int_field(m, "entries"), 0, "nothing was recorded");
    freeReplyObject(m);
    /* The id is still free for a well-formed request. */
    redisReply *ok = entry_cmd("EARN 1 1 1000000000000000 s1 MEMO %s", memo + 1);
    cr_assert_eq(td_int_field(ok, "points"), 1000000000000000LL);
    freeReplyObject(ok);
    /* Leading zeros are the same merchant. */
    redisReply *b = td_cmd(rc, "BALANCE 0001 001");
    cr_assert_eq(td_int_field(b, "available"), 1000000000000000LL);
    freeReplyObject(b);
}

Test(command, an_expiry_in_the_past_is_a_ledger_refusal_and_is_remembered, .init = up,
     .fini = down)
{
    expect_error("INVALID", "EARN 1 1 10 past EXPIRES 1000");
    expect_error("INVALID", "EARN 1 1 10 past EXPIRES 1000");
    expect_error("CONFLICT", "EARN 1 1 10 past");
}

Test(command, merchants_above_int64_are_bulk_strings_in_resp2, .init = up, .fini = down)
{
    redisReply *e = entry_cmd("EARN 18446744073709551615 18446744073709551614 5 big");
    cr_assert_str_eq(str_field(e, "merchant"), "18446744073709551615");
    cr_assert_str_eq(str_field(e, "account"), "18446744073709551614");
    freeReplyObject(e);
}

/* ---- connection and admin commands ----------------------------------------- */

Test(command, connection_commands_answer_like_redis, .init = up, .fini = down)
{
    redisReply *r = td_cmd(rc, "PING");
    cr_assert_str_eq(r->str, "PONG");
    freeReplyObject(r);
    r = td_cmd(rc, "PING %s", "hello there");
    cr_assert_str_eq(r->str, "hello there");
    freeReplyObject(r);
    r = td_cmd(rc, "ECHO %s", "abc");
    cr_assert_str_eq(r->str, "abc");
    freeReplyObject(r);
    r = td_cmd(rc, "COMMAND COUNT");
    cr_assert_eq(r->type, REDIS_REPLY_INTEGER);
    cr_assert_geq(r->integer, 20);
    freeReplyObject(r);
    r = td_cmd(rc, "COMMAND INFO earn balance nosuch");
    cr_assert_eq(r->elements, 3);
    redisReply *earn = r->element[0];
    cr_assert_str_eq(earn->element[0]->str, "earn");
    cr_assert_eq(earn->element[1]->integer, -5);
    cr_assert_str_eq(earn->element[2]->element[0]->str, "write");
    cr_assert_eq(earn->element[3]->integer, 1, "first key: the merchant");
    cr_assert_eq(earn->element[4]->integer, 1);
    cr_assert_eq(earn->element[5]->integer, 1);
    cr_assert_str_eq(r->element[1]->element[2]->element[0]->str, "readonly");
    cr_assert_eq(r->element[2]->type, REDIS_REPLY_NIL);
    freeReplyObject(r);
    r = td_cmd(rc, "COMMAND");
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
    cr_assert_geq(r->elements, 20);
    freeReplyObject(r);
    r = td_cmd(rc, "COMMAND DOCS earn");
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
    cr_assert_str_eq(r->element[0]->str, "earn");
    freeReplyObject(r);
    r = td_cmd(rc, "CONFIG GET appendonly");
    cr_assert_eq(r->elements, 2);
    cr_assert_str_eq(r->element[1]->str, "yes");
    freeReplyObject(r);
    r = td_cmd(rc, "CONFIG GET nosuchparam");
    cr_assert_eq(r->elements, 0);
    freeReplyObject(r);
    r = td_cmd(rc, "CLIENT SETNAME till-4");
    cr_assert_str_eq(r->str, "OK");
    freeReplyObject(r);
    r = td_cmd(rc, "CLIENT GETNAME");
    cr_assert_str_eq(r->str, "till-4");
    freeReplyObject(r);
    r = td_cmd(rc, "SELECT 0");
    cr_assert_str_eq(r->str, "OK");
    freeReplyObject(r);
    expect_error("ERR", "SELECT 1");
    r = td_cmd(rc, "INFO");
    cr_assert_eq(r->type, REDIS_REPLY_STRING);
    cr_assert_not_null(strstr(r->str, "# Server\r\ntally_version:"));
    cr_assert_not_null(strstr(r->str, "# Clients\r\nconnected_clients:1\r\n"));
    cr_assert_not_null(strstr(r->str, "# Ledger"));
    cr_assert_not_null(strstr(r->str, "shard0:status=ok"));
    cr_assert_not_null(strstr(r->str, "flush_latency_us_avg:"));
    freeReplyObject(r);
    r = td_cmd(rc, "INFO commit");
    cr_assert_null(strstr(r->str, "# Server"));
    cr_assert_not_null(strstr(r->str, "# Commit"));
    freeReplyObject(r);
    r = td_cmd(rc, "QUIT");
    cr_assert_str_eq(r->str, "OK");
    freeReplyObject(r);
    cr_assert_null(redisCommand(rc, "PING"), "QUIT closes the connection");
}

Test(command, verify_checks_one_shard_or_all_of_them, .init = up, .fini = down)
{
    freeReplyObject(entry_cmd("EARN 11 1 10 v1"));
    redisReply *r = td_cmd(rc, "VERIFY");
    cr_assert_eq(r->type, REDIS_REPLY_STATUS, "%s", r->str);
    cr_assert_str_eq(r->str, "OK");
    freeReplyObject(r);
    r = td_cmd(rc, "VERIFY 11");
    cr_assert_str_eq(r->str, "OK");
    freeReplyObject(r);
    expect_error("ERR wrong number", "VERIFY 1 2");
}

/* ---- RESP3 -------------------------------------------------------------------- */

Test(command, hello_3_switches_to_maps_and_resp3_nulls, .init = up, .fini = down)
{
    int fd = td_raw(&srv);
    char buf[4096];
    td_sends(fd, "HELLO 3\r\n");
    td_recv_until(fd, buf, sizeof(buf), "*0\r\n", 5000); /* modules: the last field */
    cr_assert(strncmp(buf, "%7\r\n$6\r\nserver\r\n$5\r\ntally\r\n", 26) == 0, "%s", buf);
    cr_assert_not_null(strstr(buf, "$5\r\nproto\r\n:3\r\n"));
    td_sends(fd, "BALANCE 9 9\r\n");
    td_recv_until(fd, buf, sizeof(buf), "expiring\r\n:0\r\n", 5000);
    cr_assert(strncmp(buf, "%8\r\n$9\r\navailable\r\n:0\r\n$4\r\nheld\r\n:0\r\n", 37) == 0,
              "%s", buf);
    td_sends(fd, "ENTRY 9 none\r\n");
    cr_assert_eq(td_recv(fd, buf, 3, 5000), 3);
    cr_assert(memcmp(buf, "_\r\n", 3) == 0);
    td_sends(fd, "EARN 18446744073709551615 1 5 big3\r\n");
    td_recv_until(fd, buf, sizeof(buf), "imported\r\n:0\r\n", 5000);
    cr_assert(strncmp(buf, "%15\r\n", 5) == 0, "%s", buf);
    cr_assert_not_null(strstr(buf, "$8\r\nmerchant\r\n$20\r\n18446744073709551615\r\n"),
                       "a bulk string in RESP3 too (redis-cli 7.0 knows no big number): %s",
                       buf);
    td_sends(fd, "HELLO 4\r\n");
    td_recv_until(fd, buf, sizeof(buf), "\r\n", 5000);
    cr_assert(strncmp(buf, "-NOPROTO", 8) == 0, "%s", buf);
    td_sends(fd, "HELLO 2\r\nENTRY 9 none\r\n");
    td_recv_until(fd, buf, sizeof(buf), "$-1\r\n", 5000);
    cr_assert(strncmp(buf, "*14\r\n", 5) == 0, "back to RESP2: %s", buf);
    close(fd);
}

Test(command, inline_commands_work_as_telnet_sends_them, .init = up, .fini = down)
{
    int fd = td_raw(&srv);
    char buf[4096];
    td_sends(fd, "PING\r\n");
    td_recv(fd, buf, 7, 5000);
    cr_assert(memcmp(buf, "+PONG\r\n", 7) == 0);
    td_sends(fd, "EARN 12 1 10 \"quoted id\"\n");
    td_recv_until(fd, buf, sizeof(buf), "\r\n", 5000);
    cr_assert(strncmp(buf, "-INVALID", 8) == 0, "a space is not allowed in an id: %s", buf);
    td_sends(fd, "EARN 12 1 10 tel-1 MEMO \"hello world\"\r\n");
    td_recv_until(fd, buf, sizeof(buf), "memo\r\n$11\r\nhello world\r\n", 5000);
    cr_assert(strncmp(buf, "*30\r\n", 5) == 0, "%s", buf);
    close(fd);
}

/* ---- one error rule for every numeric field (docs/REFERENCE.md "Numbers") ---- */

/* A command with one numeric field: '#' stands for the token under test,
 * '@' for a fresh id.  lo and hi are the ends of the field's range (lo is
 * 1 for every field; "-hi" too for signed ones). */
typedef struct num_field {
    const char *field;
    const char *tmpl;
    const char *hi, *hi_plus_1;
    const char *invalid; /* the -INVALID message, whole */
    int is_signed;
} num_field;

/* The reply to tmpl with '#' = token, as hiredis argv (so "" and " 5"
 * arrive as they are). */
static redisReply *num_cmd(const char *tmpl, const char *token, const char *id)
{
    char copy[256];
    snprintf(copy, sizeof(copy), "%s", tmpl);
    const char *argv[16];
    int argc = 0;
    for (char *save = NULL, *w = strtok_r(copy, " ", &save); w && argc < 16;
         w = strtok_r(NULL, " ", &save))
        argv[argc++] = strcmp(w, "#") == 0 ? token : strcmp(w, "@") == 0 ? id : w;
    redisReply *r = redisCommandArgv(rc, argc, argv, NULL);
    cr_assert_not_null(r, "no reply to %s with '%s'", tmpl, token);
    return r;
}

enum { NUM_OK, NUM_ERR, NUM_INVALID };

static void num_expect(const num_field *f, const char *token, int want)
{
    static int serial;
    char id[32];
    snprintf(id, sizeof(id), "num-%d", ++serial);
    redisReply *r = num_cmd(f->tmpl, token, id);
    const char *got = r->type == REDIS_REPLY_ERROR ? r->str : "";
    if (want == NUM_ERR)
        cr_assert_str_eq(got, "ERR value is not an integer or out of range", "%s '%s'",
                         f->field, token);
    else if (want == NUM_INVALID)
        cr_assert_str_eq(got, f->invalid, "%s '%s'", f->field, token);
    else
        cr_assert(strncmp(got, "ERR", 3) != 0 && !strstr(got, " must be "),
                  "%s '%s' is in range, got '%s'", f->field, token, got);
    if (want != NUM_OK && strchr(f->tmpl, '@')) {
        /* Refused before the ledger: the id is still free. */
        redisReply *again = td_cmd(rc, "EARN 1 1 1 %s", id);
        cr_assert_eq(again->type, REDIS_REPLY_ARRAY, "%s '%s' recorded something: %s",
                     f->field, token, again->type == REDIS_REPLY_ERROR ? again->str : "");
        freeReplyObject(again);
    }
    freeReplyObject(r);
}

Test(command, every_numeric_field_follows_one_error_rule_at_both_ends_of_its_range,
     .init = up, .fini = down)
{
    freeReplyObject(entry_cmd("EARN 1 1 1000000 num-seed"));
    static const num_field fields[] = {
        {"merchant", "EARN # 1 5 @", "18446744073709551615", "18446744073709551616",
         "INVALID merchant must be 1..18446744073709551615", 0},
        {"account", "EARN 1 # 5 @", "18446744073709551615", "18446744073709551616",
         "INVALID account must be 1..18446744073709551615", 0},
        {"points", "EARN 1 1 # @", "1000000000000000", "1000000000000001",
         "INVALID points must be 1..1000000000000000", 0},
        {"signed points", "ADJUST 1 2 # @", "1000000000000000", "1000000000000001",
         "INVALID points must be -1000000000000000..-1 or 1..1000000000000000", 1},
        {"EXPIRES", "EARN 1 1 5 @ EXPIRES #", "253402300799", "253402300800",
         "INVALID EXPIRES must be 1..253402300799 (unix seconds)", 0},
        {"AVAILABLE_AT", "EARN 1 1 5 @ AVAILABLE_AT #", "253402300799", "253402300800",
         "INVALID AVAILABLE_AT must be 1..253402300799 (unix seconds)", 0},
        {"TIMEOUT", "HOLD 1 1 5 @ TIMEOUT #", "31622400", "31622401",
         "INVALID TIMEOUT must be 1..31622400 (seconds)", 0},
        {"POINTS", "CAPTURE 1 no-hold @ POINTS #", "1000000000000000", "1000000000000001",
         "INVALID POINTS must be 1..1000000000000000", 0},
        {"BEFORE", "HISTORY 1 1 BEFORE #", "18446744073709551615", "18446744073709551616",
         "INVALID BEFORE must be 1..18446744073709551615 (a seq)", 0},
        {"LIMIT", "HISTORY 1 1 LIMIT #", "1000", "1001", "INVALID LIMIT must be 1..1000", 0},
    };
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        const num_field *f = &fields[i];
        /* One past 2^64-1 is past 64 bits: not a number, as Redis says. */
        int past_hi = strcmp(f->hi_plus_1, "18446744073709551616") == 0 ? NUM_ERR : NUM_INVALID;
        /* Below -2^63 is past 64 bits too. */
        int neg_beyond = strtoull(f->hi, NULL, 10) > 9223372036854775808ull ? NUM_ERR
                                                                             : NUM_INVALID;
        char neg_hi[32], neg_past[32], zeros[40];
        snprintf(neg_hi, sizeof(neg_hi), "-%s", f->hi);
        snprintf(neg_past, sizeof(neg_past), "-%s", f->hi_plus_1);
        snprintf(zeros, sizeof(zeros), "000%s", f->hi);
        num_expect(f, "1", NUM_OK);
        num_expect(f, "0", NUM_INVALID);
        num_expect(f, f->hi, NUM_OK);
        num_expect(f, f->hi_plus_1, past_hi);
        num_expect(f, "0001", NUM_OK);
        num_expect(f, zeros, NUM_OK);
        num_expect(f, "-0", NUM_INVALID);
        num_expect(f, "-1", f->is_signed ? NUM_OK : NUM_INVALID);
        num_expect(f, neg_hi, f->is_signed ? NUM_OK : neg_beyond);
        num_expect(f, neg_past, neg_beyond);
        num_expect(f, "-9223372036854775808", NUM_INVALID);
        num_expect(f, "-9223372036854775809", NUM_ERR);
        num_expect(f, "+5", NUM_ERR);
        num_expect(f, "--5", NUM_ERR);
        num_expect(f, "-", NUM_ERR);
        num_expect(f, "", NUM_ERR);
        num_expect(f, " 5", NUM_ERR);
        num_expect(f, "5 ", NUM_ERR);
        num_expect(f, "1e3", NUM_ERR);
        num_expect(f, "0x10", NUM_ERR);
        num_expect(f, "18446744073709551616", NUM_ERR);
        num_expect(f, "99999999999999999999", NUM_ERR);
    }
}

Test(command, inputs_that_can_never_make_sense_are_invalid_and_record_nothing, .init = up,
     .fini = down)
{
    long long t1 = now_s() + 86400;
    expect_error("INVALID EXPIRES must be after AVAILABLE_AT",
                 "EARN 1 1 10 nm1 AVAILABLE_AT %lld EXPIRES %lld", t1, t1);
    expect_error("INVALID EXPIRES must be after AVAILABLE_AT",
                 "EARN 1 1 10 nm1 EXPIRES %lld AVAILABLE_AT %lld", t1 - 1, t1);
    expect_error("INVALID EXPIRES cannot be given to a negative ADJUST",
                 "ADJUST 1 1 -10 nm2 EXPIRES %lld", t1);
    redisReply *m = td_cmd(rc, "MERCHANT 1");
    cr_assert_eq(td_int_field(m, "entries"), 0, "nothing was recorded");
    freeReplyObject(m);
    /* Refused before the ledger, not remembered: the ids are free. */
    redisReply *e = entry_cmd("EARN 1 1 10 nm1 AVAILABLE_AT %lld EXPIRES %lld", t1, t1 + 1);
    cr_assert_eq(td_int_field(e, "expires"), t1 + 1);
    freeReplyObject(e);
    e = entry_cmd("ADJUST 1 1 10 nm2 EXPIRES %lld", t1);
    cr_assert_eq(td_int_field(e, "expires"), t1, "a credit ADJUST may expire");
    freeReplyObject(e);
}

Test(command, an_empty_id_a_long_id_and_a_malformed_id_get_the_same_words, .init = up,
     .fini = down)
{
    const char *want = "INVALID id must be 1..64 printable ASCII bytes (0x21..0x7e), "
                       "not starting with '~'";
    char longid[200];
    memset(longid, 'x', 150);
    longid[150] = 0;
    const char *bad[] = {"", "a b", "~mine", "tab\there", longid};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        redisReply *r = td_cmd(rc, "EARN 1 1 10 %s", bad[i]);
        cr_assert_eq(r->type, REDIS_REPLY_ERROR, "'%s' accepted", bad[i]);
        cr_assert_str_eq(r->str, want, "id '%s'", bad[i]);
        freeReplyObject(r);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        redisReply *r = td_cmd(rc, "VOID 1 %s v1", bad[i]);
        cr_assert_eq(r->type, REDIS_REPLY_ERROR);
        if (bad[i][0] == '~')
            cr_assert(strncmp(r->str, "NOTFOUND", 8) == 0, "%s", r->str);
        else
            cr_assert_str_eq(r->str, "INVALID referenced id must be 1..128 printable ASCII "
                                     "bytes (0x21..0x7e)", "ref '%s': %s", bad[i], r->str);
        freeReplyObject(r);
    }
}

Test(command, redis_compatibility_details_answer_as_redis_does, .init = up, .fini = down)
{
    redisReply *r = td_cmd(rc, "COMMAND FROB");
    cr_assert_eq(r->type, REDIS_REPLY_ERROR);
    cr_assert_not_null(strstr(r->str, "Try COMMAND HELP."), "%s", r->str);
    freeReplyObject(r);
    r = td_cmd(rc, "COMMAND HELP");
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY, "COMMAND HELP, as the error suggests");
    cr_assert_gt(r->elements, 5);
    cr_assert(strncmp(r->element[0]->str, "COMMAND <subcommand>", 20) == 0, "%s",
              r->element[0]->str);
    freeReplyObject(r);
    expect_error("ERR value is not an integer or out of range", "SELECT x");
    expect_error("ERR DB index is out of range", "SELECT 1");
    r = td_cmd(rc, "SELECT 0");
    cr_assert_str_eq(r->str, "OK");
    freeReplyObject(r);
    r = td_cmd(rc, "CLIENT SETNAME till-4");
    cr_assert_str_eq(r->str, "OK");
    freeReplyObject(r);
    const char *names[] = {"a b", "a\nb", "caf\xc3\xa9"};
    for (size_t i = 0; i < 3; i++)
        expect_error("ERR Client names cannot contain spaces, newlines or special characters.",
                     "CLIENT SETNAME %s", names[i]);
    r = td_cmd(rc, "CLIENT GETNAME");
    cr_assert_str_eq(r->str, "till-4", "a refused name changes nothing");
    freeReplyObject(r);
    expect_error("ERR Unrecognized option 'bogus'", "CLIENT SETINFO bogus 1");
    expect_error("ERR lib-name cannot contain spaces", "CLIENT SETINFO LIB-NAME %s", "a b");
    r = td_cmd(rc, "CLIENT SETINFO lib-name redis-py");
    cr_assert_str_eq(r->str, "OK");
    freeReplyObject(r);
    r = td_cmd(rc, "CLIENT SETINFO LIB-VER 4.3.4");
    cr_assert_str_eq(r->str, "OK");
    freeReplyObject(r);
    r = td_cmd(rc, "CLIENT INFO");
    cr_assert_not_null(strstr(r->str, " lib-name=redis-py lib-ver=4.3.4"), "%s", r->str);
    freeReplyObject(r);
    r = td_cmd(rc, "CONFIG GET maxclients");
    cr_assert_eq(r->elements, 2);
    cr_assert_str_eq(r->element[0]->str, "maxclients");
    cr_assert_str_eq(r->element[1]->str, "10000");
    freeReplyObject(r);
    r = td_cmd(rc, "CONFIG GET max*");
    cr_assert_eq(r->elements, 2, "glob patterns, as Redis matches them");
    freeReplyObject(r);
    int fd = td_raw(&srv);
    char buf[512];
    td_sends(fd, "HELLO 3 SETNAME \"a b\"\r\n");
    td_recv_until(fd, buf, sizeof(buf), "\r\n", 5000);
    cr_assert_str_eq(buf, "-ERR Client names cannot contain spaces, newlines or special "
                          "characters.\r\n");
    close(fd);
}

/* ---- RESP3 shapes ---------------------------------------------------------------- */

/* The RESP3 reply bytes of cmd (one line) on a HELLO 3 connection: a PING
 * sent after it marks where the reply ends. */
static void resp3_reply(const char *cmd, char *buf, size_t cap)
{
    int fd = td_raw(&srv);
    td_sends(fd, "HELLO 3\r\n");
    td_recv_until(fd, buf, cap, "*0\r\n", 5000);
    td_sends(fd, cmd);
    td_sends(fd, "\r\nPING\r\n");
    size_t n = td_recv_until(fd, buf, cap, "+PONG\r\n", 5000);
    cr_assert_gt(n, 7, "%s: no reply", cmd);
    cr_assert_str_eq(buf + n - 7, "+PONG\r\n", "%s: %s", cmd, buf);
    buf[n - 7] = 0;
    close(fd);
}

/* The RESP3 bytes of an entry map from its id to its points. */
static void resp3_entry_head(char *out, size_t cap, const char *id, const char *kind,
                             long long points)
{
    snprintf(out, cap,
             "%%15\r\n$2\r\nid\r\n$%zu\r\n%s\r\n$4\r\nkind\r\n$%zu\r\n%s\r\n"
             "$8\r\nmerchant\r\n:31\r\n$7\r\naccount\r\n:1\r\n$6\r\npoints\r\n:%lld\r\n",
             strlen(id), id, strlen(kind), kind, points);
}

Test(command, resp3_gives_history_as_an_array_of_maps_and_totals_as_maps, .init = up,
     .fini = down)
{
    freeReplyObject(entry_cmd("EARN 31 1 100 r3-1 EXPIRES 1894665600"));
    freeReplyObject(entry_cmd("REDEEM 31 1 40 r3-2"));
    char buf[8192], head[256];
    resp3_reply("HISTORY 31 1", buf, sizeof(buf));
    resp3_entry_head(head, sizeof(head), "r3-2", "redeem", -40);
    cr_assert(strncmp(buf, "*2\r\n", 4) == 0, "an array of two: %s", buf);
    cr_assert(strncmp(buf + 4, head, strlen(head)) == 0, "the newest first, a map: %s", buf);
    resp3_entry_head(head, sizeof(head), "r3-1", "earn", 100);
    const char *second = strstr(buf + 4 + strlen(head), "%15\r\n");
    cr_assert_not_null(second, "%s", buf);
    cr_assert(strncmp(second, head, strlen(head)) == 0, "the second entry is a map: %s", buf);
    cr_assert_null(strstr(buf, "\r\n_\r\n"), "no nulls");
    resp3_reply("MERCHANT 31", buf, sizeof(buf));
    cr_assert_str_eq(buf, "%6\r\n$8\r\naccounts\r\n:1\r\n$11\r\noutstanding\r\n:60\r\n"
                          "$6\r\nearned\r\n:100\r\n$8\r\nredeemed\r\n:40\r\n"
                          "$7\r\nexpired\r\n:0\r\n$7\r\nentries\r\n:2\r\n");
    resp3_reply("LIABILITY 31", buf, sizeof(buf));
    cr_assert_str_eq(buf, "*2\r\n*2\r\n$7\r\n2030-01\r\n:60\r\n*2\r\n$5\r\nnever\r\n:0\r\n",
                     "pairs in month order, then never");
    resp3_reply("HISTORY 31 99", buf, sizeof(buf));
    cr_assert_str_eq(buf, "*0\r\n");
}

/* ---- INFO values ------------------------------------------------------------------- */

/* The integer after "name:" in an INFO text, asserted present. */
static long long info_value(const char *info, const char *name)
{
    char key[64];
    snprintf(key, sizeof(key), "\r\n%s:", name);
    const char *p = strstr(info, key);
    cr_assert_not_null(p, "INFO has no %s: %s", name, info);
    return atoll(p + strlen(key));
}

Test(command, info_reports_the_values_it_counts)
{
    td t;
    td_init(&t, "cmd");
    td_start(&t, (const char *const[]){"--shards", "1", "--maxclients", "77", NULL});
    redisContext *c = td_connect(&t);
    /* Earlier connections (the start-up probe) may still be closing. */
    redisReply *r = NULL;
    for (int i = 0; i < 100; i++) {
        if (r)
            freeReplyObject(r);
        r = td_cmd(c, "INFO clients");
        if (info_value(r->str, "connected_clients") == 1)
            break;
        usleep(10000);
    }
    cr_assert_eq(info_value(r->str, "connected_clients"), 1);
    freeReplyObject(r);
    redisContext *more[3];
    for (int i = 0; i < 3; i++) {
        more[i] = td_connect(&t);
        freeReplyObject(td_cmd(more[i], "PING"));
    }
    r = td_cmd(c, "INFO clients");
    cr_assert_eq(info_value(r->str, "connected_clients"), 4, "the four connections open");
    cr_assert_eq(info_value(r->str, "maxclients"), 77);
    cr_assert_eq(info_value(r->str, "rejected_connections"), 0);
    long long commands = info_value(r->str, "total_commands_processed");
    freeReplyObject(r);
    for (int i = 0; i < 3; i++)
        redisFree(more[i]);
    for (int i = 0; i < 5; i++)
        freeReplyObject(td_cmd(c, "EARN 9 1 10 iv-%d", i));
    freeReplyObject(td_cmd(c, "REDEEM 9 1 1000 iv-refused")); /* a refusal takes a seq */
    freeReplyObject(td_cmd(c, "EARN 9 1 10 iv-0"));           /* a replay does not */
    freeReplyObject(td_cmd(c, "EARN 9 1 0 iv-bad"));          /* nor a malformed one */
    r = td_cmd(c, "INFO");
    cr_assert_eq(info_value(r->str, "total_commands_processed"), commands + 9,
                 "8 commands and this INFO");
    cr_assert_eq(info_value(r->str, "shards"), 1);
    cr_assert_eq(info_value(r->str, "tcp_port"), t.port);
    cr_assert_eq(info_value(r->str, "records"), 6, "5 entries and 1 remembered refusal");
    cr_assert_eq(info_value(r->str, "durable_records"), 6);
    cr_assert_eq(info_value(r->str, "shards_failed"), 0);
    cr_assert_not_null(strstr(r->str, "\r\nshard0:status=ok,seq=6,durable_seq=6,"), "%s",
                       r->str);
    cr_assert_not_null(strstr(r->str, "log_first_seq=1,"), "%s", r->str);
    cr_assert_geq(info_value(r->str, "batches"), 1);
    freeReplyObject(r);
    r = td_cmd(c, "SNAPSHOT");
    cr_assert_str_eq(r->str, "OK");
    freeReplyObject(r);
    r = td_cmd(c, "INFO shards");
    cr_assert_not_null(strstr(r->str, ",snapshot_seq=6,"), "%s", r->str);
    cr_assert_not_null(strstr(r->str, ",snapshots_taken=1,"), "%s", r->str);
    freeReplyObject(r);
    redisFree(c);
    td_stop(&t);
    td_cleanup(&t);
}
