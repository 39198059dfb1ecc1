/*
 * multi_test.c — MULTI / EXEC / DISCARD (SPEC §8) against a real tallyd:
 * Redis's queuing and errors, reads that see the EXEC's earlier writes,
 * no other client's write between an EXEC's commands under concurrent
 * load, each EXEC whole or absent after kill -9, and an EXEC too big for
 * one batch refused whole while the shard goes on.  redis-py's default
 * pipeline and ioredis' multi() are in clients_test.c.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tallyd_util.h"

static td srv;

static void down(void) { td_cleanup(&srv); }

/* A reply that is the simple status or error `want` (a prefix). */
static void expect(redisContext *c, const char *want, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    cr_assert_not_null(r, "no reply to %s: %s", fmt, c->errstr);
    const char *got = r->type == REDIS_REPLY_STATUS || r->type == REDIS_REPLY_ERROR ? r->str : "";
    cr_assert(strncmp(got, want, strlen(want)) == 0, "'%s' answered '%s' (type %d), wanted '%s'",
              fmt, got, r->type, want);
    freeReplyObject(r);
}

/* ENTRY of that id answers nil: nothing wrote it. */
static void expect_no_entry(redisContext *c, int merchant, const char *id, const char *why)
{
    redisReply *e = td_cmd(c, "ENTRY %d %s", merchant, id);
    cr_assert_eq(e->type, REDIS_REPLY_NIL, "%s: ENTRY %d %s is there", why, merchant, id);
    freeReplyObject(e);
}

static long long entry_seq(const redisReply *e)
{
    cr_assert_eq(e->type, REDIS_REPLY_ARRAY, "not an entry: %s",
                 e->type == REDIS_REPLY_ERROR ? e->str : "");
    return td_int_field(e, "seq");
}

Test(multi, queues_commands_and_runs_them_with_reads_seeing_earlier_writes, .fini = down,
     .timeout = 60)
{
    td_init(&srv, "multi");
    td_start(&srv, NULL);
    redisContext *c = td_connect(&srv);
    expect(c, "OK", "MULTI");
    expect(c, "QUEUED", "EARN 5 1 100 t1");
    expect(c, "QUEUED", "BALANCE 5 1");
    expect(c, "QUEUED", "REDEEM 5 1 500 t2"); /* refused by the ledger: in the array */
    expect(c, "QUEUED", "REDEEM 5 1 30 t3");
    expect(c, "QUEUED", "HISTORY 5 1");
    redisReply *r = td_cmd(c, "EXEC");
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
    cr_assert_eq(r->elements, 5);
    long long s1 = entry_seq(r->element[0]);
    cr_assert_eq(td_int_field(r->element[1], "available"), 100, "the read sees the earn");
    cr_assert_eq(r->element[2]->type, REDIS_REPLY_ERROR);
    cr_assert(strncmp(r->element[2]->str, "INSUFFICIENT", 12) == 0, "%s", r->element[2]->str);
    long long s3 = entry_seq(r->element[3]);
    cr_assert_eq(s3, s1 + 2, "the refusal took the seq between them");
    cr_assert_eq(r->element[4]->type, REDIS_REPLY_ARRAY);
    cr_assert_eq(r->element[4]->elements, 2, "HISTORY sees both entries of the EXEC");
    freeReplyObject(r);
    /* The same EXEC again replays every write with its original answer. */
    expect(c, "OK", "MULTI");
    expect(c, "QUEUED", "EARN 5 1 100 t1");
    expect(c, "QUEUED", "REDEEM 5 1 500 t2");
    r = td_cmd(c, "EXEC");
    cr_assert_eq(r->elements, 2);
    cr_assert_eq(entry_seq(r->element[0]), s1);
    cr_assert_eq(r->element[1]->type, REDIS_REPLY_ERROR);
    freeReplyObject(r);
    r = td_cmd(c, "BALANCE 5 1");
    cr_assert_eq(td_int_field(r, "available"), 70);
    freeReplyObject(r);
    /* An empty transaction answers an empty array. */
    expect(c, "OK", "MULTI");
    r = td_cmd(c, "EXEC");
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
    cr_assert_eq(r->elements, 0);
    freeReplyObject(r);
    redisFree(c);
    td_stop(&srv);
}

Test(multi, refusals_while_queuing_abort_exec_as_redis_does, .fini = down, .timeout = 60)
{
    td_init(&srv, "multi-err");
    td_write_auth(&srv, "shop 5,6\n");
    td_start(&srv, NULL);
    redisContext *c = td_connect(&srv);
    expect(c, "OK", "AUTH shop");
    expect(c, "ERR EXEC without MULTI", "EXEC");
    expect(c, "ERR DISCARD without MULTI", "DISCARD");
    expect(c, "ERR WATCH is not supported", "WATCH 5");
    expect(c, "OK", "UNWATCH");
    static const char *const refused[][2] = {
        {"EARN 6 1 10 x", "CROSSSLOT Keys in request don't hash to the same slot"},
        {"EARN 5 1 0 x", "INVALID points must be"},
        {"EARN 5 1 ten x", "ERR value is not an integer"},
        {"EARN 5 1", "ERR wrong number of arguments for 'earn' command"},
        {"FROB 5", "ERR unknown command 'FROB'"},
        {"PING", "ERR ping is not allowed in MULTI"},
        {"FOLLOW 5", "ERR follow is not allowed in MULTI"},
        {"BALANCE 7 1", "NOPERM token not allowed for merchant 7"},
    };
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        expect(c, "OK", "MULTI");
        expect(c, "QUEUED", "EARN 5 1 10 a%d", (int)i);
        const char *argv[8];
        char words[128];
        snprintf(words, sizeof(words), "%s", refused[i][0]);
        int argc = 0;
        for (char *save = NULL, *w = strtok_r(words, " ", &save); w;
             w = strtok_r(NULL, " ", &save))
            argv[argc++] = w;
        redisReply *r = redisCommandArgv(c, argc, argv, NULL);
        cr_assert(r && r->type == REDIS_REPLY_ERROR &&
                      strncmp(r->str, refused[i][1], strlen(refused[i][1])) == 0,
                  "'%s' in MULTI answered '%s'", refused[i][0], r ? r->str : "nothing");
        freeReplyObject(r);
        expect(c, "ERR MULTI calls can not be nested", "MULTI");
        expect(c, "ERR WATCH inside MULTI is not allowed", "WATCH 5");
        expect(c, "EXECABORT Transaction discarded because of previous errors.", "EXEC");
        /* Nothing of it was applied; the connection is out of MULTI. */
        char id[16];
        snprintf(id, sizeof(id), "a%d", (int)i);
        expect_no_entry(c, 5, id, "an aborted EXEC applied it");
        expect(c, "ERR EXEC without MULTI", "EXEC");
    }
    /* DISCARD drops the queue. */
    expect(c, "OK", "MULTI");
    expect(c, "QUEUED", "EARN 5 1 10 d1");
    expect(c, "OK", "DISCARD");
    expect_no_entry(c, 5, "d1", "DISCARD");
    /* Nested MULTI alone does not abort. */
    expect(c, "OK", "MULTI");
    expect(c, "ERR MULTI calls can not be nested", "MULTI");
    expect(c, "QUEUED", "EARN 5 1 10 n1");
    redisReply *r = td_cmd(c, "EXEC");
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
    cr_assert_eq(r->elements, 1);
    freeReplyObject(r);
    /* A client that leaves inside MULTI leaves nothing behind. */
    expect(c, "OK", "MULTI");
    expect(c, "QUEUED", "EARN 5 1 10 gone");
    redisFree(c);
    c = td_connect(&srv);
    expect(c, "OK", "AUTH shop");
    expect_no_entry(c, 5, "gone", "a client left inside MULTI");
    redisFree(c);
    td_stop(&srv);
}

/* ---- nothing interleaved ------------------------------------------------------ */

typedef struct writer {
    const td *t;
    int index;
    atomic_bool *stop;
    long writes;
} writer;

static void *writer_main(void *arg)
{
    writer *w = arg;
    redisContext *c = td_connect(w->t);
    for (long i = 0; !atomic_load(w->stop); i++) {
        /* Pipelined: many writes of other clients in every batch. */
        for (int k = 0; k < 16; k++)
            redisAppendCommand(c, "EARN 9 %d 1 w%d-%ld-%d", 100 + w->index, w->index, i, k);
        for (int k = 0; k < 16; k++) {
            redisReply *r;
            if (redisGetReply(c, (void **)&r) != REDIS_OK)
                break;
            w->writes += r->type == REDIS_REPLY_ARRAY;
            freeReplyObject(r);
        }
    }
    redisFree(c);
    return NULL;
}

Test(multi, no_other_write_lands_between_the_commands_of_an_exec, .fini = down, .timeout = 120)
{
    enum { WRITERS = 4, EXECS = 150, EACH = 6 };
    td_init(&srv, "multi-inter");
    const char *const args[] = {"--shards", "2", NULL};
    td_start(&srv, args);
    atomic_bool stop = false;
    writer ws[WRITERS];
    pthread_t th[WRITERS];
    for (int i = 0; i < WRITERS; i++) {
        ws[i] = (writer){.t = &srv, .index = i, .stop = &stop};
        pthread_create(&th[i], NULL, writer_main, &ws[i]);
    }
    redisContext *c = td_connect(&srv);
    for (int n = 0; n < EXECS; n++) {
        /* MULTI and its commands pipelined, as client libraries send them. */
        redisAppendCommand(c, "MULTI");
        for (int k = 0; k < EACH; k++)
            redisAppendCommand(c, k == 2 ? "REDEEM 9 1 1 x%d-%d" : "EARN 9 1 2 x%d-%d", n, k);
        redisAppendCommand(c, "EXEC");
        for (int k = 0; k < EACH + 1; k++) {
            redisReply *r;
            cr_assert_eq(redisGetReply(c, (void **)&r), REDIS_OK);
            cr_assert_eq(r->type, REDIS_REPLY_STATUS);
            freeReplyObject(r);
        }
        redisReply *r;
        cr_assert_eq(redisGetReply(c, (void **)&r), REDIS_OK);
        cr_assert_eq(r->type, REDIS_REPLY_ARRAY, "EXEC %d: %s", n,
                     r->type == REDIS_REPLY_ERROR ? r->str : "");
        cr_assert_eq(r->elements, EACH);
        long long first = entry_seq(r->element[0]);
        for (int k = 1; k < EACH; k++)
            cr_assert_eq(entry_seq(r->element[k]), first + k,
                         "EXEC %d: another write landed between its commands %d and %d", n,
                         k - 1, k);
        freeReplyObject(r);
    }
    atomic_store(&stop, true);
    long others = 0;
    for (int i = 0; i < WRITERS; i++) {
        pthread_join(th[i], NULL);
        others += ws[i].writes;
    }
    cr_assert_gt(others, EXECS, "the other clients wrote meanwhile");
    cr_log_info("multi: %d EXECs of %d, %ld other writes to the same merchant", EXECS, EACH,
                others);
    redisReply *v = td_cmd(c, "VERIFY 9");
    cr_assert_eq(v->type, REDIS_REPLY_STATUS, "%s", v->str);
    freeReplyObject(v);
    redisFree(c);
    td_stop(&srv);
}

/* ---- kill -9 ------------------------------------------------------------------ */

typedef struct killer {
    pid_t pid;
    int after_ms;
} killer;

static void *killer_main(void *arg)
{
    killer *k = arg;
    usleep((useconds_t)k->after_ms * 1000);
    kill(k->pid, SIGKILL);
    return NULL;
}

enum { CRASH_EACH = 4 };

/* Sends EXECs of CRASH_EACH writes (a TRANSFER among them) until the
 * server dies; *acked: the highest EXEC answered whole. */
static int crash_stream(const td *t, int cycle, int *acked)
{
    redisContext *c = td_connect(t);
    int sent = 0;
    *acked = -1;
    for (;;) {
        for (int n = sent; n < sent + 8; n++) {
            redisAppendCommand(c, "MULTI");
            redisAppendCommand(c, "EARN 3 1 10 c%d-%d-0", cycle, n);
            redisAppendCommand(c, "EARN 3 2 10 c%d-%d-1", cycle, n);
            redisAppendCommand(c, "TRANSFER 3 1 2 5 c%d-%d-2", cycle, n);
            redisAppendCommand(c, "REDEEM 3 2 1 c%d-%d-3", cycle, n);
            redisAppendCommand(c, "EXEC");
        }
        sent += 8;
        for (int i = 0; i < 8 * (CRASH_EACH + 2); i++) {
            redisReply *r;
            if (redisGetReply(c, (void **)&r) != REDIS_OK) {
                redisFree(c);
                return sent;
            }
            if ((i + 1) % (CRASH_EACH + 2) == 0) {
                cr_assert_eq(r->type, REDIS_REPLY_ARRAY, "EXEC refused: %s",
                             r->type == REDIS_REPLY_ERROR ? r->str : "");
                for (size_t k = 0; k < r->elements; k++)
                    cr_assert_eq(r->element[k]->type, REDIS_REPLY_ARRAY);
                *acked = sent - 8 + i / (CRASH_EACH + 2);
            }
            freeReplyObject(r);
        }
    }
}

Test(multi, after_kill_9_each_exec_is_whole_or_absent, .fini = down, .timeout = 300)
{
    enum { CYCLES = 6 };
    td_init(&srv, "multi-crash");
    /* Small segments: batches cross segment boundaries often. */
    const char *const args[] = {"--shards", "2", "--segment-kib", "64", NULL};
    td_start(&srv, args);
    srand((unsigned)getpid());
    long whole = 0, absent = 0;
    for (int cyc = 0; cyc < CYCLES; cyc++) {
        killer k = {.pid = srv.pid, .after_ms = 100 + rand() % 400};
        pthread_t th;
        pthread_create(&th, NULL, killer_main, &k);
        int acked = -1;
        int sent = crash_stream(&srv, cyc, &acked);
        pthread_join(th, NULL);
        waitpid(srv.pid, NULL, 0);
        srv.pid = 0;
        td_restart(&srv, args);
        redisContext *c = td_connect(&srv);
        for (int n = 0; n < sent; n++) {
            int present = 0;
            for (int i = 0; i < CRASH_EACH; i++) {
                redisReply *e = td_cmd(c, "ENTRY 3 c%d-%d-%d", cyc, n, i);
                present += e->type == REDIS_REPLY_ARRAY;
                freeReplyObject(e);
            }
            cr_assert(present == 0 || present == CRASH_EACH,
                      "cycle %d: EXEC %d is in part after the crash (%d of %d)", cyc, n,
                      present, CRASH_EACH);
            if (n <= acked)
                cr_assert_eq(present, CRASH_EACH, "cycle %d: acknowledged EXEC %d lost", cyc, n);
            whole += present == CRASH_EACH;
            absent += present == 0;
        }
        redisReply *v = td_cmd(c, "VERIFY");
        cr_assert_eq(v->type, REDIS_REPLY_STATUS, "cycle %d: %s", cyc, v->str);
        freeReplyObject(v);
        redisFree(c);
    }
    cr_assert_gt(whole, 0);
    cr_log_info("multi: %d crashes, %ld EXECs whole, %ld absent", CYCLES, whole, absent);
    td_stop(&srv);
}

/* ---- too big for one batch ------------------------------------------------------ */

Test(multi, an_exec_too_big_for_one_batch_is_refused_whole_and_the_shard_goes_on,
     .fini = down, .timeout = 600)
{
    enum { LOTS = 20000, TRANSFERS = 200 };
    td_init(&srv, "multi-big");
    const char *const args[] = {"--shards", "1", NULL};
    td_start(&srv, args);
    redisContext *c = td_connect(&srv);
    /* Lots with an expiry each take an allocation of their own in every
     * entry that moves them: TRANSFER ALL back and forth writes them
     * all, twice, each time. */
    for (int i = 0; i < LOTS; i++)
        redisAppendCommand(c, "EARN 4 1 1 lot%d EXPIRES %lld", i, 4102444800LL + i);
    td_replies_ok(c, LOTS);
    expect(c, "OK", "MULTI");
    for (int i = 0; i < TRANSFERS; i++)
        expect(c, "QUEUED", "TRANSFER 4 %d %d ALL big%d", 1 + i % 2, 2 - i % 2, i);
    /* Before it passes the batch's 64 MiB limit the EXEC moves ~80 x
     * 20,000 lots, then the shard rebuilds its state: ~1 s, but over the
     * 30 s reply timeout under ThreadSanitizer. */
    redisSetTimeout(c, (struct timeval){.tv_sec = 300});
    expect(c, "ERR EXEC writes more than one batch takes", "EXEC");
    redisReply *b = td_cmd(c, "BALANCE 4 1");
    cr_assert_eq(td_int_field(b, "available"), LOTS, "nothing of the EXEC was applied");
    freeReplyObject(b);
    expect_no_entry(c, 4, "big0", "the EXEC too big for a batch");
    /* The shard goes on, and a smaller EXEC of the same goes through. */
    expect(c, "OK", "MULTI");
    expect(c, "QUEUED", "TRANSFER 4 1 2 ALL small0");
    expect(c, "QUEUED", "TRANSFER 4 2 1 ALL small1");
    redisReply *r = td_cmd(c, "EXEC");
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY, "%s", r->type == REDIS_REPLY_ERROR ? r->str : "");
    freeReplyObject(r);
    redisFree(c);
    td_kill9(&srv);
    td_restart(&srv, args);
    c = td_connect(&srv);
    b = td_cmd(c, "BALANCE 4 1");
    cr_assert_eq(td_int_field(b, "available"), LOTS);
    freeReplyObject(b);
    expect_no_entry(c, 4, "big0", "the refused EXEC came back after a restart");
    redisReply *v = td_cmd(c, "VERIFY");
    cr_assert_eq(v->type, REDIS_REPLY_STATUS, "%s", v->str);
    freeReplyObject(v);
    redisFree(c);
    td_stop(&srv);
}
