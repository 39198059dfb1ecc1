/*
 * ids_test.c — engine/ids.c: the idempotency index against a model (random
 * puts and gets over freezes, flushes, commits, failed commits, aborts,
 * merges and reopens), a power loss at every I/O seam call of flushes and
 * merges, an I/O error at every one, damage to every part of a run file,
 * snapshots' links, and 10M keys with bounds on runs, memory and bytes
 * written.
 *
 * Keys are made from an index (key i has log seq i + 1), so the model is a
 * count: keys [0, n) are in the index, and [0, covered_seq) are in the
 * runs of the committed manifest.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "checksum.h"
#include "child_util.h"
#include "engine_util.h"
#include "ids.h"
#include "tally.h"

/* ---- keys, values, directories ----------------------------------------------- */

static uint64_t it_mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Key i of the index; absent keys come from another stream. */
static ids_key it_key(uint64_t i) { return (ids_key){it_mix(2 * i), it_mix(2 * i + 1)}; }
static ids_key it_absent(uint64_t i) { return it_key(i + (1ull << 62)); }
/* What the caller stores: seq << 1 | refusal bit, never 0. */
static uint64_t it_value(uint64_t i) { return (i + 1) << 1 | (it_mix(i) & 1); }

static ids_options it_options(const char *dir, uint64_t flush_keys)
{
    return (ids_options){.dir = dir, .flush_keys = flush_keys, .memtable_keys = 16};
}

/* Index files in dir: *runs of ids-*.run, *temps of ids-*.tmp, *other. */
static void it_files(const char *dir, int *runs, int *temps, int *other)
{
    *runs = *temps = *other = 0;
    DIR *d = opendir(dir);
    cr_assert(d, "opendir %s", dir);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t n = strlen(e->d_name);
        if (e->d_name[0] == '.')
            continue;
        if (n > 4 && strcmp(e->d_name + n - 4, ".run") == 0)
            (*runs)++;
        else if (n > 4 && strcmp(e->d_name + n - 4, ".tmp") == 0)
            (*temps)++;
        else
            (*other)++;
    }
    closedir(d);
}

/* rm -rf of a flat directory, without a shell (the crash loop makes many). */
static void it_rmdir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    char path[4200];
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

static double it_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long it_rss_anon_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    cr_assert(f);
    char line[256];
    long kib = -1;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "RssAnon: %ld kB", &kib) == 1)
            break;
    fclose(f);
    return kib;
}

/* ---- the caller's side of the protocol ------------------------------------------- */

/* What the caller keeps: keys put, and the committed manifest. */
typedef struct it_caller {
    ids *x;
    ids_options o;
    uint64_t n; /* keys [0, n) were put, in seq order */
    uint8_t manifest[IDS_MANIFEST_BYTES_MAX];
    size_t manifest_len;
    const char *saved; /* the fault tests' durable copy of the manifest */
} it_caller;

static void it_save(const it_caller *c);

static void it_put(it_caller *c)
{
    int rc = ids_put(c->x, it_key(c->n), it_value(c->n));
    cr_assert_eq(rc, 0, "put %lu: %d", (unsigned long)c->n, rc);
    c->n++;
}

static void it_expect(it_caller *c, uint64_t i)
{
    uint64_t v = 0;
    int rc = ids_get(c->x, it_key(i), &v);
    cr_assert_eq(rc, 0, "key %lu: %d (%s)", (unsigned long)i, rc, ids_error(c->x));
    cr_assert_eq(v, it_value(i), "key %lu: value", (unsigned long)i);
}

static void it_expect_absent(it_caller *c, uint64_t j)
{
    uint64_t v = 0;
    int rc = ids_get(c->x, it_absent(j), &v);
    cr_assert_eq(rc, IDS_ABSENT, "absent %lu: %d (%s)", (unsigned long)j, rc, ids_error(c->x));
}

/* After an abort or an open: the log after covered_seq, through ids_put. */
static void it_replay(it_caller *c)
{
    uint64_t n = c->n;
    c->n = ids_covered_seq(c->x);
    while (c->n < n)
        it_put(c);
}

/* The sum of keys the index holds equals the keys put: no key twice. */
static void it_check_counts(it_caller *c)
{
    ids_stats_t s;
    ids_stats(c->x, &s);
    cr_assert_eq(s.memtable_keys + s.frozen_keys + s.run_keys, c->n,
                 "memtable %lu + frozen %lu + runs %lu != %lu", (unsigned long)s.memtable_keys,
                 (unsigned long)s.frozen_keys, (unsigned long)s.run_keys, (unsigned long)c->n);
}

/* A checkpoint: freeze, flush, manifest, commit (keep the manifest), done.
 * commit_ok false: the commit fails — but when reached_disk, its manifest
 * is what a restart finds (a commit whose outcome is unknown). */
static int it_checkpoint(it_caller *c, bool force, bool commit_ok, bool reached_disk)
{
    int rc = ids_freeze(c->x, c->n, force);
    if (rc == -EAGAIN) {
        /* Merges are behind: wait for them, as a writer would. */
        cr_assert_eq(ids_wait_merges(c->x), 0, "%s", ids_error(c->x));
        rc = ids_freeze(c->x, c->n, force);
    }
    cr_assert_geq(rc, 0, "freeze: %d", rc);
    rc = ids_flush_frozen(c->x);
    if (rc < 0) {
        ids_abort(c->x);
        it_replay(c);
        return rc;
    }
    uint8_t buf[IDS_MANIFEST_BYTES_MAX];
    size_t len = 0;
    cr_assert_eq(ids_manifest(c->x, buf, sizeof(buf), &len), 0);
    if (commit_ok || reached_disk) {
        memcpy(c->manifest, buf, len);
        c->manifest_len = len;
        if (c->saved)
            it_save(c); /* the commit, before ids_commit_done hears of it */
    }
    ids_commit_done(c->x, commit_ok ? 0 : -EIO);
    if (!commit_ok)
        it_replay(c);
    return 0;
}

static void it_open(it_caller *c)
{
    char err[512] = "";
    c->o.error = err;
    c->o.error_cap = sizeof(err);
    int rc = ids_open(&c->o, c->manifest_len ? c->manifest : NULL, c->manifest_len, &c->x);
    cr_assert_eq(rc, 0, "open: %d %s", rc, err);
    c->o.error = NULL;
}

/* A crash (no commit) and a restart: open the committed manifest, replay. */
static void it_reopen(it_caller *c)
{
    ids_close(c->x);
    it_open(c);
    it_replay(c);
}

/* Every index file in dir is a run the index has mapped: no leftovers.
 * (Merges settle first: a reopened index may start one at once.) */
static void it_check_files(it_caller *c, const char *dir)
{
    cr_assert_eq(ids_wait_merges(c->x), 0, "%s", ids_error(c->x));
    ids_stats_t s;
    ids_stats(c->x, &s);
    int runs, temps, other;
    it_files(dir, &runs, &temps, &other);
    cr_assert_eq((uint32_t)runs, s.mapped_count, "runs on disk %d, mapped %u", runs,
                 s.mapped_count);
    cr_assert_eq(temps + other, 0, "leftovers: %d temps, %d others", temps, other);
}

/* ---- model ------------------------------------------------------------------------ */

Test(ids, key_of_is_xxh3_128_of_merchant_le_and_id)
{
    uint8_t buf[8 + 5] = {0x2a, 0, 0, 0, 0, 0, 0, 0, 'o', 'r', 'd', 'e', 'r'}, h[16];
    checksum128(buf, sizeof(buf), h);
    ids_key k = ids_key_of(42, "order", 5);
    uint64_t hi = 0, lo = 0;
    for (int i = 0; i < 8; i++) {
        hi = hi << 8 | h[i];
        lo = lo << 8 | h[8 + i];
    }
    cr_assert_eq(k.hi, hi);
    cr_assert_eq(k.lo, lo);
    ids_key other = ids_key_of(43, "order", 5);
    cr_assert(other.hi != k.hi || other.lo != k.lo, "merchants are part of the key");
}

Test(ids, random_puts_and_gets_match_a_model_across_checkpoints_merges_aborts_and_reopens,
     .timeout = 240)
{
    char dir[64];
    eu_tmpdir_mem(dir, "ids-model");
    it_caller c = {.o = it_options(dir, 37)};
    it_open(&c);
    srand(11);
    uint32_t reopens = 0, aborts = 0;
    uint64_t merges = 0;
    for (int step = 0; step < 200000; step++) {
        int r = rand() % 1000;
        if (r < 600) {
            it_put(&c);
        } else if (r < 750 && c.n > 0) {
            it_expect(&c, (uint64_t)rand() % c.n);
        } else if (r < 850) {
            it_expect_absent(&c, (uint64_t)rand());
        } else if (r < 940) {
            int kind = rand() % 10; /* 0: a failed commit, 1: one that reached the disk */
            it_checkpoint(&c, rand() % 2, kind > 1, kind == 1);
            aborts += kind <= 1;
        } else if (r < 980) {
            cr_assert_eq(ids_poll(c.x), 0, "%s", ids_error(c.x));
        } else if (r < 990) {
            cr_assert_eq(ids_wait_merges(c.x), 0, "%s", ids_error(c.x));
        } else if (r < 995) {
            /* A flush that failed: the caller aborts and replays. */
            ids_freeze(c.x, c.n, true);
            ids_abort(c.x);
            it_replay(&c);
            aborts++;
        } else {
            ids_stats_t s;
            ids_stats(c.x, &s);
            merges += s.merges; /* counted per open */
            it_reopen(&c);
            reopens++;
        }
        if (step % 1000 == 0)
            it_check_counts(&c);
        if (step % 20000 == 0 && c.n > 0)
            for (uint64_t i = 0; i < c.n; i++)
                it_expect(&c, i);
    }
    cr_assert_eq(ids_wait_merges(c.x), 0);
    it_check_counts(&c);
    for (uint64_t i = 0; i < c.n; i++)
        it_expect(&c, i);
    for (uint64_t j = 0; j < 5000; j++)
        it_expect_absent(&c, j);
    char msg[512];
    cr_assert_eq(ids_verify(c.x, msg, sizeof(msg)), 0, "%s", msg);
    ids_stats_t s;
    ids_stats(c.x, &s);
    merges += s.merges;
    cr_assert_gt(merges, 50, "merges ran: %lu", (unsigned long)merges);
    cr_assert_gt(reopens, 5);
    cr_assert_gt(aborts, 5);
    /* What is on disk is what the committed manifest names, once a commit
     * has superseded the failed ones and a restart removed the rest. */
    it_checkpoint(&c, true, true, true);
    it_reopen(&c);
    it_check_files(&c, dir);
    ids_close(c.x);
    it_rmdir(dir);
}

Test(ids, freeze_refuses_while_a_frozen_memtable_is_pending_and_put_refuses_at_its_bound)
{
    char dir[64];
    eu_tmpdir_mem(dir, "ids-bounds");
    it_caller c = {.o = it_options(dir, 10)};
    c.o.memtable_keys_max = 20;
    it_open(&c);
    for (int i = 0; i < 9; i++)
        it_put(&c);
    cr_assert_eq(ids_freeze(c.x, c.n, false), 0, "below the threshold: nothing");
    it_put(&c);
    cr_assert_eq(ids_freeze(c.x, c.n, false), 1);
    for (int i = 0; i < 20; i++)
        it_put(&c);
    cr_assert_eq(ids_put(c.x, it_key(c.n), it_value(c.n)), -ENOBUFS);
    cr_assert_eq(ids_freeze(c.x, c.n, true), -EBUSY);
    for (uint64_t i = 0; i < c.n; i++)
        it_expect(&c, i); /* the frozen memtable is searched before its flush */
    cr_assert_eq(ids_flush_frozen(c.x), 0);
    uint8_t buf[IDS_MANIFEST_BYTES_MAX];
    size_t len;
    cr_assert_eq(ids_manifest(c.x, buf, 8, &len), -ERANGE);
    cr_assert_eq(ids_manifest(c.x, buf, sizeof(buf), &len), 0);
    cr_assert_eq(ids_commit_done(c.x, 0), 0);
    cr_assert_eq(ids_covered_seq(c.x), 10);
    cr_assert_eq(ids_freeze(c.x, c.n, false), 1);
    it_check_counts(&c);
    ids_close(c.x);
    it_rmdir(dir);
}

/* ---- the fault seam: power loss or an error at the Nth call ------------------------ */

#define FT_FDS 256
#define FT_RANGES 4096
#define FT_DIROPS 1024
#define FT_CRASHED 3
#define FT_DONE 4

typedef struct ft_range {
    char path[256];
    uint64_t off, len;
} ft_range;

/* A directory change not yet made durable by fsync_dir. */
typedef struct ft_dirop {
    enum { FT_CREATE, FT_RENAME, FT_UNLINK } kind;
    char a[256], b[256]; /* created a; renamed a to b; unlinked a, kept as b */
} ft_dirop;

typedef struct ft_os {
    os_ops ops;
    pthread_mutex_t lock;
    uint64_t calls, fault_at;
    int fault; /* 0: power loss at fault_at, else returned by that call */
    char fd_path[FT_FDS][256];
    ft_range ranges[FT_RANGES];
    uint32_t range_count;
    ft_dirop dirops[FT_DIROPS];
    uint32_t dirop_count;
} ft_os;

static ft_os ft;

/* The power goes: unflushed bytes are lost (zeros), directory changes not
 * flushed are undone, newest first; then the process ends. */
static void ft_power_off(void)
{
    static const uint8_t zeros[4096];
    for (uint32_t i = 0; i < ft.range_count; i++) {
        int fd = open(ft.ranges[i].path, O_WRONLY);
        for (uint64_t off = 0; fd >= 0 && off < ft.ranges[i].len; off += sizeof(zeros)) {
            uint64_t n = ft.ranges[i].len - off;
            if (pwrite(fd, zeros, n < sizeof(zeros) ? n : sizeof(zeros),
                       (off_t)(ft.ranges[i].off + off)) < 0)
                break;
        }
        if (fd >= 0)
            close(fd);
    }
    for (uint32_t i = ft.dirop_count; i-- > 0;) {
        ft_dirop *d = &ft.dirops[i];
        if (d->kind == FT_CREATE)
            unlink(d->a);
        else if (d->kind == FT_RENAME)
            rename(d->b, d->a);
        else
            rename(d->b, d->a);
    }
    _exit(FT_CRASHED);
}

/* Counts a call; returns the fault to inject (0: none).  Holds the lock
 * until ft_leave, so calls from the merge thread are serialized too. */
static int ft_enter(void)
{
    pthread_mutex_lock(&ft.lock);
    if (++ft.calls != ft.fault_at)
        return 0;
    if (ft.fault == 0)
        ft_power_off();
    return ft.fault;
}

static void ft_leave(void) { pthread_mutex_unlock(&ft.lock); }

static void ft_dirop_add(int kind, const char *a, const char *b)
{
    cr_assert_lt(ft.dirop_count, FT_DIROPS);
    ft_dirop *d = &ft.dirops[ft.dirop_count++];
    d->kind = kind;
    snprintf(d->a, sizeof(d->a), "%s", a);
    snprintf(d->b, sizeof(d->b), "%s", b ? b : "");
}

static int ft_open(void *ctx, const char *path, int flags, int mode)
{
    (void)ctx;
    int rc = ft_enter();
    if (rc == 0) {
        rc = os_default()->open(NULL, path, flags, mode);
        if (rc >= 0) {
            cr_assert_lt(rc, FT_FDS);
            snprintf(ft.fd_path[rc], sizeof(ft.fd_path[rc]), "%s", path);
            if (flags & O_CREAT)
                ft_dirop_add(FT_CREATE, path, NULL);
        }
    }
    ft_leave();
    return rc;
}

static int ft_close(void *ctx, int fd)
{
    (void)ctx;
    int rc = ft_enter();
    close(fd); /* a close that fails still closes */
    ft_leave();
    return rc;
}

static ssize_t ft_pwrite(void *ctx, int fd, const void *buf, size_t len, uint64_t off)
{
    (void)ctx;
    ssize_t rc = ft_enter();
    if (rc == 0) {
        rc = os_default()->pwrite(NULL, fd, buf, len, off);
        if (rc > 0) {
            cr_assert_lt(ft.range_count, FT_RANGES);
            ft_range *r = &ft.ranges[ft.range_count++];
            memcpy(r->path, ft.fd_path[fd], sizeof(r->path));
            r->off = off;
            r->len = (uint64_t)rc;
        }
    }
    ft_leave();
    return rc;
}

static int ft_fdatasync(void *ctx, int fd)
{
    (void)ctx;
    int rc = ft_enter();
    if (rc == 0) {
        uint32_t k = 0;
        for (uint32_t i = 0; i < ft.range_count; i++)
            if (strcmp(ft.ranges[i].path, ft.fd_path[fd]) != 0)
                ft.ranges[k++] = ft.ranges[i];
        ft.range_count = k;
    }
    ft_leave();
    return rc;
}

static int ft_rename(void *ctx, const char *from, const char *to)
{
    (void)ctx;
    int rc = ft_enter();
    if (rc == 0 && (rc = os_default()->rename(NULL, from, to)) == 0) {
        ft_dirop_add(FT_RENAME, from, to);
        for (uint32_t i = 0; i < ft.range_count; i++)
            if (strcmp(ft.ranges[i].path, from) == 0)
                snprintf(ft.ranges[i].path, sizeof(ft.ranges[i].path), "%s", to);
    }
    ft_leave();
    return rc;
}

/* Power loss: an unlink is a rename aside until its directory is flushed
 * (ft_settle removes what is still aside at a clean end). */
static int ft_unlink(void *ctx, const char *path)
{
    (void)ctx;
    int rc = ft_enter();
    char aside[300];
    snprintf(aside, sizeof(aside), "%s.unlinked", path);
    if (rc == 0 && ft.fault != 0)
        rc = os_default()->unlink(NULL, path);
    else if (rc == 0 && (rc = os_default()->rename(NULL, path, aside)) == 0)
        ft_dirop_add(FT_UNLINK, path, aside);
    ft_leave();
    return rc;
}

static void ft_settle(void)
{
    for (uint32_t i = 0; i < ft.dirop_count; i++)
        if (ft.dirops[i].kind == FT_UNLINK)
            unlink(ft.dirops[i].b);
    ft.dirop_count = 0;
}

static int ft_fsync_dir(void *ctx, const char *dir)
{
    (void)ctx;
    (void)dir; /* the tests' index is one directory */
    int rc = ft_enter();
    if (rc == 0)
        ft_settle();
    ft_leave();
    return rc;
}

static void ft_init(uint64_t fault_at, int fault)
{
    memset(&ft, 0, sizeof(ft));
    pthread_mutex_init(&ft.lock, NULL);
    ft.ops = *os_default();
    ft.ops.open = ft_open;
    ft.ops.close = ft_close;
    ft.ops.pwrite = ft_pwrite;
    ft.ops.fdatasync = ft_fdatasync;
    ft.ops.rename = ft_rename;
    ft.ops.unlink = ft_unlink;
    ft.ops.fsync_dir = ft_fsync_dir;
    ft.fault_at = fault_at;
    ft.fault = fault;
}

/* The workload of the fault tests: 24 checkpoints of 40 keys, flushes of
 * 40 keys, so merges of tiers 0 and 1; every 5th commit fails after its
 * manifest reached the disk (its runs must survive), every 7th fails
 * before.  Each commit is saved to `saved` (durably, outside the seam). */
#define FT_STEPS 24
#define FT_KEYS 40

static void it_save(const it_caller *c)
{
    char tmp[300];
    const char *saved = c->saved;
    snprintf(tmp, sizeof(tmp), "%s.tmp", saved);
    FILE *f = fopen(tmp, "wb");
    cr_assert(f);
    cr_assert_eq(fwrite(c->manifest, 1, c->manifest_len, f), c->manifest_len);
    fflush(f);
    fsync(fileno(f));
    fclose(f);
    cr_assert_eq(rename(tmp, saved), 0);
}

static void ft_workload(it_caller *c)
{
    for (int step = 0; step < FT_STEPS; step++) {
        for (int k = 0; k < FT_KEYS; k++)
            it_put(c);
        bool reached = step % 5 == 4, failed = reached || step % 7 == 6;
        it_checkpoint(c, step % 3 == 0, !failed, reached);
        ids_wait_merges(c->x); /* merges are part of the sequence of calls */
        if (c->n > 0)
            it_expect(c, c->n - 1);
        it_expect_absent(c, (uint64_t)step);
    }
}

/* Reopens dir from the saved manifest without faults: exactly the keys
 * with seq <= covered_seq are there, and no file the manifest does not
 * name.  Returns covered_seq. */
static uint64_t ft_check_restart(const char *dir, const char *saved)
{
    it_caller c = {.o = it_options(dir, FT_KEYS)};
    FILE *f = fopen(saved, "rb");
    if (f) {
        c.manifest_len = fread(c.manifest, 1, sizeof(c.manifest), f);
        fclose(f);
    }
    it_open(&c);
    uint64_t covered = ids_covered_seq(c.x);
    for (uint64_t i = 0; i < FT_STEPS * FT_KEYS; i++) {
        uint64_t v;
        int rc = ids_get(c.x, it_key(i), &v);
        cr_assert_eq(rc, i < covered ? 0 : IDS_ABSENT, "key %lu of covered %lu: %d %s",
                     (unsigned long)i, (unsigned long)covered, rc, ids_error(c.x));
        cr_assert(rc != 0 || v == it_value(i));
    }
    it_check_files(&c, dir);
    char msg[512];
    cr_assert_eq(ids_verify(c.x, msg, sizeof(msg)), 0, "%s", msg);
    ids_close(c.x);
    return covered;
}

/* The power-loss run (child_util.h: DIR SAVED AT): the workload until the
 * power goes at seam call AT (exit FT_CRASHED) or to its end (FT_DONE). */
int ids_power_loss_child_main(int argc, char **argv)
{
    if (argc != 3)
        return 2;
    it_caller c = {.o = it_options(argv[0], FT_KEYS), .saved = argv[1]};
    c.o.os = &ft.ops;
    ft_init(strtoull(argv[2], NULL, 10), 0);
    it_open(&c);
    ft_workload(&c);
    ids_close(c.x);
    ft_settle();
    return FT_DONE;
}

/* One run of the workload with a fault at seam call `at`: a power loss
 * (fault 0, in a child process, which it ends) or an error returned once.
 * true if the workload made that call (a later `at` still faults). */
static bool ft_run_once(const char *dir, const char *saved, uint64_t at, int fault)
{
    it_caller c = {.o = it_options(dir, FT_KEYS), .saved = saved};
    c.o.os = &ft.ops;
    if (fault == 0) {
        char at_s[24];
        snprintf(at_s, sizeof(at_s), "%llu", (unsigned long long)at);
        pid_t pid = cu_spawn("ids-power-loss", (const char *const[]){dir, saved, at_s, NULL});
        int status;
        cr_assert_eq(waitpid(pid, &status, 0), pid);
        cr_assert(WIFEXITED(status) && (WEXITSTATUS(status) == FT_CRASHED ||
                                        WEXITSTATUS(status) == FT_DONE),
                  "child at call %lu: status %d", (unsigned long)at, status);
        return WEXITSTATUS(status) == FT_CRASHED;
    }
    ft_init(at, fault);
    it_open(&c);
    ft_workload(&c);
    ids_wait_merges(c.x);
    ids_poll(c.x);
    for (uint64_t i = 0; i < c.n; i++)
        it_expect(&c, i); /* no fault ever makes a key go missing */
    ids_close(c.x);
    return ft.calls >= at;
}

/* The fault at every call in turn, each followed by a clean restart from
 * the saved manifest.  Returns how many calls faulted. */
static uint64_t ft_every_call(const char *tag, bool power_loss)
{
    char base[64], dir[128], saved[128];
    eu_tmpdir_mem(base, tag);
    snprintf(dir, sizeof(dir), "%s/index", base);
    snprintf(saved, sizeof(saved), "%s/manifest", base);
    uint64_t at = 1, covered_max = 0;
    for (bool more = true; more; at++) {
        mkdir(dir, 0755);
        unlink(saved);
        more = ft_run_once(dir, saved, at, power_loss ? 0 : at % 2 ? -EIO : -ENOSPC);
        uint64_t covered = ft_check_restart(dir, saved);
        covered_max = covered > covered_max ? covered : covered_max;
        it_rmdir(dir);
    }
    cr_assert_gt(covered_max, FT_STEPS * FT_KEYS / 2, "most checkpoints committed");
    it_rmdir(base);
    return at - 2;
}

Test(ids, power_loss_at_every_io_call_of_flushes_and_merges_reopens_to_the_committed_keys,
     .timeout = 600)
{
    uint64_t crashes = ft_every_call("ids-crash", true);
    printf("ids power loss: %lu crash points, all reopened to their committed keys\n",
           (unsigned long)crashes);
    cr_assert_gt(crashes, 200, "the workload makes a few hundred I/O calls");
}

Test(ids, io_error_at_any_call_fails_that_flush_or_merge_and_the_committed_index_stays_whole,
     .timeout = 600)
{
    cr_assert_gt(ft_every_call("ids-eio", false), 200);
}

/* ---- damage ---------------------------------------------------------------------- */

typedef struct it_run_file {
    char path[512];
    uint64_t count, fences_off, filter_off;
    uint32_t block_count, filter_lines;
} it_run_file;

/* One committed run of n keys in dir; its layout read from its header as
 * ids.h documents it. */
static void it_one_run(it_caller *c, const char *dir, uint64_t n, it_run_file *f)
{
    *c = (it_caller){.o = it_options(dir, n)};
    it_open(c);
    for (uint64_t i = 0; i < n; i++)
        it_put(c);
    it_checkpoint(c, false, true, true);
    ids_close(c->x);
    c->x = NULL;
    DIR *d = opendir(dir);
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strstr(e->d_name, ".run"))
            snprintf(f->path, sizeof(f->path), "%s/%s", dir, e->d_name);
    closedir(d);
    uint8_t h[128];
    int fd = open(f->path, O_RDONLY);
    cr_assert_eq(pread(fd, h, sizeof(h), 0), (ssize_t)sizeof(h));
    close(fd);
    cr_assert(memcmp(h, "TALLYIDS", 8) == 0);
    memcpy(&f->count, h + 24, 8);
    memcpy(&f->block_count, h + 32, 4);
    memcpy(&f->filter_lines, h + 40, 4);
    memcpy(&f->fences_off, h + 48, 8);
    memcpy(&f->filter_off, h + 56, 8);
    cr_assert_eq(f->count, n);
    cr_assert_eq(f->block_count, (n + IDS_BLOCK_ENTRIES - 1) / IDS_BLOCK_ENTRIES);
}

/* XORs len bytes of the file at off with mask (through the file, so an
 * open index's shared mapping sees it too). */
static void it_flip(const char *path, uint64_t off, size_t len, uint8_t mask)
{
    uint8_t b[64];
    cr_assert_leq(len, sizeof(b));
    int fd = open(path, O_RDWR);
    cr_assert_geq(fd, 0);
    cr_assert_eq(pread(fd, b, len, (off_t)off), (ssize_t)len);
    for (size_t i = 0; i < len; i++)
        b[i] ^= mask;
    cr_assert_eq(pwrite(fd, b, len, (off_t)off), (ssize_t)len);
    close(fd);
}

/* Every key answers its value or TALLY_ECORRUPT naming the run, never
 * absent or another value.  Returns how many answered TALLY_ECORRUPT. */
static uint64_t it_never_wrong(it_caller *c, const char *name, const char *what)
{
    uint64_t corrupt = 0;
    for (uint64_t i = 0; i < c->n; i++) {
        uint64_t v = 0;
        int rc = ids_get(c->x, it_key(i), &v);
        if (rc == TALLY_ECORRUPT) {
            corrupt++;
            cr_assert(strstr(ids_error(c->x), name), "names the run: %s", ids_error(c->x));
            cr_assert(!what || strstr(ids_error(c->x), what), "says %s: %s", what,
                      ids_error(c->x));
            continue;
        }
        cr_assert_eq(rc, 0, "key %lu: %d", (unsigned long)i, rc);
        cr_assert_eq(v, it_value(i));
    }
    return corrupt;
}

Test(ids, damaged_data_block_answers_ecorrupt_naming_run_and_block_and_verify_finds_it)
{
    char dir[64];
    eu_tmpdir_mem(dir, "ids-block");
    it_caller c;
    it_run_file f;
    it_one_run(&c, dir, 3000, &f);
    it_flip(f.path, IDS_BLOCK_BYTES * (1 + 3) + 1000, 1, 0x10);
    it_open(&c); /* data blocks are checked when read, not at open */
    const char *name = strrchr(f.path, '/') + 1;
    uint64_t corrupt = it_never_wrong(&c, name, "block 3 ");
    cr_assert_eq(corrupt, IDS_BLOCK_ENTRIES, "every key of block 3, no other");
    char msg[512];
    cr_assert_eq(ids_verify(c.x, msg, sizeof(msg)), TALLY_ECORRUPT);
    cr_assert(strstr(msg, name) && strstr(msg, "block 3 "), "%s", msg);
    ids_close(c.x);
    it_rmdir(dir);
}

/* Damage at off fails ids_open with TALLY_ECORRUPT naming the run. */
static void it_open_refuses(it_caller *c, const char *path, uint64_t off, const char *what)
{
    it_flip(path, off, 1, 0x01);
    char err[512] = "";
    c->o.error = err;
    c->o.error_cap = sizeof(err);
    ids *x = NULL;
    cr_assert_eq(ids_open(&c->o, c->manifest, c->manifest_len, &x), TALLY_ECORRUPT, "%s", what);
    cr_assert(strstr(err, strrchr(path, '/') + 1) && strstr(err, what), "%s: %s", what, err);
    it_flip(path, off, 1, 0x01);
    cr_assert_eq(ids_open(&c->o, c->manifest, c->manifest_len, &x), 0, "%s: %s", what, err);
    ids_close(x);
}

Test(ids, damaged_header_fences_filter_or_footer_fail_open_naming_the_run)
{
    char dir[64];
    eu_tmpdir_mem(dir, "ids-open");
    it_caller c;
    it_run_file f;
    it_one_run(&c, dir, 3000, &f);
    it_open_refuses(&c, f.path, 30, "header");
    it_open_refuses(&c, f.path, f.fences_off + 16 * 5 + 3, "fences");
    it_open_refuses(&c, f.path, f.filter_off + 64 * 7 + 10, "filter");
    struct stat st;
    stat(f.path, &st);
    it_open_refuses(&c, f.path, (uint64_t)st.st_size - 3, "footer");
    /* A short file, a missing one, a damaged manifest. */
    cr_assert_eq(truncate(f.path, st.st_size - 64), 0);
    ids *x;
    cr_assert_eq(ids_open(&c.o, c.manifest, c.manifest_len, &x), TALLY_ECORRUPT);
    cr_assert_eq(truncate(f.path, st.st_size), 0);
    c.manifest[20] ^= 1;
    cr_assert_eq(ids_open(&c.o, c.manifest, c.manifest_len, &x), TALLY_ECORRUPT);
    c.manifest[20] ^= 1;
    c.manifest[8] = 9; /* a version from the future */
    cr_assert_eq(ids_open(&c.o, c.manifest, c.manifest_len, &x), TALLY_EFORMAT);
    c.manifest[8] = 1;
    cr_assert_eq(unlink(f.path), 0);
    cr_assert_eq(ids_open(&c.o, c.manifest, c.manifest_len, &x), -ENOENT);
    it_rmdir(dir);
}

Test(ids, filter_or_fence_damage_after_open_never_gives_a_wrong_answer_and_is_caught)
{
    char dir[64];
    eu_tmpdir_mem(dir, "ids-late");
    it_caller c;
    it_run_file f;
    it_one_run(&c, dir, 3000, &f);
    it_open(&c);
    const char *name = strrchr(f.path, '/') + 1;
    /* Every bit of the file's filter line of key 0 flipped: lookups read
     * the copy in memory checked at open, so every answer stays right;
     * ids_verify (the file against its checksums) and the next open catch
     * it. */
    ids_key k = it_key(0);
    uint64_t line = (uint64_t)(((unsigned __int128)k.hi * f.filter_lines) >> 64);
    it_flip(f.path, f.filter_off + 64 * line, 60, 0xff);
    cr_assert_eq(it_never_wrong(&c, name, NULL), 0, "the filter in memory answers");
    char msg[512];
    cr_assert_eq(ids_verify(c.x, msg, sizeof(msg)), TALLY_ECORRUPT);
    cr_assert(strstr(msg, name) && strstr(msg, "filter"), "%s", msg);
    ids *y = NULL;
    cr_assert_eq(ids_open(&c.o, c.manifest, c.manifest_len, &y), TALLY_ECORRUPT);
    it_flip(f.path, f.filter_off + 64 * line, 60, 0xff);
    cr_assert_eq(ids_verify(c.x, msg, sizeof(msg)), 0, "%s", msg);
    /* A fence moved up or down: the block it leads to contradicts it. */
    for (uint32_t b = 1; b + 1 < f.block_count; b += 5) {
        it_flip(f.path, f.fences_off + 16 * b + 7, 1, 0x80);
        cr_assert_gt(it_never_wrong(&c, name, "fence"), 0, "fence %u", b);
        it_flip(f.path, f.fences_off + 16 * b + 7, 1, 0x80);
    }
    cr_assert_eq(it_never_wrong(&c, name, NULL), 0);
    ids_close(c.x);
    it_rmdir(dir);
}

/* ---- snapshots, leftovers ---------------------------------------------------------- */

Test(ids, link_puts_a_manifests_runs_in_a_snapshot_that_restores_them_after_merges_removed_them)
{
    char dir[64], snap[128], restored[128];
    eu_tmpdir_mem(dir, "ids-link");
    snprintf(snap, sizeof(snap), "%s.snap", dir);
    snprintf(restored, sizeof(restored), "%s.restored", dir);
    mkdir(snap, 0755);
    it_caller c = {.o = it_options(dir, 50)};
    it_open(&c);
    for (int step = 0; step < 3; step++) {
        for (int i = 0; i < 60; i++)
            it_put(&c);
        it_checkpoint(&c, true, true, true);
    }
    uint8_t snap_manifest[IDS_MANIFEST_BYTES_MAX];
    size_t snap_len = c.manifest_len;
    memcpy(snap_manifest, c.manifest, snap_len);
    uint64_t snap_covered = ids_covered_seq(c.x);
    cr_assert_eq(ids_link(c.x, snap_manifest, snap_len, snap), 0);
    cr_assert_eq(ids_link(c.x, snap_manifest, snap_len, snap), 0, "linking twice is fine");
    /* The index moves on: a merge replaces the snapshot's runs and the next
     * commit removes their names from dir. */
    for (int step = 0; step < 3; step++) {
        for (int i = 0; i < 60; i++)
            it_put(&c);
        it_checkpoint(&c, true, true, true);
    }
    cr_assert_eq(ids_wait_merges(c.x), 0);
    it_checkpoint(&c, true, true, true);
    ids_stats_t s;
    ids_stats(c.x, &s);
    cr_assert_geq(s.merges, 1);
    ids_close(c.x);
    /* Restore: the snapshot's runs into a fresh index directory. */
    cr_assert_eq(ids_link_files(NULL, snap, snap_manifest, snap_len, restored), -ENOENT,
                 "the destination must exist");
    mkdir(restored, 0755);
    cr_assert_eq(ids_link_files(NULL, snap, snap_manifest, snap_len, restored), 0);
    it_caller r = {.o = it_options(restored, 50), .manifest_len = snap_len};
    memcpy(r.manifest, snap_manifest, snap_len);
    it_open(&r);
    cr_assert_eq(ids_covered_seq(r.x), snap_covered);
    r.n = snap_covered;
    for (uint64_t i = 0; i < r.n; i++)
        it_expect(&r, i);
    uint64_t v;
    cr_assert_eq(ids_get(r.x, it_key(r.n), &v), IDS_ABSENT);
    char msg[512];
    cr_assert_eq(ids_verify(r.x, msg, sizeof(msg)), 0, "%s", msg);
    ids_close(r.x);
    it_rmdir(dir);
    it_rmdir(snap);
    it_rmdir(restored);
}

Test(ids, open_removes_files_the_manifest_does_not_name_and_numbers_stay_above_them)
{
    char dir[64], path[128];
    eu_tmpdir_mem(dir, "ids-leftover");
    it_caller c = {.o = it_options(dir, 20)};
    it_open(&c);
    for (int i = 0; i < 20; i++)
        it_put(&c);
    it_checkpoint(&c, false, true, true);
    ids_close(c.x);
    const char *junk[] = {"ids-00000000000000ff.tmp", "ids-0000000000000100.run"};
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, junk[i]);
        FILE *f = fopen(path, "w");
        fputs("half written", f);
        fclose(f);
    }
    snprintf(path, sizeof(path), "%s/not-ours", dir);
    fclose(fopen(path, "w"));
    it_open(&c);
    int runs, temps, other;
    it_files(dir, &runs, &temps, &other);
    cr_assert_eq(runs, 1);
    cr_assert_eq(temps, 0);
    cr_assert_eq(other, 1, "files of other names are left alone");
    for (int i = 0; i < 20; i++)
        it_put(&c);
    it_checkpoint(&c, false, true, true);
    snprintf(path, sizeof(path), "%s/ids-0000000000000101.run", dir);
    cr_assert_eq(access(path, F_OK), 0, "the next number is above the leftovers'");
    ids_close(c.x);
    it_rmdir(dir);
}

/* ---- scale ------------------------------------------------------------------------ */

/* The caller's committer thread: flushes and "commits" what the owner
 * froze, while the owner goes on. */
typedef struct sc_committer {
    ids *x;
    pthread_mutex_t lock;
    pthread_cond_t cv;
    bool requested, done, stop;
    bool outstanding; /* the owner's: handed over, not committed yet */
    int rc;
    pthread_t thread;
} sc_committer;

static void *sc_committer_main(void *arg)
{
    sc_committer *k = arg;
    pthread_mutex_lock(&k->lock);
    for (;;) {
        while (!k->requested && !k->stop)
            pthread_cond_wait(&k->cv, &k->lock);
        if (k->stop)
            break;
        k->requested = false;
        pthread_mutex_unlock(&k->lock);
        int rc = ids_flush_frozen(k->x);
        uint8_t buf[IDS_MANIFEST_BYTES_MAX];
        size_t len;
        if (rc == 0)
            rc = ids_manifest(k->x, buf, sizeof(buf), &len);
        pthread_mutex_lock(&k->lock);
        k->rc = rc;
        k->done = true;
        pthread_cond_broadcast(&k->cv);
    }
    pthread_mutex_unlock(&k->lock);
    return NULL;
}

/* The owner's checkpoint: commit the committer's last manifest if it is
 * ready (wait: wait for it), then freeze and hand over — also with nothing
 * frozen when force, so that installed merges get committed. */
static void sc_checkpoint(sc_committer *k, uint64_t seq, bool force, bool wait)
{
    pthread_mutex_lock(&k->lock);
    while (wait && k->outstanding && !k->done)
        pthread_cond_wait(&k->cv, &k->lock);
    bool done = k->done;
    k->done = false;
    pthread_mutex_unlock(&k->lock);
    if (done) {
        cr_assert_eq(k->rc, 0, "flush: %s", ids_flush_error(k->x));
        cr_assert_eq(ids_commit_done(k->x, 0), 0);
        k->outstanding = false;
    }
    if (k->outstanding)
        return; /* its flush is still running: the next checkpoint */
    int rc = ids_freeze(k->x, seq, force);
    cr_assert_geq(rc, 0, "freeze: %d", rc);
    if (rc == 1 || force) {
        pthread_mutex_lock(&k->lock);
        k->requested = k->outstanding = true;
        pthread_cond_broadcast(&k->cv);
        pthread_mutex_unlock(&k->lock);
    }
}

/* Bytes a key takes in a run file: its entry (169 to a 4 KiB block), its
 * share of a fence and of the filter (480 bits to a 64-byte line). */
static double sc_run_bytes_per_key(uint32_t filter_bits)
{
    return 24.0 * IDS_BLOCK_BYTES / (IDS_BLOCK_ENTRIES * 24.0) + 16.0 / IDS_BLOCK_ENTRIES +
           filter_bits / 8.0 * IDS_FILTER_LINE_BYTES * 8 / IDS_FILTER_LINE_BITS;
}

Test(ids, ten_million_keys_are_all_found_with_bounded_runs_memory_and_bytes_written,
     .timeout = 900)
{
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    /* ASan: 2-3x the CPU (ThreadSanitizer: 5-15x), and its shadow of every
     * mapped page it touches makes RssAnon meaningless; the same tier shape
     * at a fifth the keys. */
    const uint64_t n = 2000000, flush_keys = 1u << 16;
    const bool measure_memory = false;
#else
    const uint64_t n = 10000000, flush_keys = IDS_FLUSH_KEYS_DEFAULT;
    const bool measure_memory = true;
#endif
    const uint64_t absent = 1000000, checkpoint_every = 100000;
    char dir[64];
    eu_tmpdir_mem(dir, "ids-scale");
    /* Merges at the writer's priority: this pins the policy's bounds, not
     * how the CPU is shared on a busy machine (puts here run ~30x faster
     * than a shard's, so niced merges would trail on a loaded box). */
    it_caller c = {.o = {.dir = dir, .flush_keys = flush_keys, .merge_nice = -1}};
    it_open(&c);
    sc_committer k = {.x = c.x};
    pthread_mutex_init(&k.lock, NULL);
    pthread_cond_init(&k.cv, NULL);
    cr_assert_eq(pthread_create(&k.thread, NULL, sc_committer_main, &k), 0);
    long rss0 = it_rss_anon_kib();
    uint32_t runs_max = 0;
    ids_stats_t s;
    double t0 = it_now_s();
    for (uint64_t i = 0; i < n; i++) {
        int rc = ids_put(c.x, it_key(i), it_value(i));
        if (rc == -ENOBUFS) {
            /* Commits are behind (a slow build): wait for the running one
             * and hand over the next, as a shard's backpressure does. */
            sc_checkpoint(&k, i, false, true);
            cr_assert_eq(ids_poll(c.x), 0, "%s", ids_error(c.x));
            sc_checkpoint(&k, i, false, true);
            rc = ids_put(c.x, it_key(i), it_value(i));
        }
        cr_assert_eq(rc, 0);
        if ((i + 1) % checkpoint_every == 0) {
            cr_assert_eq(ids_poll(c.x), 0, "%s", ids_error(c.x));
            sc_checkpoint(&k, i + 1, false, false);
            ids_stats(c.x, &s);
            runs_max = s.run_count > runs_max ? s.run_count : runs_max;
        }
    }
    double t1 = it_now_s();
    c.n = n;
    sc_checkpoint(&k, n, true, true); /* the last keys */
    sc_checkpoint(&k, n, true, true); /* ... committed */
    cr_assert_eq(ids_wait_merges(c.x), 0, "%s", ids_error(c.x));
    sc_checkpoint(&k, n, true, true); /* the merges' manifest */
    sc_checkpoint(&k, n, false, true);
    double t2 = it_now_s();
    ids_stats(c.x, &s);
    it_check_counts(&c);
    cr_assert_eq(s.run_keys, n);
    cr_assert_eq(ids_covered_seq(c.x), n);
    double t3 = it_now_s();
    for (uint64_t i = 0; i < n; i++) {
        uint64_t v;
        int rc = ids_get(c.x, it_key(i), &v);
        if (rc != 0 || v != it_value(i))
            cr_assert_fail("key %lu: %d %s", (unsigned long)i, rc, ids_error(c.x));
    }
    double t4 = it_now_s();
    ids_stats(c.x, &s);
    uint64_t fp0 = s.filter_false_positives;
    for (uint64_t j = 0; j < absent; j++) {
        uint64_t v;
        if (ids_get(c.x, it_absent(j), &v) != IDS_ABSENT)
            cr_assert_fail("absent key %lu found", (unsigned long)j);
    }
    double t5 = it_now_s();
    ids_stats(c.x, &s);
    long rss1 = it_rss_anon_kib();
    pthread_mutex_lock(&k.lock);
    k.stop = true;
    pthread_cond_broadcast(&k.cv);
    pthread_mutex_unlock(&k.lock);
    pthread_join(k.thread, NULL);

    /* Bounds the merge policy gives: each key is written by its flush and
     * once per tier it climbs, at most floor(log4(n / flush_keys)) tiers;
     * each file adds a header, a partial last block, paddings, a footer. */
    uint32_t tiers = 0;
    for (uint64_t q = n / flush_keys; q >= IDS_MERGE_FANIN; q /= IDS_MERGE_FANIN)
        tiers++;
    double per_key = sc_run_bytes_per_key(IDS_FILTER_BITS_DEFAULT);
    double bound = (double)n * per_key * (1 + tiers) + (double)(s.flushes + s.merges) * 12288;
    double fp_rate = (double)(s.filter_false_positives - fp0) / (double)absent;
    printf("ids scale: %lu keys, flush %lu: %.0f puts/s, %.0f present gets/s, %.0f absent "
           "gets/s (%.2f%% filter false positives over %u runs, %.2f%% a run)\n",
           (unsigned long)n, (unsigned long)flush_keys, (double)n / (t1 - t0),
           (double)n / (t4 - t3), (double)absent / (t5 - t4), 100 * fp_rate, s.run_count,
           100 * fp_rate / s.run_count);
    printf("ids scale: %lu flushes, %lu merges (%lu keys), runs max %u, end %u; written %.1f "
           "B/key = %.2f x the %.1f B/key of one copy (bound %.1f); disk %.1f B/key; "
           "drain %.1f s\n",
           (unsigned long)s.flushes, (unsigned long)s.merges, (unsigned long)s.merge_keys,
           runs_max, s.run_count, (double)s.bytes_written / n,
           (double)s.bytes_written / n / per_key, per_key, bound / n,
           (double)s.disk_bytes / n, t2 - t1);
    cr_assert_leq(runs_max, 16, "runs stay bounded while writing");
    cr_assert_leq(s.run_count, 3 * (tiers + 1), "at most 3 runs a tier once merged");
    cr_assert_leq((double)s.bytes_written, bound, "bytes written %lu over the bound %.0f",
                  (unsigned long)s.bytes_written, bound);
    cr_assert_lt(fp_rate / s.run_count, 0.005, "filters rule out ~99.8%% of absent keys a run");
    if (measure_memory) {
        double grown = (double)(rss1 - rss0) * 1024;
        printf("ids scale: RssAnon grew %.3f B/key (%ld -> %ld KiB), memtable mapped %lu B, "
               "filters in memory %.3f B/key\n",
               grown / n, rss0, rss1, (unsigned long)s.memtable_bytes,
               (double)s.filter_bytes / n);
        /* The runs' filters: their bits a key in 480-bit lines of 64 bytes. */
        double filter_max = (double)IDS_FILTER_BITS_DEFAULT / 480 * 64 * 1.05;
        cr_assert_leq((double)s.filter_bytes, filter_max * (double)n,
                      "filters in memory <= %.2f B a key", filter_max);
        cr_assert_leq(grown - (double)s.memtable_bytes - (double)s.filter_bytes, (double)n,
                      "anonymous memory beyond the memtable and the filters <= 1 byte a key");
    }
    fflush(stdout);
    char msg[512];
    cr_assert_eq(ids_verify(c.x, msg, sizeof(msg)), 0, "%s", msg);
    ids_close(c.x);
    eu_rmrf(dir);
}
