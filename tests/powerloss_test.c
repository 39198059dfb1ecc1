/*
 * powerloss_test.c — power loss, not just process death (issue 6): an I/O
 * seam that remembers which log bytes were written but not yet flushed,
 * "loses power" at a chosen I/O completion (from then on every write and
 * flush fails, so nothing more is acknowledged), then drops the unflushed
 * bytes — keeping a random prefix of their pages, as a disk may — and
 * recovery must bring back every acknowledged entry and nothing torn.
 *
 * Every crash point of a scripted workload is tried: crash at I/O
 * completion 1, 2, … until the workload finishes before the crash.
 * The log is append-only into preallocated zeroed space, so "the bytes as
 * they were before" are zeros.  The directory is on tmpfs: the seam decides
 * what a crash keeps, so the disk's real flushes would only add minutes
 * (0.6 s per crash point on a virtual disk) without testing anything more.  LMDB is not modelled: its commits are
 * synced checkpoints of durable data only (DESIGN-NOTES §1).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine_util.h"
#include "os.h"

/* ---- the power-loss seam ------------------------------------------------ */

#define PL_FDS 1024
#define PL_RANGES 4096
#define PL_DIROPS 1024

/* Unflushed bytes of a file, named by its path (followed through renames
 * and unlinks): a flush through any descriptor of the file makes them
 * durable, and closing one does not.  Keyed by path, not descriptor: a
 * descriptor number closed with bytes unflushed (a run the id index's
 * merge abandoned when the power went) and reused for another file must
 * not make the power cut land in that other file. */
typedef struct pl_range {
    char path[300];
    uint64_t off;
    uint64_t len;
} pl_range;

/* A directory change not yet made durable by an fsync of its directory:
 * a power cut may undo it (issue 10: the seam drops renames and
 * directory changes that were not fsynced). */
enum { PL_CREATE = 1, PL_RENAME, PL_UNLINK };
typedef struct pl_dirop {
    int op;
    char dir[200];
    char a[300]; /* created / renamed from / unlinked path */
    char b[300]; /* renamed to / where the unlinked file is held */
} pl_dirop;

typedef struct pl_os {
    os_ops ops;
    pthread_mutex_t lock;
    char *paths[PL_FDS];
    pl_range unflushed[PL_RANGES];
    uint32_t unflushed_count;
    pl_dirop dirops[PL_DIROPS];
    uint32_t dirops_count;
    char hold[64];        /* unlinked files wait here until their dir is flushed */
    uint32_t held;
    uint32_t completions; /* seam calls and io_uring completions seen */
    uint32_t crash_at;    /* the one that loses power (0: never) */
    bool dead;
    unsigned seed;
} pl_os;

static pl_os pl;

static void pl_note_write(int fd, uint64_t off, uint64_t len)
{
    cr_assert(fd >= 0 && fd < PL_FDS && pl.paths[fd], "a write to unknown fd %d", fd);
    cr_assert_lt(pl.unflushed_count, PL_RANGES);
    pl_range *r = &pl.unflushed[pl.unflushed_count++];
    snprintf(r->path, sizeof(r->path), "%s", pl.paths[fd]);
    r->off = off;
    r->len = len;
}

static void pl_note_flush(int fd)
{
    if (fd < 0 || fd >= PL_FDS || !pl.paths[fd])
        return;
    uint32_t k = 0;
    for (uint32_t i = 0; i < pl.unflushed_count; i++)
        if (strcmp(pl.unflushed[i].path, pl.paths[fd]) != 0)
            pl.unflushed[k++] = pl.unflushed[i];
    pl.unflushed_count = k;
}

/* A renamed (or unlinked, so moved aside) file: its open descriptors and
 * its unflushed bytes follow it to its new name. */
static void pl_file_moved(const char *from, const char *to)
{
    for (int i = 0; i < PL_FDS; i++)
        if (pl.paths[i] && strcmp(pl.paths[i], from) == 0) {
            free(pl.paths[i]);
            pl.paths[i] = strdup(to);
        }
    for (uint32_t i = 0; i < pl.unflushed_count; i++)
        if (strcmp(pl.unflushed[i].path, from) == 0)
            snprintf(pl.unflushed[i].path, sizeof(pl.unflushed[i].path), "%s", to);
}

static void pl_dirname(const char *path, char *out, size_t cap)
{
    snprintf(out, cap, "%s", path);
    char *slash = strrchr(out, '/');
    if (slash)
        *slash = 0;
}

static void pl_note_dirop(int op, const char *a, const char *b)
{
    cr_assert_lt(pl.dirops_count, PL_DIROPS);
    pl_dirop *d = &pl.dirops[pl.dirops_count++];
    d->op = op;
    pl_dirname(a, d->dir, sizeof(d->dir));
    snprintf(d->a, sizeof(d->a), "%s", a);
    snprintf(d->b, sizeof(d->b), "%s", b ? b : "");
}

/* Counts one seam call or completion; true once the power is lost (at
 * this one or before).  Called with the lock held. */
static bool pl_tick(void)
{
    pl.completions++;
    if (pl.crash_at && pl.completions >= pl.crash_at)
        pl.dead = true;
    return pl.dead;
}

static int pl_open(void *ctx, const char *path, int flags, int mode)
{
    (void)ctx;
    const os_ops *o = os_default();
    bool existed = access(path, F_OK) == 0;
    pthread_mutex_lock(&pl.lock);
    bool dead = (flags & O_CREAT) && !existed && pl_tick();
    pthread_mutex_unlock(&pl.lock);
    if (dead)
        return -EIO;
    int fd = o->open(o->ctx, path, flags, mode);
    pthread_mutex_lock(&pl.lock);
    if (fd >= 0 && (flags & O_CREAT) && !existed)
        pl_note_dirop(PL_CREATE, path, NULL);
    if (fd >= 0 && fd < PL_FDS) {
        free(pl.paths[fd]);
        pl.paths[fd] = strdup(path);
    }
    pthread_mutex_unlock(&pl.lock);
    return fd;
}

/* Segments are made under a temporary name and renamed: follow them. */
static int pl_rename(void *ctx, const char *from, const char *to)
{
    (void)ctx;
    const os_ops *o = os_default();
    pthread_mutex_lock(&pl.lock);
    if (pl_tick()) {
        pthread_mutex_unlock(&pl.lock);
        return -EIO;
    }
    cr_assert_neq(access(to, F_OK), 0, "the seam models renames onto new names only: %s", to);
    int rc = o->rename(o->ctx, from, to);
    if (rc == 0) {
        pl_file_moved(from, to);
        pl_note_dirop(PL_RENAME, from, to);
    }
    pthread_mutex_unlock(&pl.lock);
    return rc;
}

/* An unlinked file is moved aside, not deleted, until its directory is
 * flushed: a power cut brings it back. */
static int pl_unlink(void *ctx, const char *path)
{
    (void)ctx;
    pthread_mutex_lock(&pl.lock);
    if (pl_tick()) {
        pthread_mutex_unlock(&pl.lock);
        return -EIO;
    }
    char held[128];
    snprintf(held, sizeof(held), "%s/%u", pl.hold, pl.held++);
    int rc = rename(path, held) == 0 ? 0 : -errno;
    if (rc == 0) {
        pl_file_moved(path, held);
        pl_note_dirop(PL_UNLINK, path, held);
    }
    pthread_mutex_unlock(&pl.lock);
    return rc;
}

static int pl_fsync_dir(void *ctx, const char *dir)
{
    (void)ctx;
    pthread_mutex_lock(&pl.lock);
    if (pl_tick()) {
        pthread_mutex_unlock(&pl.lock);
        return -EIO;
    }
    const os_ops *o = os_default();
    int rc = o->fsync_dir(o->ctx, dir);
    uint32_t k = 0;
    for (uint32_t i = 0; i < pl.dirops_count; i++) {
        pl_dirop *d = &pl.dirops[i];
        bool flushed = rc == 0 && strcmp(d->dir, dir) == 0;
        if (flushed && d->op == PL_UNLINK)
            unlink(d->b);
        if (!flushed)
            pl.dirops[k++] = *d;
    }
    pl.dirops_count = k;
    pthread_mutex_unlock(&pl.lock);
    return rc;
}

/* Closing keeps the file's unflushed bytes unflushed; the number is free
 * for another file. */
static int pl_close(void *ctx, int fd)
{
    (void)ctx;
    const os_ops *o = os_default();
    pthread_mutex_lock(&pl.lock);
    if (fd >= 0 && fd < PL_FDS) {
        free(pl.paths[fd]);
        pl.paths[fd] = NULL;
    }
    int rc = o->close(o->ctx, fd);
    pthread_mutex_unlock(&pl.lock);
    return rc;
}

static ssize_t pl_pwrite(void *ctx, int fd, const void *buf, size_t len, uint64_t off)
{
    (void)ctx;
    pthread_mutex_lock(&pl.lock);
    bool dead = pl_tick();
    pthread_mutex_unlock(&pl.lock);
    if (dead)
        return -EIO;
    const os_ops *o = os_default();
    ssize_t n = o->pwrite(o->ctx, fd, buf, len, off);
    if (n > 0) {
        pthread_mutex_lock(&pl.lock);
        pl_note_write(fd, off, (uint64_t)n);
        pthread_mutex_unlock(&pl.lock);
    }
    return n;
}

static int pl_fdatasync(void *ctx, int fd)
{
    (void)ctx;
    pthread_mutex_lock(&pl.lock);
    bool dead = pl_tick();
    pthread_mutex_unlock(&pl.lock);
    if (dead)
        return -EIO;
    const os_ops *o = os_default();
    int rc = o->fdatasync(o->ctx, fd);
    if (rc == 0) {
        pthread_mutex_lock(&pl.lock);
        pl_note_flush(fd);
        pthread_mutex_unlock(&pl.lock);
    }
    return rc;
}

static int pl_io_result(void *ctx, enum os_io kind, int fd, uint64_t off, size_t len, int res)
{
    (void)ctx;
    (void)len;
    pthread_mutex_lock(&pl.lock);
    if (pl_tick()) {
        /* The write may have reached the page cache; it is unflushed. */
        if (kind == OS_IO_WRITE && res > 0)
            pl_note_write(fd, off, (uint64_t)res);
        pthread_mutex_unlock(&pl.lock);
        return -EIO;
    }
    if (kind == OS_IO_WRITE && res > 0)
        pl_note_write(fd, off, (uint64_t)res);
    else if (kind == OS_IO_FSYNC && res == 0)
        pl_note_flush(fd);
    pthread_mutex_unlock(&pl.lock);
    return res;
}

static void pl_init(uint32_t crash_at, unsigned seed)
{
    for (int i = 0; i < PL_FDS; i++)
        free(pl.paths[i]);
    memset(&pl, 0, sizeof(pl));
    pthread_mutex_init(&pl.lock, NULL);
    eu_tmpdir_mem(pl.hold, "plhold");
    pl.ops = *os_default();
    pl.ops.open = pl_open;
    pl.ops.close = pl_close;
    pl.ops.pwrite = pl_pwrite;
    pl.ops.rename = pl_rename;
    pl.ops.unlink = pl_unlink;
    pl.ops.fsync_dir = pl_fsync_dir;
    pl.ops.fdatasync = pl_fdatasync;
    pl.ops.io_result = pl_io_result;
    pl.ops.ctx = &pl;
    pl.crash_at = crash_at;
    pl.seed = seed;
}

/* Drops every unflushed byte range, keeping a random whole-page prefix of
 * each (a torn write), then undoes a random suffix of the directory
 * changes no fsync of their directory covered (a journal commits them in
 * order): what the disk holds after the power comes back. */
static void pl_power_off(void)
{
    for (uint32_t i = 0; i < pl.unflushed_count; i++) {
        pl_range *r = &pl.unflushed[i];
        uint64_t pages = (r->len + 4095) / 4096;
        uint64_t keep = (uint64_t)rand_r(&pl.seed) % (pages + 1) * 4096;
        if (keep >= r->len)
            continue;
        int fd = open(r->path, O_WRONLY);
        if (fd < 0)
            continue; /* a file whose creation is undone below, or gone */
        uint64_t n = r->len - keep;
        char *zeros = calloc(1, n);
        cr_assert(pwrite(fd, zeros, n, (off_t)(r->off + keep)) == (ssize_t)n);
        free(zeros);
        close(fd);
    }
    uint32_t keep = pl.dirops_count ? (uint32_t)rand_r(&pl.seed) % (pl.dirops_count + 1) : 0;
    for (uint32_t i = pl.dirops_count; i-- > keep;) {
        const pl_dirop *d = &pl.dirops[i];
        if (d->op == PL_CREATE)
            unlink(d->a);
        else if (d->op == PL_RENAME)
            cr_assert_eq(rename(d->b, d->a), 0, "undo rename %s", d->b);
        else
            cr_assert_eq(rename(d->b, d->a), 0, "undo unlink %s", d->a);
    }
    for (uint32_t i = 0; i < keep; i++)
        if (pl.dirops[i].op == PL_UNLINK)
            unlink(pl.dirops[i].b);
    eu_rmrf(pl.hold);
}

/* The seam itself: bytes written through a descriptor that is closed
 * unflushed are lost from their own file at the power cut, not from the
 * file that reused the descriptor number; a flush through another
 * descriptor of the same file makes them durable. */
Test(powerloss, the_seam_loses_unflushed_bytes_of_their_own_file_whatever_the_descriptor)
{
    char dir[64], a[128], b[128], c[128];
    eu_tmpdir_mem(dir, "plseam");
    pl_init(0, 7);
    snprintf(a, sizeof(a), "%s/a", dir);
    snprintf(b, sizeof(b), "%s/b", dir);
    snprintf(c, sizeof(c), "%s/c", dir);
    enum { LEN = 64 << 10 };
    static char ones[LEN], got[LEN];
    memset(ones, 1, sizeof(ones));
    /* b: written and flushed, then closed. */
    int fb = pl.ops.open(&pl, b, O_CREAT | O_RDWR, 0644);
    cr_assert_eq(pl.ops.pwrite(&pl, fb, ones, LEN, 0), (ssize_t)LEN);
    cr_assert_eq(pl.ops.fdatasync(&pl, fb), 0);
    cr_assert_eq(pl.ops.close(&pl, fb), 0);
    /* a: written, closed unflushed (what a merge abandoned at the cut). */
    int fa = pl.ops.open(&pl, a, O_CREAT | O_RDWR, 0644);
    cr_assert_eq(pl.ops.pwrite(&pl, fa, ones, LEN, 0), (ssize_t)LEN);
    cr_assert_eq(pl.ops.close(&pl, fa), 0);
    /* b opened again for reading takes a's old number. */
    int rb = pl.ops.open(&pl, b, O_RDONLY, 0);
    cr_assert_eq(rb, fa, "the number is reused");
    /* c: flushed through another descriptor than the one that wrote it. */
    int fc = pl.ops.open(&pl, c, O_CREAT | O_RDWR, 0644);
    cr_assert_eq(pl.ops.pwrite(&pl, fc, ones, LEN, 0), (ssize_t)LEN);
    int fc2 = pl.ops.open(&pl, c, O_RDWR, 0);
    cr_assert_eq(pl.ops.close(&pl, fc), 0);
    cr_assert_eq(pl.ops.fdatasync(&pl, fc2), 0);
    cr_assert_eq(pl.ops.close(&pl, fc2), 0);
    cr_assert_eq(pl.ops.fsync_dir(&pl, dir), 0);
    pl.dead = true;
    pl_power_off();
    cr_assert_eq(pl.ops.close(&pl, rb), 0);
    const char *files[] = {b, c, a};
    for (int i = 0; i < 3; i++) {
        int fd = open(files[i], O_RDONLY);
        cr_assert_eq(read(fd, got, LEN), (ssize_t)LEN);
        close(fd);
        if (i < 2)
            cr_assert_eq(memcmp(got, ones, LEN), 0, "%s was flushed: untouched", files[i]);
        else
            cr_assert_neq(memcmp(got, ones, LEN), 0, "a's unflushed pages were dropped");
    }
    eu_rmrf(dir);
}

/* ---- the scripted workload ------------------------------------------------ */

typedef struct pl_ack {
    char id[32];
    uint64_t merchant;
    uint64_t seq;
} pl_ack;

#define PL_THREADS 4
/* Enough records (with memos) that each shard's log crosses a 64 KiB
 * segment boundary: rollovers happen under the crash points too. */
#define PL_OPS_PER_THREAD 150

static int pl_transfer_pairs; /* transfers found whole, over every crash point */

typedef struct pl_worker {
    tally *t;
    int thread;
    pl_ack acks[PL_OPS_PER_THREAD];
    int acked;
} pl_worker;

static void *pl_worker_main(void *arg)
{
    pl_worker *w = arg;
    for (int i = 0; i < PL_OPS_PER_THREAD; i++) {
        tally_request r;
        memset(&r, 0, sizeof(r));
        char id[32];
        snprintf(id, sizeof(id), "w%d-%d", w->thread, i);
        uint64_t m = 1 + (uint64_t)(i + w->thread) % 3;
        if (i % 6 == 5) { /* two entries that must land both or neither */
            eu_write(&r, TALLY_OP_TRANSFER, m, 1 + (uint64_t)i % 5, 1 + i % 3, id);
            r.account2 = 1 + (uint64_t)(i + 1) % 5;
        } else {
            eu_write(&r, i % 4 == 3 ? TALLY_OP_REDEEM : TALLY_OP_EARN, m, 1 + (uint64_t)i % 5,
                     1 + i % 20, id);
        }
        r.flags |= TALLY_REQ_MEMO;
        r.memo_len = 120;
        memset(r.memo, 'a' + i % 26, r.memo_len);
        int rc = tally_call(w->t, &r);
        if (rc == 0) {
            pl_ack *a = &w->acks[w->acked++];
            snprintf(a->id, sizeof(a->id), "%s", id);
            a->merchant = m;
            a->seq = r.res.entry.seq;
        }
        tally_result_free(&r.res);
    }
    return NULL;
}

/* Runs the workload with power lost at completion crash_at; returns true
 * if the workload finished before that point. */
static bool pl_run(uint32_t crash_at, unsigned seed, int *acked_out)
{
    char dir[64];
    eu_tmpdir_mem(dir, "pl");
    pl_init(crash_at, seed);
    tally_options o = {.dir = dir, .shards = 2, .segment_bytes = 64u << 10, .os = &pl.ops,
                       .state_map_bytes = 1ull << 30, .log = eu_log, .checkpoint_ms = 5};
    tally *t;
    static pl_worker ws[PL_THREADS];
    /* The power may go while the directory is being made: then nothing
     * was acknowledged, and what is left must still open. */
    bool opened = tally_open(&o, &t) == 0;
    cr_assert(opened || pl.dead, "crash point %u: open failed with the power on", crash_at);
    pthread_t th[PL_THREADS];
    for (int i = 0; i < PL_THREADS; i++) {
        ws[i] = (pl_worker){.t = t, .thread = i};
        if (opened)
            pthread_create(&th[i], NULL, pl_worker_main, &ws[i]);
    }
    for (int i = 0; opened && i < PL_THREADS; i++)
        pthread_join(th[i], NULL);
    /* Under the lock: the id index's merge thread may still be writing
     * through the seam. */
    pthread_mutex_lock(&pl.lock);
    bool finished = !pl.dead;
    pl.dead = true; /* nothing after this point reaches the disk */
    pthread_mutex_unlock(&pl.lock);
    if (opened)
        tally_close(t);
    pl_power_off();

    cr_assert_eq(eu_open(dir, 2, &t), 0, "crash point %u: reopen", crash_at);
    int acked = 0;
    for (int i = 0; i < PL_THREADS; i++)
        for (int k = 0; k < ws[i].acked; k++) {
            tally_entry e;
            cr_assert_eq(eu_find(t, ws[i].acks[k].merchant, ws[i].acks[k].id, &e), 1,
                         "crash point %u: acknowledged %s lost", crash_at, ws[i].acks[k].id);
            cr_assert_eq(e.seq, ws[i].acks[k].seq);
            acked++;
        }
    /* Every transfer tried, acknowledged or not: its two entries are both
     * there or neither is. */
    int pairs = 0;
    for (int i = 0; i < PL_THREADS; i++)
        for (int k = 5; k < PL_OPS_PER_THREAD; k += 6) {
            char id[32], to[40];
            snprintf(id, sizeof(id), "w%d-%d", i, k);
            snprintf(to, sizeof(to), "~to:%s", id);
            uint64_t m = 1 + (uint64_t)(k + i) % 3;
            tally_entry e;
            bool sender = eu_find(t, m, id, &e) == 1;
            bool receiver = eu_find(t, m, to, NULL) == 1;
            cr_assert_eq(sender, receiver, "crash point %u: transfer %s: sender's entry %s, "
                         "receiver's %s", crash_at, id, sender ? "kept" : "gone",
                         receiver ? "kept" : "gone");
            pairs += sender;
        }
    pl_transfer_pairs += pairs;
    tally_close(t);
    if (finished) {
        /* The whole workload ran: it must have crossed segment boundaries,
         * or the crash points never met a rollover. */
        char seg[128];
        snprintf(seg, sizeof(seg), "%s/shard-000/log-0000000002.seg", dir);
        bool rolled = access(seg, F_OK) == 0;
        snprintf(seg, sizeof(seg), "%s/shard-001/log-0000000002.seg", dir);
        cr_assert(rolled || access(seg, F_OK) == 0, "the workload never rolled a segment");
    }
    tally_options ro = {.dir = dir, .read_only = true, .log = eu_log};
    cr_assert_eq(tally_open(&ro, &t), 0);
    char msg[256];
    cr_assert_eq(tally_verify_full(t, msg, sizeof(msg)), 0, "crash point %u: %s", crash_at,
                 msg);
    tally_close(t);
    eu_rmrf(dir);
    *acked_out = acked;
    return finished;
}

Test(powerloss, every_crash_point_of_a_scripted_workload_recovers_every_acknowledged_entry,
     .timeout = 900)
{
    int acked = 0, points = 0;
    uint32_t step = getenv("TALLY_POWERLOSS_STEP") ? (uint32_t)atoi(getenv("TALLY_POWERLOSS_STEP"))
                                                    : 1;
    for (uint32_t crash_at = 1; crash_at < 100000; crash_at += step) {
        points++;
        if (pl_run(crash_at, crash_at * 2654435761u, &acked))
            break;
    }
    cr_assert_gt(points, 3, "the workload needed several I/O completions");
    cr_assert_gt(acked, PL_THREADS * PL_OPS_PER_THREAD / 2,
                 "the last run (no crash) acknowledged its writes");
    cr_assert_gt(pl_transfer_pairs, 0, "transfers were kept whole somewhere");
    cr_log_info("powerloss: %d crash points checked, %d transfers found whole", points,
                pl_transfer_pairs);
}
