/*
 * verify_test.c — VERIFY (the helper thread of engine/shard.c, the state
 * views of engine/state.c and ledger.c, ledger_verify) and `tally verify`
 * (issue 13):
 *   - writes on the same shard are answered while a VERIFY of a large log
 *     runs (VERIFY used to scan on the writer thread: every write behind
 *     it waited for the whole scan);
 *   - VERIFY beside snapshots whose retention archives the segments it is
 *     scanning still answers ok;
 *   - a damaged record, and a damaged state value, are named by VERIFY,
 *     VERIFY m and `tally verify`, which exits non-zero; a shard without
 *     damage still answers +OK.
 * Ordering and acknowledgements are asserted, never durations.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checksum.h"
#include "engine_util.h"
#include "fault_util.h"

/* ---- helpers ------------------------------------------------------------------ */

/* A merchant of shard s (of `shards`), the first from `from` on. */
static uint64_t vt_merchant_of(unsigned s, unsigned shards, uint64_t from)
{
    for (uint64_t m = from; m < from + 100000; m++)
        if (checksum_shard(m, shards) == s)
            return m;
    cr_assert_fail("no merchant for shard %u", s);
    return 0;
}

typedef struct vt_load {
    uint64_t merchants[2];
    uint32_t merchant_count;
    uint32_t accounts;
    const char *prefix;
} vt_load;

static void vt_fill_earn(void *ctx, uint64_t i, tally_request *r)
{
    const vt_load *l = ctx;
    char id[48];
    snprintf(id, sizeof(id), "%s-%llu", l->prefix, (unsigned long long)i);
    eu_write(r, TALLY_OP_EARN, l->merchants[i % l->merchant_count], 1 + i / 2 % l->accounts,
             1 + (int64_t)(i % 50), id);
}

static void vt_load_run(tally *t, const vt_load *l, uint64_t n)
{
    int err = 0;
    char msg[160];
    uint64_t bad = eu_pipeline(t, n, 1024, vt_fill_earn, (void *)l, &err, msg, sizeof(msg));
    cr_assert_eq(bad, 0, "%llu of %llu writes failed: %s %s", (unsigned long long)bad,
                 (unsigned long long)n, tally_strerror(err), msg);
}

/* A request answered on a shard thread, waited for by the test. */
typedef struct vt_async {
    tally_request req;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool done;
    _Atomic long *acked; /* writes acknowledged so far, read at completion */
    long acked_at_done;
} vt_async;

static void vt_async_done(tally_request *r)
{
    vt_async *a = r->user;
    pthread_mutex_lock(&a->lock);
    if (a->acked)
        a->acked_at_done = atomic_load(a->acked);
    a->done = true;
    pthread_cond_signal(&a->cond);
    pthread_mutex_unlock(&a->lock);
}

static void vt_async_submit(tally *t, vt_async *a, int op, uint64_t merchant, _Atomic long *acked)
{
    memset(&a->req, 0, sizeof(a->req));
    a->req.op = (uint8_t)op;
    a->req.merchant = merchant;
    a->req.done = vt_async_done;
    a->req.user = a;
    a->done = false;
    a->acked = acked;
    pthread_mutex_init(&a->lock, NULL);
    pthread_cond_init(&a->cond, NULL);
    tally_submit(t, &a->req);
}

static bool vt_async_finished(vt_async *a)
{
    pthread_mutex_lock(&a->lock);
    bool done = a->done;
    pthread_mutex_unlock(&a->lock);
    return done;
}

static void vt_async_wait(vt_async *a)
{
    pthread_mutex_lock(&a->lock);
    while (!a->done)
        pthread_cond_wait(&a->cond, &a->lock);
    pthread_mutex_unlock(&a->lock);
    pthread_mutex_destroy(&a->lock);
    pthread_cond_destroy(&a->cond);
}

/* ---- VERIFY beside the writer ------------------------------------------------------ */

/* A VERIFY of a shard holding a large log is submitted, then writes to the
 * same shard, one at a time, until the VERIFY is answered.  Writes must be
 * acknowledged before it: on the writer thread, the VERIFY's scan ran
 * before any later write was even applied, so none could be (checked: 0
 * with the scan moved back onto the writer). */
Test(verify, writes_on_the_same_shard_are_answered_while_a_verify_of_a_large_log_runs,
     .timeout = 600)
{
    char dir[64];
    eu_tmpdir_mem(dir, "verify");
    tally_options o = {.dir = dir, .shards = 1, .log = eu_log, .segment_bytes = 4u << 20,
                       .state_map_bytes = 1ull << 30};
    tally *t;
    cr_assert_eq(tally_open(&o, &t), 0);
    enum { RECORDS = 300000 };
    vt_load l = {.merchants = {42}, .merchant_count = 1, .accounts = 20000, .prefix = "big"};
    vt_load_run(t, &l, RECORDS);

    _Atomic long acked = 0;
    vt_async v;
    vt_async_submit(t, &v, TALLY_OP_VERIFY, 42, &acked); /* VERIFY m: a merchant's token may */
    long n = 0;
    while (!vt_async_finished(&v) && n < 1000000) {
        char id[32];
        snprintf(id, sizeof(id), "during-%ld", n++);
        cr_assert_eq(eu_earn(t, 42, 1 + n % 7, 1, id, NULL), 0);
        atomic_fetch_add(&acked, 1);
    }
    vt_async_wait(&v);
    cr_assert_eq(v.req.res.status, 0, "VERIFY: %s", v.req.res.message);
    cr_assert_str_eq(v.req.res.message, "ok");
    cr_log_info("VERIFY of %d records: %ld writes to its shard acknowledged before its answer, "
                "%ld in all",
                RECORDS, v.acked_at_done, n);
    cr_assert_geq(v.acked_at_done, 1,
                  "writes on the shard were answered while VERIFY ran (%ld before its answer)",
                  v.acked_at_done);
    tally_shard_stats st;
    tally_shard_stats_get(t, 0, &st);
    cr_assert_geq(st.checkpoint_seq, (uint64_t)RECORDS,
                  "VERIFY checked a checkpoint taken after it arrived");
    tally_close(t);
    eu_rmrf(dir);
}

/* VERIFY and SNAPSHOT asked together, round after round, while writes go
 * on: each snapshot's retention archives segments (to another filesystem:
 * copied) that a VERIFY running beside it may not have scanned yet.  Every
 * VERIFY answers ok, every SNAPSHOT too, and the logs really shrank. */
Test(verify, a_verify_beside_snapshots_that_archive_its_segments_answers_ok, .timeout = 600)
{
    char dir[64], arch[64];
    eu_tmpdir(dir, "verify-arch");
    eu_tmpdir_mem(arch, "verify-arch");
    tally_options o = {.dir = dir, .shards = 2, .log = eu_log, .segment_bytes = 64u << 10,
                       .state_map_bytes = 1ull << 30, .retention = TALLY_RETAIN_ARCHIVE,
                       .archive_dir = arch, .sync = TALLY_SYNC_NONE};
    tally *t;
    cr_assert_eq(tally_open(&o, &t), 0);
    vt_load l = {.merchants = {vt_merchant_of(0, 2, 1), vt_merchant_of(1, 2, 1)},
                 .merchant_count = 2, .accounts = 8};
    char prefix[16];
    for (int round = 0; round < 6; round++) {
        snprintf(prefix, sizeof(prefix), "r%d", round);
        l.prefix = prefix;
        vt_load_run(t, &l, 20000);
        vt_async v, s;
        vt_async_submit(t, &v, TALLY_OP_VERIFY, 0, NULL);
        vt_async_submit(t, &s, TALLY_OP_SNAPSHOT, 0, NULL);
        snprintf(prefix, sizeof(prefix), "w%d", round);
        vt_load_run(t, &l, 2000); /* beside them */
        vt_async_wait(&v);
        vt_async_wait(&s);
        cr_assert_eq(v.req.res.status, 0, "round %d: VERIFY: %s", round, v.req.res.message);
        cr_assert_eq(s.req.res.status, 0, "round %d: SNAPSHOT: %s", round, s.req.res.message);
    }
    for (uint32_t i = 0; i < 2; i++) {
        tally_shard_stats st;
        tally_shard_stats_get(t, i, &st);
        cr_assert_gt(st.log_first_seq, 1, "shard %u archived segments", i);
    }
    tally_close(t);
    eu_rmrf(dir);
    eu_rmrf(arch);
}

/* ---- VERIFY's failure path ------------------------------------------------------------ */

static td vt_td;

static void vt_fini(void)
{
    td_cleanup(&vt_td);
}

static void vt_reply_ok(redisContext *c, const char *cmd)
{
    redisReply *r = td_cmd(c, cmd); /* split at spaces: no format */
    cr_assert_eq(r->type, REDIS_REPLY_STATUS, "%s: %s", cmd, r->str);
    cr_assert_str_eq(r->str, "OK", "%s", cmd);
    freeReplyObject(r);
}

/* cmd answers -ERR verify failed naming every one of `names`. */
static void vt_reply_fault(redisContext *c, const char *cmd, const char *const *names)
{
    redisReply *r = td_cmd(c, cmd); /* split at spaces: no format */
    cr_assert_eq(r->type, REDIS_REPLY_ERROR, "%s answered %s", cmd,
                 r->type == REDIS_REPLY_STATUS ? r->str : "not an error");
    cr_assert(strncmp(r->str, "ERR verify failed: ", 19) == 0, "%s: %s", cmd, r->str);
    for (int i = 0; names[i]; i++)
        cr_assert_not_null(strstr(r->str, names[i]), "%s: '%s' names %s", cmd, r->str, names[i]);
    freeReplyObject(r);
}

/* `tally verify DIR` exits 1 and names every one of `names`. */
static void vt_tool_fault(const char *dir, const char *const *names)
{
    char args[160], out[8192];
    snprintf(args, sizeof(args), "verify '%s'", dir);
    cr_assert_eq(fu_tally_tool(args, out, sizeof(out)), 1, "tally verify: %s", out);
    for (int i = 0; names[i]; i++)
        cr_assert_not_null(strstr(out, names[i]), "tally verify names %s: %s", names[i], out);
}

/* Shard 0 is damaged, shard 1 is not: VERIFY and VERIFY m0 name the
 * fault, VERIFY m1 answers +OK; then (tallyd stopped) the tool names it. */
static void vt_faults_named(redisContext *c, uint64_t m0, uint64_t m1, const char *const *names)
{
    char cmd[64];
    vt_reply_fault(c, "VERIFY", names);
    snprintf(cmd, sizeof(cmd), "VERIFY %llu", (unsigned long long)m0);
    vt_reply_fault(c, cmd, names);
    snprintf(cmd, sizeof(cmd), "VERIFY %llu", (unsigned long long)m1);
    vt_reply_ok(c, cmd);
    redisFree(c);
    td_stop(&vt_td);
    vt_tool_fault(vt_td.dir, names);
}

/* Two shards, each with a merchant and its entries; tallyd is stopped
 * cleanly (a final checkpoint: the next start scans no old segment). */
static void vt_two_shards(uint64_t *m0, uint64_t *m1)
{
    td_init(&vt_td, "verify-dmg");
    const char *const args[] = {"--shards", "2", "--segment-kib", "64", NULL};
    td_start(&vt_td, args);
    *m0 = vt_merchant_of(0, 2, 100);
    *m1 = vt_merchant_of(1, 2, 100);
    redisContext *c = td_connect(&vt_td);
    for (int i = 0; i < 3000; i++) {
        uint64_t m = i % 4 == 3 ? *m1 : *m0;
        redisAppendCommand(c, "EARN %llu %d %d e%d", (unsigned long long)m, 1 + i % 13,
                           1 + i % 90, i);
    }
    for (int i = 0; i < 3000; i++) {
        redisReply *r;
        cr_assert_eq(redisGetReply(c, (void **)&r), REDIS_OK);
        cr_assert_eq(r->type, REDIS_REPLY_ARRAY, "EARN: %s", r->str);
        freeReplyObject(r);
    }
    freeReplyObject(td_cmd(c, "EARN %llu 1000 123456789012 big", (unsigned long long)*m0));
    vt_reply_ok(c, "VERIFY");
    redisFree(c);
    td_stop(&vt_td);
}

/* A flipped bit inside an acknowledged record of shard 0's first segment.
 * The start does not scan it (the state's checkpoint is past it), so the
 * shard opens and serves: VERIFY's own scan is what must find it. */
Test(verify, a_damaged_record_is_named_by_verify_verify_m_and_the_tool, .timeout = 300,
     .fini = vt_fini)
{
    uint64_t m0, m1;
    vt_two_shards(&m0, &m1);
    char seg[160];
    snprintf(seg, sizeof(seg), "%s/shard-000/log-0000000001.seg", vt_td.dir);
    char seg2[160];
    snprintf(seg2, sizeof(seg2), "%s/shard-000/log-0000000002.seg", vt_td.dir);
    cr_assert_eq(access(seg2, F_OK), 0, "shard 0 wrote more than one segment");
    eu_flip_bit(seg, 32 << 10); /* mid-segment: inside a record */
    td_start(&vt_td, NULL);
    redisContext *c = td_connect(&vt_td);
    redisReply *r = td_cmd(c, "BALANCE %llu 1", (unsigned long long)m0);
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY, "shard 0 opened and serves: %s", r->str);
    freeReplyObject(r);
    const char *const names[] = {"shard 0", "log check failed", NULL};
    vt_faults_named(c, m0, m1, names);
}

/* A flipped bit in every copy of one account's value in shard 0's LMDB
 * file.  Nothing reads that account at the start; VERIFY's check of the
 * state reads every account of the checkpoint it verifies. */
Test(verify, a_damaged_state_value_is_named_by_verify_verify_m_and_the_tool, .timeout = 300,
     .fini = vt_fini)
{
    uint64_t m0, m1;
    vt_two_shards(&m0, &m1);
    char mdb[160];
    snprintf(mdb, sizeof(mdb), "%s/shard-000/state/data.mdb", vt_td.dir);
    cr_assert_gt(eu_flip_value(mdb, 123456789012LL), 0, "the value is in data.mdb");
    td_start(&vt_td, NULL);
    redisContext *c = td_connect(&vt_td);
    const char *const names[] = {"checksum mismatch", "accounts", NULL};
    vt_faults_named(c, m0, m1, names);
}
