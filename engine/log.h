/*
 * log.h — one shard's append-only log: segment files of chained records,
 * written in batches (one write + one flush each, through the ring), read
 * back through mmap.
 *
 * Segment file DIR/log-NNNNNNNNNN.seg (N = segment index from 1, 10
 * digits), preallocated to segment_bytes by writing zeros, so that a
 * batch's flush commits its data and nothing else (no size change, no
 * extent conversion; see log.c).  Layout (little-endian):
 *
 *   off  size  field
 *     0     8  magic "TALLYSEG"
 *     8     4  version (1)
 *    12     4  shard index
 *    16     8  segment index
 *    24     8  first_seq  seq of the first record in this segment
 *    32     8  prev       checksum of the last record before it (0)
 *    40    16  reserved (0)
 *    56     8  XXH3-64 of bytes [0, 56)
 *    64     .  records (record.h), back to back; then zeros to the end
 *
 * A record never spans segments: when the next record does not fit, the
 * log continues in the next segment (the rest of this one stays zero).
 *
 * Recovery (log_open) scans from the segment holding `from_seq` + 1 to the
 * end, checking length, checksum and chain.  The first bad record ends the
 * valid log.  It is a torn tail — never acknowledged, truncated (zeroed in
 * place: files are never shrunk under a mapping) and reported — when it is
 * in the last segment and no valid record of a later batch follows it
 * (record.batch_seq > the bad position's seq: only the last batch can be
 * partly on disk).  Otherwise it is corruption of acknowledged data: the
 * log opens refused (status TALLY_ECORRUPT, message names shard and seq).
 */
#ifndef TALLY_LOG_H
#define TALLY_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "os.h"
#include "record.h"
#include "tally.h"

/* Where a record lives: segment index << 32 | byte offset / 8. */
typedef uint64_t log_loc;

typedef struct log_t log_t;

typedef struct log_options {
    const char *dir;    /* the shard's directory, created by the caller */
    uint32_t shard;     /* written into segment headers, checked on open */
    uint32_t segment_bytes; /* 0 = LIMIT_SEGMENT_BYTES_DEFAULT */
    const os_ops *os;   /* NULL = os_default() */
    bool read_only;     /* open without truncating or writing */
    uint64_t from_seq;  /* records up to this seq are trusted (checkpoint) */
    tally_log_fn log;   /* progress and reports; NULL = silent */
    void *log_ctx;
} log_options;

typedef struct log_recovery {
    uint64_t last_seq;     /* last valid record (0 = empty log) */
    uint64_t last_ts_ms;
    uint64_t scanned;      /* records checked by this open */
    uint64_t torn_bytes;   /* bytes zeroed as a torn tail */
    uint64_t torn_seq;     /* seq the torn record would have had */
    int status;            /* 0 or TALLY_ECORRUPT */
    char message[200];     /* what was found, for logs and VERIFY */
} log_recovery;

/* Opens (creating segment 1 if none) and recovers the log.  A corrupt log
 * still opens (status in *rec and log_status()) so that it can be read and
 * reported; appends are then refused.  Errors: -errno, TALLY_EFORMAT. */
int log_open(const log_options *opts, log_t **out, log_recovery *rec);
void log_close(log_t *l);

/* 0, TALLY_ECORRUPT (since open) or TALLY_EFAILED (a write or flush
 * failed: sticky until reopened). */
int log_status(const log_t *l);
uint64_t log_last_seq(const log_t *l);    /* appended, maybe not durable */
uint64_t log_durable_seq(const log_t *l); /* on stable storage */
uint64_t log_bytes(const log_t *l);       /* bytes of records written */
/* First seq of the retained log: 1 unless retention dropped segments. */
uint64_t log_first_seq(const log_t *l);

/* Retention (snapshot.h): drops every segment whose records all have
 * seq <= seq, except segments the log still writes or a batch still uses;
 * deleted, or moved into archive_dir/shard-NNN/ (any filesystem) when
 * archive_dir is given.  Their records then read as TALLY_EARCHIVED.
 * *dropped: how many segments went.  Errors: -errno (the log stays
 * usable: a segment is forgotten only after its file is gone or moved). */
int log_retain(log_t *l, uint64_t seq, const char *archive_dir, uint32_t *dropped);

/* ---- writing: the filling batch ---------------------------------------- */

/* Appends r to the filling batch: assigns r->seq (last + 1), r->ts_ms,
 * r->prev and r->batch_seq, encodes it and writes *loc.  Rolls to a new
 * segment when needed.  Errors: TALLY_EFAILED / TALLY_ECORRUPT (status),
 * TALLY_ETOOBIG (batch buffer full: seal and submit first), -errno from
 * creating a segment (the log is then failed). */
int log_append(log_t *l, record *r, uint64_t ts_ms, log_loc *loc);

/* Bytes and records in the filling batch. */
size_t log_batch_bytes(const log_t *l);
uint32_t log_batch_records(const log_t *l);
/* True if a record of `bytes` fits in the filling batch. */
bool log_batch_room(const log_t *l, size_t bytes);

/* One write of a sealed batch (a batch that crossed into a new segment has
 * two). */
typedef struct log_io {
    int fd;
    const void *buf;
    size_t len;
    uint64_t off;
} log_io;

typedef struct log_batch {
    uint32_t count;     /* writes: 0 (empty batch), 1 or 2 */
    log_io io[2];
    uint64_t first_seq, last_seq;
} log_batch;

/* Closes the filling batch and hands out its writes; a new filling batch
 * starts in the other buffer.  At most one batch may be sealed and not yet
 * completed at a time (asserted). */
void log_seal(log_t *l, log_batch *out);

/* Reports the outcome of the sealed batch: res 0 makes it durable; res < 0
 * fails the log (sticky, TALLY_EFAILED), discards the filling batch and
 * keeps log_durable_seq() where it was. */
void log_complete(log_t *l, int res);

/* After a failure: forgets every record after log_durable_seq() so that
 * reads and iteration see only durable data. */
void log_discard(log_t *l);

/* ---- reading ----------------------------------------------------------- */

/* Reads the record at loc (from the mapping, or from a batch buffer if it
 * is not written yet).  Checks its checksum.  Errors: TALLY_ECORRUPT,
 * TALLY_ENOTFOUND (loc past the end), TALLY_EARCHIVED (dropped by
 * retention). */
int log_read(log_t *l, log_loc loc, record *out);

typedef struct log_iter {
    log_t *log;
    uint32_t segment;
    uint64_t offset;
    uint64_t prev;
    uint64_t end_seq;
} log_iter;

/* Iterates records with seq > after_seq up to log_durable_seq() (or, for a
 * corrupt log, up to the last valid record), checking the chain.
 * TALLY_EARCHIVED if records after after_seq were dropped by retention. */
int log_iter_init(log_t *l, uint64_t after_seq, log_iter *it);
/* 1 and *r, *loc: a record; 0: end; TALLY_ECORRUPT: a bad record. */
int log_iter_next(log_iter *it, record *r, log_loc *loc);

#endif
