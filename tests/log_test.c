/*
 * log_test.c — the log module alone (engine/log.h), driven without the
 * ring: the test seals batches and writes their pieces itself, so it can
 * leave any of them unwritten, half written or sector-scrambled, then
 * recover, exactly as a kill -9 or a power cut would leave the files.
 *
 * Issue 10: a kill -9 left a rollover's next-segment header on disk while
 * the tail of the previous segment (the same, unacknowledged batch) never
 * landed, and recovery refused the shard ("segment N does not continue
 * the chain").  These tests enumerate every way the writes of a batch that
 * crosses a segment boundary can land or not land.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine_util.h"
#include "ledger.h"
#include "log.h"

#define LT_SEG (64u << 10)
#define LT_SECTOR 512u

/* ---- building logs -------------------------------------------------------- */

/* A record whose memo says its seq, so a recovered log can be checked
 * record by record. */
static void lt_record(record *r, uint64_t seq, size_t memo_len)
{
    memset(r, 0, sizeof(*r));
    r->type = RECORD_ENTRY;
    r->kind = TALLY_KIND_EARN;
    r->merchant = 7;
    r->account = 1 + seq % 5;
    r->amount = r->points = (int64_t)seq;
    r->id_len = (uint8_t)snprintf(r->id, sizeof(r->id), "r%llu", (unsigned long long)seq);
    r->memo_len = (uint8_t)memo_len;
    for (size_t i = 0; i < memo_len; i++)
        r->memo[i] = (char)('a' + (seq + i) % 26);
}

static log_t *lt_open(const char *dir, int *status, uint64_t *last_seq)
{
    log_options o = {.dir = dir, .shard = 3, .segment_bytes = LT_SEG, .log = eu_log};
    log_t *l = NULL;
    log_recovery rec;
    cr_assert_eq(log_open(&o, &l, &rec), 0);
    if (status)
        *status = rec.status;
    if (last_seq)
        *last_seq = rec.last_seq;
    return l;
}

/* Appends n records to the filling batch; *loc gets the last one's. */
static void lt_append(log_t *l, int n, size_t memo_len, log_loc *loc)
{
    for (int i = 0; i < n; i++) {
        record r;
        lt_record(&r, log_last_seq(l) + 1, memo_len);
        log_loc at;
        cr_assert_eq(log_append(l, &r, 1000 + log_last_seq(l), &at), 0);
        if (loc)
            *loc = at;
    }
}

static void lt_pwrite(const log_io *io, size_t from, size_t len)
{
    cr_assert_eq(pwrite(io->fd, (const char *)io->buf + from, len, (off_t)(io->off + from)),
                 (ssize_t)len);
}

/* Writes a sealed batch whole and marks it durable. */
static void lt_land(log_t *l, const log_batch *b)
{
    for (uint32_t i = 0; i < b->count; i++)
        lt_pwrite(&b->io[i], 0, b->io[i].len);
    log_complete(l, 0);
}

/* The scene of every case: acknowledged batches fill segment 1, then the
 * victim batch (sealed, not written) crosses into segment 2.  `per_batch`
 * records of `memo_len` memo bytes each move where the boundary falls. */
typedef struct lt_scene {
    char dir[64];
    log_t *log;
    log_batch victim;
    uint64_t acked_seq;  /* last acknowledged record */
    log_loc acked_loc;   /* where it is */
    uint8_t *pieces[2];  /* copies of the victim's writes */
} lt_scene;

static void lt_scene_make(lt_scene *s, int per_batch, size_t memo_len)
{
    memset(s, 0, sizeof(*s));
    eu_tmpdir_mem(s->dir, "logt");
    s->log = lt_open(s->dir, NULL, NULL);
    for (;;) {
        log_loc loc;
        lt_append(s->log, per_batch, memo_len, &loc);
        log_batch b;
        log_seal(s->log, &b);
        cr_assert(b.count >= 1);
        if (b.count == 2) {
            s->victim = b;
            break;
        }
        lt_land(s->log, &b);
        s->acked_seq = b.last_seq;
        s->acked_loc = loc;
    }
    cr_assert_gt(s->acked_seq, 0);
    cr_assert_gt(s->victim.io[0].len, 0);
    for (int i = 0; i < 2; i++) {
        s->pieces[i] = malloc(s->victim.io[i].len);
        memcpy(s->pieces[i], s->victim.io[i].buf, s->victim.io[i].len);
    }
}

static void lt_scene_free(lt_scene *s)
{
    if (s->log)
        log_close(s->log);
    free(s->pieces[0]);
    free(s->pieces[1]);
    eu_rmrf(s->dir);
}

/* The process dies: nothing more is written, the log's memory is gone. */
static void lt_die(lt_scene *s)
{
    log_close(s->log);
    s->log = NULL;
}

static void lt_seg_path(const lt_scene *s, uint32_t index, const char *suffix, char *out)
{
    snprintf(out, 200, "%s/log-%010u.seg%s", s->dir, index, suffix);
}

/* ---- checking a recovered log ------------------------------------------- */

/* Every record 1..last is the one appended with that seq (whole, in
 * order); nothing acknowledged is missing; writing resumes and survives a
 * reopen.  Returns the recovered last seq. */
static uint64_t lt_check_recovered(lt_scene *s, const char *what)
{
    int status;
    uint64_t last;
    log_t *l = lt_open(s->dir, &status, &last);
    cr_assert_eq(status, 0, "%s: recovery refused the log", what);
    cr_assert_geq(last, s->acked_seq, "%s: acknowledged records lost (last %llu < %llu)", what,
                  (unsigned long long)last, (unsigned long long)s->acked_seq);
    cr_assert_leq(last, s->victim.last_seq, "%s", what);
    log_iter it;
    cr_assert_eq(log_iter_init(l, 0, &it), 0);
    record r, want;
    log_loc loc;
    uint64_t n = 0;
    int rc;
    while ((rc = log_iter_next(&it, &r, &loc)) == 1) {
        n++;
        lt_record(&want, n, r.memo_len);
        cr_assert_eq(r.seq, n, "%s", what);
        cr_assert(r.id_len == want.id_len && memcmp(r.id, want.id, r.id_len) == 0, "%s", what);
        cr_assert(memcmp(r.memo, want.memo, r.memo_len) == 0, "%s: record %llu changed", what,
                  (unsigned long long)n);
    }
    cr_assert_eq(rc, 0, "%s: iteration", what);
    cr_assert_eq(n, last, "%s", what);
    /* Writing goes on from there, across the boundary again. */
    lt_append(l, 40, 120, NULL);
    log_batch b;
    log_seal(l, &b);
    lt_land(l, &b);
    uint64_t end = b.last_seq;
    log_close(l);
    l = lt_open(s->dir, &status, &last);
    cr_assert_eq(status, 0, "%s: the log written after recovery", what);
    cr_assert_eq(last, end, "%s", what);
    log_close(l);
    return end;
}

/* ---- kill -9: any prefix of each write, in any combination ----------------- */

/* Prefix lengths to try for a write of len bytes: every sector boundary
 * and the whole. */
static int lt_prefixes(size_t len, size_t *out, int cap)
{
    int n = 0;
    for (size_t p = 0; p < len && n < cap - 1; p += LT_SECTOR)
        out[n++] = p;
    out[n++] = len;
    return n;
}

static void lt_kill_cases(int per_batch, size_t memo_len)
{
    lt_scene probe;
    lt_scene_make(&probe, per_batch, memo_len);
    size_t p0[64], p1[64];
    int n0 = lt_prefixes(probe.victim.io[0].len, p0, 64);
    int n1 = lt_prefixes(probe.victim.io[1].len, p1, 64);
    lt_scene_free(&probe);
    for (int a = 0; a < n0; a++)
        for (int b = 0; b < n1; b++) {
            lt_scene s;
            lt_scene_make(&s, per_batch, memo_len);
            lt_pwrite(&s.victim.io[0], 0, p0[a]);
            lt_pwrite(&s.victim.io[1], 0, p1[b]);
            lt_die(&s);
            char what[96];
            snprintf(what, sizeof(what), "kill: %zu/%zu and %zu/%zu bytes landed", p0[a],
                     s.victim.io[0].len, p1[b], s.victim.io[1].len);
            uint64_t end = lt_check_recovered(&s, what);
            cr_assert_gt(end, s.acked_seq);
            lt_scene_free(&s);
        }
}

Test(log, kill_during_a_batch_across_segments_never_refuses_the_log)
{
    /* Three places for the boundary: early, middle, late in the batch. */
    lt_kill_cases(8, 120);
    lt_kill_cases(5, 60);
    lt_kill_cases(12, 128);
}

Test(log, next_segment_header_alone_is_a_torn_tail)
{
    /* The regression of issue 10 (seed 939): segment 2 holds a valid
     * header and nothing else; segment 1's tail never landed. */
    lt_scene s;
    lt_scene_make(&s, 8, 120);
    lt_die(&s);
    int status;
    uint64_t last;
    log_t *l = lt_open(s.dir, &status, &last);
    cr_assert_eq(status, 0);
    cr_assert_eq(last, s.acked_seq);
    log_close(l);
    char p[200];
    lt_seg_path(&s, 2, "", p);
    cr_assert_neq(access(p, F_OK), 0, "the header-only segment was removed");
    lt_check_recovered(&s, "header only");
    lt_scene_free(&s);
}

Test(log, crash_before_the_rollover_rename_leaves_a_temp_file_that_is_removed)
{
    lt_scene s;
    lt_scene_make(&s, 8, 120);
    lt_die(&s);
    char seg2[200], tmp2[200];
    lt_seg_path(&s, 2, "", seg2);
    lt_seg_path(&s, 2, ".tmp", tmp2);
    cr_assert_eq(rename(seg2, tmp2), 0); /* the rename never reached the disk */
    lt_check_recovered(&s, "rename lost");
    cr_assert_neq(access(tmp2, F_OK), 0);
    lt_scene_free(&s);
}

/* ---- power loss: any subset of the unflushed sectors --------------------- */

Test(log, power_loss_during_a_batch_across_segments_keeps_every_acknowledged_record)
{
    lt_scene probe;
    lt_scene_make(&probe, 8, 120);
    size_t s0 = (probe.victim.io[0].len + LT_SECTOR - 1) / LT_SECTOR;
    size_t s1 = (probe.victim.io[1].len + LT_SECTOR - 1) / LT_SECTOR;
    lt_scene_free(&probe);
    size_t sectors = s0 + s1;
    cr_assert_leq(sectors, 20);
    unsigned seed = 10;
    /* Every subset when there are few sectors, else 512 random ones. */
    uint32_t cases = sectors <= 9 ? 1u << sectors : 512;
    for (uint32_t c = 0; c < cases; c++) {
        uint32_t mask = sectors <= 9 ? c : (uint32_t)rand_r(&seed);
        lt_scene s;
        lt_scene_make(&s, 8, 120);
        for (size_t k = 0; k < sectors; k++) {
            if (!(mask >> k & 1))
                continue;
            const log_io *io = k < s0 ? &s.victim.io[0] : &s.victim.io[1];
            size_t from = (k < s0 ? k : k - s0) * LT_SECTOR;
            size_t len = io->len - from < LT_SECTOR ? io->len - from : LT_SECTOR;
            lt_pwrite(io, from, len);
        }
        lt_die(&s);
        char what[64];
        snprintf(what, sizeof(what), "power loss: sector mask %#x", mask);
        lt_check_recovered(&s, what);
        lt_scene_free(&s);
    }
}

/* ---- a kill during recovery itself ---------------------------------------- */

/* A seam whose calls fail once `left` reaches zero: the process died
 * there (calls before it took effect, later ones never happened). */
static int lt_left;

static ssize_t lt_dying_pwrite(void *ctx, int fd, const void *buf, size_t len, uint64_t off)
{
    (void)ctx;
    if (lt_left-- <= 0)
        return -EIO;
    ssize_t n = pwrite(fd, buf, len, (off_t)off);
    return n < 0 ? -errno : n;
}

static int lt_dying_call(int rc)
{
    return lt_left-- <= 0 ? -EIO : rc;
}

static int lt_dying_fdatasync(void *ctx, int fd)
{
    (void)ctx;
    return lt_dying_call(0) < 0 ? -EIO : (fdatasync(fd) < 0 ? -errno : 0);
}

static int lt_dying_unlink(void *ctx, const char *path)
{
    (void)ctx;
    return lt_dying_call(0) < 0 ? -EIO : (unlink(path) < 0 ? -errno : 0);
}

static int lt_dying_fsync_dir(void *ctx, const char *dir)
{
    const os_ops *o = os_default();
    return lt_dying_call(0) < 0 ? -EIO : o->fsync_dir(ctx, dir);
}

Test(log, kill_at_every_step_of_recovery_then_restart_recovers_the_same_log)
{
    for (int steps = 0; steps < 12; steps++) {
        lt_scene s;
        lt_scene_make(&s, 8, 120);
        /* Segment 2 whole, segment 1's tail missing: recovery zeroes and
         * removes what the torn batch left. */
        lt_pwrite(&s.victim.io[1], 0, s.victim.io[1].len);
        lt_die(&s);
        os_ops dying = *os_default();
        dying.pwrite = lt_dying_pwrite;
        dying.fdatasync = lt_dying_fdatasync;
        dying.unlink = lt_dying_unlink;
        dying.fsync_dir = lt_dying_fsync_dir;
        lt_left = steps;
        log_options o = {.dir = s.dir, .shard = 3, .segment_bytes = LT_SEG, .os = &dying,
                         .log = eu_log};
        log_t *l = NULL;
        log_recovery rec;
        if (log_open(&o, &l, &rec) == 0)
            log_close(l); /* it got through before dying */
        char what[64];
        snprintf(what, sizeof(what), "killed after %d recovery steps", steps);
        lt_check_recovered(&s, what);
        lt_scene_free(&s);
    }
}

Test(log, leftover_temp_segment_from_a_helper_is_removed_at_open)
{
    lt_scene s;
    lt_scene_make(&s, 8, 120);
    lt_land(s.log, &s.victim);
    s.acked_seq = s.victim.last_seq;
    lt_die(&s);
    char tmp3[200];
    lt_seg_path(&s, 3, ".tmp", tmp3);
    FILE *f = fopen(tmp3, "w");
    cr_assert(f);
    cr_assert_eq(ftruncate(fileno(f), LT_SEG), 0);
    fclose(f);
    lt_check_recovered(&s, "temp leftover");
    cr_assert_neq(access(tmp3, F_OK), 0);
    lt_scene_free(&s);
}

/* ---- damage before the boundary is still corruption ----------------------- */

/* Flips a bit of the byte `delta` bytes into the record at loc, in the
 * segment file of the log in dir. */
static void lt_flip_in(const char *dir, log_loc loc, uint64_t delta)
{
    char p[200];
    snprintf(p, sizeof(p), "%s/log-%010u.seg", dir, (uint32_t)(loc >> 32));
    int fd = open(p, O_RDWR);
    cr_assert(fd >= 0);
    off_t at = (off_t)((loc & 0xffffffffu) * 8 + delta);
    uint8_t b;
    cr_assert_eq(pread(fd, &b, 1, at), 1);
    b ^= 0x10;
    cr_assert_eq(pwrite(fd, &b, 1, at), 1);
    close(fd);
}

static void lt_flip(const lt_scene *s, log_loc loc, uint64_t delta)
{
    lt_flip_in(s->dir, loc, delta);
}

Test(log, damaged_acknowledged_record_before_a_rollover_refuses_the_log)
{
    /* The victim batch's records in segment 2 landed: a later batch
     * follows the damage, so it was acknowledged data. */
    for (int whole_tail = 0; whole_tail < 2; whole_tail++) {
        lt_scene s;
        lt_scene_make(&s, 8, 120);
        if (whole_tail)
            lt_pwrite(&s.victim.io[0], 0, s.victim.io[0].len);
        lt_pwrite(&s.victim.io[1], 0, s.victim.io[1].len);
        lt_die(&s);
        lt_flip(&s, s.acked_loc, 48);
        int status;
        uint64_t last;
        log_t *l = lt_open(s.dir, &status, &last);
        cr_assert_eq(status, TALLY_ECORRUPT, "damage at seq %llu was not refused",
                     (unsigned long long)s.acked_seq);
        cr_assert_eq(log_status(l), TALLY_ECORRUPT);
        log_close(l);
        lt_scene_free(&s);
    }
}

/* ---- the history check of tally verify (issue 12) ------------------------- */

typedef struct lt_hist {
    uint8_t kind;
    uint64_t account;
    int64_t points, amount, balance, held, pending;
    bool legacy;
} lt_hist;

/* Writes the entries with their history links, flushes, checks. */
static int lt_history(const lt_hist *h, int n, int bad_link, char *msg, size_t cap)
{
    char dir[64];
    eu_tmpdir(dir, "hist");
    log_t *l = lt_open(dir, NULL, NULL);
    uint64_t head[8] = {0};
    for (int i = 0; i < n; i++) {
        record r;
        memset(&r, 0, sizeof(r));
        r.type = RECORD_ENTRY;
        r.kind = h[i].kind;
        r.merchant = 9;
        r.account = h[i].account;
        r.points = h[i].points;
        r.amount = h[i].amount;
        r.balance = h[i].balance;
        r.held = h[i].held;
        r.pending = h[i].pending;
        r.rflags = h[i].legacy ? RECORD_F_LEGACY : 0;
        r.acct_prev = i == bad_link ? head[h[i].account] + 1 : head[h[i].account];
        r.id_len = (uint8_t)snprintf(r.id, sizeof(r.id), "h%d", i);
        log_loc at;
        cr_assert_eq(log_append(l, &r, 1000 + (uint64_t)i, &at), 0);
        head[h[i].account] = r.seq;
    }
    cr_assert_eq(log_flush_sync(l), 0);
    msg[0] = 0;
    int rc = ledger_verify_history(l, msg, cap);
    log_close(l);
    eu_rmrf(dir);
    return rc;
}

Test(log, tally_verify_follows_every_accounts_history_from_entry_to_entry)
{
    /* Two accounts interleaved: earn, pending earn, hold, capture of 30
     * with 20 released, its pending points made available, a clawback of
     * pending points, a transfer out with a pending lot, an expiry. */
    const lt_hist ok[] = {
        {TALLY_KIND_EARN, 1, 100, 100, 100, 0, 0, false},
        {TALLY_KIND_EARN, 2, 0, 40, 0, 0, 40, false},
        {TALLY_KIND_HOLD, 1, -50, 50, 50, 50, 0, false},
        {TALLY_KIND_CAPTURE, 1, 20, 30, 70, 0, 0, false},
        {TALLY_KIND_AVAILABLE, 2, 40, 40, 40, 0, 0, false},
        {TALLY_KIND_EARN, 2, 0, 25, 40, 0, 25, false},
        {TALLY_KIND_REVERSE, 2, -10, 35, 30, 0, 0, false},
        {TALLY_KIND_EARN, 1, 0, 15, 70, 0, 15, false},
        {TALLY_KIND_TRANSFER, 1, -60, 75, 10, 0, 0, false},
        {TALLY_KIND_EXPIRE, 2, -30, 30, 0, 0, 0, false},
    };
    const int n = (int)(sizeof(ok) / sizeof(ok[0]));
    char msg[512];
    cr_assert_eq(lt_history(ok, n, -1, msg, sizeof(msg)), 0, "%s", msg);
    /* Each figure off by one is found and named; so is a broken link. */
    static const char *const what[] = {"balance", "held", "pending"};
    for (int f = 0; f < 3; f++) {
        lt_hist bad[sizeof(ok) / sizeof(ok[0])];
        memcpy(bad, ok, sizeof(ok));
        int64_t *v = f == 0 ? &bad[5].balance : f == 1 ? &bad[3].held : &bad[6].pending;
        (*v)++;
        cr_assert_eq(lt_history(bad, n, -1, msg, sizeof(msg)), TALLY_ECORRUPT, "%s", what[f]);
        cr_assert_not_null(strstr(msg, what[f]), "%s", msg);
        cr_assert_not_null(strstr(msg, "account"), "%s", msg);
    }
    cr_assert_eq(lt_history(ok, n, 4, msg, sizeof(msg)), TALLY_ECORRUPT);
    cr_assert_not_null(strstr(msg, "its history link"), "%s", msg);
    /* Release 1 made pending points available without an entry: its
     * entries keep only their links. */
    lt_hist legacy[] = {
        {TALLY_KIND_EARN, 1, 0, 40, 0, 0, 40, true},
        {TALLY_KIND_EARN, 1, 10, 10, 50, 0, 0, true},
        {TALLY_KIND_REDEEM, 1, -5, 5, 45, 0, 0, false},
    };
    cr_assert_eq(lt_history(legacy, 3, -1, msg, sizeof(msg)), 0, "%s", msg);
}

/* ---- descriptors (issue 10's crash loop at 1,000 cycles) ------------------- */

static int lt_open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    cr_assert_not_null(d);
    int n = 0;
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}

/* The 1,000-cycle crash loop stopped at cycle 212 with "Too many open
 * files": every segment kept its descriptor, and with 64 KiB segments a
 * grown log has thousands.  Only segments batches may still write keep
 * one; reads go through the mappings. */
Test(log, a_log_of_800_segments_holds_a_few_descriptors_written_and_reopened)
{
    char dir[64];
    eu_tmpdir_mem(dir, "fds");
    int base = lt_open_fds();
    log_t *l = lt_open(dir, NULL, NULL);
    for (int b = 0; b < 3000; b++) {
        lt_append(l, 64, 100, NULL);
        cr_assert_eq(log_flush_sync(l), 0);
    }
    char seg[128];
    snprintf(seg, sizeof(seg), "%s/log-%010u.seg", dir, 800u);
    cr_assert_eq(access(seg, F_OK), 0, "the log has 800+ segments");
    cr_assert_lt(lt_open_fds() - base, 8, "descriptors held while writing");
    /* Every record still reads, the old ones through their mappings. */
    log_iter it;
    cr_assert_eq(log_iter_init(l, 0, &it), 0);
    record r;
    log_loc loc;
    uint64_t n = 0;
    while (log_iter_next(&it, &r, &loc) == 1)
        n++;
    cr_assert_eq(n, 192000);
    log_close(l);
    cr_assert_eq(lt_open_fds(), base, "closing gives every descriptor back");
    uint64_t last;
    l = lt_open(dir, NULL, &last);
    cr_assert_eq(last, 192000);
    cr_assert_lt(lt_open_fds() - base, 8, "descriptors held after opening 800+ segments");
    lt_append(l, 4, 100, NULL);
    cr_assert_eq(log_flush_sync(l), 0);
    log_close(l);
    eu_rmrf(dir);
}

/* ---- reading back heads (tally import) ------------------------------------ */

Test(log, reading_back_heads_gives_every_record_in_order_and_stops_at_damage)
{
    char dir[64];
    eu_tmpdir(dir, "heads");
    log_t *l = lt_open(dir, NULL, NULL);
    enum { N = 400 };
    log_loc locs[N + 1];
    for (uint64_t seq = 1; seq <= N; seq++) {
        record r;
        lt_record(&r, seq, 120);
        r.rflags = seq % 3 == 0 ? RECORD_F_IMPORTED : 0;
        cr_assert_eq(log_append(l, &r, 1000 + seq, &locs[seq]), 0);
        if (seq % 50 == 0)
            cr_assert_eq(log_flush_sync(l), 0);
    }
    cr_assert_gt(locs[N] >> 32, locs[1] >> 32, "one segment only");
    log_iter it;
    cr_assert_eq(log_iter_init(l, 100, &it), 0);
    record_head h;
    uint64_t want = 101;
    int rc;
    while ((rc = log_iter_next_head(&it, &h)) == 1) {
        cr_assert_eq(h.seq, want);
        cr_assert_eq(h.type, RECORD_ENTRY);
        cr_assert_eq(h.merchant, 7);
        cr_assert_eq(h.rflags, want % 3 == 0 ? RECORD_F_IMPORTED : 0);
        want++;
    }
    cr_assert_eq(rc, 0);
    cr_assert_eq(want, N + 1, "read back to %llu", (unsigned long long)want - 1);
    /* A flipped bit in record 250's body: the read-back stops there. */
    lt_flip_in(dir, locs[250], 150);
    cr_assert_eq(log_iter_init(l, 200, &it), 0);
    want = 201;
    while ((rc = log_iter_next_head(&it, &h)) == 1)
        cr_assert_eq(h.seq, want++);
    cr_assert_eq(rc, TALLY_ECORRUPT);
    cr_assert_eq(want, 250);
    log_close(l);
    eu_rmrf(dir);
}

/* A lookup by seq walks from the sparse index past records by their frames
 * only; the record it finds is decoded, checksum and all, and a walk that
 * does not find its seq is redone checking every record, so damage on the
 * way is reported as damage, never as a missing seq. */
Test(log, a_lookup_by_seq_reports_damage_on_its_way_and_in_what_it_finds)
{
    char dir[64];
    eu_tmpdir(dir, "find");
    log_t *l = lt_open(dir, NULL, NULL);
    log_loc locs[101];
    for (uint64_t seq = 1; seq <= 100; seq++) {
        record r;
        lt_record(&r, seq, 40);
        cr_assert_eq(log_append(l, &r, 1000 + seq, &locs[seq]), 0);
    }
    cr_assert_eq(log_flush_sync(l), 0);
    /* A flipped bit in record 40's body (its memo), and record 70's length
     * field made nonsense. */
    lt_flip_in(dir, locs[40], 150);
    char p[200];
    snprintf(p, sizeof(p), "%s/log-%010u.seg", dir, (uint32_t)(locs[70] >> 32));
    int fd = open(p, O_RDWR);
    cr_assert(fd >= 0, "%s", p);
    uint8_t len[4] = {0x08, 0, 0, 0}; /* 8: shorter than any record */
    cr_assert_eq(pwrite(fd, len, 4, (off_t)((locs[70] & 0xffffffffu) * 8)), 4);
    close(fd);
    record r;
    log_loc at;
    /* Past the damaged body to an intact record: found and whole. */
    cr_assert_eq(log_read_seq(l, 45, &r, &at), 0);
    cr_assert_eq(r.seq, 45);
    cr_assert_eq(r.points, 45);
    /* The damaged record itself. */
    cr_assert_eq(log_read_seq(l, 40, &r, &at), TALLY_ECORRUPT);
    /* Beyond a broken frame: damage, not "no such seq". */
    cr_assert_eq(log_read_seq(l, 75, &r, &at), TALLY_ECORRUPT);
    /* Before it, in the same sparse stretch: whole. */
    cr_assert_eq(log_read_seq(l, 66, &r, &at), 0);
    cr_assert_eq(r.seq, 66);
    log_close(l);
    eu_rmrf(dir);
}

/* An open's replay takes the checksums its recovery scan verified as they
 * are (log_iter_scanned): read so, every record comes back whole with its
 * chain intact — the stored checksum is the link to the next — while a
 * record appended after the open is verified as ever, and a plain
 * iterator verifies everything. */
Test(log, the_replay_after_open_skips_only_checksums_the_recovery_scan_verified)
{
    char dir[64];
    eu_tmpdir(dir, "scanned");
    log_t *l = lt_open(dir, NULL, NULL);
    enum { N = 300, M = 60 };
    log_loc locs[N + M + 1];
    for (uint64_t seq = 1; seq <= N; seq++) {
        record r;
        lt_record(&r, seq, 120);
        cr_assert_eq(log_append(l, &r, 1000 + seq, &locs[seq]), 0);
    }
    cr_assert_eq(log_flush_sync(l), 0);
    log_close(l);
    uint64_t last = 0;
    l = lt_open(dir, NULL, &last);
    cr_assert_eq(last, N);
    for (uint64_t seq = N + 1; seq <= N + M; seq++) {
        record r;
        lt_record(&r, seq, 120);
        cr_assert_eq(log_append(l, &r, 1000 + seq, &locs[seq]), 0);
    }
    cr_assert_eq(log_flush_sync(l), 0);
    cr_assert_gt(locs[N] >> 32, locs[1] >> 32, "one segment only");
    /* Whole, in order, chained, through the scanned part and past it. */
    log_iter it;
    cr_assert_eq(log_iter_init(l, 0, &it), 0);
    log_iter_scanned(&it);
    record r;
    log_loc at;
    uint64_t want = 1;
    int rc;
    while ((rc = log_iter_next(&it, &r, &at)) == 1) {
        record e;
        lt_record(&e, want, 120);
        cr_assert_eq(r.seq, want);
        cr_assert_eq(r.points, e.points);
        cr_assert_eq(memcmp(r.memo, e.memo, e.memo_len), 0);
        cr_assert_eq(at, locs[want]);
        want++;
    }
    cr_assert_eq(rc, 0);
    cr_assert_eq(want, N + M + 1);
    /* A record appended after the open, damaged: found, scanned or not. */
    lt_flip_in(dir, locs[N + 30], 150);
    for (int scanned = 0; scanned < 2; scanned++) {
        cr_assert_eq(log_iter_init(l, N, &it), 0);
        if (scanned)
            log_iter_scanned(&it);
        want = N + 1;
        while ((rc = log_iter_next(&it, &r, &at)) == 1)
            cr_assert_eq(r.seq, want++);
        cr_assert_eq(rc, TALLY_ECORRUPT);
        cr_assert_eq(want, N + 30);
    }
    /* One the scan read, damaged since: a plain iterator finds it. */
    lt_flip_in(dir, locs[100], 150);
    cr_assert_eq(log_iter_init(l, 50, &it), 0);
    want = 51;
    while ((rc = log_iter_next(&it, &r, &at)) == 1)
        cr_assert_eq(r.seq, want++);
    cr_assert_eq(rc, TALLY_ECORRUPT);
    cr_assert_eq(want, 100);
    log_close(l);
    eu_rmrf(dir);
}
