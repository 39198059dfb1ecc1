/*
 * log.h — one shard's append-only log: segment files of chained records,
 * written in batches (one write per segment touched + one flush each,
 * through the ring), read back through mmap.
 *
 * Segment file DIR/log-NNNNNNNNNN.seg (N = segment index from 1, 10
 * digits), preallocated to segment_bytes by writing zeros, so that a
 * batch's flush commits its data and nothing else (no size change, no
 * extent conversion; see log.c).  Layout (little-endian):
 *
 *   off  size  field
 *     0     8  magic "TALLYSEG"
 *     8     4  version (2; 1 is the first release's, read by upgrade.h only)
 *    12     4  shard index
 *    16     8  segment index
 *    24     8  first_seq  seq of the first record in this segment
 *    32     8  prev       checksum of the last record before it (0)
 *    40    16  reserved (0)
 *    56     8  XXH3-64 of bytes [0, 56)
 *    64     .  records (record.h), back to back; then zeros to the end
 *
 * A record never spans segments: when the next record does not fit, the
 * log continues in the next segment (the rest of this one stays zero).  A
 * batch may cross several segment boundaries.  Records follow each other
 * as (seq, part): an entry or refusal is (previous seq + 1, 0), an
 * allocation part (seq, part + 1).
 *
 * Recovery (log_open) scans from the segment holding `from_seq` + 1 to the
 * end, checking length, checksum and chain.  The first bad record (or a
 * segment that does not continue the chain) ends the valid log.  It is a
 * torn tail — never acknowledged, truncated (zeroed in place: files are
 * never shrunk under a mapping, and later segments removed) and reported —
 * when no valid record of a later batch follows it anywhere (only the last
 * batch can be partly on disk; a rollover writes the next segment's header
 * before that batch lands).  Otherwise it is corruption of acknowledged
 * data: the log opens refused (status TALLY_ECORRUPT, message names shard
 * and seq).  A group (RECORD_F_GROUP: a TRANSFER's two entries, an EXEC)
 * or an entry whose allocation parts did not all land is cut whole: the
 * valid log ends before its first record.
 *
 * Threads: one writer thread appends, seals, completes, retains and reads
 * through log_read / log_find / log_read_seq / log_read_next (which also
 * look into its unwritten batches, and its appended end); any other thread
 * reads durable records through the iterator only, concurrently with all
 * of that (a lock guards the segment table; the durable end is atomic).
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
    /* Cut the log before this seq (an import that did not commit,
     * tally.c); 0: nothing.  Records from it on are removed like a torn
     * tail, and must not be trusted (from_seq < cut_seq). */
    uint64_t cut_seq;
    /* What the cut is for, in the report ("an import that never
     * committed" when NULL). */
    const char *cut_reason;
    /* A log made here (no segments yet) starts at this seq, chained to
     * this checksum: a replica bootstrapped from its leader's snapshot
     * holds only the log after it (repl.h).  0: seq 1, prev 0. */
    uint64_t first_seq;
    uint64_t first_prev;
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
 * reported; appends are then refused.  Errors: -errno, TALLY_EFORMAT
 * (segments of another format: release 1's need upgrade.h first). */
int log_open(const log_options *opts, log_t **out, log_recovery *rec);
void log_close(log_t *l);

/* The format version of the segments in dir: 0 (none), 1 or 2; < 0 on
 * error.  For the upgrade check before log_open. */
int log_dir_version(const char *dir);

/* 0, TALLY_ECORRUPT (since open) or TALLY_EFAILED (a write or flush
 * failed: sticky until reopened). */
int log_status(const log_t *l);
uint64_t log_last_seq(const log_t *l);    /* appended, maybe not durable */
uint64_t log_durable_seq(const log_t *l); /* on stable storage (any thread) */
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

/* Appends r to the filling batch: assigns r->seq (last + 1; an
 * allocation part keeps the last seq with part + 1), r->ts_ms (not before
 * the last; with `keep_ts` r->ts_ms as given: imported entries), r->prev,
 * r->batch_back and, inside a group, the group fields; encodes it and
 * writes *loc.  Rolls to new segments when needed.  Errors: TALLY_EFAILED
 * / TALLY_ECORRUPT (status), TALLY_ETOOBIG (the batch reached
 * LIMIT_BATCH_BYTES_HARD or its segment limit: seal and submit first),
 * -errno from creating a segment (the log is then failed). */
int log_append(log_t *l, record *r, uint64_t ts_ms, log_loc *loc);
/* Imported entries keep their own ts_ms (not checked against the log's
 * time). */
int log_append_keep_ts(log_t *l, record *r, log_loc *loc);
/* Replication (repl.h): appends a record another log wrote, byte for
 * byte: buf[0, len) is its encoding and r what record_decode() made of
 * it (checksum checked by the caller).  It must continue this log — the
 * next seq (or the next allocation part of the last one) and r->prev the
 * checksum of the last record — else TALLY_ECORRUPT and nothing changes.
 * Its seq, time, batch and group fields are the writer's.  Otherwise as
 * log_append. */
int log_append_raw(log_t *l, const uint8_t *buf, size_t len, const record *r, log_loc *loc);

/* Groups: records appended between log_group_begin and log_group_end form
 * one group (RECORD_F_GROUP, group_back), the last marked
 * RECORD_F_GROUP_END; a group of one record is left a plain record.  A
 * group lies in one batch.  log_group_abort forgets an open group (its
 * records must have been dropped with the batch). */
void log_group_begin(log_t *l);
void log_group_end(log_t *l);
bool log_group_open(const log_t *l);

/* Where the appended log ends: its last record's seq, part and checksum
 * (writer thread). */
void log_tail(const log_t *l, uint64_t *seq, uint16_t *part, uint64_t *sum);
/* Whether record r (checksum-checked) may follow the record (seq, part)
 * whose checksum is sum: the next entry, or the next allocation part of
 * the same one, chained to it. */
bool log_follows(uint64_t seq, uint16_t part, uint64_t sum, const record *r);

/* Bytes and records in the filling batch. */
size_t log_batch_bytes(const log_t *l);
uint32_t log_batch_records(const log_t *l);
/* True if `bytes` more fit in the filling batch under
 * LIMIT_BATCH_BYTES_MAX (the soft limit the shard fills batches to). */
bool log_batch_room(const log_t *l, size_t bytes);

/* One write of a sealed batch. */
typedef struct log_io {
    int fd;
    const void *buf;
    size_t len;
    uint64_t off;
} log_io;

typedef struct log_batch {
    uint32_t count; /* writes: 0 (empty batch), 1 per segment touched */
    log_io io[LIMIT_BATCH_SEGMENTS_MAX + 1];
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

/* Seals the filling batch and writes it with plain synchronous writes and
 * flushes through the seam (offline tools: upgrade, import; no ring).
 * 0 or the first error (the log is then failed). */
int log_flush_sync(log_t *l);
/* The writes and flushes of a sealed batch, through the seam: 0 or the
 * first error, for log_complete.  Touches nothing of the log's but its
 * seam, so another thread may run it while the owner fills the next batch
 * (import's flushers). */
int log_write_sealed(const log_t *l, const log_batch *b);

/* ---- reading ----------------------------------------------------------- */

/* Reads the record at loc (from the mapping, or from a batch buffer if it
 * is not written yet: writer thread only).  Checks its checksum.  Errors:
 * TALLY_ECORRUPT, TALLY_ENOTFOUND (loc past the end), TALLY_EARCHIVED
 * (dropped by retention). */
int log_read(log_t *l, log_loc loc, record *out);

/* Where the record (seq, part 0) is, appended or durable (writer thread
 * only, like log_read).  A sparse index (every
 * LOG_SPARSE_EVERY-th seq's offset per segment) and a short forward
 * scan.  Errors: TALLY_ENOTFOUND (past the end), TALLY_EARCHIVED,
 * TALLY_ECORRUPT. */
#define LOG_SPARSE_EVERY 32
int log_find(log_t *l, uint64_t seq, log_loc *loc);
/* log_find + log_read; and the allocation parts after it (the caller
 * reads them with log_read_next). */
int log_read_seq(log_t *l, uint64_t seq, record *out, log_loc *loc);
/* The record right after the one at *loc (same segment or the next):
 * allocation parts of an entry.  *loc is advanced. */
int log_read_next(log_t *l, log_loc *loc, const record *cur, record *out);

typedef struct log_iter {
    log_t *log;
    uint32_t segment; /* index into the segment table at init; see log.c */
    uint32_t seg_index;
    uint64_t offset;
    uint64_t prev;
    uint64_t end_seq;
    uint64_t last_seq;
    uint16_t last_part;
    bool check_chain;
    bool scanned; /* log_iter_scanned */
} log_iter;

/* Iterates records with seq > after_seq up to log_durable_seq() as of the
 * call (or, for a corrupt log, up to the last valid record), checking the
 * chain from the first record it returns.  Any thread.  TALLY_EARCHIVED
 * if records after after_seq were dropped by retention. */
int log_iter_init(log_t *l, uint64_t after_seq, log_iter *it);
/* 1 and *r, *loc: a record; 0: end; TALLY_ECORRUPT: a bad record;
 * TALLY_EARCHIVED: retention dropped the segment meanwhile. */
int log_iter_next(log_iter *it, record *r, log_loc *loc);
/* For the replay that follows log_open at once: records the open's
 * recovery scan read take their checksums as verified (every other check
 * is made).  Nothing else may use it: a record damaged since the open
 * would pass. */
static inline void log_iter_scanned(log_iter *it) { it->scanned = true; }
/* For feeds (FOLLOW): the next entry (type RECORD_ENTRY, part 0) of
 * `merchant` (0: of any merchant), any thread.  Other records are checked
 * (length, checksum, chain) without being decoded, each taking one of
 * *budget: 0 when the budget is spent or at the end (*budget says which),
 * so one call does bounded work.  it->last_seq is how far it looked:
 * every record up to it has been seen.  Errors as log_iter_next. */
int log_iter_next_entry(log_iter *it, uint64_t merchant, uint32_t *budget, record *r,
                        log_loc *loc);
/* The next record's head only (record_peek_head: length, checksum and
 * chain checked, the body not decoded): 1 and *h, 0 at the end, errors
 * as log_iter_next.  For reading back what was written (tally import). */
int log_iter_next_head(log_iter *it, record_head *h);
/* log_iter_next that also copies the record's bytes as they are on disk
 * into raw[0, *raw_len) (raw holds LIMIT_RECORD_BYTES_MAX): what a
 * leader ships to its replicas. */
int log_iter_next_raw(log_iter *it, record *r, uint8_t *raw, size_t *raw_len);

/* The checksum of the durable record (seq, part 0) (what the record after
 * it chains to, if it has no allocation parts): a replica and its leader
 * compare them to find where their logs part (the chain makes equal
 * checksums mean equal logs up to there).  Any thread.  TALLY_ENOTFOUND,
 * TALLY_EARCHIVED, TALLY_ECORRUPT. */
int log_checksum_at(log_t *l, uint64_t seq, uint64_t *sum);

#endif
