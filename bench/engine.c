/*
 * engine.c — the engine benchmark (engine.h).
 *
 * A fixed pool of requests.  The main thread fills free ones from the
 * workload and submits them; done() (on a shard thread) stamps the
 * completion time and pushes the request onto a completion list under one
 * mutex, waking the main thread only if it sleeps.  The main thread takes
 * the whole list at once, accounts and resubmits: one lock round trip per
 * wake-up, not per request, and no spinning.
 */
#include <assert.h>
#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"
#include "tally.h"

typedef struct engine_slot {
    tally_request req;
    workload_op op;
    uint64_t submit_ns;
    uint64_t done_ns;
    struct engine_slot *next;
} engine_slot;

typedef struct engine_ctx {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    engine_slot *completed; /* pushed by done(), taken whole by main */
    bool sleeping;
} engine_ctx;

static engine_ctx engine_state;

static uint64_t engine_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void engine_done(tally_request *req)
{
    engine_slot *s = req->user;
    s->done_ns = engine_mono_ns();
    pthread_mutex_lock(&engine_state.lock);
    s->next = engine_state.completed;
    engine_state.completed = s;
    if (engine_state.sleeping)
        pthread_cond_signal(&engine_state.cond);
    pthread_mutex_unlock(&engine_state.lock);
}

static void engine_log(void *ctx, int level, const char *msg)
{
    (void)ctx;
    if (level > 0)
        fprintf(stderr, "tally: %s\n", msg);
}

static int engine_rm(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

/* ---- requests ----------------------------------------------------------- */

static const uint8_t engine_ops[WORKLOAD_OP_COUNT] = {
    [WORKLOAD_OP_EARN] = TALLY_OP_EARN,       [WORKLOAD_OP_REDEEM] = TALLY_OP_REDEEM,
    [WORKLOAD_OP_BALANCE] = TALLY_OP_BALANCE, [WORKLOAD_OP_HOLD] = TALLY_OP_HOLD,
    [WORKLOAD_OP_CAPTURE] = TALLY_OP_CAPTURE, [WORKLOAD_OP_PING] = TALLY_OP_NONE,
    [WORKLOAD_OP_REVERSE] = TALLY_OP_REVERSE, [WORKLOAD_OP_TRANSFER] = TALLY_OP_TRANSFER,
};

static void engine_fill(engine_slot *s, const workload_op *op)
{
    tally_request *r = &s->req;
    tally_result_free(&r->res);
    memset(r, 0, offsetof(tally_request, res));
    r->op = engine_ops[op->kind];
    r->merchant = op->merchant;
    r->account = op->account;
    r->account2 = op->account2;
    r->points = op->points;
    r->expires = op->expires;
    memcpy(r->id, op->id, op->id_len);
    r->id_len = op->id_len;
    memcpy(r->ref, op->ref, op->ref_len);
    r->ref_len = op->ref_len;
    r->done = engine_done;
    r->user = s;
    s->op = *op;
}

typedef struct engine_run_state {
    const engine_options *o;
    tally *t;
    workload work;
    engine_slot *slots;
    engine_slot *free_list;
    uint32_t inflight;
    uint64_t sent;
    bool stopping;
    bool measuring;
    uint64_t ok, refused, errors;
    char first_error[96];
    hist *lat;
    const char *dir;
    proc_sample begin;
} engine_run_state;

/* Submits bursts while there are free slots for a whole one. */
static void engine_feed(engine_run_state *st)
{
    while (!st->stopping && st->o->inflight - st->inflight >= WORKLOAD_BURST_MAX) {
        if (st->o->ops_max && st->sent >= st->o->ops_max) {
            st->stopping = true;
            return;
        }
        workload_op ops[WORKLOAD_BURST_MAX];
        uint32_t n = workload_next(&st->work, ops);
        if (n == 0) {
            st->stopping = true;
            return;
        }
        uint64_t now = engine_mono_ns();
        for (uint32_t i = 0; i < n; i++) {
            engine_slot *s = st->free_list;
            assert(s != NULL);
            st->free_list = s->next;
            engine_fill(s, &ops[i]);
            s->submit_ns = now;
            st->inflight++;
            tally_submit(st->t, &s->req);
        }
        st->sent += n;
    }
}

static void engine_account(engine_run_state *st, engine_slot *s)
{
    st->inflight--;
    int status = s->req.res.status;
    int refusal = status == TALLY_EINSUFFICIENT ? WORKLOAD_REFUSAL_INSUFFICIENT
                  : status == TALLY_ENOTFOUND   ? WORKLOAD_REFUSAL_NOTFOUND
                                                : WORKLOAD_REFUSAL_NONE;
    workload_done(&st->work, &s->op, status == 0);
    if (st->measuring) {
        if (status == 0 || workload_expects(s->op.kind, refusal)) {
            status == 0 ? st->ok++ : st->refused++;
            hist_record(st->lat, s->done_ns - s->submit_ns);
        } else {
            st->errors++;
            if (!st->first_error[0])
                snprintf(st->first_error, sizeof(st->first_error), "%s: -%.16s %.64s",
                         workload_kind_name(s->op.kind), tally_error_code(status),
                         s->req.res.message);
        }
    }
    s->next = st->free_list;
    st->free_list = s;
}

/* Waits for completions until deadline_ns; returns them as a list. */
static engine_slot *engine_wait(uint64_t deadline_ns)
{
    pthread_mutex_lock(&engine_state.lock);
    if (!engine_state.completed && engine_mono_ns() < deadline_ns) {
        struct timespec ts = {.tv_sec = (time_t)(deadline_ns / 1000000000ull),
                              .tv_nsec = (long)(deadline_ns % 1000000000ull)};
        engine_state.sleeping = true;
        pthread_cond_timedwait(&engine_state.cond, &engine_state.lock, &ts);
        engine_state.sleeping = false;
    }
    engine_slot *list = engine_state.completed;
    engine_state.completed = NULL;
    pthread_mutex_unlock(&engine_state.lock);
    return list;
}

/* Entries and flushes since open, and the records in the ledger (the sum
 * of the shards' last seqs). */
static void engine_stats(tally *t, uint64_t *entries, uint64_t *batches, int64_t *records)
{
    *entries = *batches = 0;
    *records = 0;
    for (uint32_t i = 0; i < tally_shard_count(t); i++) {
        tally_shard_stats s;
        if (tally_shard_stats_get(t, i, &s) == 0) {
            *entries += s.entries;
            *batches += s.batches;
            *records += (int64_t)s.seq;
        }
    }
}

/* This process's counters (the engine's threads and the driver) and the
 * ledger's records; with_disk: du of the data directory too. */
static void engine_sample(engine_run_state *st, bool with_disk, proc_sample *out,
                          uint64_t *entries, uint64_t *batches)
{
    if (proc_sample_get(getpid(), with_disk ? st->dir : NULL, out) != 0)
        *out = (proc_sample){.cpu_s = -1, .write_bytes = -1, .rss_anon_kib = -1,
                             .disk_bytes = -1};
    engine_stats(st->t, entries, batches, &out->records);
}

/* ---- the run ------------------------------------------------------------ */

static void engine_loop(engine_run_state *st, uint64_t *first_ns, uint64_t *last_ns,
                        uint64_t *entries0, uint64_t *batches0)
{
    const engine_options *o = st->o;
    uint64_t start = engine_mono_ns();
    uint64_t warm_end = start + (uint64_t)(o->warmup_s * 1e9);
    uint64_t end = o->duration_s > 0 ? warm_end + (uint64_t)(o->duration_s * 1e9) : UINT64_MAX;
    uint64_t next_tick = start + 1000000000ull, tick_ops = 0, tick_ns = start;
    *first_ns = *last_ns = start;
    engine_feed(st);
    while (!st->stopping || st->inflight > 0) {
        uint64_t now = engine_mono_ns();
        if (!st->measuring && now >= warm_end) {
            st->measuring = true;
            *first_ns = *last_ns = now;
            engine_sample(st, false, &st->begin, entries0, batches0);
            hist_reset(st->lat);
        }
        if (now >= end)
            st->stopping = true;
        if (now >= next_tick) {
            uint64_t ops = st->ok + st->refused;
            if (o->progress)
                fprintf(stderr, "[%5.1fs] %10.0f ops/s  p99 so far %8.1f us  in flight %u\n",
                        (double)(now - start) / 1e9,
                        (double)(ops - tick_ops) * 1e9 / (double)(now - tick_ns),
                        (double)hist_quantile(st->lat, 0.99) / 1000.0, st->inflight);
            tick_ops = ops;
            tick_ns = now;
            next_tick += 1000000000ull;
        }
        uint64_t deadline = next_tick;
        if (!st->measuring && warm_end < deadline)
            deadline = warm_end;
        if (!st->stopping && end < deadline)
            deadline = end;
        for (engine_slot *s = engine_wait(deadline); s;) {
            engine_slot *next = s->next;
            if (st->measuring && s->done_ns > *last_ns)
                *last_ns = s->done_ns;
            engine_account(st, s);
            s = next;
        }
        engine_feed(st);
    }
}

int engine_run(const engine_options *o, report_run *out)
{
    if (o->inflight < WORKLOAD_BURST_MAX || o->inflight > ENGINE_INFLIGHT_MAX ||
        o->work.mix == WORKLOAD_PING || (o->duration_s <= 0 && o->ops_max == 0 &&
                                         o->work.mix != WORKLOAD_PREFILL))
        return -EINVAL;
    engine_run_state st = {.o = o, .lat = out->latency};
    int rc = workload_init(&st.work, &o->work, 0);
    if (rc < 0)
        return rc;
    char tmp[4200] = "";
    const char *dir = o->dir;
    if (!dir) {
        snprintf(tmp, sizeof(tmp), "%s/tally-bench-engine-XXXXXX", o->tmp_parent);
        if (!mkdtemp(tmp))
            return -errno;
        dir = tmp;
    }
    st.slots = calloc(o->inflight, sizeof(engine_slot));
    if (!st.slots)
        return -ENOMEM;
    for (uint32_t i = 0; i < o->inflight; i++) {
        st.slots[i].next = st.free_list;
        st.free_list = &st.slots[i];
    }
    pthread_mutex_init(&engine_state.lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&engine_state.cond, &attr);
    pthread_condattr_destroy(&attr);
    tally_options topts = {.dir = dir, .shards = o->shards, .sync = o->sync, .log = engine_log};
    st.dir = dir;
    rc = tally_open(&topts, &st.t);
    if (rc == 0) {
        uint64_t first, last, entries0 = 0, batches0 = 0, entries1, batches1;
        hist_reset(st.lat);
        engine_loop(&st, &first, &last, &entries0, &batches0);
        out->server_before = st.begin;
        engine_sample(&st, true, &out->server_after, &entries1, &batches1);
        out->server_sampled = true;
        proc_figures f;
        proc_figures_get(&out->server_before, &out->server_after, st.ok + st.refused, &f);
        out->server_cpu_s = f.cpu_s;
        out->ok = st.ok;
        out->refused = st.refused;
        out->errors = st.errors;
        out->ops = st.ok + st.refused;
        out->elapsed_s = (double)(last - first) / 1e9;
        out->entries = entries1 - entries0;
        out->batches = batches1 - batches0;
        out->shards = tally_shard_count(st.t);
        snprintf(out->first_error, sizeof(out->first_error), "%s", st.first_error);
        tally_close(st.t);
    }
    for (uint32_t i = 0; i < o->inflight; i++)
        tally_result_free(&st.slots[i].req.res);
    free(st.slots);
    pthread_cond_destroy(&engine_state.cond);
    pthread_mutex_destroy(&engine_state.lock);
    if (tmp[0])
        nftw(tmp, engine_rm, 16, FTW_DEPTH | FTW_PHYS);
    out->connections = 0;
    out->pipeline = o->inflight;
    out->threads = 1;
    out->seed = o->work.seed;
    out->warmup_s = o->warmup_s;
    snprintf(out->sync, sizeof(out->sync), "%s", o->sync == TALLY_SYNC_NONE ? "none" : "always");
    snprintf(out->workload, sizeof(out->workload), "%s", workload_mix_name(o->work.mix));
    return rc;
}
