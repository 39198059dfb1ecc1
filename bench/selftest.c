/*
 * selftest.c — the bench's own checks (selftest.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hist.h"
#include "selftest.h"
#include "wire.h"
#include "workload.h"

static int selftest_passed;
static int selftest_failed;

static void selftest_check(int ok, const char *what)
{
    if (ok) {
        selftest_passed++;
        return;
    }
    selftest_failed++;
    fprintf(stderr, "FAIL: %s\n", what);
}

static void selftest_hist(void)
{
    hist *h = malloc(sizeof(hist));
    if (!h)
        return;
    hist_reset(h);
    for (uint64_t v = 1; v <= 1000000; v++)
        hist_record(h, v * 1000); /* 1 us .. 1 s in ns */
    uint64_t p50 = hist_quantile(h, 0.5), p99 = hist_quantile(h, 0.99);
    selftest_check(p50 >= 500000000ull && p50 <= 500000000ull * 1001 / 1000,
                   "hist: p50 within 0.1 % above the truth");
    selftest_check(p99 >= 990000000ull && p99 <= 990000000ull * 1001 / 1000,
                   "hist: p99 within 0.1 % above the truth");
    selftest_check(hist_quantile(h, 1.0) == 1000000000ull, "hist: max is exact");
    selftest_check(h->count == 1000000, "hist: count");
    hist_reset(h);
    for (uint64_t v = 0; v < 2048; v++)
        hist_record(h, v);
    selftest_check(hist_quantile(h, 0.5) == 1023, "hist: small values are exact");
    hist_record(h, 1ull << 50);
    selftest_check(hist_quantile(h, 1.0) == 1ull << 50, "hist: huge value clamped, max kept");
    free(h);
}

static int selftest_scan(const char *reply, int want_status, int want_outcome)
{
    size_t used = 0;
    wire_reply r;
    int st = wire_scan(reply, strlen(reply), &used, &r);
    if (st != want_status)
        return 0;
    if (st != WIRE_REPLY)
        return 1;
    return used == strlen(reply) && r.outcome == want_outcome;
}

static void selftest_wire(void)
{
    selftest_check(selftest_scan("+PONG\r\n", WIRE_REPLY, WIRE_OK), "wire: simple string");
    selftest_check(selftest_scan("-INSUFFICIENT not enough\r\n", WIRE_REPLY, WIRE_REFUSED),
                   "wire: INSUFFICIENT is a refusal");
    selftest_check(selftest_scan("-ERR unknown\r\n", WIRE_REPLY, WIRE_ERROR), "wire: ERR");
    selftest_check(selftest_scan("*4\r\n$2\r\nid\r\n$1\r\nx\r\n$4\r\nkind\r\n:7\r\n", WIRE_REPLY,
                                 WIRE_OK),
                   "wire: flat array");
    selftest_check(selftest_scan("%1\r\n$2\r\nid\r\n*2\r\n_\r\n$-1\r\n", WIRE_REPLY, WIRE_OK),
                   "wire: RESP3 map with nested array and nulls");
    selftest_check(selftest_scan("*2\r\n$2\r\nid\r\n$1\r\nx", WIRE_MORE, 0), "wire: partial bulk");
    selftest_check(selftest_scan("*3\r\n:1\r\n", WIRE_MORE, 0), "wire: partial array");
    selftest_check(selftest_scan("?\r\n", WIRE_EPROTO, 0), "wire: garbage");
    const char two[] = "+A\r\n+B\r\n";
    size_t used;
    wire_reply r;
    selftest_check(wire_scan(two, sizeof(two) - 1, &used, &r) == WIRE_REPLY && used == 4,
                   "wire: one reply at a time");
    workload_op op = {.kind = WORKLOAD_OP_EARN, .merchant = 42, .account = 7, .points = 500,
                      .id_len = 3, .id = "a-1"};
    char out[WIRE_COMMAND_BYTES_MAX];
    size_t n = wire_encode(out, WIRE_TALLY, NULL, &op);
    const char want[] = "*5\r\n$4\r\nEARN\r\n$2\r\n42\r\n$1\r\n7\r\n$3\r\n500\r\n$3\r\na-1\r\n";
    selftest_check(n == sizeof(want) - 1 && memcmp(out, want, n) == 0, "wire: EARN encoding");
}

static void selftest_workload(void)
{
    workload_config cfg = {.mix = WORKLOAD_POINTS_V1, .accounts = 100000, .merchants = 100,
                           .seed = 1, .nonce = "t"};
    workload w;
    selftest_check(workload_init(&w, &cfg, 0) == 0, "workload: init");
    uint64_t earn = 0, total = 100000, bad = 0;
    for (uint64_t i = 0; i < total; i++) {
        workload_op ops[WORKLOAD_BURST_MAX];
        workload_next(&w, ops);
        if (ops[0].kind == WORKLOAD_OP_EARN) {
            earn++;
            bad += ops[0].points < 1 || ops[0].points > 500;
        } else {
            bad += ops[0].kind != WORKLOAD_OP_REDEEM || ops[0].points < 1 || ops[0].points > 200;
        }
        bad += ops[0].merchant < 1 || ops[0].merchant > 100 || ops[0].account < 1 ||
               ops[0].account > 1000;
    }
    selftest_check(bad == 0, "workload: amounts, merchants and accounts in range");
    selftest_check(earn > total * 79 / 100 && earn < total * 81 / 100, "workload: 80 % earn");
    cfg.zipf_s = 0.99;
    workload_init(&w, &cfg, 1);
    uint64_t hot = 0;
    for (uint64_t i = 0; i < total; i++) {
        workload_op ops[WORKLOAD_BURST_MAX];
        workload_next(&w, ops);
        hot += ops[0].merchant == 1 && ops[0].account == 1;
    }
    /* Rank 1 of Zipf(0.99) over 1e5 has probability ~ 1 / H(1e5, 0.99) ~ 8 %. */
    selftest_check(hot > total * 5 / 100 && hot < total * 12 / 100, "workload: Zipf hot key");
    workload_op a[WORKLOAD_BURST_MAX], b[WORKLOAD_BURST_MAX];
    workload_next(&w, a);
    workload_next(&w, b);
    selftest_check(a[0].id_len != b[0].id_len || memcmp(a[0].id, b[0].id, a[0].id_len) != 0,
                   "workload: fresh ids");
}

int selftest_run(void)
{
    selftest_hist();
    selftest_wire();
    selftest_workload();
    printf("%d passed, %d failed\n", selftest_passed, selftest_failed);
    return selftest_failed ? 1 : 0;
}
