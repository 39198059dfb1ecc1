/*
 * report.h — one benchmark run's figures and their two renderings: a
 * human-readable block and a JSON object (the schema every system in the
 * peer comparison shares, so bench/run.sh can tabulate and plot them).
 *
 * JSON fields: system, workload, label, connections, pipeline, in_flight
 * (connections x pipeline), threads, seed, warmup_s, elapsed_s, ops, ok,
 * refused, errors, ops_per_s, latency_us {count, mean, p50, p90, p99,
 * p999, max}, first_error, durability {setting: value, ...} (what the
 * system said it runs with, read back from it); open_loop {rate_asked,
 * rate_achieved, sent, dropped} for an open-loop run; server_cpu_s and
 * server_cpu_us_per_op when the server's CPU was measured; server {cpu_s,
 * cpu_us_per_op, records_before, records_after, entries_written,
 * write_bytes, write_bytes_per_entry, disk_bytes, disk_bytes_per_entry,
 * rss_anon_bytes} when its /proc counters were sampled (-1: unknown); and
 * for the engine benchmark entries, batches, batch_entries_avg, shards,
 * sync.
 */
#ifndef TALLY_BENCH_REPORT_H
#define TALLY_BENCH_REPORT_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "hist.h"
#include "proc.h"

/* Durability settings one report can carry. */
#define REPORT_SETTINGS_MAX 12

typedef struct report_setting {
    char name[32];
    char value[64];
} report_setting;

typedef struct report_run {
    char system[32];   /* tally, redis, postgres, sqlite, lmdb, engine */
    char workload[32]; /* points-v1, ... */
    char label[160];   /* free text: how it was driven */
    uint32_t connections;
    uint32_t pipeline;
    uint32_t threads;
    uint64_t seed;
    double warmup_s;
    double elapsed_s;  /* measured interval */
    uint64_t ops;      /* completed: ok + refused */
    uint64_t ok;
    uint64_t refused;  /* refusals the command may meet (workload_expects) */
    uint64_t errors;   /* anything else: not counted in ops */
    char first_error[96];
    hist *latency;     /* nanoseconds; owned by the caller */
    /* open loop (rate_asked > 0): commands sent while measuring, and those
     * due before the end but never sent (in the latency histogram too) */
    double rate_asked;
    uint64_t sent;
    uint64_t dropped;
    report_setting settings[REPORT_SETTINGS_MAX];
    uint32_t setting_count;
    /* CPU time (user + system, threads and reaped children) the server
     * process used over the measured interval; < 0 when not measured */
    double server_cpu_s;
    /* the server's /proc counters at the start and end of the window */
    bool server_sampled;
    proc_sample server_before;
    proc_sample server_after;
    /* engine benchmark only (batches == 0 elsewhere) */
    uint64_t entries;
    uint64_t batches;
    uint32_t shards;
    char sync[8];
} report_run;

double report_ops_per_s(const report_run *r);
/* Records a durability setting (cut to fit; ignored past
 * REPORT_SETTINGS_MAX). */
void report_setting_add(report_run *r, const char *name, const char *value);
/* The value of a recorded setting, NULL if absent. */
const char *report_setting_get(const report_run *r, const char *name);
/* Prints the run as a few aligned lines. */
void report_text(FILE *f, const report_run *r);
/* Prints the run as one JSON object followed by a newline. */
void report_json(FILE *f, const report_run *r);
/* Writes s as a JSON string literal (quotes and escapes included). */
void report_json_string(FILE *f, const char *s);
/* Records the filesystem dir is on as the setting data_fs; when durable,
 * refuses (1, the reason on stderr) a directory on tmpfs or ramfs.  0
 * otherwise (also when the filesystem cannot be read: data_fs=unknown). */
int report_data_fs(report_run *r, const char *dir, bool durable, const char *prog);
/* Writes the text and, when json is not NULL, the JSON file; then judges
 * the run: 0 when it completed operations and met no error, else 1 with
 * the reason on stderr (errors can hide as slowness: such figures are not
 * reported as valid). */
int report_finish(const report_run *r, const char *json, const char *prog);

#endif
