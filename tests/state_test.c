/*
 * state_test.c — engine/state.c against a reference model: random puts,
 * deletes, gets and ordered range scans over the hash layers and LMDB,
 * with synchronous and asynchronous commits (a committer hook adding a
 * value of its own) and aborts at random moments.  The model is a
 * sorted array per table, with a copy kept at the last commit so that an
 * abort can be checked.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine_util.h"
#include "fault_util.h"
#include "os.h"
#include "state.h"

/* ---- the model ----------------------------------------------------------- */

#define KEYS 300 /* per table: small, so that keys repeat and collide */
#define TABLES 3 /* accounts, lots, and lot_ids (written with MDB_APPEND past its end) */

typedef struct model {
    bool present[TABLES][KEYS];
    uint8_t val[TABLES][KEYS][40];
    uint8_t val_len[TABLES][KEYS];
} model;

/* Keys sort like their index: big-endian, with a varying length tail so
 * that keys of different lengths interleave. */
static size_t key_of(int k, uint8_t *out)
{
    out[0] = (uint8_t)(k >> 8);
    out[1] = (uint8_t)k;
    size_t tail = (size_t)(k % 3);
    memset(out + 2, 0xAB, tail);
    return 2 + tail;
}

static int table_of(int t) { return t == 2 ? STATE_LOT_IDS : 1 + t; }

static void check_get(state *s, const model *m, int t, int k)
{
    uint8_t key[8];
    size_t kl = key_of(k, key);
    const void *v;
    size_t vl;
    int rc = state_get(s, table_of(t), key, kl, &v, &vl);
    cr_assert_geq(rc, 0, "get failed: %d", rc);
    if (!m->present[t][k]) {
        cr_assert_eq(rc, 1, "table %d key %d should be absent", t, k);
        return;
    }
    cr_assert_eq(rc, 0, "table %d key %d should be present", t, k);
    cr_assert_eq(vl, m->val_len[t][k]);
    cr_assert(memcmp(v, m->val[t][k], vl) == 0, "table %d key %d value", t, k);
}

/* The model's next present key from k in direction dir, or -1. */
static int model_next(const model *m, int t, int k, int dir)
{
    for (; k >= 0 && k < KEYS; k += dir)
        if (m->present[t][k])
            return k;
    return -1;
}

static int key_index(const void *key, size_t kl)
{
    const uint8_t *b = key;
    cr_assert_geq(kl, 2);
    return b[0] << 8 | b[1];
}

/* An ordered scan of [from, to) (to < 0: to the end) against the model:
 * every present key once, in order, with its value. */
typedef struct walk {
    const model *m;
    int t, next, to;
} walk;

static int walk_one(void *ctx, const void *k, size_t kl, const void *v, size_t vl)
{
    walk *w = ctx;
    int want = model_next(w->m, w->t, w->next, 1);
    cr_assert(want >= 0 && (w->to < 0 || want < w->to), "table %d: scan went past the end", w->t);
    cr_assert_eq(key_index(k, kl), want, "table %d: scan gave key %d, want %d", w->t,
                 key_index(k, kl), want);
    cr_assert_eq(vl, w->m->val_len[w->t][want]);
    cr_assert(memcmp(v, w->m->val[w->t][want], vl) == 0);
    w->next = want + 1;
    return 0;
}

static void check_walk(state *s, const model *m, int t, int from, int to)
{
    uint8_t fk[8], tk[8];
    size_t fl = key_of(from, fk), tl = to >= 0 ? key_of(to, tk) : 0;
    walk w = {m, t, from, to};
    cr_assert_eq(state_scan(s, table_of(t), fk, fl, tk, tl, walk_one, &w), 0);
    int left = model_next(m, t, w.next, 1);
    cr_assert(left < 0 || (to >= 0 && left >= to), "table %d: scan stopped early at %d", t,
              w.next);
}

/* ---- the test ----------------------------------------------------------------- */

static void nothing(void *ctx) { (void)ctx; }

/* The committer's hook adds a value of its own to the commit. */
static int add_extra(void *ctx)
{
    return state_commit_add(ctx, STATE_META, "extra", 5, "xyz", 3);
}

Test(state, random_operations_over_layers_and_lmdb_match_a_model, .timeout = 240)
{
    char dir[64];
    eu_tmpdir(dir, "state");
    state *s;
    cr_assert_eq(state_open(dir, 1ull << 30, &s), 0);
    static model live, committed, frozen_view;
    memset(&live, 0, sizeof(live));
    memset(&committed, 0, sizeof(committed));
    bool committing = false, has_frozen = false;
    unsigned seed = 12345;
    for (int op = 0; op < 60000; op++) {
        int t = rand_r(&seed) % TABLES, k = rand_r(&seed) % KEYS;
        int what = rand_r(&seed) % 1000;
        uint8_t key[8];
        size_t kl = key_of(k, key);
        if (what < 450) { /* put */
            uint8_t val[40];
            size_t vl = (size_t)(rand_r(&seed) % 40);
            for (size_t i = 0; i < vl; i++)
                val[i] = (uint8_t)rand_r(&seed);
            cr_assert_eq(state_put(s, table_of(t), key, kl, val, vl), 0);
            live.present[t][k] = true;
            memcpy(live.val[t][k], val, vl);
            live.val_len[t][k] = (uint8_t)vl;
        } else if (what < 600) { /* delete */
            int rc = state_del(s, table_of(t), key, kl);
            cr_assert_eq(rc, live.present[t][k] ? 0 : 1, "del of key %d", k);
            live.present[t][k] = false;
        } else if (what < 650) { /* delete without a read, the key there or not */
            cr_assert_eq(state_del_known(s, table_of(t), key, kl), 0, "del of key %d", k);
            live.present[t][k] = false;
        } else if (what < 850) {
            check_get(s, &live, t, k);
        } else if (what < 960) {
            int to = rand_r(&seed) % 3 ? k + rand_r(&seed) % 60 : -1;
            check_walk(s, &live, t, k, to > KEYS ? -1 : to);
        } else if (what < 975) { /* an asynchronous checkpoint, step by step */
            if (!has_frozen) {
                cr_assert_eq(state_freeze(s), 0);
                has_frozen = true;
                frozen_view = live;
            } else if (!committing) {
                cr_assert_eq(state_commit_frozen(s, add_extra, s, nothing, NULL), 0);
                committing = true;
            } else {
                int rc = state_commit_finish(s);
                while (rc == STATE_COMMIT_RUNNING) {
                    usleep(100);
                    rc = state_commit_finish(s);
                }
                cr_assert_eq(rc, 0);
                committing = has_frozen = false;
                committed = frozen_view;
                const void *v;
                size_t vl;
                cr_assert_eq(state_get(s, STATE_META, "extra", 5, &v, &vl), 0);
                cr_assert(vl == 3 && memcmp(v, "xyz", 3) == 0);
            }
        } else if (what < 990) { /* a synchronous commit of everything */
            cr_assert_eq(state_commit(s), 0);
            committing = has_frozen = false;
            committed = live;
        } else { /* abort: back to what LMDB holds */
            if (committing) {
                /* A running commit is kept (its records were durable). */
                committed = frozen_view;
            }
            cr_assert_eq(state_abort(s), 0);
            committing = has_frozen = false;
            live = committed;
        }
    }
    /* Everything once more, whole tables both ways. */
    for (int t = 0; t < TABLES; t++) {
        for (int k = 0; k < KEYS; k++)
            check_get(s, &live, t, k);
        check_walk(s, &live, t, 0, -1);
    }
    state_close(s);
    eu_rmrf(dir);
}

/* ---- a big checkpoint's order ----------------------------------------------------- */

/* Keys of 8 to 24 bytes that share their first bytes the way the engine's
 * do (a few merchants, small numbers), and often their first 16 with a
 * longer key (a tail, or a prefix of another key): what a checkpoint's
 * sort must still put in memcmp order. */
#define BIG_KEYS 40000
typedef struct big_key {
    uint8_t b[24];
    uint8_t len;
} big_key;

static int big_key_cmp(const void *a, const void *b)
{
    const big_key *x = a, *y = b;
    int c = memcmp(x->b, y->b, x->len < y->len ? x->len : y->len);
    return c ? c : (x->len > y->len) - (x->len < y->len);
}

typedef struct big_walk {
    const big_key *keys;
    size_t n, next;
} big_walk;

static int big_walk_one(void *ctx, const void *k, size_t kl, const void *v, size_t vl)
{
    big_walk *w = ctx;
    cr_assert_lt(w->next, w->n, "the scan gave more keys than were put");
    const big_key *want = &w->keys[w->next++];
    cr_assert(kl == want->len && memcmp(k, want->b, kl) == 0, "key %zu out of order", w->next - 1);
    cr_assert(vl == 4 && memcmp(v, want->b, 4) == 0, "key %zu's value", w->next - 1);
    return 0;
}

Test(state, a_checkpoint_of_many_keys_sharing_their_first_bytes_writes_them_in_order)
{
    char dir[64];
    eu_tmpdir(dir, "state-order");
    state *s;
    cr_assert_eq(state_open(dir, 1ull << 30, &s), 0);
    static big_key keys[BIG_KEYS];
    unsigned seed = 99;
    size_t n = 0;
    while (n < BIG_KEYS) {
        big_key *k = &keys[n];
        memset(k, 0, sizeof(*k));
        k->b[7] = (uint8_t)(rand_r(&seed) % 5);           /* a merchant */
        uint32_t a = (uint32_t)rand_r(&seed) % 3000;       /* an account */
        k->b[13] = (uint8_t)(a >> 16);
        k->b[14] = (uint8_t)(a >> 8);
        k->b[15] = (uint8_t)a;
        int shape = rand_r(&seed) % 4; /* 8, 16, 16 + tail, 16 + zeros */
        k->len = shape == 0 ? 8 : shape == 1 ? 16 : (uint8_t)(17 + rand_r(&seed) % 8);
        if (shape == 2)
            for (size_t i = 16; i < k->len; i++)
                k->b[i] = (uint8_t)rand_r(&seed);
        const void *v; /* unique keys, as a table's are */
        size_t vl;
        if (state_get(s, STATE_ACCOUNTS, k->b, k->len, &v, &vl) == 0)
            continue;
        cr_assert_eq(state_put(s, STATE_ACCOUNTS, k->b, k->len, k->b, 4), 0);
        n++;
    }
    /* Into an empty table every key is appended: one out of order fails
     * the commit (MDB_APPEND); the scan then reads LMDB alone. */
    cr_assert_eq(state_commit(s), 0);
    qsort(keys, n, sizeof(keys[0]), big_key_cmp);
    big_walk w = {keys, n, 0};
    cr_assert_eq(state_scan(s, STATE_ACCOUNTS, NULL, 0, NULL, 0, big_walk_one, &w), 0);
    cr_assert_eq(w.next, n, "the scan gave %zu of %zu keys", w.next, n);
    state_close(s);
    eu_rmrf(dir);
}

/* A checkpoint recycles the clean cache's memory for the next active
 * layer: at the busiest moment of each cycle (a full active layer while
 * the last one is committed) the layers map two layers' memory, not three,
 * and it does not grow from one checkpoint to the next. */
Test(state, checkpoints_of_equal_stretches_map_two_layers_not_three)
{
    char dir[64];
    eu_tmpdir(dir, "state-recycle");
    state *s;
    cr_assert_eq(state_open(dir, 1ull << 30, &s), 0);
    enum { ROUNDS = 10, PER_ROUND = 40000 };
    uint8_t val[48];
    size_t layer = 0, most = 0, first = 0;
    for (uint32_t round = 0; round < ROUNDS; round++) {
        for (uint32_t i = 0; i < PER_ROUND; i++) {
            uint32_t k = round * PER_ROUND + i;
            uint8_t key[4] = {(uint8_t)(k >> 24), (uint8_t)(k >> 16), (uint8_t)(k >> 8),
                              (uint8_t)k};
            memset(val, (int)(k & 0xff), sizeof(val));
            cr_assert_eq(state_put(s, STATE_ACCOUNTS, key, sizeof(key), val, sizeof(val)), 0);
        }
        size_t now = state_memory_bytes(s);
        if (round == 0)
            layer = now; /* one full layer and nothing else */
        else if (round == 2)
            first = now;
        most = now > most ? now : most;
        cr_assert_geq(state_commit_wait(s), 0);
        cr_assert_eq(state_freeze(s), 0);
        cr_assert_eq(state_commit_frozen(s, NULL, NULL, nothing, NULL), 0);
    }
    cr_assert_eq(state_commit_wait(s), 0);
    cr_assert_gt(layer, (size_t)PER_ROUND * sizeof(val));
    cr_assert_leq(most, 2 * layer + layer / 8,
                  "the layers mapped %zu bytes at most, a full layer is %zu", most, layer);
    cr_assert_leq(most, first + layer / 8, "the layers' memory grew from %zu to %zu", first,
                  most);
    /* Every value reads back (the recycled memory held older keys). */
    for (uint32_t k = 0; k < ROUNDS * PER_ROUND; k += 997) {
        uint8_t key[4] = {(uint8_t)(k >> 24), (uint8_t)(k >> 16), (uint8_t)(k >> 8), (uint8_t)k};
        const void *v;
        size_t vl;
        cr_assert_eq(state_get(s, STATE_ACCOUNTS, key, sizeof(key), &v, &vl), 0);
        cr_assert_eq(vl, sizeof(val));
        cr_assert_eq(((const uint8_t *)v)[0], (uint8_t)(k & 0xff));
    }
    state_close(s);
    eu_rmrf(dir);
}

/* What a checkpoint writes is counted (tally_checkpoint_bytes_total, and
 * the cost-model test of engine_test.c, read the committer thread's
 * os_thread_written_bytes): through LMDB's writable map a commit calls no
 * write() for its pages, yet a commit of 2,000 fresh 200-byte values
 * dirties at least their 400 KB. */
Test(state, a_commit_through_the_map_counts_as_written_by_its_thread)
{
    char dir[64];
    eu_tmpdir(dir, "state-written");
    state *s;
    cr_assert_eq(state_open(dir, 1ull << 30, &s), 0);
    uint64_t w0, w1;
    cr_assert_eq(os_thread_written_bytes(&w0), 0);
    uint8_t key[4], val[200];
    for (uint32_t k = 0; k < 2000; k++) {
        memcpy(key, &k, sizeof(key));
        memset(val, (int)k, sizeof(val));
        cr_assert_eq(state_put(s, STATE_ACCOUNTS, key, sizeof(key), val, sizeof(val)), 0);
    }
    cr_assert_eq(state_commit(s), 0);
    cr_assert_eq(os_thread_written_bytes(&w1), 0);
    cr_assert_geq(w1 - w0, 2000u * sizeof(val), "a commit of %zu value bytes counted %llu bytes",
                  2000u * sizeof(val), (unsigned long long)(w1 - w0));
    state_close(s);
    eu_rmrf(dir);
}

/* Keys k of the disk-full tests: 4 bytes big-endian, a 200-byte value
 * of k's low byte. */
static void fault_key(uint32_t k, uint8_t key[4])
{
    key[0] = (uint8_t)(k >> 24);
    key[1] = (uint8_t)(k >> 16);
    key[2] = (uint8_t)(k >> 8);
    key[3] = (uint8_t)k;
}

static int fault_put_round(state *s, uint32_t from, uint32_t count)
{
    uint8_t key[4], val[200];
    for (uint32_t k = from; k < from + count; k++) {
        fault_key(k, key);
        memset(val, (int)(k & 0xff), sizeof(val));
        if (state_put(s, STATE_ACCOUNTS, key, sizeof(key), val, sizeof(val)) != 0)
            return -1;
    }
    return 0;
}

/* Keys [0, committed) read back whole, every step-th; keys [committed,
 * end) — a checkpoint that failed — are absent. */
static void fault_check_keys(state *s, uint32_t committed, uint32_t end, uint32_t step)
{
    uint8_t key[4];
    const void *v;
    size_t vl;
    for (uint32_t k = 0; k < end; k += step) {
        fault_key(k, key);
        int got = state_get(s, STATE_ACCOUNTS, key, sizeof(key), &v, &vl);
        if (k >= committed) {
            cr_assert_neq(got, 0, "key %u of the failed checkpoint is visible", k);
            continue;
        }
        cr_assert_eq(got, 0, "committed key %u is lost", k);
        cr_assert_eq(vl, 200u);
        cr_assert_eq(((const uint8_t *)v)[0], (uint8_t)(k & 0xff));
    }
}

/* The disk-full tests' filesystem: a tmpfs of `size`, the state in its
 * "state" directory (root only). */
static void fault_fs(fu_fs *fs, const char *name, const char *size, char *dir, size_t cap)
{
    fu_require_root();
    fu_fs_tmpfs(fs, name, size);
    snprintf(dir, cap, "%s/state", fs->mnt);
}

/* The state writes through LMDB's writable map (MDB_WRITEMAP): a page of
 * data.mdb the filesystem cannot back would fault with SIGBUS where a
 * write() says ENOSPC, so a checkpoint first checks the room it may need.
 * On a 4 MiB tmpfs, checkpoints of fresh keys fill it: the one that would
 * not fit fails with -ENOSPC and a message with the figures, without a
 * fault; every earlier commit reads back, and once there is room again
 * the same state, in the same process, commits and reopens whole. */
Test(diskfull, a_checkpoint_that_fills_the_state_map_fails_with_enospc_and_keeps_earlier_commits,
     .timeout = 120, .fini = fu_cleanup)
{
    fu_fs fs;
    char dir[160];
    fault_fs(&fs, "state-full", "4m", dir, sizeof(dir));
    state *s;
    cr_assert_eq(state_open(dir, 1ull << 30, &s), 0);
    enum { PER_ROUND = 2000 };
    uint32_t committed = 0; /* keys [0, committed) are durable */
    int rc = 0;
    for (uint32_t round = 0; round < 64 && rc == 0; round++) {
        cr_assert_eq(fault_put_round(s, committed, PER_ROUND), 0);
        rc = state_commit(s);
        if (rc == 0)
            committed += PER_ROUND;
    }
    cr_assert_eq(rc, -ENOSPC, "a checkpoint on a full filesystem: %d (%s)", rc, state_error(s));
    cr_assert(strstr(state_error(s), "free beside data.mdb"), "the error says what happened: %s",
              state_error(s));
    cr_assert_gt(committed, 0u, "some checkpoints fit before the disk filled");
    fprintf(stderr, "  %u keys committed before: %s\n", committed, state_error(s));
    cr_assert_eq(state_abort(s), 0);

    /* Everything committed before reads back; the failed round is gone. */
    fault_check_keys(s, committed, committed + PER_ROUND, 7);

    /* Room again: the same state commits, and reopens with every key. */
    fu_fs_tmpfs_resize(&fs, false, "64m");
    cr_assert_eq(fault_put_round(s, committed, PER_ROUND), 0);
    cr_assert_eq(state_commit(s), 0, "a checkpoint after more space: %s", state_error(s));
    committed += PER_ROUND;
    state_close(s);
    cr_assert_eq(state_open(dir, 1ull << 30, &s), 0);
    fault_check_keys(s, committed, committed, 3);
    state_close(s);
}

/* The fault test's child: commits two rounds, tells the parent (which
 * then fills the filesystem and has strace hide the room check's
 * figures), then commits a third round, whose new pages are holes of
 * data.mdb that the full filesystem cannot back: SIGBUS inside LMDB.
 * Exit codes say which check failed. */
static int fault_child(const char *dir, int ready, int go)
{
    state *s;
    if (state_open(dir, 1ull << 30, &s) != 0)
        return 10;
    for (uint32_t r = 0; r < 2; r++)
        if (fault_put_round(s, r * 2000, 2000) != 0 || state_commit(s) != 0)
            return 11;
    char c = 'r';
    if (write(ready, &c, 1) != 1 || read(go, &c, 1) != 1)
        return 12;
    if (fault_put_round(s, 4000, 2000) != 0)
        return 13;
    int rc = state_commit(s); /* faults inside LMDB: the process lives on */
    fprintf(stderr, "  the checkpoint on the full filesystem: %d, %s\n", rc, state_error(s));
    if (rc != -ENOSPC || !strstr(state_error(s), "SIGBUS"))
        return 14;
    if (state_abort(s) != 0)
        return 15;
    /* Later writes fail at once with the same error (no hang on LMDB's
     * write lock, which the abandoned transaction holds). */
    if (fault_put_round(s, 6000, 10) != 0 || state_commit(s) != -ENOSPC ||
        !strstr(state_error(s), "stopped taking writes"))
        return 16;
    fprintf(stderr, "  the next one: %s\n", state_error(s));
    state_abort(s);
    /* What was committed still reads (the read transaction's view). */
    uint8_t key[4];
    const void *v;
    size_t vl;
    fault_key(3999, key);
    if (state_get(s, STATE_ACCOUNTS, key, sizeof(key), &v, &vl) != 0 || vl != 200 ||
        ((const uint8_t *)v)[0] != (3999 & 0xff))
        return 17;
    state_close(s);
    return 0;
}

/* A fault inside LMDB's write transaction — SIGBUS from a hole of
 * data.mdb on a full filesystem, which the room check would have caught
 * had strace not hidden its figures (the check can be outrun: the log may
 * take the last bytes meanwhile) — fails that checkpoint with ENOSPC
 * instead of killing the process, every later write fails the same way,
 * and nothing committed before is lost: a new process (the parent here:
 * LMDB's write lock goes with the process that held it) reads every
 * committed key and, with room again, writes. */
Test(diskfull, a_fault_in_the_state_map_fails_the_checkpoint_and_keeps_earlier_commits,
     .timeout = 120, .fini = fu_cleanup)
{
    fu_fs fs;
    char dir[160], file[200], filler[200];
    fault_fs(&fs, "state-fault", "16m", dir, sizeof(dir));
    snprintf(file, sizeof(file), "%s/data.mdb", dir);
    snprintf(filler, sizeof(filler), "%s/filler", fs.mnt);
    int ready[2], go[2];
    cr_assert_eq(pipe(ready), 0);
    cr_assert_eq(pipe(go), 0);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0)
        _exit(fault_child(dir, ready[1], go[0]));
    char c;
    cr_assert_eq(read(ready[0], &c, 1), 1, "the child's first commits");

    /* Fill the filesystem to its last page. */
    int fd = open(filler, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    cr_assert_geq(fd, 0);
    static char chunk[1 << 16];
    size_t step = sizeof(chunk);
    for (;;) {
        ssize_t w = write(fd, chunk, step);
        if (w > 0)
            continue;
        cr_assert_eq(errno, ENOSPC, "filling: %s", strerror(errno));
        if (step == 4096)
            break;
        step = 4096;
    }
    close(fd);
    char log[240];
    snprintf(log, sizeof(log), "%s/strace.log", fs.base);
    pid_t tracer = fu_strace_inject_pid(pid, log, file, "fstatfs", "EIO:when=1");
    cr_assert_eq(write(go[1], "g", 1), 1);
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    fu_kill(tracer);
    cr_assert(WIFEXITED(st), "the child died of signal %d: a fault in the map killed it",
              WIFSIGNALED(st) ? WTERMSIG(st) : 0);
    cr_assert_eq(WEXITSTATUS(st), 0, "the child's check %d failed (see fault_child)",
                 WEXITSTATUS(st));

    cr_assert_eq(unlink(filler), 0);
    state *s;
    cr_assert_eq(state_open(dir, 1ull << 30, &s), 0, "the state reopens after the fault");
    fault_check_keys(s, 4000, 6000, 1);
    cr_assert_eq(fault_put_round(s, 4000, 2000), 0);
    cr_assert_eq(state_commit(s), 0, "writes resume in a new process: %s", state_error(s));
    state_close(s);
}
