/*
 * checkpoint_test.c — a ledger's checkpoints driven directly (log and
 * ledger opened as a shard or `tally import` opens them): a synchronous
 * checkpoint that follows an asynchronous one which has already ended.
 */
#include <criterion/criterion.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine_util.h"
#include "ledger.h"
#include "log.h"

static _Atomic int committed;

static void on_done(void *ctx)
{
    (void)ctx;
    atomic_store(&committed, 1);
}

static void earn(ledger *l, uint64_t account, const char *id, uint64_t now_ms)
{
    tally_request r;
    eu_write(&r, TALLY_OP_EARN, 1, account, 10, id);
    cr_assert_eq(ledger_execute(l, &r, now_ms), 0);
    cr_assert_eq(r.res.status, 0, "%s: %s", id, r.res.message);
    tally_result_free(&r.res);
}

/* The outcome of an asynchronous commit that ended before anyone asked
 * for it must still reach the id index: it used to be dropped, so the
 * index kept its frozen memtable and the synchronous checkpoint that
 * followed (tally import's last, a shard's on close) failed with -EBUSY. */
Test(checkpoint, a_checkpoint_after_an_asynchronous_one_that_already_ended_commits_both)
{
    char dir[64], state_dir[128];
    eu_tmpdir(dir, "checkpoint");
    snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
    log_options lo = {.dir = dir, .segment_bytes = 1u << 20, .log = eu_log};
    log_recovery rec;
    log_t *log;
    cr_assert_eq(log_open(&lo, &log, &rec), 0);
    ledger_options o = {.dir = state_dir, .map_bytes = 1ull << 30, .log = eu_log};
    ledger *l;
    cr_assert_eq(ledger_open(&o, log, &l), 0);
    uint64_t now = 1700000000000ull;
    char id[32];
    for (int i = 0; i < 100; i++) {
        snprintf(id, sizeof(id), "first-%d", i);
        earn(l, 1 + (uint64_t)i % 7, id, now++);
    }
    cr_assert_eq(log_flush_sync(log), 0);
    uint64_t first = log_last_seq(log);
    /* Set aside with the id index's memtable, committed on its thread, and
     * left to end without being collected. */
    cr_assert_eq(ledger_checkpoint_freeze(l, first), 0);
    cr_assert_eq(ledger_checkpoint_commit(l, on_done, NULL), 0);
    for (int i = 0; i < 1000 && !atomic_load(&committed); i++)
        usleep(10000);
    cr_assert(atomic_load(&committed), "the commit did not end in 10 s");
    for (int i = 0; i < 100; i++) {
        snprintf(id, sizeof(id), "second-%d", i);
        earn(l, 1 + (uint64_t)i % 7, id, now++);
    }
    cr_assert_eq(log_flush_sync(log), 0);
    uint64_t second = log_last_seq(log);
    int rc = ledger_checkpoint(l, second);
    cr_assert_eq(rc, 0, "checkpoint: %s", tally_strerror(rc));
    cr_assert_eq(ledger_checkpoint_seq(l), second);
    cr_assert_eq(ledger_ids_seq(l), second);
    char msg[256];
    cr_assert_eq(ledger_verify(l, 0, msg, sizeof(msg)), 0, "%s", msg);
    ledger_close(l);
    /* Reopened, both checkpoints are there and every id is known. */
    cr_assert_eq(ledger_open(&o, log, &l), 0);
    cr_assert_eq(ledger_checkpoint_seq(l), second);
    tally_request r;
    eu_write(&r, TALLY_OP_EARN, 1, 1, 10, "first-0");
    cr_assert_eq(ledger_execute(l, &r, now++), 0);
    cr_assert(r.res.replayed, "first-0 is not known after the reopen");
    tally_result_free(&r.res);
    ledger_close(l);
    log_close(log);
    eu_rmrf(dir);
}
