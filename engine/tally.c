/*
 * tally.c — the public engine: a data directory of N shards.
 *
 * Directory layout:
 *   DIR/LOCK          flock()ed while open: one process per directory
 *   DIR/MANIFEST      "tally-manifest 1\nshards N\n", written once, atomically
 *   DIR/shard-NNN/    one per shard: log-*.seg segments and state/ (LMDB)
 *   DIR/IMPORT        while an import is uncommitted (import.h)
 *
 * A merchant lives in shard XXH3-64(merchant) mod N, so N is fixed when the
 * directory is created; opening it with another N is TALLY_ESHARDS.
 * Requests for merchant 0 with an admin op (VERIFY, SNAPSHOT) fan out to
 * every shard and complete once, with the first fault found.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checksum.h"
#include "ledger.h"
#include "log.h"
#include "os.h"
#include "shard.h"
#include "import.h"
#include "tally_int.h"
#include "upgrade.h"

#define TALLY_MANIFEST_VERSION 1


/* ---- manifest ----------------------------------------------------------- */

static int tally_manifest_read(const char *dir, uint32_t *shards)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/MANIFEST", dir);
    FILE *f = fopen(path, "r");
    if (!f)
        return errno == ENOENT ? 1 : -errno;
    unsigned version = 0, n = 0;
    int got = fscanf(f, "tally-manifest %u\nshards %u\n", &version, &n);
    fclose(f);
    if (got != 2 || version != TALLY_MANIFEST_VERSION || n < 1 || n > LIMIT_SHARDS_MAX)
        return TALLY_EFORMAT;
    *shards = n;
    return 0;
}

/* Written to a temporary name, flushed, renamed, and the directory flushed,
 * so a crash leaves either no manifest or a whole one. */
static int tally_manifest_write(const os_ops *os, const char *dir, uint32_t shards)
{
    char text[64];
    int len = snprintf(text, sizeof(text), "tally-manifest %u\nshards %u\n",
                       TALLY_MANIFEST_VERSION, shards);
    return os_write_file_atomic(os, dir, "MANIFEST", text, (size_t)len);
}

static uint32_t tally_cpu_count(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1)
        return 1;
    return n > LIMIT_SHARDS_MAX ? LIMIT_SHARDS_MAX : (uint32_t)n;
}

static int tally_lock(tally *t)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/LOCK", t->dir);
    t->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (t->lock_fd < 0)
        return -errno;
    if (flock(t->lock_fd, LOCK_EX | LOCK_NB) < 0)
        return errno == EWOULDBLOCK ? TALLY_ELOCKED : -errno;
    return 0;
}

/* ---- open / close ------------------------------------------------------- */

void tally_say(const tally *t, int level, const char *msg)
{
    if (t->opts.log)
        t->opts.log(t->opts.log_ctx, level, msg);
    else
        fprintf(stderr, "tally: %s\n", msg);
}

/* A shard written by release 1 is upgraded in place before it opens
 * (upgrade.h); offline tools, which never write, say so instead. */
static int tally_upgrade(tally *t, const char *path, uint32_t index)
{
    int need = upgrade_needed(path);
    if (need <= 0)
        return need;
    char msg[400];
    if (t->opts.read_only) {
        snprintf(msg, sizeof(msg),
                 "shard %u holds release-1 data: start tallyd once to upgrade it", index);
        tally_say(t, 2, msg);
        return TALLY_EFORMAT;
    }
    int rc = upgrade_shard(path, index, t->opts.os, t->opts.state_map_bytes
                                                         ? t->opts.state_map_bytes
                                                         : LIMIT_STATE_MAP_BYTES_DEFAULT,
                           t->opts.log, t->opts.log_ctx, msg, sizeof(msg));
    if (rc < 0)
        tally_say(t, 2, msg);
    return rc;
}

static int tally_open_shard(tally *t, const uint64_t *undo_bases, uint32_t i)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/shard-%03u", t->dir, i);
    shard_options so = {
        .dir = path, .index = i, .sync = t->opts.sync,
        .segment_bytes = t->opts.segment_bytes, .checkpoint_ms = t->opts.checkpoint_ms,
        .checkpoint_entries = t->opts.checkpoint_entries,
        .map_bytes = t->opts.state_map_bytes, .os = t->opts.os, .clock = t->opts.clock,
        .clock_ctx = t->opts.clock_ctx, .log = t->opts.log, .log_ctx = t->opts.log_ctx,
        .read_only = t->opts.read_only,
        .snapshot_every_records = t->opts.snapshot_every_records,
        .snapshot_every_ms = t->opts.snapshot_every_ms,
        .retention = t->opts.retention, .archive_dir = t->opts.archive_dir,
        .offline = t->opts.offline, .undo_import = undo_bases != NULL,
        .import_base = undo_bases ? undo_bases[i] : 0,
        .durable_fn = t->feed ? feed_notify : NULL, .durable_ctx = t->feed,
        .replica = t->opts.replica,
    };
    int rc = tally_upgrade(t, path, i);
    if (rc == 0)
        rc = shard_open(&so, &t->shards[i]);
    return rc;
}

/* fn(t, i, ctx) for every shard, on one thread per CPU (each takes every
 * n-th shard) — shards recover and verify independently, so a restart or a
 * rebuild of a big ledger runs on every core.  Through a fault-injection
 * seam one at a time, in order: its crash points are counted.  The first
 * failure by shard index is returned. */
typedef struct tally_worker {
    tally *t;
    int (*fn)(tally *t, uint32_t i, void *ctx);
    void *ctx;
    uint32_t first, step;
    int *rcs;
    bool started;
    pthread_t thread;
} tally_worker;

static void *tally_worker_main(void *arg)
{
    tally_worker *w = arg;
    for (uint32_t i = w->first; i < w->t->shard_count; i += w->step)
        w->rcs[i] = w->fn(w->t, i, w->ctx);
    return NULL;
}

static int tally_each_shard(tally *t, int (*fn)(tally *t, uint32_t i, void *ctx), void *ctx)
{
    uint32_t n = tally_cpu_count();
    if (n > t->shard_count)
        n = t->shard_count;
    if (t->opts.os != os_default() || n < 2) {
        for (uint32_t i = 0; i < t->shard_count; i++) {
            int rc = fn(t, i, ctx);
            if (rc < 0)
                return rc;
        }
        return 0;
    }
    int rcs[LIMIT_SHARDS_MAX] = {0};
    tally_worker w[LIMIT_SHARDS_MAX];
    for (uint32_t k = 0; k < n; k++)
        w[k] = (tally_worker){.t = t, .fn = fn, .ctx = ctx, .first = k, .step = n, .rcs = rcs};
    for (uint32_t k = 0; k < n; k++)
        w[k].started = pthread_create(&w[k].thread, NULL, tally_worker_main, &w[k]) == 0;
    for (uint32_t k = 0; k < n; k++) {
        if (w[k].started)
            pthread_join(w[k].thread, NULL);
        else
            tally_worker_main(&w[k]); /* no thread: on this one */
    }
    for (uint32_t i = 0; i < t->shard_count; i++)
        if (rcs[i] < 0)
            return rcs[i];
    return 0;
}

static int tally_open_one(tally *t, uint32_t i, void *ctx)
{
    return tally_open_shard(t, ctx, i);
}

int tally_open_shards(tally *t, const uint64_t *undo_bases)
{
    return tally_each_shard(t, tally_open_one, (void *)undo_bases);
}

/* Opens the shards, undoing first an import that never committed. */
static int tally_open_pending_import(tally *t)
{
    uint64_t *bases = calloc(t->shard_count, sizeof(*bases));
    bool *made = calloc(t->shard_count, sizeof(*made));
    if (!bases || !made) {
        free(bases);
        free(made);
        return -ENOMEM;
    }
    int rc = import_marker_read(t->dir, t->shard_count, bases, made);
    if (rc == 1 && t->opts.read_only) {
        char msg[4400];
        snprintf(msg, sizeof(msg),
                 "%s holds an import that never committed: start tallyd, or run `tally import` "
                 "again, to undo it first",
                 t->dir);
        tally_say(t, 2, msg);
        rc = TALLY_EFORMAT;
    } else if (rc == 1) {
        tally_say(t, 1, "an import that never committed is undone: every shard goes back to "
                        "where it began");
        rc = import_undo(t, bases, made);
    } else if (rc == 0) {
        rc = tally_open_shards(t, NULL);
    }
    free(bases);
    free(made);
    return rc;
}

void tally_close_shards(tally *t)
{
    for (uint32_t i = 0; i < t->shard_count; i++) {
        shard_close(t->shards[i]);
        t->shards[i] = NULL;
    }
}

int tally_open(const tally_options *opts, tally **out)
{
    if (!opts->dir || opts->shards > LIMIT_SHARDS_MAX)
        return -EINVAL;
    /* A shard group's engine is one shard: one log, one seq, the position
     * its members compare in elections (repl.h). */
    if (opts->replica && (opts->shards != 1 || opts->read_only || opts->offline))
        return -EINVAL;
    tally *t = calloc(1, sizeof(*t));
    if (!t)
        return -ENOMEM;
    t->opts = *opts;
    t->lock_fd = -1;
    if (!t->opts.os)
        t->opts.os = os_default();
    snprintf(t->dir, sizeof(t->dir), "%s", opts->dir);
    t->opts.dir = t->dir;
    int rc = 0;
    if (!opts->read_only && mkdir(t->dir, 0755) < 0 && errno != EEXIST)
        rc = -errno;
    if (rc == 0)
        rc = tally_lock(t);
    uint32_t n = 0;
    if (rc == 0) {
        rc = tally_manifest_read(t->dir, &n);
        if (rc == 1 && opts->read_only) {
            rc = -ENOENT;
        } else if (rc == 1) {
            n = opts->shards ? opts->shards : tally_cpu_count();
            rc = tally_manifest_write(t->opts.os, t->dir, n);
        } else if (rc == 0 && opts->shards && opts->shards != n) {
            /* The error code cannot carry the numbers: say them here. */
            char msg[4400];
            snprintf(msg, sizeof(msg),
                     "%s has %u shards (its MANIFEST), asked for %u: the shard count is fixed "
                     "when a data directory is created",
                     t->dir, n, opts->shards);
            if (opts->log)
                opts->log(opts->log_ctx, 2, msg);
            else
                fprintf(stderr, "tally: %s\n", msg);
            rc = TALLY_ESHARDS;
        }
    }
    if (rc == 0) {
        t->shard_count = n;
        /* The feed exists before the shards (they ring it), and starts
         * once they are open (it reads their logs). */
        if (!opts->read_only && !opts->offline)
            rc = feed_new(n, &t->feed);
    }
    if (rc == 0)
        rc = tally_open_pending_import(t);
    if (rc == 0 && t->feed)
        rc = feed_start(t->feed, t->shards);
    if (rc < 0) {
        tally_close(t);
        return rc;
    }
    *out = t;
    return 0;
}

void tally_close(tally *t)
{
    if (!t)
        return;
    feed_close(t->feed);
    tally_close_shards(t);
    feed_free(t->feed);
    if (t->lock_fd >= 0)
        close(t->lock_fd);
    free(t);
}

uint32_t tally_shard_count(const tally *t) { return t->shard_count; }

/* Each shard's verdict in a message of its own. */
typedef struct tally_verdicts {
    char msg[LIMIT_SHARDS_MAX][512];
} tally_verdicts;

static int tally_verify_one(tally *t, uint32_t i, void *ctx)
{
    tally_verdicts *v = ctx;
    return shard_verify_full(t->shards[i], v->msg[i], sizeof(v->msg[i]));
}

int tally_verify_full(tally *t, char *msg, size_t cap)
{
    if (!t->opts.read_only) {
        snprintf(msg, cap, "full verify needs an offline (read-only) open");
        return -EINVAL;
    }
    tally_verdicts *v = calloc(1, sizeof(*v));
    if (!v)
        return -ENOMEM;
    int rc = tally_each_shard(t, tally_verify_one, v);
    for (uint32_t i = 0; rc < 0 && i < t->shard_count; i++)
        if (strncmp(v->msg[i], "ok", 2) != 0 && v->msg[i][0]) {
            snprintf(msg, cap, "%s", v->msg[i]);
            break;
        }
    if (rc == 0)
        snprintf(msg, cap, "%s", v->msg[t->shard_count - 1]);
    free(v);
    return rc;
}

int tally_scan(tally *t, uint32_t index, uint64_t after_seq, tally_scan_fn fn, void *ctx)
{
    if (!t->opts.read_only || index >= t->shard_count)
        return -EINVAL;
    /* Records dropped by retention cannot be scanned: start at the first
     * retained one (tally_shard_stats says where that is). */
    log_t *log = shard_log(t->shards[index]);
    if (after_seq + 1 < log_first_seq(log))
        after_seq = log_first_seq(log) - 1;
    log_iter it;
    int rc = log_iter_init(log, after_seq, &it);
    record r;
    log_loc loc;
    while (rc >= 0 && (rc = log_iter_next(&it, &r, &loc)) == 1) {
        if (r.type == RECORD_ALLOC)
            continue; /* an entry's further allocations: not an entry */
        tally_entry e;
        ledger_entry_from_record(&r, &e);
        bool refusal = r.type == RECORD_REFUSAL;
        rc = fn(ctx, &e, refusal, refusal ? TALLY_EBASE - (int)r.error : 0);
        if (rc != 0)
            return rc;
    }
    return rc < 0 ? rc : 0;
}

/* One shard's position in the merged scan. */
typedef struct tally_merge {
    log_iter it;
    record r;
    bool have;
} tally_merge;

static int tally_merge_next(tally_merge *m)
{
    log_loc loc;
    int rc;
    while ((rc = log_iter_next(&m->it, &m->r, &loc)) == 1 && m->r.type == RECORD_ALLOC)
        ;
    m->have = rc == 1;
    return rc < 0 ? rc : 0;
}

int tally_scan_all(tally *t, tally_scan_fn fn, void *ctx)
{
    if (!t->opts.read_only)
        return -EINVAL;
    tally_merge *m = calloc(t->shard_count, sizeof(*m));
    if (!m)
        return -ENOMEM;
    int rc = 0;
    for (uint32_t i = 0; i < t->shard_count && rc == 0; i++) {
        log_t *log = shard_log(t->shards[i]);
        rc = log_iter_init(log, log_first_seq(log) - 1, &m[i].it);
        if (rc == 0)
            rc = tally_merge_next(&m[i]);
    }
    /* The oldest head next, ties to the lower shard: each shard's order
     * is kept whatever its times (imported entries run back in time). */
    while (rc == 0) {
        uint32_t pick = UINT32_MAX;
        for (uint32_t i = 0; i < t->shard_count; i++)
            if (m[i].have && (pick == UINT32_MAX || m[i].r.ts_ms < m[pick].r.ts_ms))
                pick = i;
        if (pick == UINT32_MAX)
            break;
        tally_entry e;
        ledger_entry_from_record(&m[pick].r, &e);
        bool refusal = m[pick].r.type == RECORD_REFUSAL;
        rc = fn(ctx, &e, refusal, refusal ? TALLY_EBASE - (int)m[pick].r.error : 0);
        if (rc == 0)
            rc = tally_merge_next(&m[pick]);
    }
    free(m);
    return rc;
}

uint32_t tally_shard_of(const tally *t, uint64_t merchant)
{
    return checksum_shard(merchant, t->shard_count);
}

/* ---- cluster mode: one shard (tally_open checks) -------------------------- */

void tally_replica_lead(tally *t, bool lead, uint32_t epoch)
{
    shard_replica_lead(t->shards[0], lead, epoch);
}

void tally_replica_ack(tally *t, uint64_t seq) { shard_replica_ack(t->shards[0], seq); }
void tally_replica_commit(tally *t, uint64_t seq) { shard_replica_commit(t->shards[0], seq); }
void tally_replica_kick(tally *t) { shard_replica_kick(t->shards[0]); }
void tally_replica_lag(tally *t, uint64_t records) { shard_replica_lag(t->shards[0], records); }
void tally_replica_expire(tally *t) { shard_replica_expire(t->shards[0]); }

void tally_replica_append(tally *t, tally_replica_chunk *c)
{
    shard_replica_append(t->shards[0], c);
}

struct log_t *tally_replica_log(tally *t) { return shard_log(t->shards[0]); }

int tally_shard_stats_get(tally *t, uint32_t index, tally_shard_stats *out)
{
    if (index >= t->shard_count)
        return -EINVAL;
    shard_stats(t->shards[index], out);
    return 0;
}

/* ---- fan-out of admin requests over every shard ------------------------- */

typedef struct tally_fanout {
    tally_request *parent;
    _Atomic uint32_t remaining;
    pthread_mutex_t lock; /* guards parent->res while children complete */
    tally_request children[];
} tally_fanout;

static void tally_fanout_done(tally_request *child)
{
    tally_fanout *f = child->user;
    pthread_mutex_lock(&f->lock);
    if (child->res.status != 0 && f->parent->res.status == 0) {
        f->parent->res.status = child->res.status;
        snprintf(f->parent->res.message, sizeof(f->parent->res.message), "%s",
                 child->res.message);
    }
    pthread_mutex_unlock(&f->lock);
    if (atomic_fetch_sub(&f->remaining, 1) == 1) {
        tally_request *parent = f->parent;
        pthread_mutex_destroy(&f->lock);
        free(f);
        parent->done(parent);
    }
}

static void tally_fanout_submit(tally *t, tally_request *req)
{
    uint32_t n = t->shard_count;
    tally_fanout *f = calloc(1, sizeof(*f) + n * sizeof(tally_request));
    if (!f) {
        req->res.status = -ENOMEM;
        snprintf(req->res.message, sizeof(req->res.message), "out of memory");
        req->done(req);
        return;
    }
    f->parent = req;
    atomic_store(&f->remaining, n);
    pthread_mutex_init(&f->lock, NULL);
    for (uint32_t i = 0; i < n; i++) {
        tally_request *c = &f->children[i];
        c->op = req->op;
        c->done = tally_fanout_done;
        c->user = f;
    }
    /* f may be freed by the last child's completion: read nothing after. */
    for (uint32_t i = 0; i < n; i++)
        shard_submit(t->shards[i], &f->children[i]);
}

/* ---- submit ------------------------------------------------------------- */

void tally_submit(tally *t, tally_request *req)
{
    if (tally_request_check(req) != 0) {
        req->done(req);
        return;
    }
    if (req->op == TALLY_OP_FOLLOW) {
        if (req->merchant == 0 && req->cursors_count != t->shard_count)
            tally_fail(req, TALLY_ESYNTAX, "FOLLOW * needs one cursor per shard (%u)",
                       t->shard_count);
        else if (!t->feed)
            tally_fail(req, TALLY_EFAILED, "FOLLOW needs a running server");
        if (req->res.status != 0)
            req->done(req);
        else
            feed_submit(t->feed, req);
        return;
    }
    bool admin = req->op == TALLY_OP_VERIFY || req->op == TALLY_OP_SNAPSHOT;
    if (admin && req->merchant == 0) {
        tally_fanout_submit(t, req);
        return;
    }
    shard_submit(t->shards[tally_shard_of(t, req->merchant)], req);
}

void tally_wake(tally *t, tally_request *req)
{
    if (t->feed && req->op == TALLY_OP_FOLLOW)
        feed_wake(t->feed, req);
}

typedef struct tally_waiter {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool done;
} tally_waiter;

static void tally_call_done(tally_request *req)
{
    tally_waiter *w = req->user;
    pthread_mutex_lock(&w->lock);
    w->done = true;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

int tally_call(tally *t, tally_request *req)
{
    tally_waiter w = {.done = false};
    pthread_mutex_init(&w.lock, NULL);
    pthread_cond_init(&w.cond, NULL);
    void *user = req->user;
    req->done = tally_call_done;
    req->user = &w;
    if (t->opts.read_only) {
        int rc = tally_request_check(req);
        if (rc == 0) {
            bool admin = req->op == TALLY_OP_VERIFY || req->op == TALLY_OP_SNAPSHOT;
            uint32_t first = admin && req->merchant == 0 ? 0 : tally_shard_of(t, req->merchant);
            uint32_t last = admin && req->merchant == 0 ? t->shard_count : first + 1;
            for (uint32_t i = first; i < last && rc == 0; i++)
                rc = shard_call_offline(t->shards[i], req);
            if (rc < 0)
                req->res.status = rc;
        }
        w.done = true;
    } else {
        tally_submit(t, req);
    }
    pthread_mutex_lock(&w.lock);
    while (!w.done)
        pthread_cond_wait(&w.cond, &w.lock);
    pthread_mutex_unlock(&w.lock);
    pthread_mutex_destroy(&w.lock);
    pthread_cond_destroy(&w.cond);
    req->done = NULL;
    req->user = user;
    return req->res.status;
}
