/*
 * record.c — encode and decode the log record (byte table in record.h),
 * written as a pair.  Encode asserts every field is in range (a
 * programmer error otherwise); decode checks everything again, because
 * what it reads came from a disk.
 */
#include <assert.h>
#include <string.h>

#include "checksum.h"
#include "record.h"
#include "tally.h"

/* ---- little-endian access ----------------------------------------------- */

static void record_put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t record_get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static void record_put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t record_get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* ---- size --------------------------------------------------------------- */

static size_t record_size_of(size_t id_len, size_t ref_len, size_t memo_len)
{
    size_t body = RECORD_FIXED_BYTES + id_len + ref_len + memo_len;
    return ((body + 7) & ~(size_t)7) + 8;
}

size_t record_size(const record *r)
{
    return record_size_of(r->id_len, r->ref_len, r->memo_len);
}

static_assert(RECORD_FIXED_BYTES + 2 * LIMIT_ENGINE_ID_BYTES_MAX + LIMIT_MEMO_BYTES_MAX + 16 <=
                  LIMIT_RECORD_BYTES_MAX,
              "the largest record fits LIMIT_RECORD_BYTES_MAX");

/* ---- encode ------------------------------------------------------------- */

bool record_encodable(const record *r)
{
    return (r->type == RECORD_ENTRY || r->type == RECORD_REFUSAL) &&
           r->kind > TALLY_KIND_NONE && r->kind < TALLY_KIND_COUNT && r->id_len >= 1 &&
           r->id_len <= LIMIT_ENGINE_ID_BYTES_MAX && r->ref_len <= LIMIT_ENGINE_ID_BYTES_MAX &&
           r->memo_len <= LIMIT_MEMO_BYTES_MAX && r->seq >= 1 &&
           /* What record_decode() refuses must never be written (fuzzing
            * found these two accepted by encode). */
           r->batch_seq >= 1 && r->batch_seq <= r->seq &&
           (r->type == RECORD_ENTRY) == (r->error == 0);
}

uint64_t record_encode(const record *r, uint8_t *out)
{
    assert(record_encodable(r));
    size_t len = record_size(r);
    memset(out, 0, len);
    record_put32(out + 0, (uint32_t)len);
    out[4] = r->type;
    out[5] = r->kind;
    out[6] = r->error;
    out[7] = r->reason;
    record_put64(out + 8, r->seq);
    record_put64(out + 16, r->ts_ms);
    record_put64(out + 24, r->prev);
    record_put64(out + 32, r->batch_seq);
    record_put64(out + 40, r->merchant);
    record_put64(out + 48, r->account);
    record_put64(out + 56, (uint64_t)r->amount);
    record_put64(out + 64, (uint64_t)r->points);
    record_put64(out + 72, (uint64_t)r->balance);
    record_put64(out + 80, (uint64_t)r->held);
    record_put64(out + 88, r->expires);
    record_put64(out + 96, r->available_at);
    record_put64(out + 104, r->timeout_s);
    record_put32(out + 112, r->flags);
    out[116] = r->id_len;
    out[117] = r->ref_len;
    out[118] = r->memo_len;
    uint8_t *p = out + RECORD_FIXED_BYTES;
    memcpy(p, r->id, r->id_len);
    memcpy(p + r->id_len, r->ref, r->ref_len);
    memcpy(p + r->id_len + r->ref_len, r->memo, r->memo_len);
    uint64_t sum = checksum64(out, len - 8, 0);
    record_put64(out + len - 8, sum);
    return sum;
}

/* ---- decode ------------------------------------------------------------- */

int record_decode(const uint8_t *buf, size_t avail, record *out, size_t *len_out,
                  uint64_t *checksum_out)
{
    if (avail < 4)
        return avail == 0 ? RECORD_END : RECORD_TRUNCATED;
    uint32_t len = record_get32(buf);
    if (len == 0)
        return RECORD_END;
    if (len % 8 != 0 || len < RECORD_FIXED_BYTES + 16 || len > LIMIT_RECORD_BYTES_MAX)
        return RECORD_BAD;
    if (len > avail)
        return RECORD_TRUNCATED;
    uint64_t sum = checksum64(buf, len - 8, 0);
    if (sum != record_get64(buf + len - 8))
        return RECORD_CHECKSUM;
    record r = {0};
    r.type = buf[4];
    r.kind = buf[5];
    r.error = buf[6];
    r.reason = buf[7];
    r.id_len = buf[116];
    r.ref_len = buf[117];
    r.memo_len = buf[118];
    if ((r.type != RECORD_ENTRY && r.type != RECORD_REFUSAL) || r.kind == TALLY_KIND_NONE ||
        r.kind >= TALLY_KIND_COUNT || buf[119] != 0 || r.id_len == 0 ||
        r.id_len > LIMIT_ENGINE_ID_BYTES_MAX || r.ref_len > LIMIT_ENGINE_ID_BYTES_MAX ||
        r.memo_len > LIMIT_MEMO_BYTES_MAX ||
        record_size_of(r.id_len, r.ref_len, r.memo_len) != len)
        return RECORD_BAD;
    if ((r.type == RECORD_ENTRY) != (r.error == 0))
        return RECORD_BAD;
    size_t used = RECORD_FIXED_BYTES + r.id_len + r.ref_len + r.memo_len;
    for (size_t i = used; i < len - 8; i++)
        if (buf[i] != 0)
            return RECORD_BAD;
    r.seq = record_get64(buf + 8);
    r.ts_ms = record_get64(buf + 16);
    r.prev = record_get64(buf + 24);
    r.batch_seq = record_get64(buf + 32);
    r.merchant = record_get64(buf + 40);
    r.account = record_get64(buf + 48);
    r.amount = (int64_t)record_get64(buf + 56);
    r.points = (int64_t)record_get64(buf + 64);
    r.balance = (int64_t)record_get64(buf + 72);
    r.held = (int64_t)record_get64(buf + 80);
    r.expires = record_get64(buf + 88);
    r.available_at = record_get64(buf + 96);
    r.timeout_s = record_get64(buf + 104);
    r.flags = record_get32(buf + 112);
    if (r.seq == 0 || r.batch_seq == 0 || r.batch_seq > r.seq)
        return RECORD_BAD;
    const uint8_t *p = buf + RECORD_FIXED_BYTES;
    memcpy(r.id, p, r.id_len);
    memcpy(r.ref, p + r.id_len, r.ref_len);
    memcpy(r.memo, p + r.id_len + r.ref_len, r.memo_len);
    *out = r;
    *len_out = len;
    *checksum_out = sum;
    return RECORD_OK;
}
