/*
 * snapshot_test.c — snapshots, retention and rebuilds (engine/snapshot.c,
 * the snapshot and rebuild parts of engine/shard.c, log_retain in
 * engine/log.c) through the public API on real files: balances, replies
 * and history across retention and restarts, a lost or damaged state
 * rebuilt from the snapshot and the log, kill -9 in the middle of
 * snapshots, and the periodic policy.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "checksum.h"
#include "child_util.h"
#include "cluster_util.h"
#include "engine_util.h"
#include "record.h"

/* ---- helpers ------------------------------------------------------------ */

#define SHARD_DIR "%s/shard-000"

static tally *open_dir(const char *dir, int retention, const char *archive, uint64_t every)
{
    tally_options o = {.dir = dir, .shards = 1, .log = eu_log, .segment_bytes = 64u << 10,
                       .state_map_bytes = 1ull << 30, .retention = retention,
                       .archive_dir = archive, .snapshot_every_records = every};
    tally *t;
    cr_assert_eq(tally_open(&o, &t), 0);
    return t;
}

static void snapshot(tally *t)
{
    tally_request r;
    memset(&r, 0, sizeof(r));
    r.op = TALLY_OP_SNAPSHOT;
    cr_assert_eq(tally_call(t, &r), 0, "SNAPSHOT: %s", r.res.message);
}

static void verify_offline(const char *dir)
{
    char msg[512];
    cr_assert_eq(eu_verify_offline(dir, msg, sizeof(msg)), 0, "%s", msg);
}

static int count_files(const char *dir, const char *prefix, const char *suffix)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t l = strlen(de->d_name), sl = strlen(suffix);
        n += strncmp(de->d_name, prefix, strlen(prefix)) == 0 && l >= sl &&
             strcmp(de->d_name + l - sl, suffix) == 0;
    }
    closedir(d);
    return n;
}

/* 100 accounts; each write a 100-byte memo so that segments fill fast. */
static void write_batch(tally *t, int from, int to)
{
    for (int i = from; i < to; i++) {
        tally_request r;
        char id[32];
        snprintf(id, sizeof(id), "w-%d", i);
        eu_write(&r, TALLY_OP_EARN, 7, 1 + (uint64_t)(i % 100), 1 + i % 9, id);
        memset(r.memo, 'm', 100);
        r.memo_len = 100;
        r.flags |= TALLY_REQ_MEMO;
        cr_assert_eq(tally_call(t, &r), 0);
        tally_result_free(&r.res);
    }
}

static int64_t expected(int to, uint64_t account)
{
    int64_t sum = 0;
    for (int i = 0; i < to; i++)
        if (1 + (uint64_t)(i % 100) == account)
            sum += 1 + i % 9;
    return sum;
}

static void check_balances(tally *t, int to)
{
    for (uint64_t a = 1; a <= 100; a += 11) {
        tally_balance b;
        cr_assert_eq(eu_balance(t, 7, a, &b), 0);
        cr_assert_eq(b.available, expected(to, a), "account %llu", (unsigned long long)a);
    }
}

/* ---- tests -------------------------------------------------------------- */

Test(snapshot, retention_drops_covered_segments_and_keeps_balances_replies_and_history,
     .timeout = 120)
{
    char dir[64];
    eu_tmpdir(dir, "snap");
    tally *t = open_dir(dir, TALLY_RETAIN_DELETE, NULL, 0);
    write_batch(t, 0, 2000);
    snapshot(t);
    write_batch(t, 2000, 4000);
    snapshot(t); /* the older of the two kept covers the first segments */
    tally_shard_stats st;
    tally_shard_stats_get(t, 0, &st);
    cr_assert_gt(st.log_first_seq, 1, "retention dropped segments");
    cr_assert_geq(st.snapshot_seq, 4000);
    check_balances(t, 4000);
    /* A recent write replays its original reply; an old one cannot, but
     * is still never applied twice. */
    tally_request r;
    eu_write(&r, TALLY_OP_EARN, 7, 1 + 3999 % 100, 1 + 3999 % 9, "w-3999");
    memset(r.memo, 'm', 100);
    r.memo_len = 100;
    r.flags |= TALLY_REQ_MEMO;
    cr_assert_eq(tally_call(t, &r), 0);
    cr_assert(r.res.replayed);
    eu_write(&r, TALLY_OP_EARN, 7, 1, 1, "w-0");
    memset(r.memo, 'm', 100);
    r.memo_len = 100;
    r.flags |= TALLY_REQ_MEMO;
    cr_assert_eq(tally_call(t, &r), TALLY_EARCHIVED, "%s", r.res.message);
    cr_assert_not_null(strstr(r.res.message, "before the retained log"));
    check_balances(t, 4000);
    cr_assert_eq(eu_find(t, 7, "w-0", NULL), TALLY_EARCHIVED);
    cr_assert_eq(eu_find(t, 7, "w-3999", NULL), 1);
    /* HISTORY pages through what is retained, then says where it ends. */
    uint64_t before = UINT64_MAX;
    int pages = 0, entries = 0, status = 0;
    for (; pages < 200; pages++) {
        eu_read(&r, TALLY_OP_HISTORY, 7, 1);
        r.limit = 7;
        if (before != UINT64_MAX) {
            r.before_seq = before;
            r.flags |= TALLY_REQ_BEFORE;
        }
        status = tally_call(t, &r);
        if (status != 0 || r.res.items_count == 0)
            break;
        entries += (int)r.res.items_count;
        before = r.res.items[r.res.items_count - 1].seq;
        tally_result_free(&r.res);
    }
    cr_assert_eq(status, TALLY_EARCHIVED, "paging ends with a clear error");
    tally_result_free(&r.res);
    cr_assert_gt(entries, 0);
    cr_assert_lt(entries, 40, "only the retained part of the 40 entries");
    tally_close(t);
    /* Restart: the same balances from the state and the retained log. */
    t = open_dir(dir, TALLY_RETAIN_DELETE, NULL, 0);
    check_balances(t, 4000);
    tally_close(t);
    verify_offline(dir);
    eu_rmrf(dir);
}

Test(snapshot, archive_moves_segments_and_the_shard_still_verifies)
{
    char dir[64], arch[96];
    eu_tmpdir(dir, "snap");
    snprintf(arch, sizeof(arch), "%s-archive", dir);
    tally *t = open_dir(dir, TALLY_RETAIN_ARCHIVE, arch, 0);
    write_batch(t, 0, 1500);
    snapshot(t);
    write_batch(t, 1500, 3000);
    snapshot(t);
    tally_close(t);
    char shard_arch[160], shard_dir[128];
    snprintf(shard_arch, sizeof(shard_arch), "%s/shard-000", arch);
    snprintf(shard_dir, sizeof(shard_dir), SHARD_DIR, dir);
    int archived = count_files(shard_arch, "log-", ".seg");
    cr_assert_gt(archived, 0, "segments moved to the archive");
    cr_assert_eq(count_files(shard_dir, "snapshots", ""), 1);
    verify_offline(dir);
    eu_rmrf(dir);
    eu_rmrf(arch);
}

/* ---- several shards archiving at once (issue 13) ------------------------------ */

#define AM_SHARDS 4

/* The log's segment header (log.h): magic, version, shard, index,
 * first_seq, prev, reserved, XXH3 of bytes [0, 56). */
static uint64_t am_get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* The segment indexes of dir's log-*.seg files, sorted, into idx. */
static int am_segments(const char *dir, uint32_t *idx, int cap)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL) {
        unsigned v;
        char tail[8];
        if (sscanf(de->d_name, "log-%10u.%7s", &v, tail) == 2 && strcmp(tail, "seg") == 0) {
            cr_assert_lt(n, cap);
            idx[n++] = v;
        }
    }
    if (d)
        closedir(d);
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && idx[j - 1] > idx[j]; j--) {
            uint32_t x = idx[j];
            idx[j] = idx[j - 1];
            idx[j - 1] = x;
        }
    return n;
}

/* Checks one segment file against the chain so far: its header (this
 * shard, this index, continuing *seq and *prev) and every record in it
 * (checksum, chain link, seqs in order); advances *seq and *prev. */
static void am_check_segment(const char *path, unsigned shard, uint32_t index, uint64_t *seq,
                             uint64_t *prev)
{
    size_t len = 0;
    int fd = open(path, O_RDONLY);
    cr_assert_geq(fd, 0, "%s", path);
    struct stat st;
    cr_assert_eq(fstat(fd, &st), 0);
    len = (size_t)st.st_size;
    uint8_t *b = malloc(len);
    cr_assert(pread(fd, b, len, 0) == (ssize_t)len, "%s", path);
    close(fd);
    cr_assert(len >= 64 && memcmp(b, "TALLYSEG", 8) == 0, "%s: a segment header", path);
    cr_assert_eq(am_get64(b + 56), checksum64(b, 56, 0), "%s: header checksum", path);
    cr_assert_eq((uint32_t)(am_get64(b + 8) >> 32), shard, "%s: written by shard %u", path,
                 shard);
    cr_assert_eq(am_get64(b + 16), index, "%s: segment index", path);
    cr_assert_eq(am_get64(b + 24), *seq + 1, "%s: starts where the previous one ended", path);
    cr_assert_eq(am_get64(b + 32), *prev, "%s: chained to the previous segment", path);
    record *r = malloc(sizeof(*r));
    for (size_t off = 64; off + 8 <= len;) {
        size_t n;
        uint64_t sum;
        int rc = record_decode(b + off, len - off, r, &n, &sum);
        if (rc == RECORD_END)
            break;
        cr_assert_eq(rc, RECORD_OK, "%s: record at %zu decodes (%d)", path, off, rc);
        cr_assert_eq(r->prev, *prev, "%s: record at %zu is chained", path, off);
        cr_assert(r->seq == *seq + 1 || (r->seq == *seq && r->part > 0),
                  "%s: seq %llu after %llu", path, (unsigned long long)r->seq,
                  (unsigned long long)*seq);
        *seq = r->seq;
        *prev = sum;
        off += n;
    }
    free(r);
    free(b);
}

typedef struct am_load {
    uint64_t merchants[AM_SHARDS]; /* one of each shard */
    uint64_t base;                 /* ids of this round start here */
} am_load;

static void am_fill(void *ctx, uint64_t i, tally_request *r)
{
    const am_load *l = ctx;
    char id[32];
    i += l->base;
    snprintf(id, sizeof(id), "am-%llu", (unsigned long long)i);
    eu_write(r, TALLY_OP_EARN, l->merchants[i % AM_SHARDS], 1 + i / AM_SHARDS % 50, 1 + i % 9,
             id);
    memset(r->memo, 'm', 80);
    r->memo_len = 80;
    r->flags |= TALLY_REQ_MEMO;
}

/* Four shards under load, each taking snapshots by count and all of them
 * at once by SNAPSHOT, archive their covered segments into a directory on
 * another filesystem (copied, not renamed: the path that shared one
 * buffer across shard threads, d1b28bc).  Then, per shard, its archived
 * and live segments are one unbroken chain — every index once, none
 * lost, each header and record continuing the one before, written by
 * that shard — and with the archive put back the whole log replays into
 * the stored state (tally_verify_full from seq 1). */
Test(snapshot, shards_archiving_at_once_leave_each_an_unbroken_chain_of_segments,
     .timeout = 600)
{
    char dir[64], arch[64];
    eu_tmpdir(dir, "snap-mix");
    eu_tmpdir_mem(arch, "snap-mix-archive");
    tally_options o = {.dir = dir, .shards = AM_SHARDS, .log = eu_log, .sync = TALLY_SYNC_NONE,
                       .segment_bytes = 64u << 10, .state_map_bytes = 1ull << 30,
                       .retention = TALLY_RETAIN_ARCHIVE, .archive_dir = arch,
                       .snapshot_every_records = 3000};
    tally *t;
    cr_assert_eq(tally_open(&o, &t), 0);
    enum { ROUNDS = 8, PER_ROUND = 12000 };
    am_load l = {0};
    for (unsigned s = 0; s < AM_SHARDS; s++) {
        uint64_t m = 1;
        while (checksum_shard(m, AM_SHARDS) != s)
            m++;
        l.merchants[s] = m;
    }
    for (int round = 0; round < ROUNDS; round++) {
        int err = 0;
        char msg[160];
        l.base = (uint64_t)round * PER_ROUND;
        uint64_t bad = eu_pipeline(t, PER_ROUND, 1024, am_fill, &l, &err, msg, sizeof(msg));
        cr_assert_eq(bad, 0, "%s %s", tally_strerror(err), msg);
        snapshot(t); /* every shard at once */
    }
    tally_close(t);
    for (unsigned s = 0; s < AM_SHARDS; s++) {
        char live_dir[128], arch_dir[128], path[256];
        snprintf(live_dir, sizeof(live_dir), "%s/shard-%03u", dir, s);
        snprintf(arch_dir, sizeof(arch_dir), "%s/shard-%03u", arch, s);
        uint32_t live[512], old[512];
        int nl = am_segments(live_dir, live, 512), na = am_segments(arch_dir, old, 512);
        cr_assert_gt(na, 4, "shard %u archived segments (%d)", s, na);
        cr_assert_gt(nl, 0);
        cr_assert_lt(old[na - 1], live[0], "shard %u: archived %u is also live", s,
                     old[na - 1]);
        uint64_t seq = 0, prev = 0;
        for (int i = 0; i < na + nl; i++) {
            uint32_t index = i < na ? old[i] : live[i - na];
            cr_assert_eq(index, (uint32_t)i + 1, "shard %u: segment %d is missing", s, i + 1);
            snprintf(path, sizeof(path), "%s/log-%010u.seg", i < na ? arch_dir : live_dir,
                     index);
            am_check_segment(path, s, index, &seq, &prev);
        }
        cr_assert_eq(seq, ROUNDS * PER_ROUND / AM_SHARDS, "shard %u: every record is in the chain",
                     s);
        char cmd[400];
        snprintf(cmd, sizeof(cmd), "cp '%s'/log-*.seg '%s'/", arch_dir, live_dir);
        cr_assert_eq(system(cmd), 0);
    }
    verify_offline(dir);
    eu_rmrf(dir);
    eu_rmrf(arch);
}

Test(snapshot, a_lost_state_is_rebuilt_from_the_snapshot_and_the_retained_log)
{
    char dir[64], cmd[200];
    eu_tmpdir(dir, "snap");
    tally *t = open_dir(dir, TALLY_RETAIN_DELETE, NULL, 0);
    write_batch(t, 0, 1500);
    snapshot(t);
    write_batch(t, 1500, 3000);
    snapshot(t);
    write_batch(t, 3000, 3500); /* a tail after the last snapshot */
    tally_close(t);
    snprintf(cmd, sizeof(cmd), "rm -rf " SHARD_DIR "/state", dir);
    cr_assert_eq(system(cmd), 0);
    eu_log_warnings = 0;
    t = open_dir(dir, TALLY_RETAIN_DELETE, NULL, 0);
    cr_assert_gt(eu_log_warnings, 0, "the rebuild is reported");
    check_balances(t, 3500);
    cr_assert_eq(eu_find(t, 7, "w-3499", NULL), 1);
    write_batch(t, 3500, 3600);
    check_balances(t, 3600);
    tally_close(t);
    verify_offline(dir);
    eu_rmrf(dir);
}

Test(snapshot, a_damaged_state_value_is_refused_then_rebuilt_at_the_next_open)
{
    char dir[64], path[160];
    eu_tmpdir(dir, "snap");
    tally *t = open_dir(dir, TALLY_RETAIN_KEEP, NULL, 0);
    cr_assert_eq(eu_earn(t, 7, 1000, 123456789012LL, "big", NULL), 0);
    write_batch(t, 0, 300);
    tally_close(t);
    /* Account 1000's value holds 123456789012 (its earned and its pool):
     * flip a bit in each copy of it. */
    snprintf(path, sizeof(path), SHARD_DIR "/state/data.mdb", dir);
    cr_assert_gt(eu_flip_value(path, 123456789012LL), 0, "the value is in data.mdb");
    t = open_dir(dir, TALLY_RETAIN_KEEP, NULL, 0);
    tally_request r;
    /* A debit reads the damaged lot: the shard is refused, never a wrong
     * balance. */
    int rc = eu_redeem(t, 7, 1000, 5, "after-damage", NULL);
    cr_assert_eq(rc, TALLY_ECORRUPT, "%s", tally_strerror(rc));
    tally_balance b;
    cr_assert_eq(eu_balance(t, 7, 1, &b), TALLY_ECORRUPT, "reads are refused too");
    tally_shard_stats st;
    tally_shard_stats_get(t, 0, &st);
    cr_assert_eq(st.status, TALLY_ECORRUPT);
    cr_assert_not_null(strstr(st.status_message, "checksum mismatch"), "%s", st.status_message);
    tally_close(t);
    snprintf(path, sizeof(path), SHARD_DIR "/state/REBUILD", dir);
    cr_assert_eq(access(path, F_OK), 0, "marked for a rebuild");
    /* The next open rebuilds the state from the log: served again. */
    t = open_dir(dir, TALLY_RETAIN_KEEP, NULL, 0);
    cr_assert_eq(eu_balance(t, 7, 1000, &b), 0);
    cr_assert_eq(b.available, 123456789012LL);
    cr_assert_eq(eu_balance(t, 7, 1, &b), 0);
    cr_assert_eq(b.available, expected(300, 1));
    cr_assert_eq(eu_redeem(t, 7, 1000, 5, "after-rebuild", NULL), 0);
    (void)r;
    tally_close(t);
    verify_offline(dir);
    eu_rmrf(dir);
}

Test(snapshot, a_damaged_snapshot_is_found_by_verify_and_skipped_by_a_rebuild)
{
    char dir[64], snaps[128], cmd[300];
    eu_tmpdir(dir, "snap");
    tally *t = open_dir(dir, TALLY_RETAIN_KEEP, NULL, 0);
    write_batch(t, 0, 500);
    snapshot(t);
    write_batch(t, 500, 1000);
    snapshot(t);
    tally_close(t);
    snprintf(snaps, sizeof(snaps), SHARD_DIR "/snapshots", dir);
    cr_assert_eq(count_files(snaps, "snap-", ".meta"), 2);
    /* Damage the newest snapshot's data (a byte in its middle). */
    snprintf(cmd, sizeof(cmd),
             "f=$(ls %s/snap-*.mdb | sort | tail -1); "
             "printf '\\xff' | dd of=$f bs=1 seek=$(( $(stat -c %%s $f) / 2 )) conv=notrunc "
             "2>/dev/null",
             snaps);
    cr_assert_eq(system(cmd), 0);
    tally_options ro = {.dir = dir, .read_only = true, .log = eu_log};
    cr_assert_eq(tally_open(&ro, &t), 0);
    char msg[512];
    cr_assert_eq(tally_verify_full(t, msg, sizeof(msg)), TALLY_ECORRUPT);
    cr_assert_not_null(strstr(msg, "checksum mismatch"), "%s", msg);
    tally_close(t);
    /* A lost state is rebuilt from the older, sound snapshot. */
    snprintf(cmd, sizeof(cmd), "rm -rf " SHARD_DIR "/state", dir);
    cr_assert_eq(system(cmd), 0);
    t = open_dir(dir, TALLY_RETAIN_KEEP, NULL, 0);
    check_balances(t, 1000);
    tally_close(t);
    eu_rmrf(dir);
}

Test(snapshot, the_periodic_policy_takes_snapshots_by_record_count)
{
    char dir[64], snaps[128];
    eu_tmpdir(dir, "snap");
    tally *t = open_dir(dir, TALLY_RETAIN_DELETE, NULL, 400);
    write_batch(t, 0, 2000);
    tally_shard_stats st;
    for (int i = 0; i < 300; i++) {
        tally_shard_stats_get(t, 0, &st);
        if (st.snapshots >= 3 && st.log_first_seq > 1)
            break;
        usleep(10000);
    }
    cr_assert_geq(st.snapshots, 3, "a snapshot every 400 records");
    cr_assert_gt(st.log_first_seq, 1);
    tally_close(t);
    snprintf(snaps, sizeof(snaps), SHARD_DIR "/snapshots", dir);
    cr_assert_eq(count_files(snaps, "snap-", ".meta"), 2, "two are kept");
    verify_offline(dir);
    eu_rmrf(dir);
}

/* A writer that loops: writes, snapshots (retention on), forever (the
 * child process of the next test, child_util.h: DIR CYCLE). */
int snapshot_child_main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    const char *dir = argv[0];
    int cycle = atoi(argv[1]);
    tally_options o = {.dir = dir, .shards = 1, .log = eu_log, .segment_bytes = 64u << 10,
                       .state_map_bytes = 1ull << 30, .retention = TALLY_RETAIN_DELETE};
    tally *t;
    if (tally_open(&o, &t) != 0)
        _exit(2);
    for (int i = 0;; i++) {
        tally_request r;
        char id[48];
        snprintf(id, sizeof(id), "k%d-%d", cycle, i);
        eu_write(&r, TALLY_OP_EARN, 7, 1 + (uint64_t)(i % 50), 3, id);
        memset(r.memo, 'k', 100);
        r.memo_len = 100;
        r.flags |= TALLY_REQ_MEMO;
        tally_call(t, &r);
        if (i % 300 == 299) {
            memset(&r, 0, sizeof(r));
            r.op = TALLY_OP_SNAPSHOT;
            tally_call(t, &r);
        }
    }
}

static uint64_t snap_clock_ms;
static uint64_t snap_clock(void *ctx)
{
    (void)ctx;
    return __atomic_load_n(&snap_clock_ms, __ATOMIC_SEQ_CST);
}

static uint64_t snapshots_of(tally *t)
{
    tally_shard_stats st;
    cr_assert_eq(tally_shard_stats_get(t, 0, &st), 0);
    return st.snapshots;
}

/* --snapshot-every 1m: on the engine's clock, which the test moves. */
Test(snapshot, the_periodic_policy_takes_snapshots_by_time)
{
    char dir[64];
    eu_tmpdir(dir, "snap");
    snap_clock_ms = 1700000000000ull;
    tally_options o = {.dir = dir, .shards = 1, .log = eu_log, .segment_bytes = 64u << 10,
                       .state_map_bytes = 1ull << 30, .snapshot_every_ms = 60000,
                       .clock = snap_clock};
    tally *t;
    cr_assert_eq(tally_open(&o, &t), 0);
    write_batch(t, 0, 50);
    __atomic_add_fetch(&snap_clock_ms, 30000, __ATOMIC_SEQ_CST);
    write_batch(t, 50, 100);
    usleep(1500000); /* a sweep turn or more: the policy is looked at */
    cr_assert_eq(snapshots_of(t), 0, "none before a minute has passed");
    for (int round = 1; round <= 2; round++) {
        __atomic_add_fetch(&snap_clock_ms, 31000 + 30000 * (round - 1), __ATOMIC_SEQ_CST);
        write_batch(t, 100 * round, 100 * round + 10);
        for (int i = 0; i < 1000 && snapshots_of(t) < (uint64_t)round; i++)
            usleep(10000);
        cr_assert_eq(snapshots_of(t), (uint64_t)round, "one snapshot after minute %d", round);
    }
    tally_close(t);
    verify_offline(dir);
    eu_rmrf(dir);
}

Test(snapshot, kill_9_during_snapshots_leaves_the_old_or_the_new_never_a_half_one,
     .timeout = 240)
{
    char dir[64], snaps[128];
    eu_tmpdir(dir, "snap");
    snprintf(snaps, sizeof(snaps), SHARD_DIR "/snapshots", dir);
    srand((unsigned)getpid());
    int published_max = 0;
    uint64_t pace_ms = 0;
    for (int cycle = 0; cycle < 12; cycle++) {
        char cycle_s[16];
        snprintf(cycle_s, sizeof(cycle_s), "%d", cycle);
        uint64_t t0 = cu_mono_ms();
        pid_t pid = cu_spawn("snapshot", (const char *const[]){dir, cycle_s, NULL});
        if (cycle == 0) {
            /* This machine's pace (a sanitizer, a busy CPU): from the start
             * to the first published snapshot.  Fixed delays cut every child
             * before its first snapshot on a slow run. */
            while (count_files(snaps, "snap-", ".meta") == 0 && cu_mono_ms() - t0 < 120000)
                usleep(5000);
            pace_ms = cu_mono_ms() - t0;
            cr_assert_gt(count_files(snaps, "snap-", ".meta"), 0, "a snapshot within 120 s");
        } else {
            /* Kills from half to one and a half of that: some before the
             * first snapshot, most while one is being written or published. */
            usleep((useconds_t)((pace_ms / 2 + (uint64_t)rand() % (pace_ms + 1)) * 1000));
        }
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        /* Offline: whatever is published checks out, and the state (with
         * the retained log, and every snapshot) verifies. */
        verify_offline(dir);
        int n = count_files(snaps, "snap-", ".meta");
        if (n > published_max)
            published_max = n;
        /* A normal open clears leftovers of the snapshot that was cut. */
        tally *t = open_dir(dir, TALLY_RETAIN_DELETE, NULL, 0);
        tally_close(t);
        cr_assert_eq(count_files(snaps, "snap-", ".tmp"), 0, "no leftover after an open");
    }
    cr_assert_gt(published_max, 0, "snapshots were published between the kills");
    eu_rmrf(dir);
}
