/*
 * report.h — one benchmark run's figures and their two renderings: a
 * human-readable block and a JSON object (the schema every system in the
 * peer comparison shares, so bench/run.sh can tabulate and plot them).
 *
 * JSON fields: system, workload, label, connections, pipeline, threads,
 * elapsed_s, ops, ok, refused, errors, ops_per_s, latency_us {count,
 * mean, p50, p90, p99, p999, max}, first_error, server_cpu_s and
 * server_cpu_us_per_op (when the server's pid was given), and for the engine
 * benchmark batches, batch_entries_avg, shards, sync.
 */
#ifndef TALLY_BENCH_REPORT_H
#define TALLY_BENCH_REPORT_H

#include <stdint.h>
#include <stdio.h>

#include "hist.h"

typedef struct report_run {
    char system[32];   /* tally, redis, postgres, sqlite, lmdb, engine */
    char workload[32]; /* points-v1, ... */
    char label[128];   /* free text: how it was driven */
    uint32_t connections;
    uint32_t pipeline;
    uint32_t threads;
    double elapsed_s;  /* measured interval */
    uint64_t ops;      /* completed: ok + refused */
    uint64_t ok;
    uint64_t refused;  /* expected refusals (-INSUFFICIENT, -NOTFOUND) */
    uint64_t errors;   /* anything else: not counted in ops */
    char first_error[96];
    hist *latency;     /* nanoseconds; owned by the caller */
    /* CPU time (user + system, threads and reaped children) the server
     * process used over the measured interval; < 0 when not measured */
    double server_cpu_s;
    /* engine benchmark only (batches == 0 elsewhere) */
    uint64_t entries;
    uint64_t batches;
    uint32_t shards;
    char sync[8];
} report_run;

double report_ops_per_s(const report_run *r);
/* Prints the run as a few aligned lines. */
void report_text(FILE *f, const report_run *r);
/* Prints the run as one JSON object followed by a newline. */
void report_json(FILE *f, const report_run *r);
/* Writes s as a JSON string literal (quotes and escapes included). */
void report_json_string(FILE *f, const char *s);

#endif
