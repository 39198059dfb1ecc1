/*
 * selftest.c — the bench's own checks (selftest.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hist.h"
#include "net.h"
#include "proc.h"
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
    op.expires = 1798761600;
    n = wire_encode(out, WIRE_TALLY, NULL, &op);
    const char want_exp[] = "*7\r\n$4\r\nEARN\r\n$2\r\n42\r\n$1\r\n7\r\n$3\r\n500\r\n"
                            "$3\r\na-1\r\n$7\r\nEXPIRES\r\n$10\r\n1798761600\r\n";
    selftest_check(n == sizeof(want_exp) - 1 && memcmp(out, want_exp, n) == 0,
                   "wire: EARN ... EXPIRES encoding");
    workload_op rev = {.kind = WORKLOAD_OP_REVERSE, .merchant = 42, .id_len = 3, .id = "r-1",
                       .ref_len = 3, .ref = "a-1"};
    n = wire_encode(out, WIRE_TALLY, NULL, &rev);
    const char want_rev[] = "*4\r\n$7\r\nREVERSE\r\n$2\r\n42\r\n$3\r\na-1\r\n$3\r\nr-1\r\n";
    selftest_check(n == sizeof(want_rev) - 1 && memcmp(out, want_rev, n) == 0,
                   "wire: REVERSE entry_id id encoding");
    wire_reply nf;
    size_t nf_used;
    selftest_check(wire_scan("-NOTFOUND no such hold\r\n", 24, &nf_used, &nf) == WIRE_REPLY &&
                       nf.outcome == WIRE_REFUSED && nf.refusal == WORKLOAD_REFUSAL_NOTFOUND,
                   "wire: NOTFOUND is a refusal, named");
    const char cfg[] = "*4\r\n$11\r\nappendfsync\r\n$6\r\nalways\r\n$3\r\ndir\r\n$5\r\n/d/x1\r\n";
    char v[16];
    selftest_check(wire_config_value(cfg, "APPENDFSYNC", v, sizeof(v)) == 0 &&
                       strcmp(v, "always") == 0 && wire_config_value(cfg, "dir", v, sizeof(v)) == 0 &&
                       strcmp(v, "/d/x1") == 0 && wire_config_value(cfg, "save", v, sizeof(v)) < 0,
                   "wire: CONFIG GET pairs read back");
    const char info[] = "$40\r\n# Server\r\nsync:always\r\nshards:2\r\n\r\n";
    selftest_check(wire_info_field(info, "shards", v, sizeof(v)) == 0 && strcmp(v, "2") == 0 &&
                       wire_info_field(info, "sync", v, sizeof(v)) == 0 &&
                       strcmp(v, "always") == 0 && wire_info_field(info, "seq", v, sizeof(v)) < 0,
                   "wire: INFO fields read back");
}

/* Open loop: what was due before the end and never sent is counted, each
 * with its wait so far as latency. */
static void selftest_open_loop(void)
{
    hist *h = malloc(sizeof(hist));
    if (!h)
        return;
    hist_reset(h);
    uint64_t n = net_unsent(h, 1000, 250, 2000, UINT64_MAX);
    /* due at 1000, 1250, 1500, 1750: waits 1000, 750, 500, 250 */
    selftest_check(n == 4 && h->count == 4, "open loop: 4 unsent operations counted");
    selftest_check(hist_quantile(h, 1.0) == 1000 && h->min == 250 && h->sum == 2500.0,
                   "open loop: latency = end - scheduled time");
    hist_reset(h);
    selftest_check(net_unsent(h, 1000, 250, 2000, 2) == 2 && hist_quantile(h, 1.0) == 1000,
                   "open loop: no more than the ops budget left");
    selftest_check(net_unsent(h, 2000, 250, 2000, UINT64_MAX) == 0,
                   "open loop: nothing due at the end is dropped");
    free(h);
}

/* Per-operation and per-entry figures from two /proc samples. */
static void selftest_figures(void)
{
    proc_sample a = {.cpu_s = 10.0, .write_bytes = 4096, .rss_anon_kib = 100,
                     .disk_bytes = -1, .records = 1000000};
    proc_sample b = {.cpu_s = 35.0, .write_bytes = 4096 + 1000000ll * 900,
                     .rss_anon_kib = 2048, .disk_bytes = 2000000ll * 250, .records = 2000000};
    proc_figures f;
    proc_figures_get(&a, &b, 1000000, &f);
    selftest_check(f.cpu_s == 25.0 && f.cpu_us_per_op == 25.0, "figures: CPU us per op");
    selftest_check(f.entries_written == 1000000 && f.write_bytes_per_entry == 900.0,
                   "figures: bytes written per entry written in the window");
    selftest_check(f.disk_bytes_per_entry == 250.0, "figures: disk bytes per entry in the ledger");
    selftest_check(f.rss_anon_bytes == 2048 * 1024, "figures: RssAnon at the end, in bytes");
    b.records = -1;
    b.write_bytes = -1;
    proc_figures_get(&a, &b, 0, &f);
    selftest_check(f.write_bytes_per_entry == -1 && f.disk_bytes_per_entry == -1 &&
                       f.cpu_us_per_op == -1 && f.entries_written == -1,
                   "figures: unknown inputs or no operations give -1, not a division");
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
    selftest_check(workload_expects(WORKLOAD_OP_REDEEM, WORKLOAD_REFUSAL_INSUFFICIENT) &&
                       !workload_expects(WORKLOAD_OP_REDEEM, WORKLOAD_REFUSAL_NOTFOUND) &&
                       !workload_expects(WORKLOAD_OP_EARN, WORKLOAD_REFUSAL_INSUFFICIENT) &&
                       workload_expects(WORKLOAD_OP_CAPTURE, WORKLOAD_REFUSAL_NOTFOUND) &&
                       !workload_expects(WORKLOAD_OP_REVERSE, WORKLOAD_REFUSAL_NOTFOUND),
                   "workload: -NOTFOUND is an error but for a CAPTURE");
}

static void selftest_random_ids(void)
{
    workload_config cfg = {.mix = WORKLOAD_POINTS_V1, .accounts = 1000, .merchants = 10,
                           .seed = 1, .nonce = "t", .ids = WORKLOAD_IDS_RANDOM};
    workload w;
    workload_init(&w, &cfg, 3);
    enum { N = 4096 };
    static char ids[N][WORKLOAD_ID_BYTES_MAX];
    uint64_t bad = 0, dup = 0, ordered = 0;
    for (int i = 0; i < N; i++) {
        workload_op op[WORKLOAD_BURST_MAX];
        workload_next(&w, op);
        bad += op[0].id_len < 7 || op[0].id_len > 19 || memcmp(op[0].id, "order-", 6) != 0;
        memcpy(ids[i], op[0].id, op[0].id_len);
        ids[i][op[0].id_len] = '\0';
        ordered += i > 0 && strcmp(ids[i - 1], ids[i]) < 0;
    }
    qsort(ids, N, WORKLOAD_ID_BYTES_MAX, (int (*)(const void *, const void *))strcmp);
    for (int i = 1; i < N; i++)
        dup += strcmp(ids[i - 1], ids[i]) == 0;
    selftest_check(bad == 0, "random ids: order-<base 36 of 64 bits>");
    selftest_check(dup == 0, "random ids: no repeats");
    selftest_check(ordered > N / 4 && ordered < 3 * N / 4, "random ids: in no order");
}

static void selftest_mix(void)
{
    workload_config cfg = {.mix = WORKLOAD_POINTS_MIX, .accounts = 1000, .merchants = 10,
                           .seed = 7, .nonce = "m", .now_s = 1000000000};
    workload w;
    workload_init(&w, &cfg, 0);
    uint64_t count[WORKLOAD_OP_COUNT] = {0}, expiring = 0, bad = 0, total = 100000;
    for (uint64_t i = 0; i < total; i++) {
        workload_op ops[WORKLOAD_BURST_MAX];
        uint32_t n = workload_next(&w, ops);
        for (uint32_t k = 0; k < n; k++) {
            count[ops[k].kind]++;
            if (ops[k].expires) {
                expiring++;
                bad += ops[k].expires < cfg.now_s + 30 * 86400ull ||
                       ops[k].expires > cfg.now_s + 365 * 86400ull;
            }
            if (ops[k].kind == WORKLOAD_OP_CAPTURE)
                bad += ops[k].ref_len != ops[k - 1].id_len ||
                       memcmp(ops[k].ref, ops[k - 1].id, ops[k].ref_len) != 0;
            workload_done(&w, &ops[k], ops[k].kind != WORKLOAD_OP_REDEEM || i % 2);
        }
    }
    selftest_check(bad == 0, "mix: expiries 30..365 days ahead, CAPTURE names its HOLD");
    selftest_check(count[WORKLOAD_OP_REVERSE] > total * 13 / 100 &&
                       count[WORKLOAD_OP_REVERSE] < total * 17 / 100,
                   "mix: 15 % REVERSE once there are entries to reverse");
    selftest_check(expiring > total * 38 / 100 && expiring < total * 42 / 100 &&
                       count[WORKLOAD_OP_HOLD] == count[WORKLOAD_OP_CAPTURE],
                   "mix: 40 % EARN with EXPIRES, HOLD/CAPTURE pairs");
    workload_init(&w, &cfg, 1);
    uint64_t reverses = 0;
    for (uint64_t i = 0; i < 1000; i++) {
        workload_op ops[WORKLOAD_BURST_MAX];
        uint32_t n = workload_next(&w, ops);
        for (uint32_t k = 0; k < n; k++)
            reverses += ops[k].kind == WORKLOAD_OP_REVERSE;
    }
    selftest_check(reverses == 0, "mix: no REVERSE without a succeeded entry to reverse");
}

static void selftest_transfer(void)
{
    workload_config cfg = {.mix = WORKLOAD_POINTS_TRANSFER, .accounts = 1000, .merchants = 10,
                           .seed = 9, .nonce = "t"};
    workload w;
    workload_init(&w, &cfg, 0);
    uint64_t count[WORKLOAD_OP_COUNT] = {0}, bad = 0, total = 100000;
    char buf[WIRE_COMMAND_BYTES_MAX];
    for (uint64_t i = 0; i < total; i++) {
        workload_op ops[WORKLOAD_BURST_MAX];
        uint32_t n = workload_next(&w, ops);
        for (uint32_t k = 0; k < n; k++) {
            count[ops[k].kind]++;
            const workload_op *op = &ops[k];
            if (op->kind == WORKLOAD_OP_TRANSFER)
                bad += op->account2 == op->account || op->account2 < 1 || op->account2 > 100 ||
                       op->points < 1 || op->points > 200;
            else
                bad += op->account2 != 0;
        }
    }
    selftest_check(bad == 0, "transfer: to another account of the merchant, 1..200 points");
    selftest_check(count[WORKLOAD_OP_TRANSFER] > total * 18 / 100 &&
                       count[WORKLOAD_OP_TRANSFER] < total * 22 / 100 &&
                       count[WORKLOAD_OP_EARN] > total * 58 / 100,
                   "transfer: 60 % EARN, 20 % REDEEM, 20 % TRANSFER");
    workload_op t = {.kind = WORKLOAD_OP_TRANSFER, .merchant = 4, .account = 7, .account2 = 9,
                     .points = 12, .id_len = 2, .id = "t1"};
    size_t n = wire_encode(buf, WIRE_TALLY, NULL, &t);
    static const char want[] = "*6\r\n$8\r\nTRANSFER\r\n$1\r\n4\r\n$1\r\n7\r\n$1\r\n9\r\n"
                               "$2\r\n12\r\n$2\r\nt1\r\n";
    selftest_check(n == sizeof(want) - 1 && memcmp(buf, want, n) == 0,
                   "transfer: TRANSFER m from to points id on the wire");
}

int selftest_run(void)
{
    selftest_hist();
    selftest_wire();
    selftest_transfer();
    selftest_workload();
    selftest_random_ids();
    selftest_mix();
    selftest_open_loop();
    selftest_figures();
    printf("%d passed, %d failed\n", selftest_passed, selftest_failed);
    return selftest_failed ? 1 : 0;
}
