/*
 * record.h — the log record: the one on-disk format of a ledger entry.
 *
 * Every record is self-checking (its own XXH3-64 over all bytes before the
 * checksum) and chained (it carries the checksum of the record before it,
 * so a removed, reordered or replayed record breaks the chain: a tally
 * stick).  All integers little-endian.  Format version 1.
 *
 *   off  size  field
 *     0     4  len        total bytes incl. checksum; multiple of 8;
 *                         RECORD_FIXED_BYTES+8 .. LIMIT_RECORD_BYTES_MAX
 *     4     1  type       RECORD_ENTRY (1) or RECORD_REFUSAL (2)
 *     5     1  kind       enum tally_kind (refusal: kind of the refused write)
 *     6     1  error      refusal: -(code - TALLY_EBASE), 1..; entry: 0
 *     7     1  reason     refusal: message index (ledger's table); else 0
 *     8     8  seq        position in the shard's log, +1 per record
 *    16     8  ts_ms      engine time, non-decreasing
 *    24     8  prev       checksum of the previous record (0 for the first)
 *    32     8  batch_seq  seq of the first record of this record's batch
 *    40     8  merchant
 *    48     8  account
 *    56     8  amount     the request's amount as given (ADJUST: signed;
 *                         CAPTURE/REVERSE: POINTS n or 0)
 *    64     8  points     signed change to available
 *    72     8  balance    available after
 *    80     8  held       held after
 *    88     8  expires    unix s, 0 = never
 *    96     8  available_at  unix s, 0 = none
 *   104     8  timeout_s  HOLD timeout
 *   112     4  flags      TALLY_REQ_* of the request
 *   116     1  id_len     1..LIMIT_ENGINE_ID_BYTES_MAX
 *   117     1  ref_len
 *   118     1  memo_len
 *   119     1  reserved   0
 *   120     .  id, ref, memo bytes, then zeros up to len-8
 * len-8     8  checksum   XXH3-64 of bytes [0, len-8), seed 0
 */
#ifndef TALLY_RECORD_H
#define TALLY_RECORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "limits.h"

#define RECORD_VERSION 1
#define RECORD_FIXED_BYTES 120

enum { RECORD_ENTRY = 1, RECORD_REFUSAL = 2 };

/* Decode results (positive: not errors of the engine, facts of a scan). */
enum {
    RECORD_OK = 0,
    RECORD_END = 1,      /* len field is 0: end of written data */
    RECORD_TRUNCATED = 2, /* len larger than the bytes available */
    RECORD_BAD = 3,       /* len or a field out of range */
    RECORD_CHECKSUM = 4,  /* checksum does not match the bytes */
};

typedef struct record {
    uint8_t type;
    uint8_t kind;
    uint8_t error;
    uint8_t reason;
    uint64_t seq;
    uint64_t ts_ms;
    uint64_t prev;
    uint64_t batch_seq;
    uint64_t merchant;
    uint64_t account;
    int64_t amount;
    int64_t points;
    int64_t balance;
    int64_t held;
    uint64_t expires;
    uint64_t available_at;
    uint64_t timeout_s;
    uint32_t flags;
    uint8_t id_len;
    uint8_t ref_len;
    uint8_t memo_len;
    char id[LIMIT_ENGINE_ID_BYTES_MAX];
    char ref[LIMIT_ENGINE_ID_BYTES_MAX];
    char memo[LIMIT_MEMO_BYTES_MAX];
} record;

/* Encoded size of r in bytes (multiple of 8, <= LIMIT_RECORD_BYTES_MAX). */
size_t record_size(const record *r);

/* Writes r (with r->prev, r->seq... as set) into out, which has
 * record_size(r) bytes.  Returns the record's checksum (the next record's
 * prev).  Asserts record_encodable(r). */
uint64_t record_encode(const record *r, uint8_t *out);
/* Whether r's fields are in range for record_encode: everything
 * record_decode() would accept back. */
bool record_encodable(const record *r);

/* Decodes the record at buf (avail bytes readable).  Checks len bounds and
 * alignment, field ranges and the checksum; does not check the chain
 * (compare out->prev yourself).  On RECORD_OK writes *out, *len_out and
 * *checksum_out; otherwise writes nothing. */
int record_decode(const uint8_t *buf, size_t avail, record *out, size_t *len_out,
                  uint64_t *checksum_out);

#endif
