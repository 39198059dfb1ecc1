/*
 * proc.h — what a local server process costs, read from Linux's /proc and
 * the filesystem: CPU time, bytes it had the kernel write to storage,
 * anonymous memory, the disk its data directory takes, and whether that
 * directory is on a real disk at all.
 *
 * A sample is taken at the start and at the end of a measured window;
 * proc_figures turns two samples into per-operation and per-entry figures
 * (the arithmetic `tally-bench selftest` checks).  "Entries" are records
 * in the ledger (INFO ledger `records`), counted by the caller.
 */
#ifndef TALLY_BENCH_PROC_H
#define TALLY_BENCH_PROC_H

#include <stdbool.h>
#include <stdint.h>

/* One reading; a field that could not be read is -1. */
typedef struct proc_sample {
    double cpu_s;          /* utime + stime (+ reaped children), /proc/PID/stat */
    int64_t write_bytes;   /* /proc/PID/io write_bytes: what reached the block layer */
    int64_t rss_anon_kib;  /* /proc/PID/status RssAnon */
    int64_t disk_bytes;    /* allocated blocks under the data directory (du) */
    int64_t records;       /* entries in the ledger */
} proc_sample;

/* Figures of a window between two samples; -1 where an input is missing
 * or a divisor is zero. */
typedef struct proc_figures {
    double cpu_s;
    double cpu_us_per_op;
    int64_t entries_written;        /* records after - before */
    int64_t write_bytes;            /* write_bytes after - before */
    double write_bytes_per_entry;   /* write_bytes / entries_written */
    double disk_bytes_per_entry;    /* disk after / records after */
    int64_t rss_anon_bytes;         /* after */
} proc_figures;

/* Reads pid's counters and, when dir is not NULL, the disk dir takes.
 * records is left -1 (the caller asks the server).  Returns 0, or -errno
 * when pid's /proc/PID/stat cannot be read. */
int proc_sample_get(int pid, const char *dir, proc_sample *out);

/* CPU seconds (user + system, including reaped children) pid has used;
 * -1 if it cannot be read. */
double proc_cpu_s(int pid);

/* Bytes allocated to the files and directories under dir, like `du -s`
 * (a hard link counts once per name: the data directories measured here
 * have none); -errno on failure. */
int64_t proc_dir_bytes(const char *dir);

/* before/after -> figures; ops = operations completed in the window. */
void proc_figures_get(const proc_sample *before, const proc_sample *after, uint64_t ops,
                      proc_figures *out);

/* The filesystem path lies on: a name ("ext4", "tmpfs", or the magic in
 * hex) into name[cap]; *memory = true for tmpfs and ramfs, where nothing
 * is durable.  Returns 0 or -errno. */
int proc_fs_type(const char *path, char *name, unsigned cap, bool *memory);

#endif
