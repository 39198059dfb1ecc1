/*
 * record.c — encode and decode the log record (byte table in record.h),
 * written as a pair.  Encode asserts every field is in range (a
 * programmer error otherwise); decode checks everything again, because
 * what it reads came from a disk.
 */
#include <assert.h>
#include <string.h>

#include "bytes.h"
#include "checksum.h"
#include "record.h"
#include "tally.h"

/* Format 1: 120 fixed bytes, ids up to 96 bytes, records up to 512. */
#define RECORD_V1_FIXED_BYTES 120
#define RECORD_V1_ID_BYTES_MAX 96
#define RECORD_V1_BYTES_MAX 512

static_assert(RECORD_FIXED_BYTES + 3 * LIMIT_ENGINE_ID_BYTES_MAX + 8 + 64 <=
                  LIMIT_RECORD_BYTES_MAX,
              "the largest entry still has room for a few allocations");
static_assert(LIMIT_MEMO_BYTES_MAX <= LIMIT_ENGINE_ID_BYTES_MAX, "memo room counted as an id's");
static_assert(RECORD_ALLOC_ROOM_MAX <= UINT16_MAX, "alloc_len is two bytes");

/* ---- size --------------------------------------------------------------- */

static size_t record_round(size_t body) { return ((body + 7) & ~(size_t)7) + 8; }

bool record_ends_write(const record *r)
{
    bool grouped = (r->rflags & RECORD_F_GROUP) && !(r->rflags & RECORD_F_GROUP_END);
    return !(r->rflags & RECORD_F_MORE) && !grouped;
}

size_t record_size(const record *r)
{
    return record_round(RECORD_FIXED_BYTES + r->id_len + r->ref_len + r->memo_len +
                        r->alloc_len);
}

size_t record_alloc_room(const record *r)
{
    size_t used = RECORD_FIXED_BYTES + r->id_len + r->ref_len + r->memo_len + 8;
    assert(used <= LIMIT_RECORD_BYTES_MAX);
    return LIMIT_RECORD_BYTES_MAX - used;
}

/* ---- allocations ---------------------------------------------------------- */

/* 0 and *v, *used; RECORD_BAD if it runs out or is longer than 10 bytes. */
static int record_varint_get(const uint8_t *p, size_t avail, uint64_t *v, size_t *used)
{
    *used = bytes_get_varint(p, avail, v);
    return *used ? 0 : RECORD_BAD;
}

static size_t record_alloc_encode(const record_alloc *a, uint8_t *out)
{
    assert(a->points > 0);
    assert((a->flags & ~RECORD_A_ALL_) == 0);
    size_t n = 0;
    out[n++] = a->flags;
    if (!(a->flags & RECORD_A_POOL)) {
        n += bytes_put_varint(out + n, a->seq);
        n += bytes_put_varint(out + n, a->expkey);
    }
    if (a->flags & RECORD_A_PENDING)
        n += bytes_put_varint(out + n, a->available_at);
    n += bytes_put_varint(out + n, (uint64_t)a->points);
    assert(n <= RECORD_ALLOC_BYTES_MAX);
    return n;
}

static int record_alloc_decode(const uint8_t *p, size_t avail, uint64_t rec_seq,
                               record_alloc *out, size_t *used)
{
    if (avail < 2 || (p[0] & ~RECORD_A_ALL_))
        return RECORD_BAD;
    record_alloc a = {.flags = p[0], .expkey = UINT64_MAX};
    size_t n = 1, u = 0;
    uint64_t v;
    if (!(a.flags & RECORD_A_POOL)) {
        if (record_varint_get(p + n, avail - n, &a.seq, &u) || a.seq > rec_seq)
            return RECORD_BAD;
        if (a.seq == 0)
            a.seq = rec_seq; /* the record's own lot (a transfer's receiver) */
        n += u;
        if (record_varint_get(p + n, avail - n, &a.expkey, &u))
            return RECORD_BAD;
        n += u;
    }
    if (a.flags & RECORD_A_PENDING) {
        if (record_varint_get(p + n, avail - n, &a.available_at, &u) || a.available_at == 0)
            return RECORD_BAD;
        n += u;
    }
    if (record_varint_get(p + n, avail - n, &v, &u) || v == 0 || v > (uint64_t)INT64_MAX)
        return RECORD_BAD;
    a.points = (int64_t)v;
    *out = a;
    *used = n + u;
    return 0;
}

bool record_alloc_add(record *r, const record_alloc *a)
{
    uint8_t buf[RECORD_ALLOC_BYTES_MAX];
    size_t n = record_alloc_encode(a, buf);
    if (r->alloc_len + n > record_alloc_room(r) || r->alloc_count == UINT16_MAX)
        return false;
    memcpy(r->alloc + r->alloc_len, buf, n);
    r->alloc_len = (uint16_t)(r->alloc_len + n);
    r->alloc_count++;
    return true;
}

int record_alloc_next(const record *r, size_t *pos, record_alloc *out)
{
    if (*pos >= r->alloc_len)
        return 0;
    size_t used;
    if (record_alloc_decode(r->alloc + *pos, r->alloc_len - *pos, r->seq, out, &used))
        return RECORD_BAD;
    *pos += used;
    return 1;
}

/* The list holds exactly alloc_count well-formed allocations. */
static bool record_allocs_valid(const record *r)
{
    size_t pos = 0;
    uint32_t n = 0;
    record_alloc a;
    int rc;
    while ((rc = record_alloc_next(r, &pos, &a)) == 1)
        n++;
    return rc == 0 && pos == r->alloc_len && n == r->alloc_count;
}

/* ---- encode ------------------------------------------------------------- */

static bool record_type_fields_ok(const record *r)
{
    switch (r->type) {
    case RECORD_ENTRY:
        return r->error == 0 && r->part == 0 && r->id_len >= 1;
    case RECORD_REFUSAL:
        return r->error != 0 && r->part == 0 && r->id_len >= 1 && r->alloc_count == 0;
    case RECORD_ALLOC:
        return r->error == 0 && r->part >= 1 && r->id_len == 0 && r->ref_len == 0 &&
               r->memo_len == 0 && r->alloc_count >= 1;
    default:
        return false;
    }
}

bool record_encodable(const record *r)
{
    return record_type_fields_ok(r) && r->kind > TALLY_KIND_NONE &&
           r->kind < TALLY_KIND_COUNT && r->id_len <= LIMIT_ENGINE_ID_BYTES_MAX &&
           r->ref_len <= LIMIT_ENGINE_ID_BYTES_MAX && r->memo_len <= LIMIT_MEMO_BYTES_MAX &&
           r->seq >= 1 && r->batch_back < r->seq && r->group_back < r->seq &&
           (r->rflags & ~RECORD_F_ALL_) == 0 &&
           (r->group_back == 0 || (r->rflags & RECORD_F_GROUP)) &&
           (!(r->rflags & RECORD_F_GROUP_END) || (r->rflags & RECORD_F_GROUP)) &&
           r->alloc_len <= record_alloc_room(r) && record_allocs_valid(r);
}

uint64_t record_encode(const record *r, uint8_t *out)
{
    assert(record_encodable(r));
    size_t len = record_size(r);
    memset(out, 0, len);
    bytes_put_le32(out + 0, (uint32_t)len);
    out[4] = r->type;
    out[5] = r->kind;
    out[6] = r->error;
    out[7] = r->reason;
    bytes_put_le64(out + 8, r->seq);
    bytes_put_le64(out + 16, r->ts_ms);
    bytes_put_le64(out + 24, r->prev);
    bytes_put_le32(out + 32, r->batch_back);
    bytes_put_le32(out + 36, r->group_back);
    bytes_put_le32(out + 40, r->epoch);
    bytes_put_le16(out + 44, r->part);
    bytes_put_le16(out + 46, r->rflags);
    bytes_put_le64(out + 48, r->merchant);
    bytes_put_le64(out + 56, r->account);
    bytes_put_le64(out + 64, r->account2);
    bytes_put_le64(out + 72, (uint64_t)r->req_points);
    bytes_put_le64(out + 80, r->expires);
    bytes_put_le64(out + 88, r->available_at);
    bytes_put_le32(out + 96, r->timeout_s);
    bytes_put_le32(out + 100, r->req_flags);
    bytes_put_le64(out + 104, (uint64_t)r->points);
    bytes_put_le64(out + 112, (uint64_t)r->amount);
    bytes_put_le64(out + 120, (uint64_t)r->balance);
    bytes_put_le64(out + 128, (uint64_t)r->held);
    bytes_put_le64(out + 136, (uint64_t)r->pending);
    bytes_put_le64(out + 144, r->acct_prev);
    bytes_put_le16(out + 152, r->alloc_count);
    bytes_put_le16(out + 154, r->alloc_len);
    out[156] = r->id_len;
    out[157] = r->ref_len;
    out[158] = r->memo_len;
    uint8_t *p = out + RECORD_FIXED_BYTES;
    memcpy(p, r->id, r->id_len);
    p += r->id_len;
    memcpy(p, r->ref, r->ref_len);
    p += r->ref_len;
    memcpy(p, r->memo, r->memo_len);
    p += r->memo_len;
    memcpy(p, r->alloc, r->alloc_len);
    uint64_t sum = checksum64(out, len - 8, 0);
    bytes_put_le64(out + len - 8, sum);
    return sum;
}

/* ---- decode ------------------------------------------------------------- */

/* The length checks every decoder shares: RECORD_OK and *len, or why not. */
static int record_frame(const uint8_t *buf, size_t avail, size_t fixed, size_t max,
                        uint32_t *len_out)
{
    if (avail < 4)
        return avail == 0 ? RECORD_END : RECORD_TRUNCATED;
    uint32_t len = bytes_get_le32(buf);
    if (len == 0)
        return RECORD_END;
    if (len % 8 != 0 || len < fixed + 8 || len > max)
        return RECORD_BAD;
    if (len > avail)
        return RECORD_TRUNCATED;
    *len_out = len;
    return RECORD_OK;
}

int record_peek_head_unchecked(const uint8_t *buf, size_t avail, record_head *out)
{
    uint32_t len;
    int rc = record_frame(buf, avail, RECORD_FIXED_BYTES, LIMIT_RECORD_BYTES_MAX, &len);
    if (rc != RECORD_OK)
        return rc;
    *out = (record_head){.len = len, .type = buf[4], .seq = bytes_get_le64(buf + 8),
                         .prev = bytes_get_le64(buf + 24), .part = bytes_get_le16(buf + 44),
                         .rflags = bytes_get_le16(buf + 46),
                         .merchant = bytes_get_le64(buf + 48),
                         .checksum = bytes_get_le64(buf + len - 8)};
    return RECORD_OK;
}

int record_peek_head(const uint8_t *buf, size_t avail, record_head *out)
{
    record_head h;
    int rc = record_peek_head_unchecked(buf, avail, &h);
    if (rc != RECORD_OK)
        return rc;
    if (checksum64(buf, h.len - 8, 0) != h.checksum)
        return RECORD_CHECKSUM;
    *out = h;
    return RECORD_OK;
}

int record_peek(const uint8_t *buf, size_t avail, size_t *len_out, uint64_t *seq_out,
                uint16_t *part_out)
{
    record_head h;
    int rc = record_peek_head(buf, avail, &h);
    if (rc != RECORD_OK)
        return rc;
    *len_out = h.len;
    *seq_out = h.seq;
    *part_out = h.part;
    return RECORD_OK;
}

/* Fields and body of a format-2 record whose frame and checksum passed. */
static int record_fields(const uint8_t *buf, uint32_t len, record *r)
{
    r->type = buf[4];
    r->kind = buf[5];
    r->error = buf[6];
    r->reason = buf[7];
    r->seq = bytes_get_le64(buf + 8);
    r->ts_ms = bytes_get_le64(buf + 16);
    r->prev = bytes_get_le64(buf + 24);
    r->batch_back = bytes_get_le32(buf + 32);
    r->group_back = bytes_get_le32(buf + 36);
    r->epoch = bytes_get_le32(buf + 40);
    r->part = bytes_get_le16(buf + 44);
    r->rflags = bytes_get_le16(buf + 46);
    r->merchant = bytes_get_le64(buf + 48);
    r->account = bytes_get_le64(buf + 56);
    r->account2 = bytes_get_le64(buf + 64);
    r->req_points = (int64_t)bytes_get_le64(buf + 72);
    r->expires = bytes_get_le64(buf + 80);
    r->available_at = bytes_get_le64(buf + 88);
    r->timeout_s = bytes_get_le32(buf + 96);
    r->req_flags = bytes_get_le32(buf + 100);
    r->points = (int64_t)bytes_get_le64(buf + 104);
    r->amount = (int64_t)bytes_get_le64(buf + 112);
    r->balance = (int64_t)bytes_get_le64(buf + 120);
    r->held = (int64_t)bytes_get_le64(buf + 128);
    r->pending = (int64_t)bytes_get_le64(buf + 136);
    r->acct_prev = bytes_get_le64(buf + 144);
    r->alloc_count = bytes_get_le16(buf + 152);
    r->alloc_len = bytes_get_le16(buf + 154);
    r->id_len = buf[156];
    r->ref_len = buf[157];
    r->memo_len = buf[158];
    if (buf[159] != 0 || r->id_len > LIMIT_ENGINE_ID_BYTES_MAX ||
        r->ref_len > LIMIT_ENGINE_ID_BYTES_MAX || r->memo_len > LIMIT_MEMO_BYTES_MAX)
        return RECORD_BAD;
    size_t body = RECORD_FIXED_BYTES + r->id_len + r->ref_len + r->memo_len + r->alloc_len;
    if (record_round(body) != len)
        return RECORD_BAD;
    for (size_t i = body; i < len - 8; i++)
        if (buf[i] != 0)
            return RECORD_BAD;
    const uint8_t *p = buf + RECORD_FIXED_BYTES;
    memcpy(r->id, p, r->id_len);
    p += r->id_len;
    memcpy(r->ref, p, r->ref_len);
    p += r->ref_len;
    memcpy(r->memo, p, r->memo_len);
    p += r->memo_len;
    memcpy(r->alloc, p, r->alloc_len);
    return RECORD_OK;
}

void record_copy(record *dst, const record *src)
{
    memcpy(dst, src, offsetof(record, id));
    memcpy(dst->id, src->id, src->id_len);
    memcpy(dst->ref, src->ref, src->ref_len);
    memcpy(dst->memo, src->memo, src->memo_len);
    memcpy(dst->alloc, src->alloc, src->alloc_len);
}

static int record_decode_as(const uint8_t *buf, size_t avail, record *out, size_t *len_out,
                            uint64_t *checksum_out, bool verify)
{
    uint32_t len;
    int rc = record_frame(buf, avail, RECORD_FIXED_BYTES, LIMIT_RECORD_BYTES_MAX, &len);
    if (rc != RECORD_OK)
        return rc;
    uint64_t sum = bytes_get_le64(buf + len - 8);
    if (verify && checksum64(buf, len - 8, 0) != sum)
        return RECORD_CHECKSUM;
    record r;
    memset(&r, 0, offsetof(record, id));
    if (record_fields(buf, len, &r) != RECORD_OK || !record_encodable(&r))
        return RECORD_BAD;
    record_copy(out, &r);
    *len_out = len;
    *checksum_out = sum;
    return RECORD_OK;
}

int record_decode(const uint8_t *buf, size_t avail, record *out, size_t *len_out,
                  uint64_t *checksum_out)
{
    return record_decode_as(buf, avail, out, len_out, checksum_out, true);
}

int record_decode_verified(const uint8_t *buf, size_t avail, record *out, size_t *len_out,
                           uint64_t *checksum_out)
{
    return record_decode_as(buf, avail, out, len_out, checksum_out, false);
}

/* ---- format 1 ------------------------------------------------------------------ */

int record_decode_v1(const uint8_t *buf, size_t avail, record *out, size_t *len_out,
                     uint64_t *checksum_out)
{
    uint32_t len;
    int rc = record_frame(buf, avail, RECORD_V1_FIXED_BYTES, RECORD_V1_BYTES_MAX, &len);
    if (rc != RECORD_OK)
        return rc;
    uint64_t sum = checksum64(buf, len - 8, 0);
    if (sum != bytes_get_le64(buf + len - 8))
        return RECORD_CHECKSUM;
    record r;
    memset(&r, 0, offsetof(record, id));
    r.type = buf[4];
    r.kind = buf[5];
    r.error = buf[6];
    r.reason = buf[7];
    r.id_len = buf[116];
    r.ref_len = buf[117];
    r.memo_len = buf[118];
    if ((r.type != RECORD_ENTRY && r.type != RECORD_REFUSAL) || r.kind == TALLY_KIND_NONE ||
        r.kind > TALLY_KIND_EXPIRE || buf[119] != 0 || r.id_len == 0 ||
        r.id_len > RECORD_V1_ID_BYTES_MAX || r.ref_len > RECORD_V1_ID_BYTES_MAX ||
        r.memo_len > LIMIT_MEMO_BYTES_MAX ||
        record_round(RECORD_V1_FIXED_BYTES + r.id_len + r.ref_len + r.memo_len) != len ||
        (r.type == RECORD_ENTRY) != (r.error == 0))
        return RECORD_BAD;
    size_t used = RECORD_V1_FIXED_BYTES + r.id_len + r.ref_len + r.memo_len;
    for (size_t i = used; i < len - 8; i++)
        if (buf[i] != 0)
            return RECORD_BAD;
    r.seq = bytes_get_le64(buf + 8);
    r.ts_ms = bytes_get_le64(buf + 16);
    r.prev = bytes_get_le64(buf + 24);
    uint64_t batch_seq = bytes_get_le64(buf + 32);
    r.merchant = bytes_get_le64(buf + 40);
    r.account = bytes_get_le64(buf + 48);
    r.req_points = (int64_t)bytes_get_le64(buf + 56);
    r.points = (int64_t)bytes_get_le64(buf + 64);
    r.balance = (int64_t)bytes_get_le64(buf + 72);
    r.held = (int64_t)bytes_get_le64(buf + 80);
    r.expires = bytes_get_le64(buf + 88);
    r.available_at = bytes_get_le64(buf + 96);
    uint64_t timeout = bytes_get_le64(buf + 104);
    r.req_flags = bytes_get_le32(buf + 112);
    if (r.seq == 0 || batch_seq == 0 || batch_seq > r.seq || r.seq - batch_seq > UINT32_MAX ||
        timeout > UINT32_MAX)
        return RECORD_BAD;
    r.timeout_s = (uint32_t)timeout;
    r.batch_back = (uint32_t)(r.seq - batch_seq);
    r.rflags = RECORD_F_LEGACY;
    const uint8_t *p = buf + RECORD_V1_FIXED_BYTES;
    memcpy(out, &r, offsetof(record, id));
    memcpy(out->id, p, r.id_len);
    memcpy(out->ref, p + r.id_len, r.ref_len);
    memcpy(out->memo, p + r.id_len + r.ref_len, r.memo_len);
    *len_out = len;
    *checksum_out = sum;
    return RECORD_OK;
}
