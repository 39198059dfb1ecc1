/*
 * engine.h — the engine benchmark: drives the C API (tally.h) directly,
 * without the network, with many requests in flight, to show what the
 * engine alone sustains and what the server costs on top.
 *
 * Latency is tally_submit() → done(), taken on the shard thread.  Entries
 * and batches come from tally_shard_stats_get() (deltas over the measured
 * interval), so entries / batches is the average group-commit size.
 */
#ifndef TALLY_BENCH_ENGINE_H
#define TALLY_BENCH_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include "report.h"
#include "workload.h"

/* Requests in flight: each is a ~1.5 KiB struct allocated at start. */
#define ENGINE_INFLIGHT_MAX 65536

typedef struct engine_options {
    const char *dir;   /* NULL: a fresh temporary directory, removed after ... */
    const char *tmp_parent; /* ... made in this directory */
    uint32_t shards;   /* 0 = the engine's default (CPU count) */
    int sync;          /* enum tally_sync */
    uint32_t inflight;
    double duration_s; /* 0 = until ops_max */
    uint64_t ops_max;
    double warmup_s;
    bool progress;
    workload_config work;
} engine_options;

/* Runs and fills out (out->latency owned by the caller).  Returns 0 or a
 * negative error (tally_open's, -EINVAL for a bad option). */
int engine_run(const engine_options *o, report_run *out);

#endif
