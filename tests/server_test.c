/*
 * server_test.c — tallyd as a network server (engine/server.c, config.c,
 * tools/tallyd.c) against real processes: ordering, many connections,
 * bad input, backpressure, slow clients, auth, restarts, kill -9.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tallyd_util.h"

/* ---- helpers ------------------------------------------------------------ */

/* A PING on a fresh connection answers: the server still serves others. */
static void assert_serving(const td *t)
{
    redisContext *c = td_connect(t);
    redisReply *r = td_cmd(c, "PING");
    cr_assert_str_eq(r->str, "PONG");
    freeReplyObject(r);
    r = td_cmd(c, "EARN 500 1 1 serving-%d", rand());
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY, "writes go on: %s",
                 r->type == REDIS_REPLY_ERROR ? r->str : "");
    freeReplyObject(r);
    redisFree(c);
}

static const char *entry_id(const redisReply *r)
{
    const redisReply *f = td_field(r, "id");
    return f && f->type == REDIS_REPLY_STRING ? f->str : "";
}

/* ---- ordering and concurrency -------------------------------------------- */

Test(server, three_thousand_pipelined_commands_over_many_merchants_come_back_in_order)
{
    td t;
    td_init(&t, "srv");
    td_start(&t, (const char *const[]){"--shards", "4", NULL});
    redisContext *c = td_connect(&t);
    enum { N = 3000 };
    for (int i = 0; i < N; i++) {
        /* Writes, reads and connection commands interleaved over 97
         * merchants spread across 4 shards. */
        int m = 1 + i % 97;
        if (i % 10 == 3)
            redisAppendCommand(c, "PING p%d", i);
        else if (i % 10 == 7)
            redisAppendCommand(c, "ENTRY %d pipe-%d", 1 + (i - 5) % 97, i - 5);
        else
            redisAppendCommand(c, "EARN %d %d %d pipe-%d", m, 1 + i % 13, 1 + i % 50, i);
    }
    for (int i = 0; i < N; i++) {
        redisReply *r;
        cr_assert_eq(redisGetReply(c, (void **)&r), REDIS_OK, "reply %d: %s", i, c->errstr);
        char want[32];
        if (i % 10 == 3) {
            snprintf(want, sizeof(want), "p%d", i);
            cr_assert_str_eq(r->str, want, "reply %d out of order", i);
        } else if (i % 10 == 7) {
            snprintf(want, sizeof(want), "pipe-%d", i - 5);
            cr_assert_str_eq(entry_id(r), want, "ENTRY reply %d out of order", i);
        } else {
            snprintf(want, sizeof(want), "pipe-%d", i);
            cr_assert_str_eq(entry_id(r), want, "EARN reply %d out of order", i);
        }
        freeReplyObject(r);
    }
    redisFree(c);
    td_stop(&t);
    td_cleanup(&t);
}

Test(server, a_thousand_simultaneous_connections_are_all_served)
{
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < 2200) {
        rl.rlim_cur = rl.rlim_max < 4096 ? rl.rlim_max : 4096;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    td t;
    td_init(&t, "srv");
    td_start(&t, NULL);
    enum { N = 1000 };
    int *fds = calloc(N, sizeof(int));
    for (int i = 0; i < N; i++)
        fds[i] = td_raw(&t);
    /* Every connection sends before any reads: all are open at once. */
    for (int i = 0; i < N; i++) {
        char cmd[96];
        snprintf(cmd, sizeof(cmd), "EARN %d 1 1 conn-%d\r\n", 1 + i % 50, i);
        td_sends(fds[i], cmd);
    }
    redisContext *c = td_connect(&t);
    redisReply *info = td_cmd(c, "INFO clients");
    cr_assert_not_null(strstr(info->str, "connected_clients:1001"), "%s", info->str);
    freeReplyObject(info);
    for (int i = 0; i < N; i++) {
        char buf[2048], id[32], want[64];
        td_recv_until(fds[i], buf, sizeof(buf), "imported\r\n:0\r\n", 30000);
        snprintf(id, sizeof(id), "conn-%d", i);
        snprintf(want, sizeof(want), "$2\r\nid\r\n$%zu\r\n%s\r\n", strlen(id), id);
        cr_assert_not_null(strstr(buf, want), "connection %d: %s", i, buf);
        close(fds[i]);
    }
    free(fds);
    redisReply *m = td_cmd(c, "MERCHANT 1");
    cr_assert_eq(td_int_field(m, "entries"), N / 50);
    freeReplyObject(m);
    redisFree(c);
    td_stop(&t);
    td_cleanup(&t);
}

/* ---- bad input ------------------------------------------------------------ */

typedef struct bad_case {
    const char *name;
    const char *bytes;
    size_t len;
    const char *reply;  /* expected prefix */
    int closes;         /* the connection is closed after the reply */
} bad_case;

Test(server, bad_input_gets_a_clear_error_and_harms_no_one_else)
{
    td t;
    td_init(&t, "srv");
    td_start(&t, NULL);
    static char big_bulk[5000], many_args[2000];
    int n = snprintf(big_bulk, sizeof(big_bulk), "*2\r\n$4\r\nECHO\r\n$4097\r\n");
    memset(big_bulk + n, 'x', 4097);
    memcpy(big_bulk + n + 4097, "\r\n", 2);
    size_t big_len = (size_t)n + 4099;
    int k = snprintf(many_args, sizeof(many_args), "*33\r\n");
    for (int i = 0; i < 33; i++)
        k += snprintf(many_args + k, sizeof(many_args) - (size_t)k, "$4\r\nPING\r\n");
#define BAD(name, lit, reply, closes) {name, lit, sizeof(lit) - 1, reply, closes}
    const bad_case cases[] = {
        BAD("garbage multibulk", "*x\r\n", "-ERR Protocol error", 1),
        BAD("huge declared bulk", "*2\r\n$4\r\nECHO\r\n$99999999999999\r\n",
            "-ERR Protocol error", 1),
        BAD("huge declared argc", "*2147483648\r\n", "-ERR Protocol error", 1),
        {"bulk over 4 KiB", big_bulk, big_len, "-ERR Protocol error", 1},
        {"33 arguments", many_args, (size_t)k, "-ERR Protocol error", 1},
        BAD("missing dollar", "*1\r\n+PING\r\n", "-ERR Protocol error", 1),
        BAD("bad bulk terminator", "*1\r\n$4\r\nPINGxx", "-ERR Protocol error", 1),
        BAD("unbalanced quotes", "ECHO \"abc\r\n", "-ERR Protocol error", 1),
        BAD("unknown command", "NOPE 1 2\r\n", "-ERR unknown command", 0),
        BAD("wrong arity", "BALANCE 1\r\n", "-ERR wrong number of arguments", 0),
        BAD("out-of-range number", "EARN 1 1 1000000000000001 z\r\n", "-INVALID", 0),
        BAD("not a 64-bit number", "EARN 1 1 9999999999999999999999 z\r\n",
            "-ERR value is not an integer or out of range", 0),
        BAD("auth on an open server", "AUTH nope\r\n", "-ERR AUTH <password> called without",
            0),
        BAD("binary junk", "\x01\x02\xff\r\n", "-ERR unknown command", 0),
    };
#undef BAD
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int fd = td_raw(&t);
        td_send(fd, cases[i].bytes, cases[i].len);
        char buf[512];
        td_recv_until(fd, buf, sizeof(buf), "\r\n", 5000);
        cr_assert(strncmp(buf, cases[i].reply, strlen(cases[i].reply)) == 0,
                  "%s: got '%s', want '%s...'", cases[i].name, buf, cases[i].reply);
        if (cases[i].closes) {
            cr_assert(td_closed(fd, 5000), "%s: the connection is closed", cases[i].name);
        } else {
            td_sends(fd, "PING\r\n");
            td_recv_until(fd, buf, sizeof(buf), "\r\n", 5000);
            cr_assert_str_eq(buf, "+PONG\r\n", "%s: the connection goes on", cases[i].name);
        }
        close(fd);
        assert_serving(&t);
    }
    /* A declared length is never allocated: a 2 GB bulk costs nothing. */
    long before = td_rss_kib(&t);
    for (int i = 0; i < 50; i++) {
        int fd = td_raw(&t);
        td_sends(fd, "*2\r\n$4\r\nECHO\r\n$2000000000\r\n");
        cr_assert(td_closed(fd, 5000));
        close(fd);
    }
    long after = td_rss_kib(&t);
    cr_assert_lt(after - before, 20 * 1024, "RSS grew %ld KiB", after - before);
    td_stop(&t);
    td_cleanup(&t);
}

Test(server, a_client_that_never_reads_does_not_grow_memory_without_bound)
{
    td t;
    td_init(&t, "srv");
    td_start(&t, NULL);
    int fd = td_raw(&t);
    int small = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    /* Up to 600 x 64 KiB of pipelined HISTORY requests (each reply ~0.3
     * KiB: ~900 MB of replies) on a socket that is never read. */
    redisContext *c = td_connect(&t);
    freeReplyObject(td_cmd(c, "EARN 9 9 5 seed"));
    static char chunk[64 * 1024];
    size_t one = strlen("HISTORY 9 9\r\n");
    for (size_t o = 0; o + one <= sizeof(chunk); o += one)
        memcpy(chunk + o, "HISTORY 9 9\r\n", one);
    size_t chunk_len = sizeof(chunk) / one * one;
    long rss0 = td_rss_kib(&t);
    size_t sent = 0;
    for (int i = 0; i < 600; i++) {
        /* The server stops reading this socket: sends eventually block. */
        ssize_t w = send(fd, chunk, chunk_len, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w <= 0) {
            usleep(5000);
            continue;
        }
        sent += (size_t)w;
    }
    usleep(300000);
    long rss1 = td_rss_kib(&t);
    cr_log_info("a client that never reads: the server grew %ld KiB", rss1 - rss0);
    cr_assert_lt(rss1 - rss0, 64 * 1024, "the server's memory grew %ld KiB", rss1 - rss0);
    cr_assert_lt(sent, 600 * chunk_len, "backpressure reached the client (%zu bytes)", sent);
    /* Others are served meanwhile, with their usual latency. */
    for (int i = 0; i < 20; i++) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        redisReply *r = td_cmd(c, "BALANCE 9 9");
        clock_gettime(CLOCK_MONOTONIC, &b);
        cr_assert_eq(td_int_field(r, "available"), 5);
        freeReplyObject(r);
        long ms = (b.tv_sec - a.tv_sec) * 1000 + (b.tv_nsec - a.tv_nsec) / 1000000;
        cr_assert_lt(ms, 2000, "a read took %ld ms", ms);
    }
    close(fd);
    redisFree(c);
    td_stop(&t);
    td_cleanup(&t);
}

Test(server, a_command_trickled_too_slowly_is_cut_off, .timeout = 60)
{
    td t;
    td_init(&t, "srv");
    td_start(&t, NULL);
    int fd = td_raw(&t);
    const char *cmd = "*1\r\n$4\r\nPING\r\n";
    /* One byte every 1.5 s: each byte arrives well within any idle
     * timeout, but the command never completes within 10 s. */
    int cut = 0;
    for (size_t i = 0; i + 1 < strlen(cmd); i++) {
        if (send(fd, cmd + i, 1, MSG_NOSIGNAL) != 1) {
            cut = 1;
            break;
        }
        char buf[256];
        size_t n = td_recv_until(fd, buf, sizeof(buf), "\r\n", 1500);
        if (n > 0) {
            cr_assert(strncmp(buf, "-ERR Protocol error", 19) == 0, "%s", buf);
            cut = td_closed(fd, 2000);
            break;
        }
    }
    cr_assert(cut, "the slow command was cut off");
    close(fd);
    assert_serving(&t);
    td_stop(&t);
    td_cleanup(&t);
}

/* ---- auth ------------------------------------------------------------------ */

Test(server, tokens_isolate_merchants_and_only_admins_run_admin_commands)
{
    td t;
    td_init(&t, "srv");
    td_write_auth(&t, "# tokens\nshop-a 1,2\nshop-b 3\n\nroot *\n");
    td_start(&t, NULL);
    redisContext *c = td_connect(&t);
    redisReply *r = td_cmd(c, "EARN 1 1 10 a1");
    cr_assert_eq(r->type, REDIS_REPLY_ERROR);
    cr_assert(strncmp(r->str, "NOAUTH", 6) == 0, "%s", r->str);
    freeReplyObject(r);
    r = td_cmd(c, "PING");
    cr_assert(strncmp(r->str, "NOAUTH", 6) == 0, "%s", r->str);
    freeReplyObject(r);
    r = td_cmd(c, "AUTH wrong");
    cr_assert(strncmp(r->str, "WRONGPASS", 9) == 0, "%s", r->str);
    freeReplyObject(r);
    r = td_cmd(c, "AUTH shop-a");
    cr_assert_str_eq(r->str, "OK");
    freeReplyObject(r);
    r = td_cmd(c, "EARN 1 1 10 a1");
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
    freeReplyObject(r);
    r = td_cmd(c, "EARN 3 1 10 a2");
    cr_assert(strncmp(r->str, "NOPERM", 6) == 0, "%s", r->str);
    freeReplyObject(r);
    r = td_cmd(c, "BALANCE 3 1");
    cr_assert(strncmp(r->str, "NOPERM", 6) == 0, "%s", r->str);
    freeReplyObject(r);
    r = td_cmd(c, "VERIFY");
    cr_assert(strncmp(r->str, "NOPERM", 6) == 0, "%s", r->str);
    freeReplyObject(r);
    r = td_cmd(c, "VERIFY 2");
    cr_assert_str_eq(r->str, "OK");
    freeReplyObject(r);
    r = td_cmd(c, "SNAPSHOT");
    cr_assert_eq(r->type, REDIS_REPLY_ERROR);
    cr_assert_str_eq(r->str, "NOPERM this command needs an admin token");
    freeReplyObject(r);
    /* INFO answers a merchant token (clients call it at connect), with
     * nothing about the server or other tenants. */
    r = td_cmd(c, "INFO");
    cr_assert_eq(r->type, REDIS_REPLY_STRING);
    cr_assert_not_null(strstr(r->str, "redis_version:"), "%s", r->str);
    cr_assert_not_null(strstr(r->str, "# Clients\r\nclient_id:"), "%s", r->str);
    const char *hidden[] = {"process_id", "dir:", t.dir, "shards:", "# Ledger", "# Shards",
                            "shard0:", "records:", "# Commit", "connected_clients"};
    for (size_t i = 0; i < sizeof(hidden) / sizeof(hidden[0]); i++)
        cr_assert_null(strstr(r->str, hidden[i]), "a merchant token sees %s: %s", hidden[i],
                       r->str);
    freeReplyObject(r);
    r = td_cmd(c, "INFO shards");
    cr_assert_null(strstr(r->str, "shard0"), "%s", r->str);
    freeReplyObject(r);
    r = td_cmd(c, "CONFIG GET *");
    for (size_t i = 0; i < r->elements; i += 2) {
        cr_assert_str_neq(r->element[i]->str, "dir");
        cr_assert_str_neq(r->element[i]->str, "shards");
    }
    cr_assert_gt(r->elements, 0, "the Redis settings clients ask for are there");
    freeReplyObject(r);
    r = td_cmd(c, "AUTH someuser shop-b"); /* AUTH user token */
    cr_assert_str_eq(r->str, "OK");
    freeReplyObject(r);
    r = td_cmd(c, "BALANCE 1 1");
    cr_assert(strncmp(r->str, "NOPERM", 6) == 0, "shop-b cannot see shop-a: %s", r->str);
    freeReplyObject(r);
    r = td_cmd(c, "AUTH root");
    freeReplyObject(r);
    r = td_cmd(c, "VERIFY");
    cr_assert_str_eq(r->str, "OK");
    freeReplyObject(r);
    r = td_cmd(c, "INFO");
    cr_assert_not_null(strstr(r->str, "process_id:"), "an admin sees everything: %s", r->str);
    cr_assert_not_null(strstr(r->str, "shard0:status=ok"), "%s", r->str);
    freeReplyObject(r);
    r = td_cmd(c, "CONFIG GET dir");
    cr_assert_eq(r->elements, 2);
    cr_assert_str_eq(r->element[1]->str, t.dir);
    freeReplyObject(r);
    r = td_cmd(c, "SNAPSHOT");
    cr_assert_str_eq(r->str, "OK");
    freeReplyObject(r);
    r = td_cmd(c, "BALANCE 1 1");
    cr_assert_eq(td_int_field(r, "available"), 10);
    freeReplyObject(r);
    redisFree(c);
    /* HELLO 3 AUTH user token authenticates and switches at once. */
    int fd = td_raw(&t);
    char buf[1024];
    td_sends(fd, "HELLO 3 AUTH default shop-b\r\nBALANCE 1 1\r\n");
    td_recv_until(fd, buf, sizeof(buf), "-NOPERM token not allowed for merchant 1\r\n", 5000);
    cr_assert(strncmp(buf, "%7\r\n", 4) == 0, "%s", buf);
    close(fd);
    fd = td_raw(&t);
    td_sends(fd, "HELLO 3 AUTH default nope\r\n");
    td_recv_until(fd, buf, sizeof(buf), "\r\n", 5000);
    cr_assert(strncmp(buf, "-WRONGPASS", 10) == 0, "%s", buf);
    close(fd);
    td_stop(&t);
    td_cleanup(&t);
}

/* tallyd's log (stderr) as one string. */
static void read_log(const td *t, char *buf, size_t cap)
{
    FILE *f = fopen(t->log, "r");
    size_t n = f ? fread(buf, 1, cap - 1, f) : 0;
    buf[n] = 0;
    if (f)
        fclose(f);
}

Test(server, an_open_server_refuses_a_non_loopback_bind_and_bad_options)
{
    td t;
    td_init(&t, "srv");
    char log[4096];
    int rc = td_start_expect_exit(&t, (const char *const[]){"--bind", "0.0.0.0", NULL});
    cr_assert_eq(rc, 2, "refused without --auth-file or --insecure");
    read_log(&t, log, sizeof(log));
    cr_assert_not_null(strstr(log, "refusing to serve 0.0.0.0 without --auth-file"), "%s", log);
    cr_assert_eq(td_start_expect_exit(&t, (const char *const[]){"--sync", "sometimes", NULL}),
                 2);
    cr_assert_eq(td_start_expect_exit(&t, (const char *const[]){"--shards", "0", NULL}), 2);
    unlink(t.log);
    cr_assert_eq(td_start_expect_exit(&t, (const char *const[]){"--bogus", NULL}), 2);
    read_log(&t, log, sizeof(log));
    cr_assert_str_eq(log, "tallyd: unknown option --bogus (try --help)\n");
    unlink(t.log);
    cr_assert_eq(td_start_expect_exit(&t, (const char *const[]){"--bogus", "1", NULL}), 2);
    read_log(&t, log, sizeof(log));
    cr_assert_str_eq(log, "tallyd: unknown option --bogus (try --help)\n");
    unlink(t.log);
    cr_assert_eq(td_start_expect_exit(&t, (const char *const[]){"--maxclients", NULL}), 2);
    read_log(&t, log, sizeof(log));
    cr_assert_str_eq(log, "tallyd: --maxclients needs a value\n");
    td_write_auth(&t, "token-without-merchants\n");
    cr_assert_eq(td_start_expect_exit(&t, (const char *const[]){"--auth-file", t.auth, NULL}),
                 1);
    td_cleanup(&t);
}

Test(server, a_busy_port_is_refused_before_the_data_directory_is_created)
{
    td a, b;
    td_init(&a, "srv");
    td_init(&b, "srv");
    td_start(&a, NULL);
    rmdir(b.dir); /* td_init made it: tallyd must not */
    char port[16];
    snprintf(port, sizeof(port), "%u", a.port);
    /* td_start_expect_exit picks a port; pass a's, which comes later and wins. */
    int rc = td_start_expect_exit(&b, (const char *const[]){"--port", port, "--shards", "3",
                                                            NULL});
    cr_assert_eq(rc, 1, "the port is taken");
    char log[4096];
    read_log(&b, log, sizeof(log));
    cr_assert_not_null(strstr(log, "Address already in use"), "%s", log);
    struct stat st;
    cr_assert_neq(stat(b.dir, &st), 0, "no data directory was created (its shard count would "
                                       "have been fixed at 3)");
    mkdir(b.dir, 0755);
    td_stop(&a);
    td_cleanup(&a);
    td_cleanup(&b);
}

Test(server, a_shard_count_mismatch_names_both_numbers)
{
    td t;
    td_init(&t, "srv");
    td_start(&t, (const char *const[]){"--shards", "2", NULL});
    td_stop(&t);
    unlink(t.log);
    int rc = td_start_expect_exit(&t, (const char *const[]){"--shards", "3", NULL});
    cr_assert_eq(rc, 1);
    char log[4096];
    read_log(&t, log, sizeof(log));
    cr_assert_not_null(strstr(log, "has 2 shards (its MANIFEST), asked for 3"), "%s", log);
    td_cleanup(&t);
}

Test(server, maxclients_refuses_the_next_connection_in_redis_words)
{
    td t;
    td_init(&t, "srv");
    td_start(&t, (const char *const[]){"--maxclients", "3", NULL});
    redisContext *c[3];
    c[0] = td_connect(&t);
    /* The start-up probe's connection may not be closed yet: wait until
     * this one is the only one. */
    for (int i = 0; i < 100; i++) {
        redisReply *r = td_cmd(c[0], "INFO clients");
        int alone = strstr(r->str, "\r\nconnected_clients:1\r\n") != NULL;
        freeReplyObject(r);
        if (alone)
            break;
        usleep(10000);
    }
    for (int i = 1; i < 3; i++) {
        c[i] = td_connect(&t);
        redisReply *r = td_cmd(c[i], "PING");
        cr_assert_eq(r->type, REDIS_REPLY_STATUS, "connection %d of 3 is served: %s", i + 1,
                     r->str);
        freeReplyObject(r);
    }
    int fd = td_raw(&t);
    char buf[256];
    td_recv_until(fd, buf, sizeof(buf), "\r\n", 5000);
    cr_assert_str_eq(buf, "-ERR max number of clients reached\r\n");
    cr_assert(td_closed(fd, 5000), "and closed");
    close(fd);
    redisFree(c[2]);
    /* A place is free again: served once the server has seen the close. */
    int served = 0;
    for (int i = 0; i < 50 && !served; i++) {
        redisContext *d = td_connect(&t);
        redisReply *r = redisCommand(d, "PING");
        served = r && r->type == REDIS_REPLY_STATUS;
        if (r)
            freeReplyObject(r);
        redisFree(d);
        if (!served)
            usleep(50000);
    }
    cr_assert(served, "a freed place is taken again");
    redisReply *r = td_cmd(c[0], "INFO clients");
    cr_assert_not_null(strstr(r->str, "\r\nmaxclients:3\r\n"), "%s", r->str);
    cr_assert_null(strstr(r->str, "\r\nrejected_connections:0\r\n"), "%s", r->str);
    freeReplyObject(r);
    redisFree(c[0]);
    redisFree(c[1]);
    td_stop(&t);
    td_cleanup(&t);
}

Test(server, a_client_that_never_authenticates_is_disconnected, .timeout = 60)
{
    td t;
    td_init(&t, "srv");
    td_write_auth(&t, "shop-a 1\n");
    td_start(&t, NULL);
    int idle = td_raw(&t);
    int authed = td_raw(&t);
    td_sends(authed, "AUTH shop-a\r\n");
    char buf[256];
    td_recv_until(authed, buf, sizeof(buf), "\r\n", 5000);
    cr_assert_str_eq(buf, "+OK\r\n");
    /* The limit is 10 s (LIMIT_AUTH_MS); wait up to 30. */
    td_recv_until(idle, buf, sizeof(buf), "\r\n", 30000);
    cr_assert_str_eq(buf, "-NOAUTH authentication timeout\r\n");
    cr_assert(td_closed(idle, 5000), "the connection is closed");
    close(idle);
    td_sends(authed, "PING\r\n");
    td_recv_until(authed, buf, sizeof(buf), "\r\n", 5000);
    cr_assert_str_eq(buf, "+PONG\r\n", "an authenticated connection stays");
    close(authed);
    td_stop(&t);
    td_cleanup(&t);
}

/* ---- restarts --------------------------------------------------------------- */

/* Raw reply bytes of one command on a fresh connection. */
static size_t raw_reply(const td *t, const char *cmd, char *buf, size_t cap)
{
    int fd = td_raw(t);
    td_sends(fd, cmd);
    /* Entries end with the memo field; errors with one line. */
    size_t n = td_recv_until(fd, buf, cap, "\r\n", 5000);
    if (buf[0] == '*')
        n += td_recv_until(fd, buf + n, cap - n, "imported\r\n:0\r\n", 5000);
    close(fd);
    return n;
}

Test(server, retries_after_a_restart_or_a_kill_get_byte_identical_replies)
{
    td t;
    td_init(&t, "srv");
    td_start(&t, NULL);
    const char *cmds[] = {
        "EARN 21 1 500 rs-1\r\n",
        "HOLD 21 1 100 rs-2\r\n",
        "REDEEM 21 1 9999 rs-3\r\n",
        "CAPTURE 21 rs-2 rs-4 POINTS 60\r\n",
        "REVERSE 21 rs-1 rs-5 POINTS 10\r\n",
    };
    enum { N = sizeof(cmds) / sizeof(cmds[0]) };
    char first[N][2048];
    for (int i = 0; i < N; i++)
        raw_reply(&t, cmds[i], first[i], sizeof(first[i]));
    cr_assert(strncmp(first[2], "-INSUFFICIENT", 13) == 0, "%s", first[2]);
    for (int round = 0; round < 2; round++) {
        if (round == 0)
            td_stop(&t);
        else
            td_kill9(&t);
        td_start(&t, NULL);
        for (int i = 0; i < N; i++) {
            char again[2048];
            raw_reply(&t, cmds[i], again, sizeof(again));
            cr_assert_str_eq(again, first[i], "round %d, command %d", round, i);
        }
    }
    /* The refusal stays a refusal with points now available. */
    char buf[2048];
    raw_reply(&t, "EARN 21 1 100000 rs-6\r\n", buf, sizeof(buf));
    raw_reply(&t, cmds[2], buf, sizeof(buf));
    cr_assert_str_eq(buf, first[2]);
    td_stop(&t);
    td_cleanup(&t);
}

typedef struct load_worker {
    const td *t;
    int index;
    _Atomic int *stop;
    char (*ids)[32];
    long long *seqs;
    int acked;
    int capacity;
    char error[128]; /* the first -ERR (other than -INSUFFICIENT) before the kill */
} load_worker;

/* Pipelines EARN/REDEEM in rounds of 32 and records every acknowledged
 * entry until the server dies. */
static void *load_main(void *arg)
{
    load_worker *w = arg;
    redisContext *c = td_connect(w->t);
    for (int round = 0; !atomic_load(w->stop) && w->acked + 32 < w->capacity; round++) {
        for (int k = 0; k < 32; k++) {
            int i = round * 32 + k;
            int m = 1 + (i + w->index) % 29;
            if (i % 5 == 4)
                redisAppendCommand(c, "REDEEM %d %d 3 L%d-%d", m, 1 + i % 7, w->index, i);
            else
                redisAppendCommand(c, "EARN %d %d 10 L%d-%d", m, 1 + i % 7, w->index, i);
        }
        for (int k = 0; k < 32; k++) {
            redisReply *r;
            if (redisGetReply(c, (void **)&r) != REDIS_OK) {
                redisFree(c);
                return NULL; /* killed */
            }
            if (r->type == REDIS_REPLY_ARRAY) {
                snprintf(w->ids[w->acked], 32, "%s", entry_id(r));
                w->seqs[w->acked] = td_int_field(r, "seq");
                w->acked++;
            } else if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "INSUFFICIENT", 12)) {
                /* Nothing may fail before the kill (a failed shard would
                 * pass as "unacknowledged" otherwise). */
                snprintf(w->error, sizeof(w->error), "%s", r->str);
            }
            freeReplyObject(r);
        }
    }
    redisFree(c);
    return NULL;
}

Test(server, kill_9_under_load_from_several_connections_loses_no_acknowledged_write,
     .timeout = 240)
{
    td t;
    td_init(&t, "srv");
    enum { W = 4, CAP = 400000, CYCLES = 3 };
    for (int cycle = 0; cycle < CYCLES; cycle++) {
        td_start(&t, NULL);
        _Atomic int stop = 0;
        load_worker ws[W];
        pthread_t th[W];
        for (int i = 0; i < W; i++) {
            ws[i] = (load_worker){.t = &t, .index = i + 10 * cycle, .stop = &stop,
                                  .ids = calloc(CAP, 32), .seqs = calloc(CAP, 8),
                                  .capacity = CAP};
            pthread_create(&th[i], NULL, load_main, &ws[i]);
        }
        usleep((useconds_t)(300000 + rand() % 700000));
        td_kill9(&t);
        atomic_store(&stop, 1);
        for (int i = 0; i < W; i++) {
            pthread_join(th[i], NULL);
            cr_assert_eq(ws[i].error[0], 0, "cycle %d: a write failed before the kill: %s",
                         cycle, ws[i].error);
        }
        td_start(&t, NULL);
        redisContext *c = td_connect(&t);
        int checked = 0;
        for (int i = 0; i < W; i++) {
            for (int k = 0; k < ws[i].acked; k++) {
                const char *id = ws[i].ids[k];
                int idx = 0, n = 0, m;
                sscanf(id, "L%d-%d", &idx, &n);
                m = 1 + (n + idx) % 29;
                redisReply *r = td_cmd(c, "ENTRY %d %s", m, id);
                cr_assert_eq(r->type, REDIS_REPLY_ARRAY, "cycle %d: acknowledged %s lost",
                             cycle, id);
                cr_assert_eq(td_int_field(r, "seq"), ws[i].seqs[k], "%s moved", id);
                freeReplyObject(r);
                checked++;
            }
            free(ws[i].ids);
            free(ws[i].seqs);
        }
        cr_assert_gt(checked, 0, "cycle %d: the load was acknowledged", cycle);
        redisReply *v = td_cmd(c, "VERIFY");
        cr_assert_str_eq(v->str, "OK", "cycle %d: %s", cycle, v->str);
        freeReplyObject(v);
        redisFree(c);
        td_stop(&t);
        cr_log_info("kill -9 cycle %d: %d acknowledged writes checked", cycle, checked);
    }
    td_cleanup(&t);
}

Test(server, sigterm_answers_what_is_in_flight_before_exiting)
{
    td t;
    td_init(&t, "srv");
    td_start(&t, NULL);
    redisContext *c = td_connect(&t);
    enum { N = 2000 };
    for (int i = 0; i < N; i++)
        redisAppendCommand(c, "EARN %d 1 1 term-%d", 1 + i % 10, i);
    /* Make sure the server has read them: a reply to the first arrives. */
    redisReply *r;
    cr_assert_eq(redisGetReply(c, (void **)&r), REDIS_OK);
    freeReplyObject(r);
    kill(t.pid, SIGTERM);
    int answered = 1;
    while (redisGetReply(c, (void **)&r) == REDIS_OK) {
        cr_assert_eq(r->type, REDIS_REPLY_ARRAY, "%s", r->type == REDIS_REPLY_ERROR ? r->str : "");
        freeReplyObject(r);
        answered++;
    }
    int st;
    waitpid(t.pid, &st, 0);
    t.pid = 0;
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "clean exit");
    redisFree(c);
    /* Everything answered is there after the restart. */
    td_start(&t, NULL);
    c = td_connect(&t);
    int found = 0;
    for (int i = 0; i < N; i++) {
        r = td_cmd(c, "ENTRY %d term-%d", 1 + i % 10, i);
        found += r->type == REDIS_REPLY_ARRAY;
        freeReplyObject(r);
    }
    cr_assert_geq(found, answered, "answered %d, found %d", answered, found);
    redisFree(c);
    td_stop(&t);
    td_cleanup(&t);
}

/* ---- redis-cli ------------------------------------------------------------- */

Test(server, redis_cli_round_trip)
{
    td t;
    td_init(&t, "srv");
    td_start(&t, NULL);
    char cmd[512], out[4096];
    snprintf(cmd, sizeof(cmd),
             "redis-cli -p %u EARN 42 1001 500 order-77 EXPIRES 4102444800 && "
             "redis-cli -p %u REDEEM 42 1001 120 till-9-0001 && "
             "redis-cli -p %u BALANCE 42 1001 && redis-cli -3 -p %u BALANCE 42 1001",
             t.port, t.port, t.port, t.port);
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    size_t n = fread(out, 1, sizeof(out) - 1, p);
    out[n] = 0;
    cr_assert_eq(pclose(p), 0, "redis-cli failed: %s", out);
    cr_assert_not_null(strstr(out, "id\norder-77\nkind\nearn\n"), "%s", out);
    cr_assert_not_null(strstr(out, "points\n-120\namount\n120\nbalance\n380\n"), "%s", out);
    cr_assert_not_null(strstr(out, "available\n380\nheld\n0\n"), "%s", out);
    cr_assert_not_null(strstr(out, "\navailable 380\nheld 0\n"), "RESP3 map: %s", out);
    td_stop(&t);
    td_cleanup(&t);
}

Test(server, redis_cli_prints_ids_above_int64_in_resp2_and_resp3)
{
    td t;
    td_init(&t, "srv");
    td_start(&t, NULL);
    char cmd[512], out[4096];
    for (int proto = 2; proto <= 3; proto++) {
        snprintf(cmd, sizeof(cmd),
                 "redis-cli -%d -p %u EARN 18446744073709551615 18446744073709551614 5 big%d "
                 "&& redis-cli -%d -p %u ENTRY 18446744073709551615 big%d",
                 proto, t.port, proto, proto, t.port, proto);
        int rc = td_run(cmd, out, sizeof(out));
        cr_assert_eq(rc, 0, "redis-cli -%d failed: %s", proto, out);
        cr_assert_null(strstr(out, "Unknown reply type"), "%s", out);
        cr_assert_not_null(strstr(out, "18446744073709551615"), "%s", out);
        cr_assert_not_null(strstr(out, "18446744073709551614"), "%s", out);
        char want[64];
        snprintf(want, sizeof(want), proto == 3 ? "id big%d\n" : "id\nbig%d\n", proto);
        cr_assert_not_null(strstr(out, want), "both replies printed: %s", out);
    }
    td_stop(&t);
    td_cleanup(&t);
}

/* ---- snapshots over the wire ------------------------------------------------ */

Test(server, snapshot_with_retention_answers_ok_and_old_entries_say_they_are_archived)
{
    td t;
    td_init(&t, "srv");
    td_start(&t, (const char *const[]){"--shards", "1", "--segment-kib", "64", "--retention",
                                       "delete", NULL});
    redisContext *c = td_connect(&t);
    char memo[101];
    memset(memo, 'q', 100);
    memo[100] = 0;
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < 1500; i++)
            redisAppendCommand(c, "EARN 3 %d 5 s%d-%d MEMO %s", 1 + i % 20, round, i, memo);
        for (int i = 0; i < 1500; i++) {
            redisReply *r;
            cr_assert_eq(redisGetReply(c, (void **)&r), REDIS_OK);
            cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
            freeReplyObject(r);
        }
        redisReply *r = td_cmd(c, "SNAPSHOT");
        cr_assert_eq(r->type, REDIS_REPLY_STATUS, "%s", r->str);
        cr_assert_str_eq(r->str, "OK");
        freeReplyObject(r);
    }
    redisReply *info = td_cmd(c, "INFO shards");
    cr_assert_null(strstr(info->str, "log_first_seq=1,"), "segments were dropped: %s",
                   info->str);
    cr_assert_null(strstr(info->str, "snapshot_seq=0,"), "%s", info->str);
    freeReplyObject(info);
    redisReply *old = td_cmd(c, "ENTRY 3 s0-0");
    cr_assert_eq(old->type, REDIS_REPLY_ERROR);
    cr_assert_not_null(strstr(old->str, "before the retained log"), "%s", old->str);
    freeReplyObject(old);
    redisReply *recent = td_cmd(c, "ENTRY 3 s1-1499");
    cr_assert_eq(recent->type, REDIS_REPLY_ARRAY);
    freeReplyObject(recent);
    redisReply *b = td_cmd(c, "BALANCE 3 1");
    cr_assert_eq(td_int_field(b, "available"), 2 * 75 * 5, "balances stay exact");
    freeReplyObject(b);
    redisFree(c);
    td_stop(&t);
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "%s/tally verify %s > /dev/null", getenv("TALLY_BUILD"), t.dir);
    cr_assert_eq(system(cmd), 0, "tally verify passes on the retained log and snapshots");
    td_cleanup(&t);
}
