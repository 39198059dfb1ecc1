/*
 * account_test.c — an account's stored value (state format 4: varints,
 * account.c) saved and loaded back through a real state: every field at
 * its extremes arrives as it left, and a malformed value is refused as
 * corrupt without reading past its end or allocating what its counts
 * claim.
 */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "account.h"
#include "engine_util.h"
#include "tally.h"

static state *acct_state(void)
{
    char dir[64];
    eu_tmpdir(dir, "account");
    state *st;
    cr_assert_eq(state_open(dir, 1ull << 30, &st), 0);
    return st;
}

/* The stored value of account (m, a), as account_save wrote it. */
static void acct_raw(state *st, uint8_t m, uint8_t a, uint8_t k[16], const void **v, size_t *vl)
{
    memset(k, 0, 16);
    k[7] = m;
    k[15] = a;
    cr_assert_eq(state_get(st, STATE_ACCOUNTS, k, 16, v, vl), 0);
}

static void lots_equal(const account_lot *a, const account_lot *b, uint32_t n, const char *what)
{
    for (uint32_t i = 0; i < n; i++)
        cr_assert(a[i].expkey == b[i].expkey && a[i].seq == b[i].seq &&
                      a[i].remaining == b[i].remaining && a[i].available_at == b[i].available_at,
                  "%s %u", what, i);
}

Test(account, every_field_at_its_extremes_is_loaded_as_it_was_saved)
{
    state *st = acct_state();
    account ac = {0}, back = {0};
    cr_assert_eq(account_load(st, 7, 9, &ac), 0);
    cr_assert(!ac.exists);
    account_hold holds[2] = {{.seq = 1, .amount = -7, .deadline_s = UINT64_MAX},
                             {.seq = UINT64_MAX, .amount = INT64_MAX, .deadline_s = 0}};
    account_lot pend[2] = {{.expkey = UINT64_MAX, .seq = 3, .remaining = 40, .available_at = 9},
                           {.expkey = 1800000000, .seq = 4, .remaining = INT64_MAX / 2,
                            .available_at = UINT64_MAX}};
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(account_hold_add(&ac, &holds[i]), 0);
        cr_assert_eq(account_pending_add(&ac, &pend[i]), 0);
    }
    /* Inline lots, the last at the largest expiry there is (a wrapped delta). */
    uint64_t exps[4] = {0, 1800000000, 1800003600, UINT64_MAX - 1};
    for (int i = 0; i < 4; i++)
        cr_assert_eq(account_lot_add(st, &ac, exps[i], 100 + (uint64_t)i, 10 + i), 0);
    cr_assert_eq(ac.h.nlots, 4);
    /* The header's fields at their extremes (the counts stay the items'). */
    ac.h.earned = INT64_MAX;
    ac.h.redeemed = 1;
    ac.h.expired = 0;
    ac.h.held = 300;
    ac.h.debt = 5;
    ac.h.lots_total = INT64_MIN;
    ac.h.pending_total = -1;
    ac.h.pool = 123456789;
    ac.h.transferred = -987654321;
    ac.h.head_seq = UINT64_MAX - 1;
    ac.h.due_s = UINT64_MAX;
    ac.h.chunk_next = UINT32_MAX;
    cr_assert_eq(account_save(st, &ac), 0);
    cr_assert_eq(account_load(st, 7, 9, &back), 0);
    cr_assert(back.exists);
    cr_assert_eq(memcmp(&back.h, &ac.h, sizeof(ac.h)), 0, "the header");
    cr_assert_eq(memcmp(back.holds, ac.holds, 2 * sizeof(account_hold)), 0, "the holds");
    lots_equal(back.pending, ac.pending, 2, "pending lot");
    lots_equal(back.inl, ac.inl, 4, "inline lot");
    /* Past ACCOUNT_INLINE_MAX the lots move to chunks: directory and
     * chunks come back too, lot by lot in order. */
    for (uint64_t i = 0; i < 3 * ACCOUNT_CHUNK_MAX; i++)
        cr_assert_eq(account_lot_add(st, &ac, 1900000000 + i * 86400, 1000 + i, (int64_t)i + 1),
                     0);
    cr_assert_gt(ac.h.nchunks, 1);
    cr_assert_eq(account_save(st, &ac), 0);
    cr_assert_eq(account_load(st, 7, 9, &back), 0);
    cr_assert_eq(memcmp(&back.h, &ac.h, sizeof(ac.h)), 0, "the header with chunks");
    cr_assert_eq(memcmp(back.dir, ac.dir, ac.h.nchunks * sizeof(account_dir)), 0,
                 "the directory");
    account_pos pa, pb;
    account_lot la, lb;
    int ra = account_lot_first(st, &ac, &pa, &la), rb = account_lot_first(st, &back, &pb, &lb);
    uint32_t n = 0;
    while (ra == 0 && rb == 0) {
        lots_equal(&la, &lb, 1, "chunked lot");
        n++;
        ra = account_lot_next(st, &ac, &pa, &la);
        rb = account_lot_next(st, &back, &pb, &lb);
    }
    cr_assert_eq(ra, rb);
    cr_assert_eq(n, ac.h.nlots);
    account_free(&ac);
    account_free(&back);
    state_close(st);
}

Test(account, a_typical_account_takes_a_fraction_of_its_structs)
{
    state *st = acct_state();
    account ac = {0};
    cr_assert_eq(account_load(st, 1, 2, &ac), 0);
    ac.h.earned = 2981;
    ac.h.redeemed = 808;
    ac.h.lots_total = ac.h.pool = 2173;
    ac.h.head_seq = 9298480;
    cr_assert_eq(account_save(st, &ac), 0);
    uint8_t k[16];
    const void *v;
    size_t vl;
    acct_raw(st, 1, 2, k, &v, &vl);
    cr_assert_leq(vl, 16, "%zu bytes for five small numbers (the header struct is %zu)", vl,
                  sizeof(account_hdr));
    account_free(&ac);
    state_close(st);
}

Test(account, a_malformed_value_is_refused_as_corrupt)
{
    state *st = acct_state();
    account ac = {0};
    cr_assert_eq(account_load(st, 3, 4, &ac), 0);
    ac.h.earned = 50;
    ac.h.lots_total = 50;
    account_lot lot = {.expkey = 1800000000, .seq = 1, .remaining = 50, .available_at = 5};
    cr_assert_eq(account_pending_add(&ac, &lot), 0);
    cr_assert_eq(account_save(st, &ac), 0);
    uint8_t k[16];
    const void *v;
    size_t vl;
    acct_raw(st, 3, 4, k, &v, &vl);
    uint8_t good[256];
    cr_assert_lt(vl, sizeof(good));
    memcpy(good, v, vl);
    uint8_t bad[300];
    /* Cut anywhere short of its end. */
    for (size_t cut = 0; cut < vl; cut++) {
        cr_assert_eq(state_put(st, STATE_ACCOUNTS, k, 16, good, cut), 0);
        cr_assert_eq(account_load(st, 3, 4, &ac), TALLY_ECORRUPT, "cut at %zu", cut);
    }
    /* A byte too many. */
    memcpy(bad, good, vl);
    bad[vl] = 0;
    cr_assert_eq(state_put(st, STATE_ACCOUNTS, k, 16, bad, vl + 1), 0);
    cr_assert_eq(account_load(st, 3, 4, &ac), TALLY_ECORRUPT);
    /* A mask with bits past the header's fields. */
    bad[0] = 0x80, bad[1] = 0x80, bad[2] = 0x04;
    cr_assert_eq(state_put(st, STATE_ACCOUNTS, k, 16, bad, 3), 0);
    cr_assert_eq(account_load(st, 3, 4, &ac), TALLY_ECORRUPT);
    /* Counts the value cannot hold: four billion holds in four bytes. */
    uint8_t huge[] = {0x80, 0x10, 0xff, 0xff, 0xff, 0xff, 0x0f}; /* mask bit 11: nholds */
    cr_assert_eq(state_put(st, STATE_ACCOUNTS, k, 16, huge, sizeof(huge)), 0);
    cr_assert_eq(account_load(st, 3, 4, &ac), TALLY_ECORRUPT);
    /* A varint longer than 64 bits. */
    memset(bad, 0xff, 12);
    bad[0] = 0x01; /* earned present */
    bad[11] = 0x01;
    cr_assert_eq(state_put(st, STATE_ACCOUNTS, k, 16, bad, 12), 0);
    cr_assert_eq(account_load(st, 3, 4, &ac), TALLY_ECORRUPT);
    /* More inline lots than an account keeps inline. */
    size_t n = 0;
    bad[n++] = 0x80 | 0x00;
    bad[n++] = 0x40; /* mask bit 13: nlots */
    bad[n++] = ACCOUNT_INLINE_MAX + 1;
    for (int i = 0; i < ACCOUNT_INLINE_MAX + 1; i++) {
        bad[n++] = 2, bad[n++] = 1, bad[n++] = 2, bad[n++] = 0;
    }
    cr_assert_eq(state_put(st, STATE_ACCOUNTS, k, 16, bad, n), 0);
    cr_assert_eq(account_load(st, 3, 4, &ac), TALLY_ECORRUPT);
    account_free(&ac);
    state_close(st);
}
