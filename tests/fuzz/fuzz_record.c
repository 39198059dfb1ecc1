/*
 * fuzz_record.c — libFuzzer target for the log record decoder,
 * record_decode() in engine/record.c (byte table in record.h).
 *
 * The input is the bytes found at some log offset.  Three views of it are
 * decoded:
 *   1. as given (almost never a valid checksum: exercises the len checks);
 *   2. with the checksum at len-8 recomputed over [0, len-8) (XXH3-64,
 *      checksum64), so the field checks behind the checksum are reached;
 *   3. additionally with len rewritten to the size the id/ref/memo lengths
 *      imply, so that mutations of the fields reach RECORD_OK often.
 * Each decode must return RECORD_OK/END/TRUNCATED/BAD/CHECKSUM and must
 * write nothing unless RECORD_OK.  On RECORD_OK the record must be within
 * the ranges record_encode() asserts, re-encoding it must reproduce the
 * same bytes and checksum (encode and decode are a pair), and decoding the
 * re-encoding must give the same fields.
 *
 * Seeds: tests/fuzz/corpus/record/.  They were written by this file built
 * with -DFUZZ_RECORD_SEEDS (a main() instead of the fuzzer entry):
 *   cc -std=c11 -D_GNU_SOURCE -DFUZZ_RECORD_SEEDS -Iengine tests/fuzz/fuzz_record.c \
 *      engine/record.c engine/checksum.c -o /tmp/seeds && /tmp/seeds tests/fuzz/corpus/record
 */
#include <assert.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checksum.h"
#include "record.h"
#include "tally.h"

/* ---- little-endian helpers (the byte table's, not record.c's) ----------- */

static uint32_t fuzz_get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void fuzz_put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void fuzz_put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* ---- the pair property -------------------------------------------------- */

static uint16_t fuzz_get16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

/* Every field of the format (record.h's byte table, version 2). */
static void fuzz_same_record(const record *a, const record *b)
{
    assert(a->type == b->type && a->kind == b->kind);
    assert(a->error == b->error && a->reason == b->reason);
    assert(a->seq == b->seq && a->ts_ms == b->ts_ms && a->prev == b->prev);
    assert(a->batch_back == b->batch_back && a->group_back == b->group_back);
    assert(a->epoch == b->epoch && a->part == b->part && a->rflags == b->rflags);
    assert(a->merchant == b->merchant && a->account == b->account);
    assert(a->account2 == b->account2 && a->req_points == b->req_points);
    assert(a->expires == b->expires && a->available_at == b->available_at);
    assert(a->timeout_s == b->timeout_s && a->req_flags == b->req_flags);
    assert(a->amount == b->amount && a->points == b->points);
    assert(a->balance == b->balance && a->held == b->held && a->pending == b->pending);
    assert(a->acct_prev == b->acct_prev);
    assert(a->alloc_count == b->alloc_count && a->alloc_len == b->alloc_len);
    assert(a->id_len == b->id_len && a->ref_len == b->ref_len && a->memo_len == b->memo_len);
    assert(memcmp(a->id, b->id, a->id_len) == 0);
    assert(memcmp(a->ref, b->ref, a->ref_len) == 0);
    assert(memcmp(a->memo, b->memo, a->memo_len) == 0);
    assert(memcmp(a->alloc, b->alloc, a->alloc_len) == 0);
}

/* What record_encode() asserts, checked here so a decoded record that
 * breaks it is reported as this invariant rather than as encode's abort. */
static void fuzz_encodable(const record *r) { assert(record_encodable(r)); }

static void fuzz_decode(const uint8_t *buf, size_t avail)
{
    record r, untouched;
    memset(&r, 0xa5, sizeof(r));
    memcpy(&untouched, &r, sizeof(r));
    size_t len = 0x5a5a;
    uint64_t sum = 0x5a5a5a5a;
    int rc = record_decode(buf, avail, &r, &len, &sum);
    assert(rc == RECORD_OK || rc == RECORD_END || rc == RECORD_TRUNCATED || rc == RECORD_BAD ||
           rc == RECORD_CHECKSUM);
    if (rc != RECORD_OK) {
        assert(memcmp(&r, &untouched, sizeof(r)) == 0);
        assert(len == 0x5a5a && sum == 0x5a5a5a5a);
        return;
    }
    assert(len >= RECORD_FIXED_BYTES + 16 && len <= LIMIT_RECORD_BYTES_MAX);
    assert(len % 8 == 0 && len <= avail);
    assert(fuzz_get32(buf) == len);
    assert(record_size(&r) == len);
    assert(checksum64(buf, len - 8, 0) == sum);
    fuzz_encodable(&r);

    uint8_t out[LIMIT_RECORD_BYTES_MAX];
    uint64_t sum2 = record_encode(&r, out);
    assert(sum2 == sum);
    assert(memcmp(out, buf, len) == 0);

    record back;
    size_t len2 = 0;
    uint64_t sum3 = 0;
    assert(record_decode(out, len, &back, &len2, &sum3) == RECORD_OK);
    assert(len2 == len && sum3 == sum);
    fuzz_same_record(&r, &back);
}

/* ---- the target --------------------------------------------------------- */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* An exact-size copy: a read past avail is a heap overflow.  (calloc:
     * an empty input is still an initialized byte to the compiler.) */
    uint8_t *buf = calloc(size ? size : 1, 1);
    assert(buf != NULL);
    if (size > 0)
        memcpy(buf, data, size);
    fuzz_decode(buf, size);
    if (size < 8) {
        free(buf);
        return 0;
    }
    uint32_t len = fuzz_get32(buf);
    if (len >= 8 && len % 8 == 0 && len <= size) {
        fuzz_put64(buf + len - 8, checksum64(buf, len - 8, 0));
        fuzz_decode(buf, size);
    }
    if (size >= RECORD_FIXED_BYTES) {
        /* id_len, ref_len, memo_len and alloc_len say how long it is. */
        size_t body = (size_t)RECORD_FIXED_BYTES + buf[156] + buf[157] + buf[158] +
                      fuzz_get16(buf + 154);
        size_t want = ((body + 7) & ~(size_t)7) + 8;
        if (want <= size) {
            fuzz_put32(buf, (uint32_t)want);
            fuzz_put64(buf + want - 8, checksum64(buf, want - 8, 0));
            fuzz_decode(buf, size);
            /* The same record with nothing after it, and cut short. */
            fuzz_decode(buf, want);
            fuzz_decode(buf, want - 1);
        }
    }
    free(buf);
    return 0;
}

/* ---- seed generator ----------------------------------------------------- */

#ifdef FUZZ_RECORD_SEEDS
static void seed_write(const char *dir, const char *name, const uint8_t *b, size_t n)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    assert(f != NULL);
    assert(fwrite(b, 1, n, f) == n);
    fclose(f);
}

static size_t seed_encode(const record *r, uint8_t *out)
{
    record_encode(r, out);
    return record_size(r);
}

int main(int argc, char **argv)
{
    assert(argc == 2);
    const char *dir = argv[1];
    uint8_t b[4 * LIMIT_RECORD_BYTES_MAX];
    record r = {0};
    r.type = RECORD_ENTRY;
    r.kind = TALLY_KIND_EARN;
    r.seq = 1;
    r.ts_ms = 1700000000123ULL;
    r.merchant = 42;
    r.account = 1001;
    r.req_points = 250;
    r.amount = 250;
    r.points = 250;
    r.balance = 250;
    r.expires = 1735689600;
    r.req_flags = TALLY_REQ_EXPIRES;
    r.id_len = 6;
    memcpy(r.id, "ord-17", 6);
    size_t n1 = seed_encode(&r, b);
    seed_write(dir, "ok_earn", b, n1);

    /* A redeem chained to it, in the same batch, with a memo and the lot
     * it took. */
    record r2 = r;
    r2.kind = TALLY_KIND_REDEEM;
    r2.seq = 2;
    r2.batch_back = 1;
    r2.prev = checksum64(b, n1 - 8, 0);
    r2.req_points = 100;
    r2.req_flags = 0;
    r2.amount = 100;
    r2.points = -100;
    r2.balance = 150;
    r2.expires = 0;
    r2.acct_prev = 1;
    r2.id_len = 5;
    memcpy(r2.id, "red-1", 5);
    r2.memo_len = 12;
    memcpy(r2.memo, "till 3, shop", 12);
    record_alloc lot = {.seq = 1, .expkey = 1735689600, .points = 100};
    assert(record_alloc_add(&r2, &lot));
    size_t n2 = seed_encode(&r2, b + n1);
    seed_write(dir, "ok_earn_then_redeem", b, n1 + n2);
    seed_write(dir, "ok_redeem_memo", b + n1, n2);

    /* Its allocations continued in a part: pool and pending lots. */
    record r2p = {.type = RECORD_ALLOC, .kind = TALLY_KIND_REDEEM, .seq = 2, .part = 1,
                  .ts_ms = r2.ts_ms, .merchant = 42, .account = 1001};
    record_alloc pool = {.flags = RECORD_A_POOL, .points = 7};
    record_alloc pending = {.flags = RECORD_A_PENDING, .seq = 1, .expkey = UINT64_MAX,
                            .available_at = 1700086400, .points = 3};
    assert(record_alloc_add(&r2p, &pool) && record_alloc_add(&r2p, &pending));
    size_t n2p = seed_encode(&r2p, b);
    seed_write(dir, "ok_alloc_part", b, n2p);

    /* A refusal (INSUFFICIENT) with a ref and the largest fields. */
    record r3 = r2;
    r3.type = RECORD_REFUSAL;
    r3.kind = TALLY_KIND_REVERSE;
    r3.error = (uint8_t)-(TALLY_EINSUFFICIENT - TALLY_EBASE);
    r3.reason = 3;
    r3.seq = 3;
    r3.points = 0;
    r3.req_flags = 0x5;
    r3.alloc_count = 0;
    r3.alloc_len = 0;
    r3.id_len = LIMIT_ENGINE_ID_BYTES_MAX;
    memset(r3.id, '~', LIMIT_ENGINE_ID_BYTES_MAX);
    r3.ref_len = LIMIT_ENGINE_ID_BYTES_MAX;
    memset(r3.ref, 'r', LIMIT_ENGINE_ID_BYTES_MAX);
    r3.memo_len = LIMIT_MEMO_BYTES_MAX;
    memset(r3.memo, 'm', LIMIT_MEMO_BYTES_MAX);
    size_t n3 = seed_encode(&r3, b);
    seed_write(dir, "ok_refusal_largest", b, n3);

    /* A hold with a timeout, a negative adjust, a pending earn. */
    record r4 = r;
    r4.kind = TALLY_KIND_HOLD;
    r4.seq = 9;
    r4.batch_back = 2;
    r4.timeout_s = 900;
    r4.req_flags = TALLY_REQ_TIMEOUT;
    r4.held = 50;
    r4.id_len = 1;
    r4.id[0] = 'h';
    size_t n4 = seed_encode(&r4, b);
    seed_write(dir, "ok_hold", b, n4);
    record r5 = r;
    r5.kind = TALLY_KIND_ADJUST;
    r5.req_points = -1000000000000000LL;
    r5.amount = 1000000000000000LL;
    r5.points = -1000000000000000LL;
    r5.balance = -(1LL << 62);
    r5.req_flags = 0;
    size_t n5 = seed_encode(&r5, b);
    seed_write(dir, "ok_adjust_negative", b, n5);
    record r6 = r;
    r6.available_at = 1700086400;
    r6.req_flags |= TALLY_REQ_AVAILABLE_AT;
    r6.points = 0;
    r6.pending = 250;
    r6.balance = 0;
    r6.rflags = RECORD_F_IMPORTED;
    size_t n6 = seed_encode(&r6, b);
    seed_write(dir, "ok_earn_pending_imported", b, n6);

    /* A transfer: two entries of one group (the receiver's lot is its
     * own, seq 0 in its allocation). */
    record t1 = r;
    t1.kind = TALLY_KIND_TRANSFER;
    t1.seq = 10;
    t1.account2 = 1002;
    t1.rflags = RECORD_F_GROUP;
    t1.points = -250;
    t1.balance = 0;
    t1.req_flags = 0;
    assert(record_alloc_add(&t1, &lot));
    size_t nt1 = seed_encode(&t1, b);
    record t2 = t1;
    t2.seq = 11;
    t2.group_back = 1;
    t2.batch_back = 1;
    t2.rflags = RECORD_F_GROUP | RECORD_F_GROUP_END;
    t2.account = 1002;
    t2.account2 = 1001;
    t2.points = 250;
    t2.balance = 250;
    t2.prev = checksum64(b, nt1 - 8, 0);
    t2.alloc_count = 0;
    t2.alloc_len = 0;
    record_alloc own = {.seq = 0, .expkey = 1735689600, .points = 250};
    assert(record_alloc_add(&t2, &own));
    size_t nt2 = seed_encode(&t2, b + nt1);
    seed_write(dir, "ok_transfer_group", b, nt1 + nt2);

    /* Damaged ones: torn, bit-flipped, zero tail, bad fields (checksum
     * fixed so the field check is what fails). */
    n1 = seed_encode(&r, b);
    seed_write(dir, "torn_earn", b, n1 - 13);
    b[60] ^= 0x10;
    seed_write(dir, "bitflip_earn", b, n1);
    memset(b, 0, 64);
    seed_write(dir, "end_zeros", b, 64);
    const struct {
        const char *name;
        size_t off;
        uint8_t val;
    } bad[] = {
        {"bad_type", 4, 9},         {"bad_kind", 5, 0},        {"bad_kind_high", 5, TALLY_KIND_COUNT},
        {"bad_entry_error", 6, 1},  {"bad_part", 44, 1},       {"bad_rflags", 46, 0x80},
        {"bad_reserved", 159, 1},   {"bad_id_len0", 156, 0},   {"bad_padding", 166, 'x'},
        {"bad_seq0", 8, 0},         {"bad_len_odd", 0, 137},   {"bad_alloc_count", 152, 1},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        n1 = seed_encode(&r, b);
        b[bad[i].off] = bad[i].val;
        fuzz_put64(b + n1 - 8, checksum64(b, n1 - 8, 0));
        seed_write(dir, bad[i].name, b, n1);
    }
    n2 = seed_encode(&r2, b);
    b[RECORD_FIXED_BYTES + r2.id_len + r2.memo_len] = 0x80; /* allocation flags */
    fuzz_put64(b + n2 - 8, checksum64(b, n2 - 8, 0));
    seed_write(dir, "bad_alloc_flags", b, n2);
    n1 = seed_encode(&r, b);
    fuzz_put32(b, LIMIT_RECORD_BYTES_MAX + 8);
    seed_write(dir, "bad_len_too_big", b, n1);
    return 0;
}
#endif
