/*
 * shard.c — the writer thread of one shard: group commit through io_uring.
 *
 * The loop blocks in ring_wait() for one of: the inbox eventfd became
 * readable, the in-flight batch's write+flush completed, or a timer (sweep,
 * checkpoint).  Then it "pumps": applies queued requests to the filling
 * batch (their records go into the log's batch buffer, their effects into
 * the state's active in-memory layer), and if no batch is in flight, seals the
 * filling one and submits it as one linked write + fdatasync.  So while
 * batch N flushes, batch N+1 fills, and it is submitted the moment N is
 * durable.  Nothing spins: the thread sleeps in io_uring_wait_cqe.
 *
 * Reads are applied in the same order as writes and wait in the same
 * batch lists, so a read is answered only once every write it saw is
 * durable (DESIGN-NOTES §2).
 *
 * Checkpoints (DESIGN-NOTES §1) never stop the shard: when one is due, the
 * state's changes are set aside (frozen) as the next batch is sealed — so
 * they are exactly the records up to that batch — and a committer thread
 * writes them into LMDB once that batch is durable, while requests go on
 * into a fresh layer.  Only if the uncommitted changes outgrow
 * LIMIT_STATE_PENDING_BYTES_MAX before the commit ends does the pump stop
 * taking requests (the disk sets the pace).
 *
 * A failed write or flush (or append) is sticky (STYLE rule 6): the shard
 * answers every request of the failed and filling batches with an error,
 * drops the ledger's delta, rebuilds it from the durable log, and from then
 * on refuses writes and serves reads of that durable state.  Damage found
 * in the state (a value failing its checksum) refuses the shard entirely
 * and marks the state for a rebuild at the next open.
 *
 * Snapshots (snapshot.h) are written by a helper thread from LMDB's last
 * checkpoint, so writes go on; when one is published the shard thread
 * prunes old snapshots, applies the retention policy to the log and
 * answers the SNAPSHOT requests that waited for it.
 */
#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ledger.h"
#include "log.h"
#include "ring.h"
#include "shard.h"
#include "snapshot.h"
#include "state.h"

/* ---- constants ---------------------------------------------------------- */

enum { SHARD_TAG_INBOX = 1, SHARD_TAG_BATCH = 2 };
/* How many queued requests ahead of the one applied the pump asks the CPU
 * for their id-index and account lines (ledger_prefetch). */
#define SHARD_PREFETCH_AHEAD 8u
/* Room kept free in the filling batch before executing a write: a write
 * may append engine entries (due expiries of its account) before its own. */
#define SHARD_WRITE_ROOM_BYTES (256u << 10)
#define SHARD_SWEEP_MS 1000
/* One job per segment a batch touches, and the inbox poll. */
#define SHARD_RING_DEPTH (LIMIT_BATCH_SEGMENTS_MAX + 8)
/* Cluster mode: batches durable but not yet acknowledged, each with the
 * requests it answers (more are merged into the last). */
#define SHARD_WAITING_MAX 256
/* The records one replicated chunk can hold (the smallest record is
 * RECORD_FIXED_BYTES + 8). */
#define SHARD_CHUNK_RECORDS_MAX \
    ((LIMIT_REPL_CHUNK_BYTES + 64 * LIMIT_RECORD_BYTES_MAX) / (RECORD_FIXED_BYTES + 8))

/* ---- types -------------------------------------------------------------- */

/* A tally_hist that the shard thread writes while others read it. */
typedef struct shard_hist {
    _Atomic uint64_t counts[TALLY_HIST_BUCKETS];
    _Atomic uint64_t sum;
} shard_hist;

typedef struct shard_list {
    tally_request *head;
    tally_request *tail;
    uint32_t count;
} shard_list;

/* Requests of durable batches up to seq, waiting to be acknowledged. */
typedef struct shard_wait {
    shard_list list;
    uint64_t seq;
} shard_wait;

struct shard {
    shard_options opts;
    char dir[4096];
    log_t *log;
    ledger *ledger;
    ring *ring;
    int wake_fd;
    pthread_t thread;
    bool thread_started;

    /* inbox: the only lock on the path of a request */
    pthread_mutex_t inbox_lock;
    shard_list inbox;
    bool closing; /* under inbox_lock */

    /* owned by the shard thread */
    shard_list queued;   /* taken from the inbox, not yet applied */
    shard_list filling;  /* applied, waiting for the filling batch */
    shard_list inflight; /* waiting for the in-flight batch */
    bool batch_inflight;
    bool filling_gated;  /* cluster mode: the filling batch has requests applied */
    bool inflight_gated; /* while leading: answered once replicated */
    uint32_t batch_pending_ios;
    int batch_res;
    uint64_t batch_submit_ns;
    uint64_t batch_records;
    uint64_t now_ms;
    uint64_t last_sweep_ms;
    bool sweep_more;
    uint64_t last_checkpoint_ms;
    bool checkpoint_wanted;   /* freeze at the next batch seal */
    uint64_t ckpt_seq;        /* frozen checkpoint's seq; 0: none */
    bool ckpt_committing;     /* its committer runs */
    uint64_t ckpt_started_ns;
    uint64_t snap_min_seq;    /* a snapshot waits for a checkpoint past this */
    bool wake_rearm; /* the inbox poll fired while draining a failure */

    /* snapshots: one helper thread at a time */
    pthread_t snap_thread;
    bool snap_running;
    _Atomic int snap_done;
    int snap_rc;
    snapshot_info snap_info;
    tally_replica replica; /* opts.replica points here */
    uint64_t snap_started_ns;
    bool snap_wanted;
    shard_list snap_waiting; /* answered by the running (or next) snapshot */
    shard_list snap_next;    /* arrived while one ran: answered by the next */
    uint64_t snap_last_seq, snap_last_ms;

    /* VERIFY: one helper thread at a time (see "VERIFY's helper") */
    pthread_t verify_thread;
    bool verify_running;
    _Atomic int verify_done;
    tally_request *verify_req;  /* the helper's while it runs */
    shard_list verify_waiting;  /* arrived, in order */
    uint64_t verify_min_seq;    /* the checkpoint they wait for reaches this */

    /* status: 0, TALLY_EFAILED or TALLY_ECORRUPT, set by the thread that
     * owns the shard — once, or from failed to corrupt — and read anywhere.
     * Its message changes with it under status_lock, so that a reader on
     * another thread copies a whole one (shard_status_get). */
    pthread_mutex_t status_lock;
    _Atomic int status;
    char status_message[160];

    /* counters for tally_shard_stats_get */
    shard_hist st_flush_us, st_batch_records, st_checkpoint_us;
    _Atomic uint64_t st_checkpoint_bytes, st_snapshot_created_ms;
    _Atomic uint64_t ckpt_written_bytes; /* the committer's writes, set by its done() */
    _Atomic uint64_t st_entries, st_batches, st_batch_entries_max, st_flush_us_total,
        st_flush_us_max, st_checkpoints, st_sweep_entries, st_sweep_chunks,
        st_sweep_chunk_entries_max, st_seq, st_durable_seq,
        st_checkpoint_seq, st_log_bytes, st_checkpoint_us_total, st_checkpoint_us_max,
        st_checkpoint_stall_us_max, st_log_first_seq, st_snapshot_seq, st_snapshot_bytes,
        st_snapshots, st_snapshot_ms_last, st_memory_layers, st_memory_id_tables,
        st_memory_id_filters;
    uint64_t stall_ns; /* when the pump stopped taking requests; 0: it takes them */

    /* Cluster mode (opts.replica): set from any thread, acted on by the
     * shard thread (woken through wake_fd). */
    _Atomic bool leads;
    _Atomic uint32_t lead_epoch;
    _Atomic uint64_t ack_seq;    /* a leader answers up to here */
    _Atomic uint64_t commit_seq; /* checkpoints reach at most here */
    _Atomic bool expire_wanted;  /* answer the waiting ones TALLY_ETRYAGAIN */
    _Atomic uint64_t st_repl_lag, st_durable_epoch;
    tally_replica_chunk *chunk_inbox; /* under inbox_lock, newest first */
    tally_replica_chunk *chunk_queue; /* the shard thread's, oldest first */
    /* owned by the shard thread */
    uint32_t ledger_epoch;  /* what the ledger writes into records */
    uint32_t log_epoch;     /* epoch of the last record appended */
    uint32_t sealed_epoch;  /* ... of the batch in flight */
    shard_wait waiting[SHARD_WAITING_MAX];
    uint32_t waiting_head, waiting_count;
    log_loc *chunk_locs;    /* SHARD_CHUNK_RECORDS_MAX */
    record *chunk_rec;
};

/* ---- small helpers ------------------------------------------------------ */

static void shard_say(shard *s, int level, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    int n = snprintf(msg, sizeof(msg), "shard %u: ", s->opts.index);
    vsnprintf(msg + n, sizeof(msg) - (size_t)n, fmt, ap);
    va_end(ap);
    if (s->opts.log)
        s->opts.log(s->opts.log_ctx, level, msg);
    else
        fprintf(stderr, "tally: %s\n", msg);
}

static uint64_t shard_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Wakes the shard thread (its inbox eventfd): a request came, a helper
 * finished.  Any thread. */
static void shard_wake(shard *s)
{
    uint64_t one = 1;
    ssize_t w = write(s->wake_fd, &one, sizeof(one));
    (void)w;
}

/* One observation: the shard thread is the only writer, readers take
 * each field as it is. */
static void shard_hist_add(shard_hist *h, uint64_t v)
{
    atomic_fetch_add_explicit(&h->counts[tally_hist_bucket(v)], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum, v, memory_order_relaxed);
}

static void shard_hist_get(shard_hist *h, tally_hist *out)
{
    for (uint32_t i = 0; i < TALLY_HIST_BUCKETS; i++)
        out->counts[i] = atomic_load_explicit(&h->counts[i], memory_order_relaxed);
    out->sum = atomic_load_explicit(&h->sum, memory_order_relaxed);
}

static uint64_t shard_wall_ms(void *ctx)
{
    (void)ctx;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Engine time never goes backwards within a shard (DESIGN-NOTES §6). */
static uint64_t shard_now(shard *s)
{
    uint64_t now = s->opts.clock(s->opts.clock_ctx);
    if (now > s->now_ms)
        s->now_ms = now;
    return s->now_ms;
}

static void shard_list_push(shard_list *l, tally_request *r)
{
    r->next_ = NULL;
    if (l->tail)
        l->tail->next_ = r;
    else
        l->head = r;
    l->tail = r;
    l->count++;
}

static tally_request *shard_list_pop(shard_list *l)
{
    tally_request *r = l->head;
    if (!r)
        return NULL;
    l->head = r->next_;
    if (!l->head)
        l->tail = NULL;
    l->count--;
    r->next_ = NULL;
    return r;
}

static void shard_list_append(shard_list *dst, shard_list *src)
{
    if (!src->head)
        return;
    if (dst->tail)
        dst->tail->next_ = src->head;
    else
        dst->head = src->head;
    dst->tail = src->tail;
    dst->count += src->count;
    *src = (shard_list){0};
}

static void shard_fail_request(tally_request *r, int code, const char *msg)
{
    r->res.status = code;
    size_t n = strnlen(msg, sizeof(r->res.message) - 1);
    memcpy(r->res.message, msg, n);
    r->res.message[n] = '\0';
}

/* Calls done() for every request of the list, in order. */
static void shard_complete_list(shard_list *l)
{
    tally_request *r;
    while ((r = shard_list_pop(l)) != NULL)
        r->done(r);
}

static void shard_fail_list(shard_list *l, int code, const char *msg)
{
    for (tally_request *r = l->head; r; r = r->next_) {
        tally_result_free(&r->res);
        shard_fail_request(r, code, msg);
    }
    shard_complete_list(l);
}

static void shard_publish(shard *s)
{
    atomic_store(&s->st_log_first_seq, log_first_seq(s->log));
    atomic_store(&s->st_seq, log_last_seq(s->log));
    atomic_store(&s->st_durable_seq, log_durable_seq(s->log));
    atomic_store(&s->st_log_bytes, log_bytes(s->log));
    if (s->ledger) {
        uint64_t layers, tables, filters;
        ledger_memory(s->ledger, &layers, &tables, &filters);
        atomic_store(&s->st_memory_layers, layers);
        atomic_store(&s->st_memory_id_tables, tables);
        atomic_store(&s->st_memory_id_filters, filters);
    }
}

/* ---- failure ------------------------------------------------------------ */

static void shard_answer(shard *s, shard_list *l, uint64_t seq, bool gated);

/* Marks the shard failed or corrupt.  A status is set once, except that
 * a failed shard can still be found corrupt (refused, reads too); never
 * the other way. */
static void shard_set_status(shard *s, int status, const char *fmt, ...)
{
    int now = atomic_load(&s->status);
    if (now != 0 && !(status == TALLY_ECORRUPT && now != TALLY_ECORRUPT))
        return;
    char msg[sizeof(s->status_message)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&s->status_lock);
    memcpy(s->status_message, msg, sizeof(msg));
    atomic_store(&s->status, status);
    pthread_mutex_unlock(&s->status_lock);
    shard_say(s, 2, "%s", msg);
}

/* The status (any thread), and when it is not 0 its message in msg. */
static int shard_status_get(shard *s, char *msg, size_t cap)
{
    if (atomic_load(&s->status) == 0)
        return 0;
    pthread_mutex_lock(&s->status_lock);
    int st = atomic_load(&s->status);
    snprintf(msg, cap, "%s", s->status_message);
    pthread_mutex_unlock(&s->status_lock);
    return st;
}

/* A replay reads the log through a short queue of decoded records, so that
 * the id-index and account lines of the records a few ahead are asked for
 * (ledger_prefetch) before their turn, and half way there the account
 * objects those lines point to (ledger_prefetch_object): replay is cache
 * misses in those hash tables, and this overlaps them. */
#define SHARD_REPLAY_AHEAD 8u

typedef struct shard_ahead {
    log_iter *it;
    const ledger *l;
    uint64_t ids_only_to; /* records up to here replay their id alone */
    record *ring;         /* SHARD_REPLAY_AHEAD records */
    log_loc loc[SHARD_REPLAY_AHEAD];
    uint32_t head, count;
    int end;           /* 1 while the iterator has more; then its 0 or error */
    uint64_t last_seq; /* of the last record handed out */
} shard_ahead;

static void shard_ahead_fill(shard_ahead *a)
{
    while (a->end == 1 && a->count < SHARD_REPLAY_AHEAD) {
        uint32_t i = (a->head + a->count) % SHARD_REPLAY_AHEAD;
        a->end = log_iter_next(a->it, &a->ring[i], &a->loc[i]);
        if (a->end != 1)
            break;
        const record *r = &a->ring[i];
        if (r->type != RECORD_ALLOC)
            ledger_prefetch(a->l, r->merchant, r->seq <= a->ids_only_to ? 0 : r->account, r->id,
                            r->id_len, false);
        a->count++;
    }
}

/* The next record: 1 and *r, *loc; 0 at the end; < 0 the iterator's error. */
static int shard_ahead_next(void *ctx, record *r, log_loc *loc)
{
    shard_ahead *a = ctx;
    shard_ahead_fill(a);
    if (a->count == 0)
        return a->end;
    if (a->count > SHARD_REPLAY_AHEAD / 2) {
        const record *n = &a->ring[(a->head + SHARD_REPLAY_AHEAD / 2) % SHARD_REPLAY_AHEAD];
        if (n->type != RECORD_ALLOC && n->seq > a->ids_only_to)
            ledger_prefetch_object(a->l, n->merchant, n->account);
    }
    record_copy(r, &a->ring[a->head]);
    *loc = a->loc[a->head];
    a->last_seq = r->seq;
    a->head = (a->head + 1) % SHARD_REPLAY_AHEAD;
    a->count--;
    return 1;
}

/* Replays the durable log into ledger l: ids only up to its checkpoint
 * (they are in its state but maybe not in its id index's runs), whole
 * records after it.  With `commit` it checkpoints as a shard does, at
 * twice the changes and ids (ledger_checkpoint_paced's stretch), so a long
 * recovery does not hold the whole tail in memory — and no more often:
 * each commit rewrites every account it touched, and a replay touches the
 * same ones over and over (a 20M-record rebuild: ~12% less CPU than at
 * the live limits).  Progress every second as `what`.
 * at_open: the replay that follows the log's open, whose recovery scan
 * verified the checksums it reads (log_iter_scanned).  *count: records
 * replayed. */
static int shard_replay_into(shard *s, ledger *l, bool commit, bool at_open, const char *what,
                             uint64_t *count)
{
    uint64_t ckpt = ledger_checkpoint_seq(l), from = ledger_ids_seq(l);
    if (from > ckpt)
        from = ckpt;
    log_iter it;
    int rc = log_iter_init(s->log, from, &it);
    if (rc < 0)
        return rc;
    if (at_open)
        log_iter_scanned(&it);
    shard_ahead a = {.it = &it, .l = l, .ids_only_to = ckpt, .end = 1};
    record *r = malloc(sizeof(*r));
    a.ring = malloc(SHARD_REPLAY_AHEAD * sizeof(*a.ring));
    if (!r || !a.ring) {
        free(r);
        free(a.ring);
        return -ENOMEM;
    }
    ledger_src src = {shard_ahead_next, &a};
    log_loc loc;
    uint64_t n = 0, t0 = shard_mono_ns(), last_report = t0;
    while ((rc = shard_ahead_next(&a, r, &loc)) == 1) {
        rc = r->seq <= ckpt ? ledger_replay_ids(l, r) : ledger_replay(l, r, loc, &src);
        n++;
        /* Checkpoints on the committer thread while the replay goes on;
         * only at a whole write (the last record handed out). */
        if (rc == 0 && commit && r->seq > ckpt && (n & 1023) == 0)
            rc = ledger_checkpoint_paced(l, a.last_seq, 2);
        if (rc < 0)
            break;
        if ((n & 0xffff) == 0 && shard_mono_ns() - last_report > 1000000000u) {
            last_report = shard_mono_ns();
            shard_say(s, 0, "%s: replayed %llu records (seq %llu of %llu)", what,
                      (unsigned long long)n, (unsigned long long)r->seq,
                      (unsigned long long)it.end_seq);
        }
    }
    free(r);
    free(a.ring);
    if (rc < 0)
        return rc;
    if (n > 0)
        shard_say(s, 0, "%s: replayed %llu records after seq %llu in %.1f ms", what,
                  (unsigned long long)n, (unsigned long long)from,
                  (double)(shard_mono_ns() - t0) / 1e6);
    if (count)
        *count = n;
    return 0;
}

/* Rebuilds the ledger's state from its checkpoint and the durable log.
 * After a failure it must not commit (the disk that failed would be
 * written again): the rebuilt state stays in memory for reads until
 * restart. */
static int shard_replay(shard *s, bool commit, bool at_open)
{
    return shard_replay_into(s, s->ledger, commit, at_open, "recovery", NULL);
}

/* Path of the marker that asks the next open to rebuild the state. */
static void shard_marker_path(const shard *s, char *out, size_t cap)
{
    snprintf(out, cap, "%s/state/REBUILD", s->dir);
}

/* Damage found while serving: refuse the shard (reads too — never serve
 * a balance from a damaged state) and, if the damage is in the state,
 * mark it so the next open rebuilds it from the snapshot and the log. */
static void shard_refuse_corrupt(shard *s, const char *what)
{
    const char *where = ledger_state_error(s->ledger);
    bool in_state = where[0] != 0;
    shard_set_status(s, TALLY_ECORRUPT, "shard %u refused: %s found damage%s%s%s", s->opts.index,
                     what, in_state ? " (" : "", where,
                     in_state ? "); restart to rebuild its state" : "");
    char msg[200];
    shard_status_get(s, msg, sizeof(msg));
    if (in_state && !s->opts.read_only) {
        char path[4200];
        shard_marker_path(s, path, sizeof(path));
        FILE *f = fopen(path, "w");
        if (f) {
            fprintf(f, "%s\n", msg);
            fflush(f);
            fsync(fileno(f));
            fclose(f);
        }
    }
    log_discard(s->log);
    shard_fail_list(&s->inflight, TALLY_ECORRUPT, msg);
    shard_fail_list(&s->filling, TALLY_ECORRUPT, msg);
    s->batch_inflight = false;
    ledger_rollback(s->ledger); /* waits for a running commit */
    s->ckpt_seq = 0;
    s->ckpt_committing = false;
    s->checkpoint_wanted = false;
    shard_publish(s);
}

/* Drops the state's changes since the last checkpoint (the log dropped
 * what was not durable first) and replays the durable log into it; a
 * replay that fails refuses the shard.  After a failure it must not
 * commit (the disk that failed would be written again). */
static void shard_rebuild(shard *s, bool commit, const char *after)
{
    ledger_rollback(s->ledger); /* waits for a running commit */
    s->ckpt_seq = 0;
    s->ckpt_committing = false;
    s->checkpoint_wanted = false;
    int rc = shard_replay(s, commit, false);
    if (rc < 0) {
        shard_set_status(s, TALLY_ECORRUPT, "rebuilding state after %s: %s", after,
                         tally_strerror(rc));
    }
    shard_publish(s);
}

/* A write or flush failed (or the ledger hit a fatal error): answer
 * everything not yet durable with an error, drop the delta and rebuild
 * the state from the durable log.  Never retried (fsyncgate). */
static void shard_fail(shard *s, int err, const char *what)
{
    /* A batch still in flight owns its buffer until it completes: wait for
     * it (its outcome decides what is durable) before dropping anything. */
    while (s->batch_inflight && s->batch_pending_ios > 0) {
        uint64_t tag = 0;
        int res = 0;
        if (ring_wait(s->ring, -1, &tag, &res) < 0)
            continue;
        if (tag == SHARD_TAG_BATCH) {
            if (res < 0 && s->batch_res == 0)
                s->batch_res = res;
            s->batch_pending_ios--;
        } else if (tag == SHARD_TAG_INBOX) {
            s->wake_rearm = true;
        }
    }
    if (s->batch_inflight) {
        s->batch_inflight = false;
        log_complete(s->log, s->batch_res);
        /* Its write and flush succeeded: those requests are durable, and
         * are answered as executed, whatever failed after them. */
        if (s->batch_res == 0)
            shard_answer(s, &s->inflight, log_durable_seq(s->log), s->inflight_gated);
    }
    if (err == TALLY_ECORRUPT) {
        shard_refuse_corrupt(s, what);
        return;
    }
    shard_set_status(s, TALLY_EFAILED,
                     "%s failed (%s): shard %u stopped taking writes; restart to resume",
                     what, tally_strerror(err), s->opts.index);
    char msg[200];
    shard_status_get(s, msg, sizeof(msg));
    log_discard(s->log);
    shard_fail_list(&s->inflight, TALLY_EFAILED, msg);
    shard_fail_list(&s->filling, TALLY_EFAILED, msg);
    s->batch_inflight = false;
    shard_rebuild(s, false, "failure");
}

/* ---- cluster mode: acknowledgements (opts.replica) ------------------------ */

/* How far checkpoints may go: a replica's state must never reflect a
 * record it may have to drop (tally.h, repl.h). */
static uint64_t shard_cap(shard *s)
{
    return s->opts.replica ? atomic_load(&s->commit_seq) : UINT64_MAX;
}

/* The waiting ones are answered TALLY_ETRYAGAIN: leadership was lost (or
 * the shard closes) before a replica confirmed them, so their outcome is
 * unknown to the client, which retries with the same id. */
static void shard_drop_waiting(shard *s, const char *why)
{
    while (s->waiting_count > 0) {
        shard_wait *w = &s->waiting[s->waiting_head];
        shard_list l = w->list;
        w->list = (shard_list){0};
        s->waiting_head = (s->waiting_head + 1) % SHARD_WAITING_MAX;
        s->waiting_count--;
        shard_fail_list(&l, TALLY_ETRYAGAIN, why);
    }
}

/* Answers the waiting batches a leader may acknowledge now: durable, up
 * to the replicated seq, while its lease holds.  A shard that no longer
 * leads acknowledges none of them. */
static void shard_release(shard *s)
{
    if (s->waiting_count == 0)
        return;
    if (!atomic_load(&s->leads)) {
        shard_drop_waiting(s, "this node lost the shard group's leadership before a replica "
                              "confirmed the write: retry with the same id");
        return;
    }
    if (atomic_exchange(&s->expire_wanted, false)) {
        shard_drop_waiting(s, "no replica of the shard group confirmed the write in time: retry "
                              "with the same id");
        return;
    }
    if (!s->opts.replica->may_ack(s->opts.replica->ctx))
        return; /* the lease is in doubt: hold them (kicked when it is back) */
    uint64_t upto = log_durable_seq(s->log), ack = atomic_load(&s->ack_seq);
    upto = ack < upto ? ack : upto;
    while (s->waiting_count > 0) {
        shard_wait *w = &s->waiting[s->waiting_head];
        if (w->seq > upto)
            break;
        shard_list l = w->list;
        w->list = (shard_list){0};
        s->waiting_head = (s->waiting_head + 1) % SHARD_WAITING_MAX;
        s->waiting_count--;
        shard_complete_list(&l);
    }
}

/* The requests of a batch durable up to seq: answered now, or — applied
 * while the shard led a cluster's group (gated) — once acknowledged.
 * Batches wait in order; past SHARD_WAITING_MAX the newest entry takes
 * more (a later seq only holds them longer). */
static void shard_answer(shard *s, shard_list *l, uint64_t seq, bool gated)
{
    if (!gated) {
        shard_complete_list(l);
        return;
    }
    if (l->head == NULL)
        return;
    assert(s->opts.replica != NULL);
    shard_wait *w;
    if (s->waiting_count == SHARD_WAITING_MAX) {
        w = &s->waiting[(s->waiting_head + s->waiting_count - 1) % SHARD_WAITING_MAX];
    } else {
        w = &s->waiting[(s->waiting_head + s->waiting_count++) % SHARD_WAITING_MAX];
        *w = (shard_wait){0};
    }
    shard_list_append(&w->list, l);
    w->seq = seq;
    shard_release(s);
}

/* ---- cluster mode: a replica's records (opts.replica) --------------------- */

/* Checks that c's records continue the log — chain, seqs, epochs never
 * going down nor past the leader's — and end at the end of a write,
 * before one is appended: a bad chunk changes nothing.  *count: its
 * records. */
static int shard_chunk_check(shard *s, const tally_replica_chunk *c, uint32_t *count,
                             uint32_t *epoch_out)
{
    uint64_t seq, sum;
    uint16_t part;
    log_tail(s->log, &seq, &part, &sum);
    uint32_t epoch = s->log_epoch, n = 0;
    record *r = s->chunk_rec;
    size_t off = 0;
    bool ends = false;
    while (off < c->len) {
        size_t len;
        uint64_t next_sum;
        if (n == SHARD_CHUNK_RECORDS_MAX ||
            record_decode(c->buf + off, c->len - off, r, &len, &next_sum) != RECORD_OK ||
            !log_follows(seq, part, sum, r) || r->epoch < epoch || r->epoch > c->epoch)
            return TALLY_ECORRUPT;
        seq = r->seq;
        part = r->part;
        sum = next_sum;
        epoch = r->epoch;
        ends = record_ends_write(r);
        off += len;
        n++;
    }
    if (n == 0 || !ends)
        return TALLY_ECORRUPT;
    *count = n;
    *epoch_out = epoch;
    return 0;
}

/* The records of a chunk in order, with where the log put them: what a
 * replay pulls (ledger_src). */
typedef struct shard_chunk_cur {
    const tally_replica_chunk *c;
    const log_loc *locs;
    size_t off;
    uint32_t i;
} shard_chunk_cur;

static int shard_chunk_next(void *ctx, record *r, log_loc *loc)
{
    shard_chunk_cur *cur = ctx;
    if (cur->off >= cur->c->len)
        return 0;
    size_t len;
    uint64_t sum;
    int drc = record_decode(cur->c->buf + cur->off, cur->c->len - cur->off, r, &len, &sum);
    assert(drc == RECORD_OK); /* shard_chunk_check decoded it */
    (void)drc;
    *loc = cur->locs[cur->i++];
    cur->off += len;
    return 1;
}

/* Appends a chunk's records as they are and replays them into the ledger
 * (so the state includes them as the leader's did), in the filling
 * batch.  False if it must wait for the next batch. */
static bool shard_apply_chunk(shard *s, tally_replica_chunk *c)
{
    char why[sizeof(s->status_message)];
    int st = shard_status_get(s, why, sizeof(why));
    uint32_t n = 0, epoch = 0;
    int rc = st ? st : atomic_load(&s->leads) ? TALLY_ETRYAGAIN : shard_chunk_check(s, c, &n,
                                                                                  &epoch);
    if (rc < 0) {
        shard_fail_request(&c->req, rc, rc == TALLY_ECORRUPT
                                            ? "the records do not continue this replica's log"
                                        : rc == TALLY_ETRYAGAIN ? "this shard leads its group"
                                                                : why);
        c->req.done(&c->req);
        return true;
    }
    if (log_batch_records(s->log) > 0 && !log_batch_room(s->log, c->len))
        return false;
    shard_chunk_cur cur = {.c = c, .locs = s->chunk_locs};
    size_t off = 0;
    for (uint32_t i = 0; rc == 0 && i < n; i++) {
        record *r = s->chunk_rec;
        size_t len;
        uint64_t sum;
        record_decode(c->buf + off, c->len - off, r, &len, &sum);
        rc = log_append_raw(s->log, c->buf + off, len, r, &s->chunk_locs[i]);
        off += len;
    }
    shard_list_push(&s->filling, &c->req);
    if (rc < 0) {
        shard_fail(s, rc, "appending its leader's records");
        return true;
    }
    ledger_src src = {shard_chunk_next, &cur};
    log_loc loc;
    while (rc == 0 && shard_chunk_next(&cur, s->chunk_rec, &loc) == 1)
        rc = ledger_replay(s->ledger, s->chunk_rec, loc, &src);
    if (rc < 0) {
        shard_fail(s, rc, "replaying its leader's records");
        return true;
    }
    s->log_epoch = epoch;
    c->last_seq = log_last_seq(s->log);
    c->req.res.status = 0;
    return true;
}

/* The chunks queued by shard_replica_append, oldest first, after the ones
 * waiting. */
static void shard_take_chunks(shard *s)
{
    pthread_mutex_lock(&s->inbox_lock);
    tally_replica_chunk *newest = s->chunk_inbox;
    s->chunk_inbox = NULL;
    pthread_mutex_unlock(&s->inbox_lock);
    tally_replica_chunk *oldest = NULL;
    while (newest) {
        tally_replica_chunk *next = newest->next_;
        newest->next_ = oldest;
        oldest = newest;
        newest = next;
    }
    tally_replica_chunk **tail = &s->chunk_queue;
    while (*tail)
        tail = &(*tail)->next_;
    *tail = oldest;
}

static void shard_pump_chunks(shard *s)
{
    shard_take_chunks(s);
    while (s->chunk_queue) {
        /* Off the queue first: once answered, a chunk is its owner's. */
        tally_replica_chunk *c = s->chunk_queue;
        s->chunk_queue = c->next_;
        if (!shard_apply_chunk(s, c)) {
            s->chunk_queue = c; /* the batch is full: after it is sealed */
            break;
        }
    }
}

/* Closing: chunks never applied are refused. */
static void shard_fail_chunks(shard *s)
{
    shard_take_chunks(s);
    while (s->chunk_queue) {
        tally_replica_chunk *c = s->chunk_queue;
        s->chunk_queue = c->next_;
        shard_fail_request(&c->req, TALLY_ECLOSED, "engine is shutting down");
        c->req.done(&c->req);
    }
}

/* ---- verify ------------------------------------------------------------- */

/* VERIFY's log check: every durable record's checksum and chain link, from
 * the first retained record to the durable end as of the start.  Any
 * thread: the iterator reads beside the writer.  Retention may drop
 * segments the scan has not reached yet (the shard thread archives after
 * a snapshot): the scan goes on from the log's new start. */
static int shard_verify_log(shard *s, char *msg, size_t cap)
{
    record *r = malloc(sizeof(*r));
    if (!r)
        return -ENOMEM;
    log_iter it;
    log_loc loc;
    uint64_t n = 0, last = log_first_seq(s->log) - 1;
    int rc = log_iter_init(s->log, last, &it);
    for (;;) {
        if (rc == TALLY_EARCHIVED) {
            uint64_t from = log_first_seq(s->log) - 1;
            rc = log_iter_init(s->log, from > last ? from : last, &it);
            continue;
        }
        if (rc < 0)
            break;
        rc = log_iter_next(&it, r, &loc);
        if (rc == 0)
            break; /* the durable end */
        if (rc == 1) {
            n++;
            last = it.last_seq;
            rc = 0;
        }
    }
    free(r);
    if (rc < 0) {
        snprintf(msg, cap, "shard %u: log check failed after seq %llu (%llu records checked): %s",
                 s->opts.index, (unsigned long long)last, (unsigned long long)n,
                 tally_strerror(rc));
        return TALLY_ECORRUPT;
    }
    return 0;
}

/* VERIFY (SPEC §2) with the state of ledger l — the shard's own offline, a
 * view of its last checkpoint on the helper (see "VERIFY's helper"): the
 * shard not refused, the log, the state's own consistency for merchant
 * (0: all).  0 with "ok" in msg, or the first fault. */
static int shard_verify_with(shard *s, ledger *l, uint64_t merchant, char *msg, size_t cap)
{
    if (shard_status_get(s, msg, cap) == TALLY_ECORRUPT)
        return TALLY_ECORRUPT;
    int rc = shard_verify_log(s, msg, cap);
    if (rc == 0) {
        char why[200];
        rc = ledger_verify(l, merchant, why, sizeof(why));
        if (rc < 0)
            snprintf(msg, cap, "shard %u: %s", s->opts.index, why);
        else
            rc = 0;
    }
    if (rc == 0)
        snprintf(msg, cap, "ok");
    return rc;
}

/* ---- batches ------------------------------------------------------------ */

static void shard_ckpt_freeze(shard *s, uint64_t seq);
static void shard_ckpt_start(shard *s);

static void shard_submit_batch(shard *s)
{
    log_batch b;
    log_seal(s->log, &b);
    if (b.count == 0) {
        /* Nothing to write: what the filling requests saw is durable. */
        bool gated = s->filling_gated;
        s->filling_gated = false;
        shard_answer(s, &s->filling, log_durable_seq(s->log), gated);
        return;
    }
    bool sync = s->opts.sync == TALLY_SYNC_ALWAYS;
    for (uint32_t i = 0; i < b.count; i++) {
        int rc = ring_write(s->ring, b.io[i].fd, b.io[i].buf, b.io[i].len, b.io[i].off, sync,
                            SHARD_TAG_BATCH);
        if (rc < 0) {
            log_complete(s->log, rc);
            shard_list_append(&s->inflight, &s->filling);
            shard_fail(s, rc, "submitting a log write");
            return;
        }
    }
    int rc = ring_submit(s->ring);
    if (rc < 0) {
        log_complete(s->log, rc);
        shard_list_append(&s->inflight, &s->filling);
        shard_fail(s, rc, "submitting a log write");
        return;
    }
    s->batch_inflight = true;
    s->batch_pending_ios = b.count;
    s->batch_res = 0;
    s->batch_submit_ns = shard_mono_ns();
    s->batch_records = b.last_seq - b.first_seq + 1;
    s->inflight_gated = s->filling_gated;
    s->filling_gated = false;
    s->sealed_epoch = s->log_epoch;
    shard_list_append(&s->inflight, &s->filling);
    /* The state now holds exactly the records up to this batch: the moment
     * to set a checkpoint aside (committed once the batch is durable). */
    if (s->checkpoint_wanted && !s->ckpt_seq && atomic_load(&s->status) == 0)
        shard_ckpt_freeze(s, b.last_seq);
}

static void shard_batch_done(shard *s, int res)
{
    if (res < 0 && s->batch_res == 0)
        s->batch_res = res;
    if (--s->batch_pending_ios > 0)
        return;
    s->batch_inflight = false;
    log_complete(s->log, s->batch_res);
    if (s->batch_res < 0) {
        shard_fail(s, s->batch_res, s->opts.sync == TALLY_SYNC_ALWAYS ? "log write or flush"
                                                                      : "log write");
        return;
    }
    uint64_t us = (shard_mono_ns() - s->batch_submit_ns) / 1000u;
    atomic_fetch_add(&s->st_batches, 1);
    atomic_fetch_add(&s->st_flush_us_total, us);
    if (us > atomic_load(&s->st_flush_us_max))
        atomic_store(&s->st_flush_us_max, us);
    if (s->batch_records > atomic_load(&s->st_batch_entries_max))
        atomic_store(&s->st_batch_entries_max, s->batch_records);
    shard_hist_add(&s->st_flush_us, us);
    shard_hist_add(&s->st_batch_records, s->batch_records);
    atomic_fetch_add(&s->st_entries, s->batch_records);
    atomic_store(&s->st_durable_epoch, s->sealed_epoch);
    shard_publish(s);
    if (s->opts.durable_fn)
        s->opts.durable_fn(s->opts.durable_ctx, s->opts.index);
    if (s->opts.replica)
        s->opts.replica->on_durable(s->opts.replica->ctx, log_durable_seq(s->log),
                                    s->sealed_epoch);
    shard_answer(s, &s->inflight, log_durable_seq(s->log), s->inflight_gated);
    shard_ckpt_start(s);
}

/* ---- snapshots ------------------------------------------------------------ */

static void shard_snap_dir(const shard *s, char *out, size_t cap)
{
    snprintf(out, cap, "%s/snapshots", s->dir);
}

static void *shard_snap_main(void *arg)
{
    shard *s = arg;
    char dir[4200];
    shard_snap_dir(s, dir, sizeof(dir));
    const os_ops *os = s->opts.os ? s->opts.os : os_default();
    s->snap_rc = snapshot_write(ledger_state(s->ledger), ledger_ids(s->ledger), os, dir,
                                s->opts.index, &s->snap_info);
    atomic_store(&s->snap_done, 1);
    shard_wake(s);
    return NULL;
}

static void shard_snap_start(shard *s)
{
    s->snap_wanted = false;
    atomic_store(&s->snap_done, 0);
    s->snap_started_ns = shard_mono_ns();
    int rc = pthread_create(&s->snap_thread, NULL, shard_snap_main, s);
    if (rc != 0) {
        shard_say(s, 2, "snapshot: cannot start its thread: %s", strerror(rc));
        shard_fail_list(&s->snap_waiting, -rc, "snapshot: cannot start its thread");
        return;
    }
    s->snap_running = true;
}

/* Drops the log segments the oldest kept snapshot covers (retention). */
static void shard_retain(shard *s)
{
    if (s->opts.retention == TALLY_RETAIN_KEEP)
        return;
    char dir[4200];
    shard_snap_dir(s, dir, sizeof(dir));
    snapshot_info list[SNAPSHOT_KEEP];
    uint32_t n = 0;
    if (snapshot_list(dir, false, list, SNAPSHOT_KEEP, &n) != 0 || n == 0)
        return;
    uint32_t dropped = 0;
    const char *archive = s->opts.retention == TALLY_RETAIN_ARCHIVE ? s->opts.archive_dir : NULL;
    /* A rebuild from the older snapshot replays from its id index's
     * seq; open holds keep their records (their allocations are there). */
    uint64_t keep = list[n - 1].ids_seq, floor = UINT64_MAX;
    if (ledger_retain_floor(s->ledger, &floor) == 0 && floor <= keep)
        keep = floor - 1;
    int rc = log_retain(s->log, keep, archive, &dropped);
    if (rc < 0)
        shard_say(s, 1, "retention after snapshot seq %llu: %s (segments kept)",
                  (unsigned long long)list[n - 1].seq, tally_strerror(rc));
}

/* On the shard thread, once the helper is done: publish the outcome. */
static void shard_snap_finish(shard *s)
{
    pthread_join(s->snap_thread, NULL);
    s->snap_running = false;
    int rc = s->snap_rc;
    uint64_t ms = (shard_mono_ns() - s->snap_started_ns) / 1000000u;
    char msg[160] = "";
    if (rc == 0) {
        char dir[4200];
        shard_snap_dir(s, dir, sizeof(dir));
        int prc = snapshot_prune(dir, s->opts.os ? s->opts.os : os_default(), SNAPSHOT_KEEP);
        if (prc < 0)
            shard_say(s, 1, "snapshot: pruning old ones: %s", tally_strerror(prc));
        shard_retain(s);
        s->snap_last_seq = s->snap_info.seq;
        s->snap_last_ms = shard_now(s);
        atomic_store(&s->st_snapshot_seq, s->snap_info.seq);
        atomic_store(&s->st_snapshot_bytes, s->snap_info.bytes);
        atomic_store(&s->st_snapshot_created_ms, s->snap_info.created_ms);
        atomic_fetch_add(&s->st_snapshots, 1);
        atomic_store(&s->st_snapshot_ms_last, ms);
        shard_publish(s);
        shard_say(s, 0, "snapshot at seq %llu: %llu bytes in %llu ms",
                  (unsigned long long)s->snap_info.seq, (unsigned long long)s->snap_info.bytes,
                  (unsigned long long)ms);
    } else {
        snprintf(msg, sizeof(msg), "snapshot of shard %u failed: %s", s->opts.index,
                 tally_strerror(rc));
        shard_say(s, 2, "%s", msg);
    }
    for (tally_request *r = s->snap_waiting.head; r; r = r->next_)
        shard_fail_request(r, rc, msg);
    shard_complete_list(&s->snap_waiting);
    if (s->snap_next.head) {
        shard_list_append(&s->snap_waiting, &s->snap_next);
        s->snap_wanted = true;
    }
}

static bool shard_snapshot_due(shard *s)
{
    uint64_t seq = log_durable_seq(s->log);
    if (seq <= s->snap_last_seq || atomic_load(&s->status) != 0)
        return false;
    if (s->opts.snapshot_every_records && seq - s->snap_last_seq >= s->opts.snapshot_every_records)
        return true;
    return s->opts.snapshot_every_ms && shard_now(s) - s->snap_last_ms >= s->opts.snapshot_every_ms;
}

/* Snapshots copy the last checkpoint: take one first if anything is newer,
 * then start the helper. */
static void shard_snap_pump(shard *s)
{
    if (!s->snap_wanted && !s->snap_running && shard_snapshot_due(s))
        s->snap_wanted = true;
    if (!s->snap_wanted || s->snap_running)
        return;
    char msg[160];
    int st = shard_status_get(s, msg, sizeof(msg));
    if (st != 0) {
        s->snap_wanted = false;
        shard_fail_list(&s->snap_waiting, st, msg);
        return;
    }
    /* What the snapshot must contain: every record applied before it was
     * wanted, committed by a checkpoint. */
    if (!s->snap_min_seq)
        s->snap_min_seq = log_last_seq(s->log);
    if (ledger_checkpoint_seq(s->ledger) >= s->snap_min_seq) {
        s->snap_min_seq = 0;
        shard_snap_start(s);
    } else if (!s->ckpt_seq) {
        s->checkpoint_wanted = true;
    }
}

/* ---- VERIFY's helper ------------------------------------------------------ */

/* VERIFY runs beside the writer: on the writer it stopped the shard for a
 * whole log scan, and a merchant's own token may ask for it (issue 13).  A
 * helper thread at a lower priority scans the durable log through the
 * iterator and checks the state of the last checkpoint through a read
 * view (ledger_view_open); that checkpoint is one taken after the VERIFY
 * arrived, so every write answered before it is checked.  A failed or
 * refused shard takes no checkpoints: its last one is checked as it is.
 * One helper at a time, the others wait in arrival order; each is
 * answered on the shard thread. */
#define SHARD_VERIFY_NICE 10

static void *shard_verify_main(void *arg)
{
    shard *s = arg;
    tally_request *r = s->verify_req;
    os_thread_lower_priority(SHARD_VERIFY_NICE);
    ledger *view = NULL;
    int rc = ledger_view_open(s->ledger, &view);
    if (rc == 0)
        rc = shard_verify_with(s, view, r->merchant, r->res.message, sizeof(r->res.message));
    else
        snprintf(r->res.message, sizeof(r->res.message), "verify: reading the state: %s",
                 tally_strerror(rc));
    ledger_close(view);
    r->res.status = rc;
    atomic_store(&s->verify_done, 1);
    shard_wake(s);
    return NULL;
}

static void shard_verify_start(shard *s)
{
    s->verify_req = shard_list_pop(&s->verify_waiting);
    atomic_store(&s->verify_done, 0);
    int rc = pthread_create(&s->verify_thread, NULL, shard_verify_main, s);
    if (rc != 0) {
        shard_say(s, 2, "verify: cannot start its thread: %s", strerror(rc));
        shard_fail_request(s->verify_req, -rc, "verify: cannot start its thread");
        s->verify_req->done(s->verify_req);
        s->verify_req = NULL;
        return;
    }
    s->verify_running = true;
}

/* On the shard thread, once the helper is done (or to wait for it). */
static void shard_verify_finish(shard *s)
{
    pthread_join(s->verify_thread, NULL);
    s->verify_running = false;
    tally_request *r = s->verify_req;
    s->verify_req = NULL;
    r->done(r);
}

/* Starts the next VERIFY once a checkpoint covers what was applied before
 * it, asking for one if none is under way. */
static void shard_verify_pump(shard *s)
{
    if (s->verify_running || !s->verify_waiting.head)
        return;
    if (atomic_load(&s->status) == 0 && ledger_checkpoint_seq(s->ledger) < s->verify_min_seq) {
        if (!s->ckpt_seq)
            s->checkpoint_wanted = true;
        return;
    }
    shard_verify_start(s);
}

/* ---- applying requests -------------------------------------------------- */

static bool shard_is_write(const tally_request *r)
{
    return tally_op_is_write(r->op) || r->op == TALLY_OP_SNAPSHOT || r->op == TALLY_OP_EXEC;
}

/* Waits for the batch in flight and completes it (answering its requests,
 * or failing the shard if its write or flush failed). */
static void shard_wait_inflight(shard *s)
{
    while (s->batch_inflight) {
        uint64_t tag = 0;
        int res = 0;
        if (ring_wait(s->ring, -1, &tag, &res) < 0)
            continue;
        if (tag == SHARD_TAG_BATCH)
            shard_batch_done(s, res);
        else if (tag == SHARD_TAG_INBOX)
            s->wake_rearm = true;
    }
}

/* An EXEC whose records passed the batch's hard limit: they are all the
 * filling batch holds (it began in an empty one), so dropping that batch
 * and rebuilding the state from the durable log undoes it whole.  Unlike
 * a failure, nothing is wrong with the shard, which goes on; the rebuild
 * costs a replay of the records since the last checkpoint. */
static void shard_undo_exec(shard *s, tally_request *r)
{
    shard_wait_inflight(s);
    if (atomic_load(&s->status) == 0) {
        log_discard(s->log);
        shard_rebuild(s, true, "an EXEC");
    }
    char msg[160];
    int st = shard_status_get(s, msg, sizeof(msg));
    if (st != 0)
        shard_fail_request(r, st, msg);
    else
        shard_fail_request(r, TALLY_ETOOBIG, "EXEC writes more than one batch takes (64 MiB "
                                             "of log records): nothing of it was applied");
    r->done(r);
}

/* EXEC (SPEC §8): the queued requests back to back, nothing between
 * them, as one log group — so in one batch, all or nothing through a
 * crash — answered once that batch is durable.  Reads among them see the
 * writes before them.  It starts in an empty batch (false: wait for
 * one), so that shard_undo_exec can take it back whole. */
static bool shard_apply_exec(shard *s, tally_request *r)
{
    if (log_batch_records(s->log) > 0)
        return false;
    uint64_t now = shard_now(s);
    int rc = 0;
    log_group_begin(s->log);
    for (uint32_t i = 0; i < r->cmds_count && rc == 0; i++)
        rc = ledger_execute(s->ledger, &r->cmds[i], now);
    log_group_end(s->log);
    if (rc == TALLY_ETOOBIG) {
        shard_undo_exec(s, r);
        return true;
    }
    shard_list_push(&s->filling, r);
    if (rc < 0)
        shard_fail(s, rc, "applying an EXEC");
    return true;
}

/* Applies one request to the filling batch.  Returns false if it must wait
 * for room (the batch is full). */
static bool shard_apply(shard *s, tally_request *r)
{
    if (atomic_load(&s->status) != 0 && shard_is_write(r)) {
        char msg[160];
        int st = shard_status_get(s, msg, sizeof(msg));
        shard_fail_request(r, st, msg);
        r->done(r);
        return true;
    }
    if (r->op == TALLY_OP_SNAPSHOT) {
        /* Answered when a snapshot taken after it is published. */
        shard_list_push(s->snap_running ? &s->snap_next : &s->snap_waiting, r);
        s->snap_wanted = s->snap_wanted || !s->snap_running;
        return true;
    }
    if (s->opts.replica && !atomic_load(&s->leads) &&
        (tally_op_is_write(r->op) || r->op == TALLY_OP_EXEC)) {
        shard_fail_request(r, TALLY_ETRYAGAIN, "this node does not lead the shard group");
        r->done(r);
        return true;
    }
    if (r->op == TALLY_OP_VERIFY) {
        /* Answered by the helper, once what came before is checkpointed. */
        shard_list_push(&s->verify_waiting, r);
        /* In a cluster no checkpoint passes the commit seq: wait for no
         * more than that, or a group without a replica never verifies. */
        uint64_t last = log_last_seq(s->log), cap = shard_cap(s);
        s->verify_min_seq = last < cap ? last : cap;
        return true;
    }
    if (s->opts.replica && atomic_load(&s->leads))
        s->filling_gated = true; /* it may see (or be) a record not yet replicated */
    uint64_t last = log_last_seq(s->log);
    if (r->op == TALLY_OP_EXEC) {
        bool taken = shard_apply_exec(s, r);
        if (log_last_seq(s->log) != last)
            s->log_epoch = s->ledger_epoch;
        return taken;
    }
    if (shard_is_write(r) && !log_batch_room(s->log, SHARD_WRITE_ROOM_BYTES))
        return false;
    int rc = ledger_execute(s->ledger, r, shard_now(s));
    if (log_last_seq(s->log) != last)
        s->log_epoch = s->ledger_epoch; /* records of this shard's own epoch */
    if (rc == TALLY_ETOOBIG) {
        /* The batch filled up with engine entries due before this write;
         * the write itself was not applied: run it again in the next one. */
        tally_result_free(&r->res);
        r->res = (tally_result){0};
        return false;
    }
    shard_list_push(&s->filling, r);
    if (rc < 0)
        shard_fail(s, rc, "applying a request");
    return true;
}

static void shard_sweep(shard *s)
{
    if (atomic_load(&s->status) != 0 || s->opts.read_only)
        return;
    /* A replica writes nothing of its own: its leader's expiries come as
     * records. */
    if (s->opts.replica && !atomic_load(&s->leads))
        return;
    uint64_t now = shard_now(s);
    if (!s->sweep_more && now - s->last_sweep_ms < SHARD_SWEEP_MS)
        return;
    if (!log_batch_room(s->log, SHARD_WRITE_ROOM_BYTES))
        return;
    uint32_t count = 0;
    bool more = false;
    int rc = ledger_sweep(s->ledger, now, LIMIT_SWEEP_CHUNK, &count, &more);
    if (rc < 0) {
        shard_fail(s, rc, "sweeping expiries");
        return;
    }
    if (count > 0)
        s->log_epoch = s->ledger_epoch;
    s->last_sweep_ms = now;
    s->sweep_more = more;
    assert(count <= LIMIT_SWEEP_CHUNK);
    if (count > 0) {
        atomic_fetch_add(&s->st_sweep_entries, count);
        atomic_fetch_add(&s->st_sweep_chunks, 1);
        if (count > atomic_load(&s->st_sweep_chunk_entries_max))
            atomic_store(&s->st_sweep_chunk_entries_max, count);
    }
}

/* A synchronous checkpoint of everything durable (closing). */
static void shard_checkpoint(shard *s)
{
    uint64_t seq = log_durable_seq(s->log);
    uint64_t t0 = shard_mono_ns(), w0 = 0, w1 = 0;
    os_thread_written_bytes(&w0);
    int rc;
    if (shard_cap(s) >= seq) {
        rc = ledger_checkpoint(s->ledger, seq);
    } else {
        /* A replica: only what was set aside within the commit seq; the
         * rest is replayed from the log at the next open. */
        seq = ledger_checkpoint_frozen_seq(s->ledger);
        rc = seq && seq <= shard_cap(s) ? ledger_checkpoint_frozen_commit(s->ledger) : 0;
        seq = ledger_checkpoint_seq(s->ledger);
    }
    uint64_t us = (shard_mono_ns() - t0) / 1000u;
    if (os_thread_written_bytes(&w1) == 0 && w1 >= w0)
        atomic_fetch_add(&s->st_checkpoint_bytes, w1 - w0);
    s->ckpt_seq = 0;
    s->ckpt_committing = false;
    s->checkpoint_wanted = false;
    s->last_checkpoint_ms = shard_now(s);
    if (rc < 0) {
        shard_fail(s, rc, "checkpoint of the state");
        return;
    }
    atomic_fetch_add(&s->st_checkpoint_us_total, us);
    if (us > atomic_load(&s->st_checkpoint_us_max))
        atomic_store(&s->st_checkpoint_us_max, us);
    atomic_fetch_add(&s->st_checkpoints, 1);
    atomic_store(&s->st_checkpoint_seq, seq);
    shard_hist_add(&s->st_checkpoint_us, us);
}

/* The committer is done (its thread): note what it wrote — a thread of
 * its own per commit, so everything it wrote since it started, or since
 * its last commit if it is ever kept — and wake the shard thread. */
static void shard_ckpt_done(void *ctx)
{
    shard *s = ctx;
    static _Thread_local uint64_t seen;
    uint64_t written = 0;
    if (os_thread_written_bytes(&written) == 0 && written >= seen) {
        atomic_store(&s->ckpt_written_bytes, written - seen);
        seen = written;
    }
    shard_wake(s);
}

/* Sets aside the changes of every record up to seq as a checkpoint. */
static void shard_ckpt_freeze(shard *s, uint64_t seq)
{
    s->checkpoint_wanted = false;
    int rc = ledger_checkpoint_freeze(s->ledger, seq);
    if (rc < 0) {
        shard_fail(s, rc, "setting aside a checkpoint");
        return;
    }
    s->ckpt_seq = seq;
    s->last_checkpoint_ms = shard_now(s);
}

/* Once its records are durable, the frozen checkpoint is committed. */
static void shard_ckpt_start(shard *s)
{
    if (!s->ckpt_seq || s->ckpt_committing || log_durable_seq(s->log) < s->ckpt_seq ||
        shard_cap(s) < s->ckpt_seq)
        return;
    s->ckpt_started_ns = shard_mono_ns();
    int rc = ledger_checkpoint_commit(s->ledger, shard_ckpt_done, s);
    if (rc < 0) {
        shard_fail(s, rc, "starting a checkpoint's commit");
        return;
    }
    s->ckpt_committing = true;
}

/* The committer's outcome, if it has one. */
static void shard_ckpt_finish(shard *s)
{
    if (!s->ckpt_committing)
        return;
    int rc = ledger_checkpoint_finish(s->ledger);
    if (rc == STATE_COMMIT_NONE)
        return;
    if (rc == STATE_COMMIT_RUNNING)
        return; /* still running */
    s->ckpt_committing = false;
    uint64_t seq = s->ckpt_seq;
    s->ckpt_seq = 0;
    if (rc < 0) {
        shard_fail(s, rc, "checkpoint of the state");
        return;
    }
    uint64_t us = (shard_mono_ns() - s->ckpt_started_ns) / 1000u;
    atomic_fetch_add(&s->st_checkpoint_bytes, atomic_exchange(&s->ckpt_written_bytes, 0));
    atomic_fetch_add(&s->st_checkpoint_us_total, us);
    if (us > atomic_load(&s->st_checkpoint_us_max))
        atomic_store(&s->st_checkpoint_us_max, us);
    atomic_fetch_add(&s->st_checkpoints, 1);
    atomic_store(&s->st_checkpoint_seq, seq);
    shard_hist_add(&s->st_checkpoint_us, us);
}

static bool shard_checkpoint_due(shard *s)
{
    if (atomic_load(&s->status) != 0 || ledger_delta_records(s->ledger) == 0 || s->ckpt_seq)
        return false;
    return ledger_delta_records(s->ledger) >= s->opts.checkpoint_entries ||
           ledger_ids_full(s->ledger, 1) ||
           shard_now(s) - s->last_checkpoint_ms >= s->opts.checkpoint_ms;
}

static void shard_take_inbox(shard *s)
{
    pthread_mutex_lock(&s->inbox_lock);
    shard_list_append(&s->queued, &s->inbox);
    pthread_mutex_unlock(&s->inbox_lock);
}

static void shard_prefetch(shard *s, const tally_request *r)
{
    if (tally_op_is_write(r->op))
        ledger_prefetch(s->ledger, r->merchant, r->account, r->id, r->id_len, true);
}

/* Applies queued requests to the filling batch while it takes them. */
static void shard_apply_queued(shard *s)
{
    tally_request *r, *ahead = s->queued.head;
    for (uint32_t i = 0; ahead && i < SHARD_PREFETCH_AHEAD; i++, ahead = ahead->next_)
        shard_prefetch(s, ahead);
    while ((r = s->queued.head) != NULL) {
        if (s->filling.count >= LIMIT_BATCH_ENTRIES_MAX / 2)
            break;
        if (ahead) {
            shard_prefetch(s, ahead);
            ahead = ahead->next_;
        }
        shard_list_pop(&s->queued);
        if (!shard_apply(s, r)) {
            /* Batch full: put it back at the head and wait. */
            r->next_ = s->queued.head;
            s->queued.head = r;
            if (!s->queued.tail)
                s->queued.tail = r;
            s->queued.count++;
            break;
        }
    }
}

/* Applies what can be applied and submits the filling batch if nothing is
 * in flight. */
static void shard_pump(shard *s)
{
    if (atomic_load(&s->status) == 0)
        ledger_poll(s->ledger); /* finished merges of the id index go in */
    if (s->opts.replica) {
        uint32_t e = atomic_load(&s->lead_epoch);
        if (e != s->ledger_epoch) {
            ledger_set_epoch(s->ledger, e);
            s->ledger_epoch = e;
        }
        shard_release(s);
    }
    if (!s->checkpoint_wanted && shard_checkpoint_due(s))
        s->checkpoint_wanted = true;
    /* Backpressure from the disk: changes pile up while a commit runs. */
    bool full = s->ckpt_seq && (ledger_pending_bytes(s->ledger) > LIMIT_STATE_PENDING_BYTES_MAX ||
                                ledger_ids_full(s->ledger, 4));
    if (full && !s->stall_ns)
        s->stall_ns = shard_mono_ns();
    if (!full && s->stall_ns) {
        uint64_t us = (shard_mono_ns() - s->stall_ns) / 1000u;
        if (us > atomic_load(&s->st_checkpoint_stall_us_max))
            atomic_store(&s->st_checkpoint_stall_us_max, us);
        s->stall_ns = 0;
    }
    if (!full && s->opts.replica)
        shard_pump_chunks(s);
    if (!full) {
        shard_take_inbox(s);
        shard_apply_queued(s);
        shard_sweep(s);
    }
    if (!s->batch_inflight) {
        shard_submit_batch(s);
        /* An EXEC waits for an empty batch: it has one now. */
        if (!full && s->queued.head && s->queued.head->op == TALLY_OP_EXEC)
            shard_apply_queued(s);
    }
    /* Nothing in flight and nothing filling: everything applied is
     * durable, so a checkpoint can be set aside and committed at once. */
    if (s->checkpoint_wanted && !s->ckpt_seq && !s->batch_inflight && s->filling.count == 0 &&
        log_batch_records(s->log) == 0 && atomic_load(&s->status) == 0 &&
        ledger_delta_records(s->ledger) > 0) {
        shard_ckpt_freeze(s, log_durable_seq(s->log));
        shard_ckpt_start(s);
    }
    shard_snap_pump(s);
    shard_verify_pump(s);
}

/* ---- the thread --------------------------------------------------------- */

static int shard_wait_ms(shard *s)
{
    if (s->batch_inflight)
        return -1;
    if (s->queued.count > 0 || (s->checkpoint_wanted && !s->ckpt_seq) ||
        (s->snap_wanted && !s->snap_running && !s->ckpt_seq) || s->chunk_queue)
        return 0;
    /* Requests the pump left in the inbox (it does not take them while a
     * checkpoint is wanted): submitters ring the eventfd only when the
     * inbox was empty, so nothing else would wake us for them. */
    pthread_mutex_lock(&s->inbox_lock);
    bool inbox = s->inbox.head != NULL || s->chunk_inbox != NULL;
    pthread_mutex_unlock(&s->inbox_lock);
    if (inbox)
        return 0;
    /* A failed or refused shard has no timed work (no sweep, no
     * checkpoint): it sleeps until a request comes.  Computing a deadline
     * from timers it no longer advances would spin. */
    if (atomic_load(&s->status) != 0)
        return -1;
    if (s->sweep_more)
        return 0;
    uint64_t now = shard_now(s);
    uint64_t next = s->last_sweep_ms + SHARD_SWEEP_MS;
    if (ledger_delta_records(s->ledger) > 0 &&
        s->last_checkpoint_ms + s->opts.checkpoint_ms < next)
        next = s->last_checkpoint_ms + s->opts.checkpoint_ms;
    return next <= now ? 0 : (int)(next - now);
}

static bool shard_should_exit(shard *s)
{
    pthread_mutex_lock(&s->inbox_lock);
    bool done = s->closing && s->inbox.head == NULL;
    pthread_mutex_unlock(&s->inbox_lock);
    if (s->chunk_queue)
        return false;
    return done && s->queued.head == NULL && !s->batch_inflight && s->filling.head == NULL &&
           log_batch_records(s->log) == 0;
}

static void *shard_main(void *arg)
{
    shard *s = arg;
    int rc = ring_poll(s->ring, s->wake_fd, SHARD_TAG_INBOX);
    if (rc == 0)
        rc = ring_submit(s->ring);
    if (rc < 0)
        shard_set_status(s, TALLY_EFAILED, "io_uring poll: %s", tally_strerror(rc));
    s->last_checkpoint_ms = shard_now(s);
    s->snap_last_ms = s->last_checkpoint_ms;
    shard_ckpt_start(s); /* the replayed tail's (shard_recover) */
    for (;;) {
        uint64_t tag = 0;
        int res = 0;
        rc = ring_wait(s->ring, shard_wait_ms(s), &tag, &res);
        if (rc == 0 && tag == SHARD_TAG_INBOX) {
            uint64_t v;
            ssize_t got = read(s->wake_fd, &v, sizeof(v));
            (void)got;
            if (ring_poll(s->ring, s->wake_fd, SHARD_TAG_INBOX) == 0)
                ring_submit(s->ring);
        } else if (rc == 0 && tag == SHARD_TAG_BATCH) {
            shard_batch_done(s, res);
        } else if (rc < 0 && rc != -ETIME && rc != -EINTR) {
            shard_say(s, 2, "io_uring wait: %s", tally_strerror(rc));
        }
        if (s->snap_running && atomic_load(&s->snap_done))
            shard_snap_finish(s);
        if (s->verify_running && atomic_load(&s->verify_done))
            shard_verify_finish(s);
        shard_ckpt_finish(s);
        shard_ckpt_start(s); /* a replica's commit seq may have moved */
        if (s->wake_rearm) {
            s->wake_rearm = false;
            if (ring_poll(s->ring, s->wake_fd, SHARD_TAG_INBOX) == 0)
                ring_submit(s->ring);
        }
        shard_pump(s);
        if (shard_should_exit(s))
            break;
    }
    if (s->opts.replica) {
        shard_fail_chunks(s);
        shard_drop_waiting(s, "server is shutting down before a replica confirmed the write: "
                              "retry with the same id");
    }
    if (atomic_load(&s->status) == 0 &&
        (ledger_delta_records(s->ledger) > 0 || ledger_checkpoint_frozen(s->ledger)))
        shard_checkpoint(s); /* waits for a running commit first */
    if (s->snap_running)
        shard_snap_finish(s); /* waits for the helper */
    if (s->verify_running)
        shard_verify_finish(s);
    shard_fail_list(&s->snap_waiting, TALLY_ECLOSED, "engine is shutting down");
    shard_fail_list(&s->snap_next, TALLY_ECLOSED, "engine is shutting down");
    shard_fail_list(&s->verify_waiting, TALLY_ECLOSED, "engine is shutting down");
    return NULL;
}

/* ---- open / close ------------------------------------------------------- */

static void shard_tally_log(void *ctx, int level, const char *msg)
{
    shard *s = ctx;
    /* The log module names the shard itself. */
    if (strncmp(msg, "shard ", 6) == 0) {
        if (s->opts.log)
            s->opts.log(s->opts.log_ctx, level, msg);
        else
            fprintf(stderr, "tally: %s\n", msg);
        return;
    }
    shard_say(s, level, "%s", msg);
}

/* Moves the state aside (state.bad-<ms>, kept for a post-mortem) and puts
 * the newest snapshot that checks out in its place; with none, the state
 * starts empty and the whole retained log rebuilds it. */
static int shard_rebuild_state(shard *s, const char *state_dir, const char *why)
{
    const os_ops *os = s->opts.os ? s->opts.os : os_default();
    char bad[4300], snaps[4200], msg[400];
    snprintf(bad, sizeof(bad), "%s.bad-%llu", state_dir,
             (unsigned long long)shard_wall_ms(NULL));
    bool existed = access(state_dir, F_OK) == 0;
    if (existed && rename(state_dir, bad) != 0)
        return -errno;
    if (existed)
        shard_say(s, 1, "state %s: moved to %s; rebuilding it", why, bad);
    else
        shard_say(s, 1, "state %s: rebuilding it", why);
    shard_snap_dir(s, snaps, sizeof(snaps));
    snapshot_info list[SNAPSHOT_LIST_MAX];
    uint32_t n = 0;
    int rc = snapshot_list(snaps, false, list, SNAPSHOT_LIST_MAX, &n);
    for (uint32_t i = 0; rc == 0 && i < n; i++) {
        if (snapshot_check(&list[i], msg, sizeof(msg)) != 0) {
            shard_say(s, 1, "%s: not used", msg);
            continue;
        }
        rc = snapshot_restore(&list[i], os, state_dir);
        if (rc == 0)
            shard_say(s, 1, "state restored from snapshot seq %llu; the log after it is replayed",
                      (unsigned long long)list[i].seq);
        return rc;
    }
    if (rc == 0)
        shard_say(s, 1, "no usable snapshot: the state is rebuilt from the whole log");
    return rc;
}

/* An import that never committed checkpointed the state past where it
 * began: the snapshot it took there goes back in its place. */
static int shard_undo_state(shard *s, const char *state_dir)
{
    char snaps[4200], msg[400], bad[4300];
    shard_snap_dir(s, snaps, sizeof(snaps));
    snapshot_info list[SNAPSHOT_LIST_MAX];
    uint32_t n = 0;
    int rc = snapshot_list(snaps, false, list, SNAPSHOT_LIST_MAX, &n);
    for (uint32_t i = 0; rc == 0 && i < n; i++) {
        if (list[i].seq != s->opts.import_base)
            continue;
        if (snapshot_check(&list[i], msg, sizeof(msg)) != 0) {
            shard_say(s, 2, "%s", msg);
            break;
        }
        snprintf(bad, sizeof(bad), "%s.import-%llu", state_dir,
                 (unsigned long long)shard_wall_ms(NULL));
        if (rename(state_dir, bad) != 0)
            return -errno;
        rc = snapshot_restore(&list[i], s->opts.os ? s->opts.os : os_default(), state_dir);
        if (rc == 0)
            rc = os_remove_tree(bad);
        if (rc == 0)
            shard_say(s, 1, "an import that never committed is undone: state restored from the "
                            "snapshot it took at seq %llu",
                      (unsigned long long)list[i].seq);
        return rc;
    }
    if (rc == 0)
        shard_say(s, 2, "an import that never committed cannot be undone: the snapshot it took "
                        "at seq %llu is gone or damaged",
                  (unsigned long long)s->opts.import_base);
    return rc < 0 ? rc : TALLY_ECORRUPT;
}

static int shard_open_ledger(shard *s, const char *state_dir)
{
    /* Offline (read_only) shards still replay the log tail into the
     * ledger's in-memory layer; they never commit it. */
    ledger_options lo = {.dir = state_dir, .map_bytes = s->opts.map_bytes,
                         .read_only = s->opts.read_only, .os = s->opts.os,
                         .log = shard_tally_log, .log_ctx = s};
    return ledger_open(&lo, NULL, &s->ledger);
}

/* A replica: the epoch of its log's last record (what it votes with). */
static int shard_recover_epoch(shard *s)
{
    uint64_t seq = log_durable_seq(s->log);
    if (seq == 0 || seq < log_first_seq(s->log))
        return 0;
    log_loc loc;
    int rc = log_read_seq(s->log, seq, s->chunk_rec, &loc);
    if (rc < 0)
        return rc;
    s->log_epoch = s->sealed_epoch = s->chunk_rec->epoch;
    atomic_store(&s->st_durable_epoch, s->log_epoch);
    return 0;
}

static int shard_recover(shard *s)
{
    char path[4200], file[4300], snaps[4200];
    snprintf(path, sizeof(path), "%s/state", s->dir);
    shard_snap_dir(s, snaps, sizeof(snaps));
    snapshot_info newest;
    uint32_t have_snap = 0;
    int rc = snapshot_list(snaps, s->opts.read_only, &newest, 1, &have_snap);
    if (rc < 0)
        return rc;
    if (have_snap) {
        s->snap_last_seq = newest.seq;
        atomic_store(&s->st_snapshot_seq, newest.seq);
        atomic_store(&s->st_snapshot_bytes, newest.bytes);
        atomic_store(&s->st_snapshot_created_ms, newest.created_ms);
    }
    shard_marker_path(s, file, sizeof(file));
    bool marked = access(file, F_OK) == 0;
    snprintf(file, sizeof(file), "%s/data.mdb", path);
    bool missing = access(file, F_OK) != 0;
    if (marked && s->opts.read_only) {
        shard_set_status(s, TALLY_ECORRUPT,
                         "shard %u: state marked damaged; start tallyd to rebuild it",
                         s->opts.index);
    } else if (!s->opts.read_only && (marked || (missing && have_snap))) {
        rc = shard_rebuild_state(s, path, marked ? "marked damaged" : "missing");
        if (rc < 0)
            return rc;
    }
    rc = shard_open_ledger(s, path);
    if (rc == 0 && s->opts.undo_import && ledger_checkpoint_seq(s->ledger) > s->opts.import_base) {
        ledger_close(s->ledger);
        s->ledger = NULL;
        rc = shard_undo_state(s, path);
        if (rc == 0)
            rc = shard_open_ledger(s, path);
    }
    if (rc == TALLY_ECORRUPT && !s->opts.read_only) {
        rc = shard_rebuild_state(s, path, "unreadable");
        if (rc == 0)
            rc = shard_open_ledger(s, path);
    }
    if (rc < 0)
        return rc;
    uint64_t cp = ledger_checkpoint_seq(s->ledger);
    log_options o = {.dir = s->dir, .shard = s->opts.index, .segment_bytes = s->opts.segment_bytes,
                     .os = s->opts.os, .read_only = s->opts.read_only, .from_seq = cp,
                     .cut_seq = s->opts.undo_import ? s->opts.import_base + 1 : 0,
                     .log = shard_tally_log, .log_ctx = s};
    const tally_replica *rp = s->opts.replica;
    if (rp && rp->cut_after) {
        /* A replica dropping the suffix its leader does not have: no
         * checkpoint ever passes the replicated seq, so none reached it. */
        if (rp->cut_after < cp) {
            shard_set_status(s, TALLY_ECORRUPT, "cannot drop the log after seq %llu: the state "
                                                "reflects seq %llu",
                             (unsigned long long)rp->cut_after, (unsigned long long)cp);
            return 0;
        }
        o.cut_seq = rp->cut_after + 1;
        o.cut_reason = "a suffix its shard group's leader does not have";
    }
    if (rp) {
        o.first_seq = rp->first_seq;
        o.first_prev = rp->first_prev;
    }
    log_recovery rec;
    rc = log_open(&o, &s->log, &rec);
    if (rc < 0)
        return rc;
    ledger_attach_log(s->ledger, s->log);
    if (rec.torn_bytes > 0)
        shard_say(s, 1, "torn log tail truncated: %llu bytes at seq %llu (never acknowledged)",
                  (unsigned long long)rec.torn_bytes, (unsigned long long)rec.torn_seq);
    if (rec.status != 0 || atomic_load(&s->status) != 0) {
        shard_set_status(s, TALLY_ECORRUPT, "%s", rec.message);
        shard_publish(s);
        return 0;
    }
    if (rec.last_seq < cp) {
        shard_set_status(s, TALLY_ECORRUPT,
                         "log ends at seq %llu but the state reflects seq %llu: log lost",
                         (unsigned long long)rec.last_seq, (unsigned long long)cp);
        return 0;
    }
    s->now_ms = rec.last_ts_ms;
    /* A replica checkpoints nothing past the seq its group replicated,
     * which it learns from its leader: the replayed tail stays in memory. */
    rc = shard_replay(s, !s->opts.read_only && !rp, true);
    if (rc == TALLY_ECORRUPT) {
        shard_set_status(s, TALLY_ECORRUPT, "replay after checkpoint seq %llu diverged",
                         (unsigned long long)cp);
        return 0;
    }
    if (rc < 0)
        return rc;
    /* Commit the replayed tail, so the next recovery starts from here.
     * A shard with a thread sets it aside as its first checkpoint, which
     * the thread commits while it serves (a rebuild's last stretch is up
     * to a few million records' objects: ~1 s of the commit's writes and
     * sync that no request need wait for); without one (offline tools),
     * synchronously.  (Not a replica: it never checkpoints past its
     * group's commit seq.) */
    if (!s->opts.read_only && !rp) {
        cp = log_durable_seq(s->log);
        rc = ledger_checkpoint_frozen_commit(s->ledger); /* the replay's last, if any */
        if (rc == 0 && (s->opts.offline || cp == ledger_checkpoint_seq(s->ledger))) {
            rc = ledger_checkpoint(s->ledger, cp);
        } else if (rc == 0) {
            rc = ledger_checkpoint_freeze(s->ledger, cp);
            s->ckpt_seq = rc == 0 ? cp : 0;
            cp = ledger_checkpoint_seq(s->ledger); /* published once committed */
        }
        if (rc < 0)
            return rc;
    }
    atomic_store(&s->st_checkpoint_seq, cp);
    atomic_store(&s->commit_seq, cp);
    if (rp)
        rc = shard_recover_epoch(s);
    shard_publish(s);
    return rc;
}

int shard_open(const shard_options *opts, shard **out)
{
    shard *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->opts = *opts;
    if (!s->opts.clock)
        s->opts.clock = shard_wall_ms;
    if (!s->opts.checkpoint_ms)
        s->opts.checkpoint_ms = LIMIT_CHECKPOINT_MS_DEFAULT;
    if (!s->opts.checkpoint_entries)
        s->opts.checkpoint_entries = LIMIT_CHECKPOINT_ENTRIES_DEFAULT;
    snprintf(s->dir, sizeof(s->dir), "%s", opts->dir);
    s->opts.dir = s->dir;
    s->wake_fd = -1;
    pthread_mutex_init(&s->inbox_lock, NULL);
    pthread_mutex_init(&s->status_lock, NULL);
    int rc = 0;
    if (opts->replica) {
        s->replica = *opts->replica;
        s->opts.replica = &s->replica;
    }
    s->chunk_rec = malloc(sizeof(*s->chunk_rec));
    if (!s->chunk_rec)
        rc = -ENOMEM;
    if (opts->replica && rc == 0) {
        s->chunk_locs = calloc(SHARD_CHUNK_RECORDS_MAX, sizeof(*s->chunk_locs));
        rc = s->chunk_locs ? 0 : -ENOMEM;
    }
    if (!opts->read_only && mkdir(s->dir, 0755) < 0 && errno != EEXIST)
        rc = -errno;
    if (rc == 0)
        rc = shard_recover(s);
    bool thread = !opts->read_only && !opts->offline;
    if (rc == 0 && thread) {
        s->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (s->wake_fd < 0)
            rc = -errno;
    }
    if (rc == 0 && thread)
        rc = ring_open(SHARD_RING_DEPTH, opts->os ? opts->os : os_default(), &s->ring);
    if (rc == 0 && thread) {
        rc = -pthread_create(&s->thread, NULL, shard_main, s);
        s->thread_started = rc == 0;
    }
    if (rc < 0) {
        shard_close(s);
        return rc;
    }
    *out = s;
    return 0;
}

void shard_close(shard *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->inbox_lock);
    s->closing = true;
    pthread_mutex_unlock(&s->inbox_lock);
    if (s->thread_started) {
        shard_wake(s);
        pthread_join(s->thread, NULL);
    }
    if (s->ring)
        ring_close(s->ring);
    if (s->wake_fd >= 0)
        close(s->wake_fd);
    ledger_close(s->ledger);
    log_close(s->log);
    pthread_mutex_destroy(&s->inbox_lock);
    pthread_mutex_destroy(&s->status_lock);
    free(s->chunk_locs);
    free(s->chunk_rec);
    free(s);
}

void shard_submit(shard *s, tally_request *req)
{
    int st = atomic_load(&s->status);
    if (st == TALLY_ECORRUPT || s->opts.read_only || s->opts.offline) {
        char msg[160] = "opened offline";
        st = shard_status_get(s, msg, sizeof(msg));
        shard_fail_request(req, st ? st : TALLY_EFAILED, msg);
        req->done(req);
        return;
    }
    pthread_mutex_lock(&s->inbox_lock);
    if (s->closing) {
        pthread_mutex_unlock(&s->inbox_lock);
        shard_fail_request(req, TALLY_ECLOSED, "server is shutting down");
        req->done(req);
        return;
    }
    bool was_empty = s->inbox.head == NULL;
    shard_list_push(&s->inbox, req);
    pthread_mutex_unlock(&s->inbox_lock);
    if (was_empty)
        shard_wake(s);
}

int shard_call_offline(shard *s, tally_request *req)
{
    if (!tally_op_is_write(req->op) && req->op != TALLY_OP_VERIFY)
        return ledger_execute(s->ledger, req, shard_wall_ms(NULL));
    if (req->op == TALLY_OP_VERIFY)
        return shard_verify_with(s, s->ledger, req->merchant, req->res.message,
                                 sizeof(req->res.message));
    return TALLY_EFAILED;
}

void shard_stats(shard *s, tally_shard_stats *out)
{
    memset(out, 0, sizeof(*out));
    out->seq = atomic_load(&s->st_seq);
    out->durable_seq = atomic_load(&s->st_durable_seq);
    out->checkpoint_seq = atomic_load(&s->st_checkpoint_seq);
    out->entries = atomic_load(&s->st_entries);
    out->batches = atomic_load(&s->st_batches);
    out->batch_entries_max = atomic_load(&s->st_batch_entries_max);
    out->flush_us_total = atomic_load(&s->st_flush_us_total);
    out->flush_us_max = atomic_load(&s->st_flush_us_max);
    out->checkpoints = atomic_load(&s->st_checkpoints);
    out->checkpoint_us_total = atomic_load(&s->st_checkpoint_us_total);
    out->checkpoint_us_max = atomic_load(&s->st_checkpoint_us_max);
    out->checkpoint_stall_us_max = atomic_load(&s->st_checkpoint_stall_us_max);
    out->log_bytes = atomic_load(&s->st_log_bytes);
    out->memory_layers = atomic_load(&s->st_memory_layers);
    out->memory_id_tables = atomic_load(&s->st_memory_id_tables);
    out->memory_id_filters = atomic_load(&s->st_memory_id_filters);
    out->sweep_entries = atomic_load(&s->st_sweep_entries);
    out->sweep_chunks = atomic_load(&s->st_sweep_chunks);
    out->sweep_chunk_entries_max = atomic_load(&s->st_sweep_chunk_entries_max);
    out->log_first_seq = atomic_load(&s->st_log_first_seq);
    out->snapshot_seq = atomic_load(&s->st_snapshot_seq);
    out->snapshot_bytes = atomic_load(&s->st_snapshot_bytes);
    out->snapshots = atomic_load(&s->st_snapshots);
    out->snapshot_ms_last = atomic_load(&s->st_snapshot_ms_last);
    out->snapshot_created_ms = atomic_load(&s->st_snapshot_created_ms);
    shard_hist_get(&s->st_flush_us, &out->flush_us);
    shard_hist_get(&s->st_batch_records, &out->batch_records);
    shard_hist_get(&s->st_checkpoint_us, &out->checkpoint_us);
    out->checkpoint_bytes = atomic_load(&s->st_checkpoint_bytes);
    out->durable_epoch = atomic_load(&s->st_durable_epoch);
    out->replicated_seq = atomic_load(&s->ack_seq);
    out->commit_seq = atomic_load(&s->commit_seq);
    out->repl_lag = atomic_load(&s->st_repl_lag);
    out->leads = atomic_load(&s->leads);
    out->status = shard_status_get(s, out->status_message, sizeof(out->status_message));
}

int shard_status(shard *s) { return atomic_load(&s->status); }

/* ---- cluster mode: the replication module's handles ----------------------- */

static void shard_max(_Atomic uint64_t *v, uint64_t seq)
{
    uint64_t old = atomic_load(v);
    while (old < seq && !atomic_compare_exchange_weak(v, &old, seq))
        ;
}

void shard_replica_lead(shard *s, bool lead, uint32_t epoch)
{
    assert(s->opts.replica != NULL);
    if (lead) {
        atomic_store(&s->lead_epoch, epoch); /* before the writes it lets in */
        /* What it holds beyond the replicated seq it learnt as a replica
         * may exist nowhere else: acknowledged only once replicated anew. */
        atomic_store(&s->ack_seq, atomic_load(&s->commit_seq));
    }
    atomic_store(&s->leads, lead);
    shard_wake(s);
}

void shard_replica_ack(shard *s, uint64_t seq)
{
    uint64_t before = atomic_load(&s->ack_seq);
    shard_max(&s->ack_seq, seq);
    if (seq > before)
        shard_wake(s);
}

void shard_replica_commit(shard *s, uint64_t seq)
{
    uint64_t before = atomic_load(&s->commit_seq);
    shard_max(&s->commit_seq, seq);
    if (seq <= before)
        return;
    shard_wake(s);
    /* FOLLOW delivers up to it: its waiting followers look again. */
    if (s->opts.durable_fn)
        s->opts.durable_fn(s->opts.durable_ctx, s->opts.index);
}

uint64_t shard_feed_seq(shard *s)
{
    uint64_t durable = log_durable_seq(s->log);
    if (!s->opts.replica)
        return durable;
    uint64_t c = atomic_load(&s->commit_seq);
    return c < durable ? c : durable;
}

void shard_replica_kick(shard *s) { shard_wake(s); }

void shard_replica_lag(shard *s, uint64_t records) { atomic_store(&s->st_repl_lag, records); }

void shard_replica_expire(shard *s)
{
    atomic_store(&s->expire_wanted, true);
    shard_wake(s);
}

void shard_replica_append(shard *s, tally_replica_chunk *c)
{
    assert(s->opts.replica != NULL);
    char why[sizeof(s->status_message)];
    int st = shard_status_get(s, why, sizeof(why));
    pthread_mutex_lock(&s->inbox_lock);
    bool closing = s->closing;
    if (!closing && st == 0) {
        c->next_ = s->chunk_inbox;
        s->chunk_inbox = c;
    }
    pthread_mutex_unlock(&s->inbox_lock);
    if (closing || st != 0) {
        shard_fail_request(&c->req, st ? st : TALLY_ECLOSED,
                           st ? why : "engine is shutting down");
        c->req.done(&c->req);
        return;
    }
    shard_wake(s);
}

struct log_t *shard_log(shard *s) { return s->log; }
struct ledger *shard_ledger(shard *s) { return s->ledger; }

/* ---- offline full verify ------------------------------------------------ */

/* Replays the log after from_seq into a ledger on the state in base (a
 * snapshot's copy, or an empty state when base is NULL) and compares the
 * result with the shard's state.  0, or TALLY_ECORRUPT with msg. */
static int shard_verify_replay(shard *s, const snapshot_info *base, char *msg, size_t cap)
{
    char tmp[] = "/tmp/tally-verify-XXXXXX";
    if (!mkdtemp(tmp))
        return -errno;
    uint64_t from = base ? base->seq : 0;
    int rc = base ? snapshot_restore(base, os_default(), tmp) : 0;
    ledger_options lo = {.dir = tmp, .map_bytes = s->opts.map_bytes,
                         .log = shard_tally_log, .log_ctx = s};
    ledger *fresh = NULL;
    if (rc == 0)
        rc = ledger_open(&lo, s->log, &fresh);
    if (rc == 0 && ledger_checkpoint_seq(fresh) != from)
        rc = TALLY_ECORRUPT;
    uint64_t n = 0;
    if (rc == 0)
        rc = shard_replay_into(s, fresh, true, false, "verify", &n);
    char what[64];
    if (base)
        snprintf(what, sizeof(what), "snapshot seq %llu", (unsigned long long)from);
    else
        snprintf(what, sizeof(what), "an empty state");
    if (rc == 0)
        rc = ledger_compare(s->ledger, fresh, msg, cap);
    else if (rc < 0)
        snprintf(msg, cap, "shard %u: replay of the log from %s failed: %s", s->opts.index,
                 what, tally_strerror(rc));
    if (rc == 0)
        snprintf(msg, cap, "ok: %s + %llu records replayed, state matches", what,
                 (unsigned long long)n);
    else if (rc == TALLY_ECORRUPT && base) {
        char inner[200];
        snprintf(inner, sizeof(inner), "%s", msg);
        snprintf(msg, cap, "shard %u, from %s: %s", s->opts.index, what, inner);
    }
    ledger_close(fresh);
    if (os_remove_tree(tmp) < 0)
        shard_say(s, 1, "verify: could not remove %s", tmp);
    return rc < 0 ? TALLY_ECORRUPT : 0;
}

int shard_verify_full(shard *s, char *msg, size_t cap)
{
    int rc = shard_verify_with(s, s->ledger, 0, msg, cap);
    if (rc == 0) {
        msg[0] = 0;
        rc = ledger_verify_history(s->log, msg, cap);
    }
    if (rc < 0)
        return rc;
    uint64_t first = log_first_seq(s->log);
    int bases = 0;
    if (first == 1) {
        rc = shard_verify_replay(s, NULL, msg, cap);
        if (rc < 0)
            return rc;
        bases++;
    }
    char dir[4200];
    shard_snap_dir(s, dir, sizeof(dir));
    snapshot_info list[SNAPSHOT_LIST_MAX];
    uint32_t count = 0;
    rc = snapshot_list(dir, true, list, SNAPSHOT_LIST_MAX, &count);
    for (uint32_t i = 0; rc == 0 && i < count; i++) {
        rc = snapshot_check(&list[i], msg, cap);
        if (rc == 0 && list[i].ids_seq + 1 < first) {
            snprintf(msg, cap, "shard %u: snapshot seq %llu is older than the retained log "
                               "(it starts at seq %llu)",
                     s->opts.index, (unsigned long long)list[i].seq, (unsigned long long)first);
            rc = TALLY_ECORRUPT;
        }
        if (rc == 0 && list[i].seq > log_durable_seq(s->log)) {
            snprintf(msg, cap, "shard %u: snapshot seq %llu is past the end of the log (seq "
                               "%llu)",
                     s->opts.index, (unsigned long long)list[i].seq,
                     (unsigned long long)log_durable_seq(s->log));
            rc = TALLY_ECORRUPT;
        }
        if (rc == 0)
            rc = shard_verify_replay(s, &list[i], msg, cap);
        bases += rc == 0;
    }
    if (rc < 0)
        return TALLY_ECORRUPT;
    if (bases == 0) {
        snprintf(msg, cap, "shard %u: the log starts at seq %llu and no snapshot covers what "
                           "was dropped",
                 s->opts.index, (unsigned long long)first);
        return TALLY_ECORRUPT;
    }
    snprintf(msg, cap, "ok: %d replay(s) match the state (log from seq %llu, %u snapshot(s))",
             bases, (unsigned long long)first, count);
    return 0;
}
