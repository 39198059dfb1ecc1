/*
 * metrics_test.c — tallyd --metrics against a real server (engine/metrics.c
 * through engine/server.c): scraped with curl while load runs, every
 * scrape checked by Prometheus' own `promtool check metrics`; counters
 * that move by exactly the requests sent; histograms that are cumulative
 * with a count equal to their counter; INFO and /metrics agreeing; shard
 * status flipping when a shard is corrupt or fails; bad HTTP answered and
 * harmless; the endpoint off without the option, and refused on a
 * non-loopback address without an auth file.
 *
 * No timing assertions: latencies are only checked to be counted.
 */
#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fault_util.h"
#include "limits.h"
#include "tallyd_util.h"

/* ---- a server with --metrics ------------------------------------------------ */

typedef struct mx_server {
    td t;
    uint16_t port; /* the metrics endpoint */
    char port_arg[16];
} mx_server;

/* Starts tallyd with --metrics on a free port and the extra arguments. */
static void mx_start(mx_server *m, const char *tag, const char *const *extra)
{
    if (!m->t.dir[0])
        td_init(&m->t, tag);
    m->port = td_free_port();
    snprintf(m->port_arg, sizeof(m->port_arg), "%u", m->port);
    const char *args[24] = {"--metrics", m->port_arg};
    int n = 2;
    for (int i = 0; extra && extra[i] && n < 23; i++)
        args[n++] = extra[i];
    args[n] = NULL;
    td_start(&m->t, args);
}

/* ---- scraping -------------------------------------------------------------------- */

static void mx_need_tools(void)
{
    char out[512];
    if (td_run("command -v curl && command -v promtool", out, sizeof(out)) != 0)
        td_cannot_run("curl and promtool (Debian: curl prometheus) are needed: make test "
                      "installs them as root");
}

/* GET /metrics with curl (extra: more curl arguments, "" for none) into a
 * malloc'd NUL-terminated body; returns the HTTP status. */
static int mx_curl(const mx_server *m, const char *extra, char **body)
{
    char file[128], cmd[1024], out[256];
    snprintf(file, sizeof(file), "%s.scrape", m->t.log); /* beside the log: off the data's disk */
    snprintf(cmd, sizeof(cmd),
             "curl -s -S --max-time 20 -o '%s' -w '%%{http_code}' %s "
             "http://127.0.0.1:%u/metrics",
             file, extra, m->port);
    int rc = td_run(cmd, out, sizeof(out));
    cr_assert_eq(rc, 0, "%s: %s", cmd, out);
    size_t len = 0;
    *body = fu_read_file(file, &len);
    cr_assert_not_null(*body);
    unlink(file);
    return atoi(out);
}

/* A scrape that promtool accepts, as a malloc'd string. */
static char *mx_scrape(const mx_server *m)
{
    char *body;
    cr_assert_eq(mx_curl(m, "", &body), 200);
    char file[128], cmd[256], out[4096];
    snprintf(file, sizeof(file), "%s.check", m->t.log);
    FILE *f = fopen(file, "w");
    cr_assert_not_null(f);
    fputs(body, f);
    fclose(f);
    snprintf(cmd, sizeof(cmd), "promtool check metrics < '%s'", file);
    int rc = td_run(cmd, out, sizeof(out));
    unlink(file);
    cr_assert_eq(rc, 0, "promtool check metrics: %s", out);
    cr_assert_str_empty(out, "promtool has remarks: %s", out);
    return body;
}

/* The value of one series (name with its labels, as written), or -1 if
 * the scrape has no such series. */
static double mx_value(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (strncmp(p, series, n) == 0 && p[n] == ' ')
            return strtod(p + n + 1, NULL);
    return -1;
}

static double mx_requests(const char *text, const char *command, const char *result)
{
    char series[160];
    snprintf(series, sizeof(series), "tally_requests_total{command=\"%s\",result=\"%s\"}",
             command, result);
    double v = mx_value(text, series);
    return v < 0 ? 0 : v; /* a command not called yet has no series */
}

static double mx_sum_series(const char *text, const char *prefix)
{
    double sum = 0;
    size_t n = strlen(prefix);
    for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (strncmp(p, prefix, n) == 0) {
            const char *sp = strchr(p, ' ');
            cr_assert_not_null(sp);
            sum += strtod(sp + 1, NULL);
        }
    return sum;
}

/* Checks one histogram (name, and labels inside the braces or ""): its
 * buckets never decrease, the last is +Inf and equals _count; returns
 * _count. */
static double mx_histogram(const char *text, const char *name, const char *labels)
{
    char prefix[200], series[200];
    snprintf(prefix, sizeof(prefix), "%s_bucket{%s%sle=\"", name, labels, labels[0] ? "," : "");
    size_t n = strlen(prefix);
    double last = -1;
    int buckets = 0;
    bool inf = false;
    for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
        if (strncmp(p, prefix, n) != 0)
            continue;
        cr_assert(!inf, "%s: a bucket after +Inf", prefix);
        double v = strtod(strchr(p, ' ') + 1, NULL);
        cr_assert_geq(v, last, "%s: buckets are cumulative", prefix);
        last = v;
        buckets++;
        inf = strncmp(p + n, "+Inf\"", 5) == 0;
    }
    cr_assert_gt(buckets, 1, "%s: no buckets", prefix);
    cr_assert(inf, "%s: the last bucket is +Inf", prefix);
    snprintf(series, sizeof(series), "%s_count%s%s%s", name, labels[0] ? "{" : "", labels,
             labels[0] ? "}" : "");
    cr_assert_eq(mx_value(text, series), last, "%s equals its +Inf bucket", series);
    snprintf(series, sizeof(series), "%s_sum%s%s%s", name, labels[0] ? "{" : "", labels,
             labels[0] ? "}" : "");
    cr_assert_geq(mx_value(text, series), 0, "%s", series);
    return last;
}

/* Every result of a command, added up: what its latency histogram counts. */
static double mx_command_total(const char *text, const char *command)
{
    char prefix[96];
    snprintf(prefix, sizeof(prefix), "tally_requests_total{command=\"%s\",", command);
    return mx_sum_series(text, prefix);
}

static long long mx_info(redisContext *c, const char *section, const char *field)
{
    redisReply *r = td_cmd(c, "INFO %s", section);
    char key[96];
    snprintf(key, sizeof(key), "\r\n%s:", field);
    const char *p = strstr(r->str, key);
    cr_assert_not_null(p, "INFO has no %s: %s", field, r->str);
    long long v = atoll(p + strlen(key));
    freeReplyObject(r);
    return v;
}

/* ---- load ------------------------------------------------------------------------ */

typedef struct mx_load {
    const td *t;
    atomic_bool stop;
    atomic_long acked;
    pthread_t thread;
} mx_load;

/* Pipelined EARNs (64 at a time, merchants 1000..1063) until stopped. */
static void *mx_load_main(void *arg)
{
    mx_load *l = arg;
    redisContext *c = redisConnect("127.0.0.1", l->t->port);
    if (!c || c->err)
        return NULL;
    for (long round = 0; !atomic_load(&l->stop); round++) {
        for (int i = 0; i < 64; i++)
            redisAppendCommand(c, "EARN %d 1 5 load-%ld-%d", 1000 + i, round, i);
        for (int i = 0; i < 64; i++) {
            redisReply *r = NULL;
            if (redisGetReply(c, (void **)&r) != REDIS_OK || !r) {
                redisFree(c);
                return NULL;
            }
            if (r->type == REDIS_REPLY_ARRAY)
                atomic_fetch_add(&l->acked, 1);
            freeReplyObject(r);
        }
    }
    redisFree(c);
    return NULL;
}

/* ---- counters ---------------------------------------------------------------------- */

Test(metrics, scrapes_under_load_pass_promtool_and_counters_move_by_exactly_the_requests_sent,
     .timeout = 180)
{
    mx_need_tools();
    mx_server m = {0};
    mx_start(&m, "mx", (const char *const[]){"--shards", "2", NULL});
    redisContext *c = td_connect(&m.t);

    /* Scrapes while a client writes as fast as it can: each one well
     * formed, counters never going back. */
    mx_load load = {.t = &m.t};
    cr_assert_eq(pthread_create(&load.thread, NULL, mx_load_main, &load), 0);
    double earned_before = 0;
    for (int i = 0; i < 6; i++) {
        char *s = mx_scrape(&m);
        double earned = mx_requests(s, "earn", "ok");
        cr_assert_geq(earned, earned_before, "a counter never goes back");
        earned_before = earned;
        cr_assert_geq(mx_value(s, "tally_connections"), 1);
        cr_assert_gt(mx_value(s, "tally_process_resident_memory_bytes"), 0);
        cr_assert_gt(mx_value(s, "tally_process_anonymous_memory_bytes"), 0);
        free(s);
        usleep(150000);
    }
    atomic_store(&load.stop, true);
    pthread_join(load.thread, NULL);
    long acked = atomic_load(&load.acked);
    cr_assert_gt(acked, 0, "the load ran");
    cr_log_info("metrics: %ld EARNs acknowledged during the scrapes", acked);

    char *before = mx_scrape(&m);
    cr_assert_eq(mx_requests(before, "earn", "ok"), (double)acked,
                 "every EARN the load got an entry for, no more");
    /* N earns, M redeems refused as INSUFFICIENT (remembered refusals),
     * and requests refused before the ledger: -INVALID, -ERR, unknown. */
    enum { N = 37, M = 13 };
    for (int i = 0; i < N; i++) {
        redisReply *r = td_cmd(c, "EARN 7 %d 10 mx-earn-%d", 1 + i % 5, i);
        cr_assert_eq(r->type, REDIS_REPLY_ARRAY, "%s", r->type == REDIS_REPLY_ERROR ? r->str : "");
        freeReplyObject(r);
    }
    for (int i = 0; i < M; i++)
        freeReplyObject(td_cmd(c, "REDEEM 7 99 1000 mx-redeem-%d", i));
    freeReplyObject(td_cmd(c, "EARN 7 1 0 mx-zero"));    /* -INVALID, checked at dispatch */
    freeReplyObject(td_cmd(c, "EARN 7 1 abc mx-abc"));   /* -ERR */
    freeReplyObject(td_cmd(c, "EARN 7 1 10 mx-earn-0")); /* a replay: ok, no new record */
    freeReplyObject(td_cmd(c, "NOSUCH 1 2"));             /* command="unknown" */
    char *after = mx_scrape(&m);
    cr_assert_eq(mx_requests(after, "earn", "ok") - mx_requests(before, "earn", "ok"), N + 1,
                 "%.0f then %.0f", mx_requests(before, "earn", "ok"),
                 mx_requests(after, "earn", "ok"));
    cr_assert_eq(mx_requests(after, "redeem", "insufficient") -
                     mx_requests(before, "redeem", "insufficient"), M);
    cr_assert_eq(mx_requests(after, "redeem", "ok"), 0);
    cr_assert_eq(mx_requests(after, "earn", "invalid") - mx_requests(before, "earn", "invalid"),
                 1);
    cr_assert_eq(mx_requests(after, "earn", "error") - mx_requests(before, "earn", "error"), 1);
    cr_assert_eq(mx_requests(after, "unknown", "error"), 1, "a word not in the table");
    cr_assert_null(strstr(after, "nosuch"), "a client's word never becomes a label");
    cr_assert_eq(mx_requests(after, "earn", "failed"), 0);

    /* Histograms: cumulative, +Inf = _count = the command's counters. */
    const char *commands[] = {"earn", "redeem", "unknown"};
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        char labels[64];
        snprintf(labels, sizeof(labels), "command=\"%s\"", commands[i]);
        double count = mx_histogram(after, "tally_request_duration_seconds", labels);
        cr_assert_eq(count, mx_command_total(after, commands[i]), "%s", commands[i]);
    }
    double batches = mx_histogram(after, "tally_flush_duration_seconds", "");
    cr_assert_eq(mx_histogram(after, "tally_batch_records", ""), batches, "one of each a flush");
    cr_assert_eq(mx_value(after, "tally_batch_records_sum"),
                 mx_sum_series(after, "tally_records_written_total{"),
                 "every record written was in a flushed batch");
    mx_histogram(after, "tally_checkpoint_duration_seconds", "");
    free(before);
    free(after);

    /* INFO reads the same counters (nothing else runs now). */
    long long batches_info = mx_info(c, "commit", "batches");
    long long records_info = mx_info(c, "ledger", "records_since_start");
    long long accepted_info = mx_info(c, "clients", "total_connections_received");
    char *s = mx_scrape(&m);
    cr_assert_eq(mx_value(s, "tally_flush_duration_seconds_count"), (double)batches_info);
    cr_assert_eq(mx_sum_series(s, "tally_records_written_total{"), (double)records_info);
    cr_assert_eq(mx_value(s, "tally_connections_accepted_total"), (double)accepted_info);
    cr_assert_eq(mx_value(s, "tally_replication_lag_records{shard=\"0\"}"), 0);
    cr_assert_eq(mx_value(s, "tally_shard_status{shard=\"0\"}"), 0);
    cr_assert_eq(mx_value(s, "tally_shard_status{shard=\"1\"}"), 0);
    cr_assert_gt(mx_value(s, "tally_state_bytes{shard=\"0\"}"), 0);
    cr_assert_gt(mx_value(s, "tally_log_bytes{shard=\"0\"}"), 0);
    /* The state's memory, by part: the layers hold the writes above, the
     * memtables their ids; filters exist once a checkpoint wrote a run. */
    for (int shard = 0; shard < 2; shard++) {
        static const char *const parts[] = {"layers", "id_memtables", "id_filters"};
        for (int p = 0; p < 3; p++) {
            char series[96];
            snprintf(series, sizeof(series), "tally_state_memory_bytes{shard=\"%d\",part=\"%s\"}",
                     shard, parts[p]);
            double v = mx_value(s, series);
            if (p < 2)
                cr_assert_gt(v, 0, "%s", series);
            else
                cr_assert_geq(v, 0, "%s", series);
        }
    }
    cr_assert_lt(mx_value(s, "tally_snapshot_age_seconds{shard=\"0\"}"), 0,
                 "no snapshot yet: no age");
    cr_assert_null(strstr(s, "merchant="), "no merchant label, ever");
    cr_assert_null(strstr(s, "account="), "no account label, ever");
    free(s);

    /* A snapshot and a checkpoint show up. */
    freeReplyObject(td_cmd(c, "SNAPSHOT"));
    s = mx_scrape(&m);
    for (int shard = 0; shard < 2; shard++) {
        char series[96];
        snprintf(series, sizeof(series), "tally_snapshot_age_seconds{shard=\"%d\"}", shard);
        cr_assert_geq(mx_value(s, series), 0, "%s", series);
        snprintf(series, sizeof(series), "tally_snapshots_total{shard=\"%d\"}", shard);
        cr_assert_eq(mx_value(s, series), 1, "%s", series);
        snprintf(series, sizeof(series), "tally_checkpoint_bytes_total{shard=\"%d\"}", shard);
        cr_assert_gt(mx_value(s, series), 0, "a snapshot follows a checkpoint: %s", series);
        snprintf(series, sizeof(series),
                 "tally_state_memory_bytes{shard=\"%d\",part=\"id_filters\"}", shard);
        cr_assert_gt(mx_value(s, series), 0, "the checkpoint's id run has its filter: %s",
                     series);
    }
    free(s);
    redisFree(c);
    td_stop(&m.t);
    td_cleanup(&m.t);
}

/* ---- shard status -------------------------------------------------------------------- */

static void mx_flip_byte(const char *path, long off)
{
    FILE *f = fopen(path, "r+b");
    cr_assert_not_null(f, "%s", path);
    fseek(f, off, SEEK_SET);
    int b = fgetc(f);
    fseek(f, off, SEEK_SET);
    fputc(b ^ 1, f);
    fclose(f);
}

Test(metrics, shard_status_says_corrupt_and_its_requests_count_as_failed, .timeout = 120)
{
    mx_need_tools();
    mx_server m = {0};
    const char *const args[] = {"--shards", "2", NULL};
    mx_start(&m, "mx", args);
    redisContext *c = td_connect(&m.t);
    for (int i = 1; i <= 20; i++)
        freeReplyObject(td_cmd(c, "EARN %d 1 10 before-%d", i, i));
    redisFree(c);
    td_stop(&m.t);
    /* A flipped bit in shard 0's segment header: that shard is refused. */
    char seg[160];
    snprintf(seg, sizeof(seg), "%s/shard-000/log-0000000001.seg", m.t.dir);
    mx_flip_byte(seg, 20);
    mx_start(&m, "mx", args);
    c = td_connect(&m.t);
    int refused = 0;
    for (int i = 1; i <= 20; i++) {
        redisReply *r = td_cmd(c, "EARN %d 1 10 after-%d", i, i);
        refused += r->type == REDIS_REPLY_ERROR;
        freeReplyObject(r);
    }
    cr_assert(refused > 0 && refused < 20, "merchants of both shards (%d refused)", refused);
    char *s = mx_scrape(&m);
    cr_assert_eq(mx_value(s, "tally_shard_status{shard=\"0\"}"), 2, "corrupt");
    cr_assert_eq(mx_value(s, "tally_shard_status{shard=\"1\"}"), 0, "ok");
    cr_assert_eq(mx_requests(s, "earn", "failed"), refused);
    cr_assert_eq(mx_requests(s, "earn", "ok"), 20 - refused);
    free(s);
    redisFree(c);
    td_stop(&m.t);
    td_cleanup(&m.t);
}

/* An I/O error (the filesystem shut down under tallyd) fails the shard
 * that writes next: status 1. */
Test(metrics, shard_status_says_failed_after_an_io_error, .timeout = 180, .fini = fu_cleanup)
{
    fu_require_root();
    mx_need_tools();
    static fu_fs fs;
    static mx_server m;
    memset(&m, 0, sizeof(m));
    fu_fs_ext4(&fs, "mxeio", 128, 0);
    char dir[128], log[128];
    snprintf(dir, sizeof(dir), "%s/data", fs.mnt);
    snprintf(log, sizeof(log), "%s/tallyd.log", fs.base);
    fu_td_at(&m.t, dir, log);
    mx_start(&m, "mx", (const char *const[]){"--shards", "1", NULL});
    redisContext *c = td_connect(&m.t);
    freeReplyObject(td_cmd(c, "EARN 1 1 10 before"));
    fu_fs_shutdown(&fs);
    redisReply *r = td_cmd(c, "EARN 1 1 10 after");
    cr_assert_eq(r->type, REDIS_REPLY_ERROR, "a write on a shut-down filesystem fails");
    freeReplyObject(r);
    char *s = mx_scrape(&m);
    cr_assert_eq(mx_value(s, "tally_shard_status{shard=\"0\"}"), 1, "failed");
    cr_assert_eq(mx_requests(s, "earn", "failed"), 1);
    cr_assert_eq(mx_requests(s, "earn", "ok"), 1);
    free(s);
    redisFree(c);
    fu_stop_any(&m.t, 30000);
}

/* ---- bad HTTP ----------------------------------------------------------------------------- */

static int mx_connect(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    struct timeval tv = {.tv_sec = 20};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    return fd;
}

/* Reads one response (head, then Content-Length bytes of body unless it
 * answers a HEAD) into buf; returns its status. */
static int mx_response_to(int fd, char *buf, size_t cap, bool head_request)
{
    size_t n = td_recv_until(fd, buf, cap - 1, "\r\n\r\n", 20000);
    buf[n] = 0;
    char *end = strstr(buf, "\r\n\r\n");
    cr_assert_not_null(end, "a whole response head: '%s'", buf);
    const char *cl = strstr(buf, "Content-Length: ");
    cr_assert(cl && cl < end, "a Content-Length: '%s'", buf);
    size_t head = (size_t)(end + 4 - buf), body = head_request ? 0 : (size_t)atol(cl + 16);
    cr_assert_lt(head + body, cap);
    if (n < head + body)
        n += td_recv(fd, buf + n, head + body - n, 20000);
    cr_assert_eq(n, head + body, "the whole body");
    buf[n] = 0;
    cr_assert(strncmp(buf, "HTTP/1.1 ", 9) == 0, "'%s'", buf);
    return atoi(buf + 9);
}

static int mx_response(int fd, char *buf, size_t cap) { return mx_response_to(fd, buf, cap, false); }

/* One request on a new connection: its status, and whether the server
 * closed the connection after it. */
static int mx_request_once(uint16_t port, const char *req, size_t len, bool *closed)
{
    static char buf[1 << 17];
    int fd = mx_connect(port);
    td_send(fd, req, len);
    int status = mx_response_to(fd, buf, sizeof(buf), strncmp(req, "HEAD ", 5) == 0);
    *closed = td_closed(fd, 500);
    close(fd);
    return status;
}

Test(metrics, bad_http_is_answered_and_harms_neither_scrapes_nor_resp_clients, .timeout = 180)
{
    mx_need_tools();
    mx_server m = {0};
    mx_start(&m, "mx", (const char *const[]){"--shards", "1", NULL});
    static char buf[1 << 17];
    bool closed;
    static const struct {
        const char *req;
        int status;
        bool closes;
    } cases[] = {
        {"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", 404, false},
        {"GET / HTTP/1.1\r\n\r\n", 404, false},
        {"DELETE /metrics HTTP/1.1\r\n\r\n", 405, false},
        {"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 405, true},
        {"GET /metrics HTTP/1.0\r\n\r\n", 200, true},
        {"GET /metrics?x=1 HTTP/1.1\r\nConnection: close\r\n\r\n", 200, true},
        {"HEAD /metrics HTTP/1.1\r\n\r\n", 200, false},
        {"\x01\x02 hello\r\n\r\n", 400, true},
        {"PING\r\n\r\n", 400, true},
        {"GET /metrics HTTP/2.0\r\n\r\n", 505, true},
        {"GET metrics HTTP/1.1\r\n\r\n", 400, true},
        {"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n", 400, true},
        {"GET /metrics HTTP/1.1\r\n folded: line\r\n\r\n", 400, true},
        {"GET /metrics HTTP/1.1\r\nX: a\x01z\r\n\r\n", 400, true},
        {"GET /metrics HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400, true},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int status = mx_request_once(m.port, cases[i].req, strlen(cases[i].req), &closed);
        cr_assert_eq(status, cases[i].status, "case %zu: %s", i, cases[i].req);
        cr_assert_eq(closed, cases[i].closes, "case %zu closes: %s", i, cases[i].req);
    }
    /* A head larger than the limit: 431, closed. */
    size_t big = 9000;
    char *huge = malloc(big + 64);
    int n = snprintf(huge, 64, "GET /metrics HTTP/1.1\r\nX-Big: ");
    memset(huge + n, 'a', big);
    memcpy(huge + n + big, "\r\n\r\n", 4);
    cr_assert_eq(mx_request_once(m.port, huge, (size_t)n + big + 4, &closed), 431);
    cr_assert(closed);
    free(huge);
    /* Keep-alive: pipelined requests on one connection, each answered. */
    int fd = mx_connect(m.port);
    td_sends(fd, "GET /metrics HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\n\r\n"
                 "GET /metrics HTTP/1.1\r\n\r\n");
    cr_assert_eq(mx_response(fd, buf, sizeof(buf)), 200);
    cr_assert_not_null(strstr(buf, "# TYPE tally_requests_total counter"));
    cr_assert_eq(mx_response(fd, buf, sizeof(buf)), 404);
    cr_assert_eq(mx_response(fd, buf, sizeof(buf)), 200);
    close(fd);

    /* Every HTTP connection taken: the next gets 503; RESP still serves. */
    usleep(200000); /* the connections above are closed on the server's side */
    int held[LIMIT_HTTP_CONNECTIONS_MAX];
    for (int i = 0; i < LIMIT_HTTP_CONNECTIONS_MAX; i++)
        held[i] = mx_connect(m.port);
    usleep(200000);
    fd = mx_connect(m.port);
    cr_assert_eq(mx_response(fd, buf, sizeof(buf)), 503);
    cr_assert(td_closed(fd, 2000));
    close(fd);
    redisContext *c = td_connect(&m.t);
    redisReply *r = td_cmd(c, "PING");
    cr_assert_str_eq(r->str, "PONG");
    freeReplyObject(r);
    for (int i = 0; i < LIMIT_HTTP_CONNECTIONS_MAX; i++)
        close(held[i]);
    usleep(200000);

    /* A scraper too slow to send its request is cut off; others scrape. */
    int slow = mx_connect(m.port);
    td_sends(slow, "GET /metr");
    int idle = mx_connect(m.port);
    char *s = mx_scrape(&m);
    free(s);
    cr_assert(td_closed(slow, LIMIT_HTTP_RECV_MS + 5000), "a half-sent request is cut off");
    cr_assert(td_closed(idle, 5000), "so is an idle connection");
    close(slow);
    close(idle);

    /* Nothing was harmed: RESP answers, a scrape is well formed and no
     * HTTP request counted as a command. */
    r = td_cmd(c, "EARN 1 1 10 after-http");
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
    freeReplyObject(r);
    s = mx_scrape(&m);
    cr_assert_eq(mx_requests(s, "earn", "ok"), 1);
    cr_assert_eq(mx_value(s, "tally_protocol_errors_total"), 0);
    free(s);
    redisFree(c);
    td_stop(&m.t);
    td_cleanup(&m.t);
}

/* ---- options ------------------------------------------------------------------------------ */

/* Listening TCP sockets of a process: its socket inodes that
 * /proc/net/tcp{,6} lists in state LISTEN (0A). */
static int mx_listeners(pid_t pid)
{
    char path[64], link[64];
    snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    cr_assert_not_null(d);
    unsigned long inodes[4096];
    int count = 0, listening = 0;
    for (struct dirent *e; (e = readdir(d)) && count < 4096;) {
        char fdpath[400];
        snprintf(fdpath, sizeof(fdpath), "%s/%s", path, e->d_name);
        ssize_t n = readlink(fdpath, link, sizeof(link) - 1);
        if (n > 0) {
            link[n] = 0;
            if (sscanf(link, "socket:[%lu]", &inodes[count]) == 1)
                count++;
        }
    }
    closedir(d);
    const char *tables[] = {"/proc/net/tcp", "/proc/net/tcp6"};
    for (int t = 0; t < 2; t++) {
        FILE *f = fopen(tables[t], "r");
        if (!f)
            continue;
        char line[512];
        while (fgets(line, sizeof(line), f)) {
            char state[8];
            unsigned long inode;
            if (sscanf(line, " %*s %*s %*s %7s %*s %*s %*s %*s %*s %lu", state, &inode) != 2 ||
                strcmp(state, "0A") != 0)
                continue;
            for (int i = 0; i < count; i++)
                listening += inodes[i] == inode;
        }
        fclose(f);
    }
    return listening;
}

/* tallyd's log as one string (malloc'd). */
static char *mx_log(const td *t)
{
    size_t len;
    char *log = fu_read_file(t->log, &len);
    cr_assert_not_null(log, "%s", t->log);
    return log;
}

Test(metrics, the_endpoint_is_off_without_the_option_and_its_address_follows_binds_rule)
{
    td t;
    td_init(&t, "mx");
    td_start(&t, NULL);
    cr_assert_eq(mx_listeners(t.pid), 1, "only the RESP port without --metrics");
    td_stop(&t);
    mx_server m = {.t = t};
    mx_start(&m, "mx", NULL);
    cr_assert_eq(mx_listeners(m.t.pid), 2, "the RESP port and /metrics");
    td_stop(&m.t);
    t = m.t;

    /* A non-loopback address without an auth file is refused, before the
     * data directory is opened; so are malformed addresses. */
    unlink(t.log);
    cr_assert_eq(td_start_expect_exit(&t, (const char *const[]){"--metrics", "0.0.0.0:9", NULL}),
                 2);
    char *log = mx_log(&t);
    cr_assert_not_null(strstr(log, "refusing to serve /metrics on 0.0.0.0 without --auth-file"),
                       "%s", log);
    free(log);
    const char *bad[] = {"abc", "0", "70000", "::1:9100", ":9100", "127.0.0.1:", NULL};
    for (int i = 0; bad[i]; i++) {
        unlink(t.log);
        cr_assert_eq(td_start_expect_exit(&t, (const char *const[]){"--metrics", bad[i], NULL}),
                     2, "--metrics %s", bad[i]);
        log = mx_log(&t);
        cr_assert_not_null(strstr(log, "--metrics"), "%s: %s", bad[i], log);
        free(log);
    }
    /* Its port taken (by the RESP listener itself): refused, naming it. */
    unlink(t.log);
    char same[32];
    snprintf(same, sizeof(same), "127.0.0.1:%u", td_free_port());
    cr_assert_eq(td_start_expect_exit(&t, (const char *const[]){"--metrics", same, "--port",
                                                                 same + 10, NULL}),
                 1);
    log = mx_log(&t);
    cr_assert_not_null(strstr(log, "--metrics: listen on"), "%s", log);
    cr_assert_not_null(strstr(log, "Address already in use"), "%s", log);
    free(log);
    td_cleanup(&t);
}

Test(metrics, with_an_auth_file_only_an_admin_token_scrapes)
{
    mx_need_tools();
    mx_server m = {0};
    td_init(&m.t, "mx");
    td_write_auth(&m.t, "admin-token *\nshop-token 42\n");
    mx_start(&m, "mx", (const char *const[]){"--auth-file", m.t.auth, NULL});
    char *body;
    cr_assert_eq(mx_curl(&m, "", &body), 401, "no token");
    free(body);
    cr_assert_eq(mx_curl(&m, "-H 'Authorization: Bearer wrong'", &body), 401);
    free(body);
    cr_assert_eq(mx_curl(&m, "-H 'Authorization: Bearer shop-token'", &body), 403,
                 "a merchant's token sees no server internals");
    free(body);
    cr_assert_eq(mx_curl(&m, "-H 'Authorization: Bearer admin-token'", &body), 200);
    cr_assert_not_null(strstr(body, "tally_shard_status{shard=\"0\"} 0"), "%s", body);
    free(body);
    td_stop(&m.t);
    td_cleanup(&m.t);
}
