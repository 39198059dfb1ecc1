/*
 * ledger_verify.c — the state's own consistency (VERIFY, `tally verify`):
 * every account's lots, pending lots, holds and totals add up, its due row
 * is its next due time, and each merchant's totals and liability equal the
 * sum of its accounts; and the comparison of two states (the live one
 * against a replay of the log).
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "ledger_int.h"

typedef struct ledger_vsum {
    ledger *l;
    uint64_t merchant; /* the one being summed; 0 before the first */
    ledger_merchant sum;
    char *msg;
    size_t cap;
} ledger_vsum;

static int ledger_verify_merchant(ledger *l, uint64_t m, const ledger_merchant *sum, char *msg,
                                  size_t cap)
{
    ledger_merchant mm;
    int rc = ledger_merchant_get(l, m, &mm);
    if (rc < 0)
        return rc;
    tally_request q;
    memset(&q, 0, sizeof(q));
    q.op = TALLY_OP_LIABILITY;
    q.merchant = m;
    rc = ledger_read(l, &q, 0);
    int64_t liab = 0;
    for (uint32_t i = 0; i < q.res.rows_count; i++)
        liab += q.res.rows[i].points;
    tally_result_free(&q.res);
    if (rc < 0)
        return rc;
    if (mm.accounts != sum->accounts || mm.outstanding != sum->outstanding ||
        mm.earned != sum->earned || mm.redeemed != sum->redeemed ||
        mm.expired != sum->expired || liab != mm.outstanding) {
        snprintf(msg, cap,
                 "merchant %llu: totals (accounts %lld outstanding %lld earned %lld redeemed "
                 "%lld expired %lld, liability %lld) differ from its accounts (%lld %lld %lld "
                 "%lld %lld)",
                 (unsigned long long)m, (long long)mm.accounts, (long long)mm.outstanding,
                 (long long)mm.earned, (long long)mm.redeemed, (long long)mm.expired,
                 (long long)liab, (long long)sum->accounts, (long long)sum->outstanding,
                 (long long)sum->earned, (long long)sum->redeemed, (long long)sum->expired);
        return TALLY_ECORRUPT;
    }
    return 0;
}

static int ledger_verify_account(ledger *l, account *ac, char *msg, size_t cap)
{
    char why[200];
    int rc = account_check(l->st, ac, why, sizeof(why));
    const account_hdr *h = &ac->h;
    if (rc == 0 && h->lots_total - h->debt + h->held !=
                       h->earned - h->redeemed - h->expired + h->transferred)
        snprintf(why, sizeof(why),
                 "lots %lld - debt %lld + held %lld != earned %lld - redeemed %lld - expired "
                 "%lld + transferred %lld",
                 (long long)h->lots_total, (long long)h->debt, (long long)h->held,
                 (long long)h->earned, (long long)h->redeemed, (long long)h->expired,
                 (long long)h->transferred),
            rc = TALLY_ECORRUPT;
    if (rc == 0 && h->debt < 0)
        snprintf(why, sizeof(why), "debt %lld below zero", (long long)h->debt),
            rc = TALLY_ECORRUPT;
    if (rc == 0 && h->due_s != account_next_due(l->st, ac))
        snprintf(why, sizeof(why), "due time %llu recorded, %llu found",
                 (unsigned long long)h->due_s, (unsigned long long)account_next_due(l->st, ac)),
            rc = TALLY_ECORRUPT;
    if (rc == 0 && h->due_s != UINT64_MAX) {
        uint8_t k[24];
        const void *v;
        size_t vl;
        int g = state_get(l->st, STATE_DUE, k, ledger_key3(k, h->due_s, ac->m, ac->a), &v, &vl);
        if (g < 0)
            return g;
        if (g == STATE_ABSENT)
            snprintf(why, sizeof(why), "no due row at %llu", (unsigned long long)h->due_s),
                rc = TALLY_ECORRUPT;
    }
    if (rc == TALLY_ECORRUPT)
        snprintf(msg, cap, "merchant %llu account %llu: %s", (unsigned long long)ac->m,
                 (unsigned long long)ac->a, why);
    return rc;
}

static int ledger_verify_one(void *ctx, const void *k, size_t kl, const void *v, size_t vl)
{
    (void)v;
    (void)vl;
    ledger_vsum *s = ctx;
    if (kl != 16)
        return TALLY_ECORRUPT;
    uint64_t m = ledger_get_be64(k), a = ledger_get_be64((const uint8_t *)k + 8);
    int rc;
    if (m != s->merchant) {
        if (s->merchant &&
            (rc = ledger_verify_merchant(s->l, s->merchant, &s->sum, s->msg, s->cap)) != 0)
            return rc;
        s->merchant = m;
        s->sum = (ledger_merchant){0};
    }
    account *ac = &s->l->acc[2];
    rc = ledger_acct_load(s->l, ac, m, a);
    if (rc == 0)
        rc = ledger_verify_account(s->l, ac, s->msg, s->cap);
    if (rc != 0)
        return rc;
    const account_hdr *h = &ac->h;
    s->sum.accounts++;
    s->sum.outstanding += h->lots_total - h->debt + h->held;
    s->sum.earned += h->earned;
    s->sum.redeemed += h->redeemed;
    s->sum.expired += h->expired;
    return 0;
}

int ledger_verify(ledger *l, uint64_t merchant, char *msg, size_t cap)
{
    ledger_vsum s = {.l = l, .msg = msg, .cap = cap};
    uint8_t from[16], to[16];
    size_t from_len = merchant ? ledger_key2(from, merchant, 0) : 0;
    size_t to_len = merchant && merchant < UINT64_MAX ? ledger_key2(to, merchant + 1, 0) : 0;
    int rc = state_scan(l->st, STATE_ACCOUNTS, from, from_len, to, to_len, ledger_verify_one, &s);
    if (rc == 0 && s.merchant)
        rc = ledger_verify_merchant(l, s.merchant, &s.sum, msg, cap);
    if (rc == 0 && merchant && !s.merchant) {
        /* No account: the merchant's totals must be empty too. */
        ledger_merchant zero = {0};
        rc = ledger_verify_merchant(l, merchant, &zero, msg, cap);
    }
    return rc;
}

int ledger_compare(ledger *a, ledger *b, char *msg, size_t cap)
{
    return state_compare(a->st, b->st, msg, cap);
}
