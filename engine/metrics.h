/*
 * metrics.h — the figures INFO and /metrics report, kept in one place, and
 * their Prometheus text (exposition format 0.0.4).
 *
 * Two kinds of figures:
 *   - the server's own (connections, requests by command and result,
 *     request latency): in struct metrics, written by the server's one
 *     thread and read on that same thread (INFO and /metrics are both
 *     answered there), so they are plain integers and counting a request
 *     is a few increments — no lock, no atomic, no allocation;
 *   - the engine's (per shard: records, flushes, checkpoints, snapshots,
 *     status): read through tally_shard_stats_get() when asked, and summed
 *     over shards here (metrics_engine_read) for INFO and /metrics alike.
 *
 * Labels are bounded: command (a row of the command table, or "unknown"
 * for any other word a client sends), result (enum metrics_result) and
 * shard.  Never a merchant or an account: their number is unbounded, and
 * a token's scrape must not tell one tenant about another.
 */
#ifndef TALLY_METRICS_H
#define TALLY_METRICS_H

#include <assert.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tally.h"

/* ---- request results --------------------------------------------------- */

/* How a request ended, as the `result` label says it.  The engine's own
 * refusals keep their error codes; `error` is a request the client got
 * wrong (-ERR: syntax, arity, unknown command, an id before the retained
 * log); `failed` is one the server could not carry out (a failed or
 * corrupt shard, shutting down, an I/O error) — the one to alert on. */
enum metrics_result {
    METRICS_OK = 0,
    METRICS_INSUFFICIENT,
    METRICS_NOTFOUND,
    METRICS_CONFLICT,
    METRICS_INVALID,
    METRICS_ERROR,
    METRICS_NOAUTH,
    METRICS_NOPERM,
    METRICS_WRONGPASS,
    METRICS_FAILED,
    METRICS_RESULT_COUNT,
};

/* The label value: "ok", "insufficient", ... */
const char *metrics_result_name(enum metrics_result r);
/* The result of an engine request from its status (0 or TALLY_E* / -errno). */
enum metrics_result metrics_result_of_status(int status);
/* The result of a reply the server wrote itself (RESP bytes): an error's
 * code word ("-NOPERM ...") or ok. */
enum metrics_result metrics_result_of_reply(const char *reply, size_t len);

/* ---- the server's counters ----------------------------------------------- */

/* Rows of the command table that can be counted, plus one for "unknown"
 * (command.c checks that its table fits). */
#define METRICS_COMMANDS_MAX 64

typedef struct metrics_command {
    uint64_t results[METRICS_RESULT_COUNT];
    tally_hist duration_us; /* dispatch to reply ready, microseconds */
} metrics_command;

typedef struct metrics {
    /* what the server is: set by metrics_init */
    uint64_t start_ms;       /* unix ms */
    uint32_t max_clients;
    const char *dir;         /* the data directory: state sizes are read there */
    uint32_t commands_count; /* counted rows; row commands_count is "unknown" */
    const char *command_names[METRICS_COMMANDS_MAX];
    /* counters: the server thread */
    uint64_t connections_accepted; /* taken from the listen queue, refused ones too */
    uint64_t connections_rejected; /* turned away: maxclients, shutting down, no memory */
    uint64_t commands_total;       /* commands dispatched */
    uint64_t protocol_errors;
    uint32_t clients;              /* RESP connections open */
    uint64_t requests_inflight;    /* dispatched, reply not yet ready */
    metrics_command commands[METRICS_COMMANDS_MAX];
} metrics;

/* Zeroes m and records what the server is.  names: the command table's
 * names, count of them (< METRICS_COMMANDS_MAX); dir is kept, not copied. */
void metrics_init(metrics *m, const char *dir, uint32_t max_clients,
                  const char *const *names, uint32_t count);

/* One request answered: command is a table row (or commands_count for an
 * unknown word), duration_us from its dispatch to its reply being ready.
 * The server thread's hot path: two increments and an add. */
static inline void metrics_request(metrics *m, uint32_t command, enum metrics_result result,
                                   uint64_t duration_us)
{
    assert(command <= m->commands_count);
    assert(result < METRICS_RESULT_COUNT);
    metrics_command *c = &m->commands[command];
    c->results[result]++;
    c->duration_us.counts[tally_hist_bucket(duration_us)]++;
    c->duration_us.sum += duration_us;
}

/* ---- the engine's figures, over every shard ----------------------------- */

typedef struct metrics_engine {
    uint32_t shards;
    uint32_t shards_failed; /* failed or corrupt */
    /* Counts, totals and histograms added up; *_max the largest of any
     * shard; status and status_message unused. */
    tally_shard_stats sum;
} metrics_engine;

/* Reads every shard's counters (t may be NULL: all zero). */
void metrics_engine_read(tally *t, metrics_engine *out);
/* Adds up n shards' counters read by the caller (cluster mode: a row per
 * shard group). */
void metrics_engine_sum(const tally_shard_stats *st, uint32_t n, metrics_engine *out);

/* ---- text ------------------------------------------------------------------ */

/* A growing text buffer: INFO's sections and the exposition are built in
 * one.  After a failed allocation it keeps what it had and sets oom. */
typedef struct metrics_text {
    char *buf;
    size_t len, cap;
    bool oom;
} metrics_text;

void metrics_textf(metrics_text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void metrics_text_free(metrics_text *t);

/* The exposition text (content type METRICS_CONTENT_TYPE) of every family:
 * m's counters, the engine's figures (t may be NULL), the process's
 * resident and anonymous memory (/proc/self/status) and each shard's
 * state bytes (its LMDB file and id index runs under m->dir).  It reads a
 * few /proc and directory entries per shard: cheap, but made for a scrape
 * every few seconds, not for every request. */
void metrics_prometheus(const metrics *m, tally *t, metrics_text *out);

/* Cluster mode: the same text from stats the caller read, one row per
 * shard group this node serves (groups[i]: its number, the series'
 * shard label; its state under m->dir/group-G). */
void metrics_prometheus_rows(const metrics *m, const tally_shard_stats *st,
                             const uint32_t *groups, uint32_t n, metrics_text *out);

#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

#endif
