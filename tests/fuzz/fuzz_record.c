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

static void fuzz_same_record(const record *a, const record *b)
{
    assert(a->type == b->type && a->kind == b->kind);
    assert(a->error == b->error && a->reason == b->reason);
    assert(a->seq == b->seq && a->ts_ms == b->ts_ms && a->prev == b->prev);
    assert(a->batch_seq == b->batch_seq);
    assert(a->merchant == b->merchant && a->account == b->account);
    assert(a->amount == b->amount && a->points == b->points);
    assert(a->balance == b->balance && a->held == b->held);
    assert(a->expires == b->expires && a->available_at == b->available_at);
    assert(a->timeout_s == b->timeout_s && a->flags == b->flags);
    assert(a->id_len == b->id_len && a->ref_len == b->ref_len && a->memo_len == b->memo_len);
    assert(memcmp(a->id, b->id, a->id_len) == 0);
    assert(memcmp(a->ref, b->ref, a->ref_len) == 0);
    assert(memcmp(a->memo, b->memo, a->memo_len) == 0);
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
    /* An exact-size copy: a read past avail is a heap overflow. */
    uint8_t *buf = malloc(size ? size : 1);
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
        size_t body = (size_t)RECORD_FIXED_BYTES + buf[116] + buf[117] + buf[118];
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
    r.batch_seq = 1;
    r.ts_ms = 1700000000123ULL;
    r.merchant = 42;
    r.account = 1001;
    r.amount = 250;
    r.points = 250;
    r.balance = 250;
    r.expires = 1735689600;
    r.id_len = 6;
    memcpy(r.id, "ord-17", 6);
    size_t n1 = seed_encode(&r, b);
    seed_write(dir, "ok_earn", b, n1);

    /* A redeem chained to it, with a memo, in the same batch. */
    record r2 = r;
    r2.kind = TALLY_KIND_REDEEM;
    r2.seq = 2;
    r2.prev = checksum64(b, n1 - 8, 0);
    r2.amount = 100;
    r2.points = -100;
    r2.balance = 150;
    r2.expires = 0;
    r2.id_len = 5;
    memcpy(r2.id, "red-1", 5);
    r2.memo_len = 12;
    memcpy(r2.memo, "till 3, shop", 12);
    size_t n2 = seed_encode(&r2, b + n1);
    seed_write(dir, "ok_earn_then_redeem", b, n1 + n2);
    seed_write(dir, "ok_redeem_memo", b + n1, n2);

    /* A refusal (INSUFFICIENT) with a ref and the largest fields. */
    record r3 = r2;
    r3.type = RECORD_REFUSAL;
    r3.kind = TALLY_KIND_REVERSE;
    r3.error = (uint8_t)-(TALLY_EINSUFFICIENT - TALLY_EBASE);
    r3.reason = 3;
    r3.seq = 3;
    r3.points = 0;
    r3.flags = 0x5;
    r3.id_len = LIMIT_ENGINE_ID_BYTES_MAX;
    memset(r3.id, '~', LIMIT_ENGINE_ID_BYTES_MAX);
    r3.ref_len = LIMIT_ENGINE_ID_BYTES_MAX;
    memset(r3.ref, 'r', LIMIT_ENGINE_ID_BYTES_MAX);
    r3.memo_len = LIMIT_MEMO_BYTES_MAX;
    memset(r3.memo, 'm', LIMIT_MEMO_BYTES_MAX);
    size_t n3 = seed_encode(&r3, b);
    seed_write(dir, "ok_refusal_largest", b, n3);

    /* A hold with a timeout, a negative adjust. */
    record r4 = r;
    r4.kind = TALLY_KIND_HOLD;
    r4.seq = 9;
    r4.batch_seq = 7;
    r4.timeout_s = 900;
    r4.held = 50;
    r4.id_len = 1;
    r4.id[0] = 'h';
    size_t n4 = seed_encode(&r4, b);
    seed_write(dir, "ok_hold", b, n4);
    record r5 = r;
    r5.kind = TALLY_KIND_ADJUST;
    r5.amount = -1000000000000000LL;
    r5.points = -1000000000000000LL;
    r5.balance = -(1LL << 62);
    size_t n5 = seed_encode(&r5, b);
    seed_write(dir, "ok_adjust_negative", b, n5);

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
        {"bad_type", 4, 9},      {"bad_kind", 5, 0},         {"bad_kind_high", 5, TALLY_KIND_COUNT},
        {"bad_entry_error", 6, 1}, {"bad_reserved", 119, 1}, {"bad_id_len0", 116, 0},
        {"bad_padding", 126, 'x'}, {"bad_seq0", 8, 0},        {"bad_len_odd", 0, 137},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        n1 = seed_encode(&r, b);
        b[bad[i].off] = bad[i].val;
        fuzz_put64(b + n1 - 8, checksum64(b, n1 - 8, 0));
        seed_write(dir, bad[i].name, b, n1);
    }
    n1 = seed_encode(&r, b);
    fuzz_put32(b, LIMIT_RECORD_BYTES_MAX + 8);
    seed_write(dir, "bad_len_too_big", b, n1);
    return 0;
}
#endif
