/*
 * record.h — the log record: the one on-disk format of a ledger entry.
 *
 * Every record is self-checking (its own XXH3-64 over all bytes before the
 * checksum) and chained (it carries the checksum of the record before it,
 * so a removed, reordered or replayed record breaks the chain: a tally
 * stick).  All integers little-endian.  Format version 2 (segment header
 * version 2, log.h); version 1 is read only to upgrade it (upgrade.h).
 *
 *   off  size  field
 *     0     4  len          total bytes incl. checksum; multiple of 8;
 *                           RECORD_FIXED_BYTES+8 .. LIMIT_RECORD_BYTES_MAX
 *     4     1  type         RECORD_ENTRY (1), RECORD_REFUSAL (2) or
 *                           RECORD_ALLOC (3): more allocations of the entry
 *                           with the same seq
 *     5     1  kind         enum tally_kind (refusal: kind of the refused write)
 *     6     1  error        refusal: -(code - TALLY_EBASE), 1..; else 0
 *     7     1  reason       refusal: message index (ledger's table); else 0
 *     8     8  seq          position in the shard's log: +1 per entry or
 *                           refusal; allocation parts share their entry's
 *     16    8  ts_ms        engine time (imported entries: their own)
 *     24    8  prev         checksum of the previous record (0 for the first)
 *     32    4  batch_back   seq - seq of the first record of the batch
 *     36    4  group_back   seq - seq of the first record of the group
 *                           (RECORD_F_GROUP), else 0
 *     40    4  epoch        the leader's epoch that wrote it (0 standalone)
 *     44    2  part         0; allocation parts 1, 2, …
 *     46    2  rflags       RECORD_F_*
 *     48    8  merchant
 *     56    8  account
 *     64    8  account2     TRANSFER: the other account; else 0
 *     72    8  req_points   the request's amount as given (ADJUST signed;
 *                           CAPTURE/REVERSE: POINTS n or 0; TRANSFER: points
 *                           or 0 for ALL)
 *     80    8  expires      unix s, 0 = never
 *     88    8  available_at unix s, 0 = none
 *     96    4  timeout_s    HOLD TIMEOUT as given
 *    100    4  req_flags    TALLY_REQ_* of the request
 *    104    8  points       signed change to available
 *    112    8  amount       the operation's own size (earned, redeemed, held,
 *                           captured, released, reversed, expired,
 *                           transferred, made available)
 *    120    8  balance      available after
 *    128    8  held         held after
 *    136    8  pending      pending after
 *    144    8  acct_prev    seq of the account's previous entry (0: none):
 *                           an account's history is a chain through the log
 *    152    2  alloc_count  allocations in this record
 *    154    2  alloc_len    their bytes
 *    156    1  id_len       1..LIMIT_ENGINE_ID_BYTES_MAX (allocation parts: 0)
 *    157    1  ref_len
 *    158    1  memo_len
 *    159    1  reserved     0
 *    160     .  id, ref, memo, allocations; zeros up to len-8
 *  len-8    8  checksum     XXH3-64 of bytes [0, len-8), seed 0
 *
 * An allocation names a lot and the points taken from (or given to) it:
 *   1 byte flags (RECORD_A_POOL: the account's never-expiring pool, no
 *   seq or expiry follow; RECORD_A_PENDING: available_at follows),
 *   varint seq of the lot's entry (0: this record's own — a transfer's
 *   received lots), varint expiry (unix s, 2^64-1 never), [varint
 *   available_at], varint points (> 0).  LEB128 varints.
 * Debits (REDEEM, HOLD, CAPTURE's kept part, negative ADJUST, TRANSFER's
 * sender) list the lots they took, soonest-expiring first; a TRANSFER's
 * receiver lists the lots it received (seq delta 0: they are its own).
 * Allocations that do not fit the entry continue in RECORD_ALLOC parts
 * right after it (RECORD_F_MORE on every part but the last).
 */
#ifndef TALLY_RECORD_H
#define TALLY_RECORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "limits.h"

#define RECORD_VERSION 2
#define RECORD_FIXED_BYTES 160

enum { RECORD_ENTRY = 1, RECORD_REFUSAL = 2, RECORD_ALLOC = 3 };

/* rflags. */
enum {
    RECORD_F_GROUP = 1u << 0,     /* one of several records written as one */
    RECORD_F_GROUP_END = 1u << 1, /* the last record of its group */
    RECORD_F_MORE = 1u << 2,      /* allocation parts follow */
    RECORD_F_IMPORTED = 1u << 3,  /* loaded by `tally import` */
    RECORD_F_LEGACY = 1u << 4,    /* converted from format 1 (upgrade.h) */
    RECORD_F_ALL_ = 0x1f,
};

/* Allocation flags. */
enum { RECORD_A_POOL = 1u << 0, RECORD_A_PENDING = 1u << 1, RECORD_A_ALL_ = 3 };

/* Decode results (positive: not errors of the engine, facts of a scan). */
enum {
    RECORD_OK = 0,
    RECORD_END = 1,       /* len field is 0: end of written data */
    RECORD_TRUNCATED = 2, /* len larger than the bytes available */
    RECORD_BAD = 3,       /* len or a field out of range */
    RECORD_CHECKSUM = 4,  /* checksum does not match the bytes */
};

/* Room for allocations in one record (the most any record can hold). */
#define RECORD_ALLOC_ROOM_MAX (LIMIT_RECORD_BYTES_MAX - RECORD_FIXED_BYTES - 8)
/* The most bytes one encoded allocation takes. */
#define RECORD_ALLOC_BYTES_MAX 41

typedef struct record {
    uint8_t type;
    uint8_t kind;
    uint8_t error;
    uint8_t reason;
    uint64_t seq;
    uint64_t ts_ms;
    uint64_t prev;
    uint32_t batch_back;
    uint32_t group_back;
    uint32_t epoch;
    uint16_t part;
    uint16_t rflags;
    uint64_t merchant;
    uint64_t account;
    uint64_t account2;
    int64_t req_points;
    uint64_t expires;
    uint64_t available_at;
    uint32_t timeout_s;
    uint32_t req_flags;
    int64_t points;
    int64_t amount;
    int64_t balance;
    int64_t held;
    int64_t pending;
    uint64_t acct_prev;
    uint16_t alloc_count;
    uint16_t alloc_len;
    uint8_t id_len;
    uint8_t ref_len;
    uint8_t memo_len;
    char id[LIMIT_ENGINE_ID_BYTES_MAX];
    char ref[LIMIT_ENGINE_ID_BYTES_MAX];
    char memo[LIMIT_MEMO_BYTES_MAX];
    uint8_t alloc[RECORD_ALLOC_ROOM_MAX];
} record;

/* One allocation, decoded. */
typedef struct record_alloc {
    uint8_t flags;         /* RECORD_A_* */
    uint64_t seq;          /* the lot's seq (0 for the pool; encode 0 for "this
                            * record's", which decodes as the record's seq) */
    uint64_t expkey;       /* its expiry, UINT64_MAX = never */
    uint64_t available_at; /* RECORD_A_PENDING: when it becomes spendable */
    int64_t points;        /* > 0 */
} record_alloc;

/* Whether a write's records end with r: no allocation part follows it
 * and it closes its group, if it is in one (replication cuts its
 * messages there). */
bool record_ends_write(const record *r);

/* Encoded size of r in bytes (multiple of 8, <= LIMIT_RECORD_BYTES_MAX). */
size_t record_size(const record *r);
/* Bytes of allocations a record with these lengths can still take. */
size_t record_alloc_room(const record *r);

/* Writes r (with r->prev, r->seq... as set) into out, which has
 * record_size(r) bytes.  Returns the record's checksum (the next record's
 * prev).  Asserts record_encodable(r). */
uint64_t record_encode(const record *r, uint8_t *out);
/* Whether r's fields are in range for record_encode: everything
 * record_decode() would accept back. */
bool record_encodable(const record *r);

/* Copies a record's fields and the bytes its lengths use (a struct copy
 * would move the whole id, ref, memo and allocation room). */
void record_copy(record *dst, const record *src);

/* Decodes the record at buf (avail bytes readable).  Checks len bounds and
 * alignment, field ranges, the allocation list and the checksum; does not
 * check the chain (compare out->prev yourself).  On RECORD_OK writes
 * *out, *len_out and *checksum_out; otherwise writes nothing. */
int record_decode(const uint8_t *buf, size_t avail, record *out, size_t *len_out,
                  uint64_t *checksum_out);
/* record_decode of a record whose checksum the caller verified a moment ago
 * (the log's recovery scan): the stored checksum is taken as it is, every
 * other check made. */
int record_decode_verified(const uint8_t *buf, size_t avail, record *out, size_t *len_out,
                           uint64_t *checksum_out);
/* Only the length and checksum of the record at buf (RECORD_OK, _END,
 * _TRUNCATED, _BAD, _CHECKSUM) and its seq and part: for scans that
 * skip records. */
int record_peek(const uint8_t *buf, size_t avail, size_t *len_out, uint64_t *seq_out,
                uint16_t *part_out);

/* What a scan that skips most records needs of one (a feed looking for
 * one merchant's entries): its length, type, seq, part, flags, merchant,
 * its chain link and its own checksum, after checking the length and the
 * checksum (same results as record_peek). */
typedef struct record_head {
    size_t len;
    uint8_t type;
    uint16_t part;
    uint16_t rflags;
    uint64_t seq;
    uint64_t prev;
    uint64_t merchant;
    uint64_t checksum; /* the next record's prev */
} record_head;
int record_peek_head(const uint8_t *buf, size_t avail, record_head *out);
/* record_peek_head without the checksum (the frame is checked; checksum is
 * the one the record carries): for walking past records to one that is
 * then decoded, which checks its own.  What it reads of a damaged record
 * may be wrong: a caller that did not find what it walked to walks again
 * with record_peek_head before saying so. */
int record_peek_head_unchecked(const uint8_t *buf, size_t avail, record_head *out);

/* Appends one allocation to r's list if it fits (r->alloc_len +
 * encoded size <= record_alloc_room(r)): true, else false and r unchanged.
 * a->seq must be <= r->seq (a lot is never newer than the record; decode
 * checks it). */
bool record_alloc_add(record *r, const record_alloc *a);
/* Iterates r's allocations: *pos starts at 0; 1 and *out: one; 0: end;
 * RECORD_BAD: malformed (record_decode already rejects that). */
int record_alloc_next(const record *r, size_t *pos, record_alloc *out);

/* ---- format 1 (upgrade only) ---------------------------------------------- */

/* Decodes a format-1 record (the byte table of release 1: 120 fixed
 * bytes) into the format-2 struct: fields format 1 did not have are 0,
 * batch_back is derived from its batch_seq, and RECORD_F_LEGACY is set.
 * Same results as record_decode. */
int record_decode_v1(const uint8_t *buf, size_t avail, record *out, size_t *len_out,
                     uint64_t *checksum_out);

#endif
