/*
 * shard.h — one shard: its log, its ledger and the writer thread that owns
 * both.  Requests arrive through an inbox (the only lock, held for a list
 * append or swap); the thread applies them to the filling batch while the
 * previous batch flushes, submits each batch as one linked write + flush
 * through io_uring, and calls every request's done() only once the batch
 * it was in is durable (DESIGN-NOTES §2, §4).
 */
#ifndef TALLY_SHARD_H
#define TALLY_SHARD_H

#include <stdbool.h>
#include <stdint.h>

#include "os.h"
#include "tally.h"

typedef struct shard shard;

typedef struct shard_options {
    const char *dir; /* the shard's directory (created) */
    uint32_t index;
    int sync; /* enum tally_sync */
    uint32_t segment_bytes;
    uint32_t checkpoint_ms;
    uint32_t checkpoint_entries;
    uint64_t map_bytes;
    const os_ops *os;
    tally_clock_fn clock;
    void *clock_ctx;
    tally_log_fn log;
    void *log_ctx;
    bool read_only; /* recover and serve reads, never write, no thread */
    bool offline;   /* recover and commit, no thread: tools that write
                     * through shard_log/shard_ledger (import.c) */
    /* An import that never committed began after import_base (DIR/IMPORT,
     * import.h): recovery cuts the log after it and, if the state was
     * checkpointed past it, restores the snapshot taken at it. */
    bool undo_import;
    uint64_t import_base;
    uint64_t snapshot_every_records; /* 0: not by count */
    uint64_t snapshot_every_ms;      /* 0: not by time */
    int retention;                   /* enum tally_retention */
    const char *archive_dir;
    /* Called on the shard thread each time a batch became durable (the
     * change feed, feed.h): it must cost O(1). */
    void (*durable_fn)(void *ctx, uint32_t index);
    void *durable_ctx;
    /* Cluster mode (tally.h "cluster mode"): NULL standalone. */
    const tally_replica *replica;
} shard_options;

/* Opens the ledger and log, recovers (replays the log after the state's
 * checkpoint) and starts the writer thread (not read_only or offline).  A state that is missing,
 * unreadable or marked damaged (state/REBUILD, written when damage was
 * found while serving) is moved aside to state.bad-<ms> and rebuilt from
 * the newest valid snapshot plus the retained log.  A shard whose
 * acknowledged data is corrupt still opens, refused: every request fails
 * with TALLY_ECORRUPT.  Errors: -errno, TALLY_EFORMAT. */
int shard_open(const shard_options *opts, shard **out);

/* Answers everything queued, writes a final checkpoint, stops the thread
 * and frees the shard.  NULL is ok. */
void shard_close(shard *s);

/* Queues req; done() is called later on the shard thread (or at once, on
 * this thread, if the shard is refused or closing). */
void shard_submit(shard *s, tally_request *req);

/* Executes req at once on the calling thread; only for read_only shards
 * (offline tools). */
int shard_call_offline(shard *s, tally_request *req);

void shard_stats(shard *s, tally_shard_stats *out);
/* 0, TALLY_EFAILED or TALLY_ECORRUPT; any thread. */
int shard_status(shard *s);

/* The last seq FOLLOW may deliver (any thread): the durable seq, or in
 * cluster mode what the shard group replicated — its commit seq, which
 * every in-sync member holds and no failover takes back. */
uint64_t shard_feed_seq(shard *s);

/* Cluster mode: tally.h's tally_replica_* for this shard. */
void shard_replica_lead(shard *s, bool lead, uint32_t epoch);
void shard_replica_ack(shard *s, uint64_t seq);
void shard_replica_commit(shard *s, uint64_t seq);
void shard_replica_kick(shard *s);
void shard_replica_lag(shard *s, uint64_t records);
void shard_replica_expire(shard *s);
void shard_replica_append(shard *s, tally_replica_chunk *c);

/* Offline: checks the log chain, the state's consistency, and replays the
 * whole log into a fresh ledger in a temporary directory and compares it
 * with the stored state.  0 or TALLY_ECORRUPT with msg. */
int shard_verify_full(shard *s, char *msg, size_t cap);

/* For the offline tools. */
struct log_t;
struct ledger;
struct log_t *shard_log(shard *s);
struct ledger *shard_ledger(shard *s);

#endif
