/*
 * import.c — tally import: the marker file and the all-or-nothing load of
 * entries into every shard (import.h has the protocol).
 *
 * The shards are opened offline (no shard threads): this module drives
 * their logs and ledgers directly.  The caller's thread parses and queues
 * lines by shard; a worker per CPU applies its shards' lines; a flusher
 * per shard writes and syncs the log batch its worker sealed (plain
 * synchronous writes, no ring) while the worker fills the next; a ledger
 * checkpoints when its changes or its id memtable are full — as the shard
 * thread paces itself.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "checksum.h"
#include "import.h"
#include "ledger.h"
#include "log.h"
#include "snapshot.h"
#include "state.h"
#include "tally_int.h"

#define IMPORT_VERSION 1
/* Room kept in a log's filling batch before a line (a write may add engine
 * entries and allocation parts); below it the batch is flushed. */
#define IMPORT_BATCH_ROOM (256u << 10)

/* ---- the marker ---------------------------------------------------------------- */

static void import_path(const char *dir, const char *name, char *out, size_t cap)
{
    snprintf(out, cap, "%s/%s", dir, name);
}

int import_marker_read(const char *dir, uint32_t shards, uint64_t *bases, bool *made)
{
    char path[4200], text[LIMIT_SHARDS_MAX * 48 + 128];
    import_path(dir, "IMPORT", path, sizeof(path));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0 : -errno;
    ssize_t n = read(fd, text, sizeof(text) - 1);
    close(fd);
    if (n < 0)
        return -errno;
    text[n] = 0;
    /* The check line covers everything before it. */
    char *check = strstr(text, "check ");
    unsigned long long sum = 0;
    unsigned version = 0, count = 0;
    if (!check || sscanf(check, "check %llx", &sum) != 1 ||
        checksum64(text, (size_t)(check - text), 0) != sum ||
        sscanf(text, "tally-import %u\nshards %u\n", &version, &count) != 2 ||
        version != IMPORT_VERSION || count != shards)
        return TALLY_EFORMAT;
    const char *p = text;
    for (uint32_t i = 0; i < shards; i++) {
        char want[32];
        snprintf(want, sizeof(want), "\nbase %u ", i);
        p = strstr(p, want);
        unsigned long long seq;
        unsigned m;
        if (!p || p > check || sscanf(p + strlen(want), "%llu %u", &seq, &m) != 2 || m > 1)
            return TALLY_EFORMAT;
        p += strlen(want);
        bases[i] = seq;
        made[i] = m == 1;
    }
    return 1;
}

int import_marker_write(const os_ops *os, const char *dir, uint32_t shards,
                        const uint64_t *bases, const bool *made)
{
    char text[LIMIT_SHARDS_MAX * 48 + 128];
    size_t n = (size_t)snprintf(text, sizeof(text), "tally-import %u\nshards %u\n",
                                IMPORT_VERSION, shards);
    for (uint32_t i = 0; i < shards; i++)
        n += (size_t)snprintf(text + n, sizeof(text) - n, "base %u %" PRIu64 " %d\n", i,
                              bases[i], made[i] ? 1 : 0);
    n += (size_t)snprintf(text + n, sizeof(text) - n, "check %016" PRIx64 "\n",
                          checksum64(text, n, 0));
    return os_write_file_atomic(os, dir, "IMPORT", text, n);
}

int import_marker_remove(const os_ops *os, const char *dir)
{
    char path[4200];
    import_path(dir, "IMPORT", path, sizeof(path));
    int rc = os->unlink(os->ctx, path);
    if (rc == -ENOENT)
        rc = 0;
    return rc == 0 ? os->fsync_dir(os->ctx, dir) : rc;
}

static void import_snap_dir(const tally *t, uint32_t i, char *out, size_t cap)
{
    snprintf(out, cap, "%s/shard-%03u/snapshots", t->dir, i);
}

int import_undo(tally *t, const uint64_t *bases, const bool *made)
{
    int rc = tally_open_shards(t, bases);
    /* Undone only if every shard opened whole: else the marker stays, and
     * the next open tries again. */
    for (uint32_t i = 0; i < t->shard_count && rc == 0; i++) {
        tally_shard_stats ss;
        shard_stats(t->shards[i], &ss);
        if (ss.status != 0) {
            char msg[400];
            snprintf(msg, sizeof(msg), "shard %u: the uncommitted import cannot be undone: %s", i,
                     ss.status_message);
            tally_say(t, 2, msg);
            rc = ss.status;
        }
    }
    for (uint32_t i = 0; i < t->shard_count && rc == 0; i++) {
        char dir[4200];
        import_snap_dir(t, i, dir, sizeof(dir));
        if (made[i])
            rc = snapshot_remove(dir, t->opts.os, bases[i]);
    }
    if (rc == 0)
        rc = import_marker_remove(t->opts.os, t->dir);
    return rc;
}

/* ---- the import ------------------------------------------------------------------ */

/* Items handed to a worker at once, and chunks queued per worker before
 * the reader waits (back pressure, bounded memory). */
#define IMPORT_CHUNK_ITEMS 256
#define IMPORT_QUEUE_CHUNKS 64
/* How many items ahead of the one applied a worker prefetches (ledger_prefetch). */
#define IMPORT_PREFETCH_AHEAD 8u

typedef struct import_chunk {
    struct import_chunk *next;
    uint32_t n;
    tally_import_item items[IMPORT_CHUNK_ITEMS];
    uint32_t shard[IMPORT_CHUNK_ITEMS]; /* each item's, as the reader routed it */
} import_chunk;

typedef struct import_worker {
    tally_import *im;
    uint32_t index;
    pthread_t thread;
    bool started;
    pthread_mutex_t lock;
    pthread_cond_t cond; /* work arrived / room freed / ending */
    import_chunk *head, *tail, *spare;
    uint32_t queued;
    bool ending;
    import_chunk *filling; /* the reader's */
    /* the worker's */
    uint64_t *merch; /* merchants touched: open addressing, 0 = free */
    size_t merch_cap, merch_count;
    uint64_t applied, present, records, checked;
    int rc;
    char msg[600];
} import_worker;

/* A shard's log flusher: writes and syncs the batch its worker sealed
 * while the worker fills the next one (the log keeps two buffers), so a
 * worker waits for a flush only when the next batch is full too, or
 * before a checkpoint. */
typedef struct import_flusher {
    log_t *log;
    pthread_t thread;
    bool started;
    pthread_mutex_t lock;
    pthread_cond_t cond; /* a batch handed over / written / ending */
    log_batch batch;
    bool busy;   /* a sealed batch is the flusher's, or its outcome not yet taken */
    bool done;   /* written: rc is its outcome */
    bool ending;
    int rc;
} import_flusher;

struct tally_import {
    tally *t;
    import_flusher *flush; /* per shard */
    uint64_t *base; /* per shard: its last seq when the import began */
    bool *made;     /* per shard: the import made the snapshot at base */
    import_worker *workers;
    uint32_t nworkers;
    _Atomic int failed; /* an item failed: workers skip the rest */
    uint64_t lines;
};

static uint64_t import_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void import_say(tally_import *im, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void import_say(tally_import *im, int level, const char *fmt, ...)
{
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    int n = snprintf(text, sizeof(text), "import: ");
    vsnprintf(text + n, sizeof(text) - (size_t)n, fmt, ap);
    va_end(ap);
    tally_say(im->t, level, text);
}

static int import_merchant_add(import_worker *w, uint64_t m)
{
    if (w->merch_count * 2 >= w->merch_cap) {
        size_t cap = w->merch_cap ? w->merch_cap * 2 : 1024;
        uint64_t *v = calloc(cap, sizeof(*v));
        if (!v)
            return -ENOMEM;
        for (size_t i = 0; i < w->merch_cap; i++) {
            uint64_t x = w->merch[i];
            if (!x)
                continue;
            size_t h = (size_t)checksum64(&x, 8, 0) & (cap - 1);
            while (v[h])
                h = (h + 1) & (cap - 1);
            v[h] = x;
        }
        free(w->merch);
        w->merch = v;
        w->merch_cap = cap;
    }
    size_t h = (size_t)checksum64(&m, 8, 0) & (w->merch_cap - 1);
    while (w->merch[h] && w->merch[h] != m)
        h = (h + 1) & (w->merch_cap - 1);
    if (!w->merch[h]) {
        w->merch[h] = m;
        w->merch_count++;
    }
    return 0;
}

static void *import_flusher_main(void *arg)
{
    import_flusher *f = arg;
    pthread_mutex_lock(&f->lock);
    for (;;) {
        while (!(f->busy && !f->done) && !f->ending)
            pthread_cond_wait(&f->cond, &f->lock);
        if (!(f->busy && !f->done))
            break; /* ending, nothing handed over */
        pthread_mutex_unlock(&f->lock);
        int rc = log_write_sealed(f->log, &f->batch);
        pthread_mutex_lock(&f->lock);
        f->rc = rc;
        f->done = true;
        pthread_cond_broadcast(&f->cond);
    }
    pthread_mutex_unlock(&f->lock);
    return NULL;
}

/* Waits for the batch handed to the flusher, if any, and completes it in
 * the log (the worker's thread: the log is the worker's). */
static int import_flush_wait(import_flusher *f)
{
    pthread_mutex_lock(&f->lock);
    while (f->busy && !f->done)
        pthread_cond_wait(&f->cond, &f->lock);
    bool had = f->busy;
    int rc = f->rc;
    f->busy = f->done = false;
    pthread_mutex_unlock(&f->lock);
    if (had)
        log_complete(f->log, rc);
    return had ? rc : 0;
}

/* The filling batch sealed and handed to the flusher (without one: written
 * here). */
static int import_flush_start(import_flusher *f)
{
    int rc = import_flush_wait(f);
    if (rc < 0 || !f->started)
        return rc < 0 ? rc : log_flush_sync(f->log);
    log_seal(f->log, &f->batch);
    if (f->batch.count == 0)
        return log_status(f->log);
    pthread_mutex_lock(&f->lock);
    f->busy = true;
    f->done = false;
    pthread_cond_broadcast(&f->cond);
    pthread_mutex_unlock(&f->lock);
    return 0;
}

/* Everything appended to shard i's log made durable, here and now. */
static int import_flush_sync(tally_import *im, uint32_t i)
{
    log_t *log = shard_log(im->t->shards[i]);
    int rc = import_flush_wait(&im->flush[i]);
    return rc == 0 && log_batch_bytes(log) > 0 ? log_flush_sync(log) : rc;
}

/* Makes what shard i has applied durable and commits its state. */
static int import_checkpoint(tally_import *im, uint32_t i)
{
    shard *s = im->t->shards[i];
    ledger *l = shard_ledger(s);
    int rc = import_flush_sync(im, i);
    if (rc == 0)
        rc = ledger_checkpoint(l, log_last_seq(shard_log(s)));
    ledger_poll(l);
    return rc;
}

/* Checkpoints paced as the ledger does for work that owns it
 * (ledger_checkpoint_paced), the log flushed first when one is due. */
static int import_pace(tally_import *im, uint32_t i)
{
    shard *s = im->t->shards[i];
    ledger *l = shard_ledger(s);
    int rc = ledger_checkpoint_due(l) ? import_flush_sync(im, i) : 0;
    return rc == 0 ? ledger_checkpoint_paced(l, log_last_seq(shard_log(s)), 1) : rc;
}

/* Asks the CPU for what applying an item a few items later reads first. */
static void import_prefetch(const import_worker *w, const tally_import_item *it, uint32_t i)
{
    ledger_prefetch(shard_ledger(w->im->t->shards[i]), it->e.merchant, it->e.account, it->e.id,
                    it->e.id_len, true);
}

/* One item on its shard (worker thread): 0 applied, 1 there already. */
static int import_apply(import_worker *w, const tally_import_item *it, uint32_t i, char *msg,
                        size_t cap)
{
    tally_import *im = w->im;
    shard *s = im->t->shards[i];
    log_t *log = shard_log(s);
    ledger *l = shard_ledger(s);
    int rc = 0;
    msg[0] = 0;
    if (!log_batch_room(log, IMPORT_BATCH_ROOM))
        rc = import_flush_start(&im->flush[i]);
    uint64_t before = log_last_seq(log);
    if (rc == 0)
        rc = ledger_import(l, it, msg, cap);
    if (rc == TALLY_ETOOBIG && log_batch_bytes(log) > 0) {
        /* A write that needs a batch of its own (many allocations). */
        rc = import_flush_sync(im, i);
        if (rc == 0)
            rc = ledger_import(l, it, msg, cap);
    }
    if (rc < 0 && !msg[0] && log_status(log) < 0)
        snprintf(msg, cap, "shard %u: writing its log: %s", i, tally_strerror(rc));
    if (rc >= 0) {
        int crc = import_pace(im, i);
        rc = crc < 0 ? crc : rc;
    }
    if (rc == 0) {
        w->records += log_last_seq(log) - before;
        rc = import_merchant_add(w, it->e.merchant);
    }
    return rc;
}

/* Step 4: a shard's imported records read back, its merchants checked. */
static int import_check_shard(import_worker *w, uint32_t i, char *msg, size_t cap)
{
    tally_import *im = w->im;
    shard *s = im->t->shards[i];
    log_t *log = shard_log(s);
    int rc = import_checkpoint(im, i);
    if (rc < 0) {
        snprintf(msg, cap, "shard %u: flush and checkpoint: %s", i, tally_strerror(rc));
        return rc;
    }
    /* Each record's length, checksum and chain link, its seq and its
     * mark: the bytes written are the bytes read (their fields were
     * checked when they were encoded). */
    log_iter it;
    rc = log_iter_init(log, im->base[i], &it);
    record_head r;
    uint64_t expect = im->base[i] + 1;
    while (rc >= 0 && (rc = log_iter_next_head(&it, &r)) == 1) {
        if (r.part == 0 && r.seq != expect++) {
            snprintf(msg, cap, "shard %u: seq %" PRIu64 " read back where %" PRIu64 " was written",
                     i, r.seq, expect - 1);
            return TALLY_ECORRUPT;
        }
        if (!(r.rflags & RECORD_F_IMPORTED)) {
            snprintf(msg, cap, "shard %u: seq %" PRIu64 " is not marked imported", i, r.seq);
            return TALLY_ECORRUPT;
        }
        w->checked += r.part == 0;
    }
    if (rc == 0 && expect != log_last_seq(log) + 1) {
        snprintf(msg, cap, "shard %u: the log reads back to seq %" PRIu64 " of %" PRIu64, i,
                 expect - 1, log_last_seq(log));
        rc = TALLY_ECORRUPT;
    }
    if (rc < 0) {
        if (!msg[0])
            snprintf(msg, cap, "shard %u: reading the import back: %s", i, tally_strerror(rc));
        return rc;
    }
    for (size_t k = 0; k < w->merch_cap && rc == 0; k++) {
        uint64_t m = w->merch[k];
        if (m && tally_shard_of(im->t, m) == i)
            rc = ledger_verify(shard_ledger(s), m, msg, cap);
    }
    return rc;
}

static void import_fail(import_worker *w, int rc)
{
    w->rc = rc;
    int none = 0;
    atomic_compare_exchange_strong(&w->im->failed, &none, rc);
}

static void *import_worker_main(void *arg)
{
    import_worker *w = arg;
    tally_import *im = w->im;
    for (;;) {
        pthread_mutex_lock(&w->lock);
        while (!w->head && !w->ending)
            pthread_cond_wait(&w->cond, &w->lock);
        import_chunk *c = w->head;
        if (c) {
            w->head = c->next;
            if (!w->head)
                w->tail = NULL;
        }
        pthread_mutex_unlock(&w->lock);
        if (!c)
            break; /* ending, and nothing left */
        for (uint32_t i = 0; i < c->n && atomic_load(&im->failed) == 0; i++) {
            const tally_import_item *it = &c->items[i];
            if (i + IMPORT_PREFETCH_AHEAD < c->n)
                import_prefetch(w, &c->items[i + IMPORT_PREFETCH_AHEAD],
                                c->shard[i + IMPORT_PREFETCH_AHEAD]);
            char msg[480];
            int rc = import_apply(w, it, c->shard[i], msg, sizeof(msg));
            if (rc == 0) {
                w->applied++;
            } else if (rc == 1) {
                w->present++;
            } else {
                snprintf(w->msg, sizeof(w->msg), "line %" PRIu64 ": id %.*s: %s", it->line,
                         (int)it->e.id_len, it->e.id, msg[0] ? msg : tally_strerror(rc));
                import_fail(w, rc);
            }
        }
        pthread_mutex_lock(&w->lock);
        c->next = w->spare;
        w->spare = c;
        w->queued--;
        pthread_cond_broadcast(&w->cond);
        pthread_mutex_unlock(&w->lock);
    }
    /* No batch of this worker's left in flight, failed or not. */
    for (uint32_t i = w->index; i < im->t->shard_count; i += im->nworkers) {
        int rc = import_flush_wait(&im->flush[i]);
        if (rc < 0 && w->rc == 0) {
            snprintf(w->msg, sizeof(w->msg), "shard %u: writing its log: %s", i,
                     tally_strerror(rc));
            import_fail(w, rc);
        }
    }
    /* Step 4 for this worker's shards, in parallel with the others. */
    for (uint32_t i = w->index; i < im->t->shard_count && atomic_load(&im->failed) == 0;
         i += im->nworkers) {
        int rc = import_check_shard(w, i, w->msg, sizeof(w->msg));
        if (rc < 0)
            import_fail(w, rc);
    }
    return NULL;
}

static void import_free_chunks(import_chunk *c)
{
    while (c) {
        import_chunk *n = c->next;
        free(c);
        c = n;
    }
}

/* Hands the reader's filling chunk to its worker (w->lock held). */
static void import_push_filling(import_worker *w)
{
    w->filling->next = NULL;
    if (w->tail)
        w->tail->next = w->filling;
    else
        w->head = w->filling;
    w->tail = w->filling;
    w->queued++;
    w->filling = NULL;
    pthread_cond_broadcast(&w->cond);
}

/* Ends the workers (their queues drained, or skipped after a failure). */
static void import_stop(tally_import *im)
{
    /* Every worker told first, then joined: each checks its shards as soon
     * as its queue is drained, in parallel with the others. */
    for (uint32_t k = 0; k < im->nworkers; k++) {
        import_worker *w = &im->workers[k];
        if (!w->started)
            continue;
        pthread_mutex_lock(&w->lock);
        if (w->filling && w->filling->n)
            import_push_filling(w);
        w->ending = true;
        pthread_cond_broadcast(&w->cond);
        pthread_mutex_unlock(&w->lock);
    }
    for (uint32_t k = 0; k < im->nworkers; k++) {
        import_worker *w = &im->workers[k];
        if (w->started)
            pthread_join(w->thread, NULL);
        w->started = false;
    }
    for (uint32_t i = 0; i < im->t->shard_count; i++) {
        import_flusher *f = &im->flush[i];
        if (!f->started)
            continue;
        pthread_mutex_lock(&f->lock);
        f->ending = true;
        pthread_cond_broadcast(&f->cond);
        pthread_mutex_unlock(&f->lock);
        pthread_join(f->thread, NULL);
        f->started = false;
    }
}

static void import_free(tally_import *im)
{
    import_stop(im);
    for (uint32_t k = 0; k < im->nworkers; k++) {
        import_worker *w = &im->workers[k];
        import_free_chunks(w->head);
        import_free_chunks(w->spare);
        free(w->filling);
        free(w->merch);
        pthread_mutex_destroy(&w->lock);
        pthread_cond_destroy(&w->cond);
    }
    for (uint32_t i = 0; i < im->t->shard_count; i++) {
        pthread_mutex_destroy(&im->flush[i].lock);
        pthread_cond_destroy(&im->flush[i].cond);
    }
    free(im->flush);
    free(im->workers);
    free(im->base);
    free(im->made);
    free(im);
}

int tally_import_begin(tally *t, tally_import **out, char *msg, size_t cap)
{
    msg[0] = 0;
    if (!t->opts.offline) {
        snprintf(msg, cap, "an import needs the directory opened offline");
        return -EINVAL;
    }
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    uint32_t nw = cpus < 1 ? 1 : (uint32_t)cpus;
    if (nw > t->shard_count)
        nw = t->shard_count;
    tally_import *im = calloc(1, sizeof(*im));
    if (im) {
        im->base = calloc(t->shard_count, sizeof(uint64_t));
        im->made = calloc(t->shard_count, sizeof(bool));
        im->workers = calloc(nw, sizeof(import_worker));
        im->flush = calloc(t->shard_count, sizeof(import_flusher));
    }
    if (!im || !im->base || !im->made || !im->workers || !im->flush) {
        if (im) {
            free(im->base);
            free(im->made);
            free(im->workers);
            free(im->flush);
        }
        free(im);
        return -ENOMEM;
    }
    im->t = t;
    im->nworkers = nw;
    for (uint32_t k = 0; k < nw; k++) {
        import_worker *w = &im->workers[k];
        w->im = im;
        w->index = k;
        pthread_mutex_init(&w->lock, NULL);
        pthread_cond_init(&w->cond, NULL);
    }
    for (uint32_t i = 0; i < t->shard_count; i++) {
        import_flusher *f = &im->flush[i];
        f->log = shard_log(t->shards[i]);
        pthread_mutex_init(&f->lock, NULL);
        pthread_cond_init(&f->cond, NULL);
    }
    const os_ops *os = t->opts.os;
    int rc = 0;
    for (uint32_t i = 0; i < t->shard_count && rc == 0; i++) {
        shard *s = t->shards[i];
        tally_shard_stats ss;
        shard_stats(s, &ss);
        if (ss.status != 0) {
            snprintf(msg, cap, "shard %u is refused: %s", i, ss.status_message);
            rc = ss.status;
            break;
        }
        /* The undo: the state as it is, snapshotted at the log's end. */
        rc = import_checkpoint(im, i);
        im->base[i] = log_last_seq(shard_log(s));
        char dir[4200];
        import_snap_dir(t, i, dir, sizeof(dir));
        snapshot_info info, have;
        uint32_t n = 0;
        if (rc == 0)
            rc = snapshot_list(dir, false, &have, 1, &n);
        im->made[i] = n == 0 || have.seq != im->base[i];
        if (rc == 0)
            rc = snapshot_write(ledger_state(shard_ledger(s)), ledger_ids(shard_ledger(s)), os, dir,
                                i, &info);
        if (rc == 0 && info.seq != im->base[i]) {
            snprintf(msg, cap, "shard %u: the snapshot is at seq %" PRIu64 ", the log at %" PRIu64,
                     i, info.seq, im->base[i]);
            rc = TALLY_ECORRUPT;
        }
    }
    if (rc == 0)
        rc = import_marker_write(os, t->dir, t->shard_count, im->base, im->made);
    for (uint32_t i = 0; i < t->shard_count && rc == 0; i++) {
        import_flusher *f = &im->flush[i];
        rc = -pthread_create(&f->thread, NULL, import_flusher_main, f);
        f->started = rc == 0;
    }
    for (uint32_t k = 0; k < nw && rc == 0; k++) {
        import_worker *w = &im->workers[k];
        rc = -pthread_create(&w->thread, NULL, import_worker_main, w);
        w->started = rc == 0;
    }
    if (rc < 0) {
        if (!msg[0])
            snprintf(msg, cap, "cannot begin: %s", tally_strerror(rc));
        /* Nothing imported yet: only the snapshots made go. */
        for (uint32_t i = 0; i < t->shard_count; i++) {
            char dir[4200];
            import_snap_dir(t, i, dir, sizeof(dir));
            if (im->made[i])
                snapshot_remove(dir, os, im->base[i]);
        }
        import_marker_remove(os, t->dir);
        import_free(im);
        return rc;
    }
    *out = im;
    return 0;
}

/* The first failure's message. */
static int import_failure(tally_import *im, char *msg, size_t cap)
{
    for (uint32_t k = 0; k < im->nworkers; k++)
        if (im->workers[k].rc) {
            snprintf(msg, cap, "%s", im->workers[k].msg);
            return im->workers[k].rc;
        }
    snprintf(msg, cap, "the import failed");
    return atomic_load(&im->failed);
}

/* An item into a chunk: its fixed fields and the bytes its strings use
 * (not the whole ~530-byte struct: the reader copies one per line). */
static void import_item_copy(tally_import_item *to, const tally_import_item *from)
{
    const tally_entry *e = &from->e;
    memcpy(to, from, offsetof(tally_import_item, e.id));
    memcpy(to->e.id, e->id, e->id_len);
    memcpy(to->e.ref, e->ref, e->ref_len);
    memcpy(to->e.memo, e->memo, e->memo_len);
    to->refused = from->refused;
    to->have = from->have;
    to->line = from->line;
}

int tally_import_add(tally_import *im, const tally_import_item *it, char *msg, size_t cap)
{
    msg[0] = 0;
    if (atomic_load(&im->failed)) {
        import_stop(im);
        return import_failure(im, msg, cap);
    }
    uint32_t si = tally_shard_of(im->t, it->e.merchant);
    import_worker *w = &im->workers[si % im->nworkers];
    if (!w->filling) {
        pthread_mutex_lock(&w->lock);
        w->filling = w->spare;
        if (w->filling)
            w->spare = w->filling->next;
        pthread_mutex_unlock(&w->lock);
        if (!w->filling && !(w->filling = malloc(sizeof(import_chunk))))
            return -ENOMEM;
        w->filling->n = 0;
    }
    w->filling->shard[w->filling->n] = si;
    import_item_copy(&w->filling->items[w->filling->n++], it);
    im->lines++;
    if (w->filling->n < IMPORT_CHUNK_ITEMS)
        return 0;
    pthread_mutex_lock(&w->lock);
    while (w->queued >= IMPORT_QUEUE_CHUNKS && !atomic_load(&im->failed))
        pthread_cond_wait(&w->cond, &w->lock);
    import_push_filling(w);
    pthread_mutex_unlock(&w->lock);
    return 0;
}

int tally_import_commit(tally_import *im, tally_import_stats *out, char *msg, size_t cap)
{
    msg[0] = 0;
    tally *t = im->t;
    uint64_t t0 = import_mono_ms();
    import_say(im, 0, "%" PRIu64 " lines handed over; flushing, reading back, checking", im->lines);
    import_stop(im); /* every worker flushes, checkpoints and checks its shards */
    if (atomic_load(&im->failed))
        return import_failure(im, msg, cap);
    tally_import_stats st = {.lines = im->lines};
    uint64_t checked = 0;
    for (uint32_t k = 0; k < im->nworkers; k++) {
        const import_worker *w = &im->workers[k];
        st.applied += w->applied;
        st.present += w->present;
        st.records += w->records;
        st.merchants += (uint32_t)w->merch_count;
        checked += w->checked;
    }
    int rc = 0;
    if (checked < st.records) {
        snprintf(msg, cap, "%" PRIu64 " entries read back, %" PRIu64 " written", checked,
                 st.records);
        rc = TALLY_ECORRUPT;
    }
    if (rc == 0)
        rc = import_marker_remove(t->opts.os, t->dir);
    /* Committed: the snapshots rotate as after any other. */
    for (uint32_t i = 0; i < t->shard_count && rc == 0; i++) {
        char dir[4200];
        import_snap_dir(t, i, dir, sizeof(dir));
        int prc = snapshot_prune(dir, t->opts.os, SNAPSHOT_KEEP);
        if (prc < 0)
            import_say(im, 1, "shard %u: pruning old snapshots: %s", i, tally_strerror(prc));
    }
    if (rc < 0) {
        if (!msg[0])
            snprintf(msg, cap, "commit: %s", tally_strerror(rc));
        atomic_store(&im->failed, rc);
        return rc;
    }
    import_say(im, 0, "committed: %" PRIu64 " entries of %u merchants read back and checked "
                      "in %.1f s",
               checked, st.merchants, (double)(import_mono_ms() - t0) / 1000.0);
    if (out)
        *out = st;
    import_free(im);
    return 0;
}

int tally_import_abort(tally_import *im)
{
    tally *t = im->t;
    atomic_store(&im->failed, TALLY_ECLOSED);
    import_stop(im);
    uint64_t *bases = im->base;
    bool *made = im->made;
    im->base = NULL;
    im->made = NULL;
    import_free(im);
    /* Closing drops what no checkpoint holds; opening with the bases cuts
     * the logs and restores the snapshots. */
    tally_close_shards(t);
    int rc = import_undo(t, bases, made);
    free(bases);
    free(made);
    return rc;
}
