/*
 * ledger_verify.c — the state's own consistency (VERIFY, `tally verify`):
 * every account's lots, pending lots, holds and totals add up, its due row
 * is its next due time, and each merchant's totals and liability equal the
 * sum of its accounts; and the comparison of two states (the live one
 * against a replay of the log).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checksum.h"

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
    if (cap > 0)
        msg[0] = 0;
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
    /* A read that failed its checksum says where in state_error. */
    if (rc < 0 && cap > 0 && msg[0] == 0)
        snprintf(msg, cap, "%s", state_error(l->st)[0] ? state_error(l->st) : tally_strerror(rc));
    return rc;
}

int ledger_compare(ledger *a, ledger *b, char *msg, size_t cap)
{
    return state_compare(a->st, b->st, msg, cap);
}

/* ---- history continuity ------------------------------------------------------------ */

typedef struct ledger_hist {
    uint64_t m, a; /* a == 0: free slot (accounts are >= 1) */
    uint64_t seq;
    int64_t balance, held, pending;
} ledger_hist;

typedef struct ledger_hist_map {
    ledger_hist *v;
    size_t cap, count;
} ledger_hist_map;

static ledger_hist *ledger_hist_slot(ledger_hist_map *h, uint64_t m, uint64_t a)
{
    uint64_t k[2] = {m, a};
    size_t i = (size_t)checksum64(k, sizeof(k), 0) & (h->cap - 1);
    while (h->v[i].a && (h->v[i].m != m || h->v[i].a != a))
        i = (i + 1) & (h->cap - 1);
    return &h->v[i];
}

static int ledger_hist_grow(ledger_hist_map *h)
{
    ledger_hist_map n = {.cap = h->cap ? h->cap * 2 : 4096};
    n.v = calloc(n.cap, sizeof(*n.v));
    if (!n.v)
        return -ENOMEM;
    for (size_t i = 0; i < h->cap; i++)
        if (h->v[i].a)
            *ledger_hist_slot(&n, h->v[i].m, h->v[i].a) = h->v[i];
    n.count = h->count;
    free(h->v);
    *h = n;
    return 0;
}

int ledger_verify_history(log_t *log, char *msg, size_t cap)
{
    ledger_hist_map h = {0};
    log_iter it;
    int rc = ledger_hist_grow(&h);
    if (rc == 0)
        rc = log_iter_init(log, log_first_seq(log) - 1, &it);
    record *r = malloc(sizeof(*r));
    if (!r)
        rc = -ENOMEM;
    log_loc loc;
    uint64_t entries = 0;
    while (rc == 0 && (rc = log_iter_next(&it, r, &loc)) == 1) {
        rc = 0;
        if (r->type != RECORD_ENTRY)
            continue; /* refusals and allocation parts move nothing */
        if ((h.count + 1) * 2 > h.cap && (rc = ledger_hist_grow(&h)) < 0)
            break;
        tally_entry e;
        ledger_entry_from_record(r, &e);
        int64_t dh, dp;
        tally_entry_moves(&e, &dh, &dp);
        ledger_hist *x = ledger_hist_slot(&h, r->merchant, r->account);
        entries++;
        /* Unknown so far: the account's first entry (from zero), or one
         * whose history before it retention dropped (taken as it is). */
        bool first = !x->a;
        if (first && r->acct_prev != 0) {
            *x = (ledger_hist){.m = r->merchant, .a = r->account, .seq = r->seq,
                               .balance = r->balance, .held = r->held, .pending = r->pending};
            h.count++;
            continue;
        }
        if (first) {
            *x = (ledger_hist){.m = r->merchant, .a = r->account};
            h.count++;
        }
        /* Release 1 matured pending points without an entry: its
         * entries are held to their history link only. */
        bool legacy = (r->rflags & RECORD_F_LEGACY) != 0;
        const char *what = r->acct_prev != x->seq                ? "its history link"
                           : legacy                              ? NULL
                           : r->balance != x->balance + r->points ? "balance"
                           : r->held != x->held + dh             ? "held"
                           : r->pending != x->pending + dp       ? "pending"
                                                                 : NULL;
        if (what) {
            snprintf(msg, cap,
                     "merchant %llu account %llu: seq %llu (%s %.*s) breaks the history: %s "
                     "(after seq %llu: balance %lld held %lld pending %lld; this entry: points "
                     "%lld amount %lld, balance %lld held %lld pending %lld, previous %llu)",
                     (unsigned long long)r->merchant, (unsigned long long)r->account,
                     (unsigned long long)r->seq, tally_kind_name(r->kind), (int)r->id_len, r->id,
                     what, (unsigned long long)x->seq, (long long)x->balance, (long long)x->held,
                     (long long)x->pending, (long long)r->points, (long long)r->amount,
                     (long long)r->balance, (long long)r->held, (long long)r->pending,
                     (unsigned long long)r->acct_prev);
            rc = TALLY_ECORRUPT;
            break;
        }
        x->seq = r->seq;
        x->balance = r->balance;
        x->held = r->held;
        x->pending = r->pending;
    }
    if (rc < 0 && rc != TALLY_ECORRUPT)
        snprintf(msg, cap, "history check: reading the log: %s", tally_strerror(rc));
    else if (rc == TALLY_ECORRUPT && !msg[0])
        snprintf(msg, cap, "history check: a bad record after %llu entries",
                 (unsigned long long)entries);
    free(r);
    free(h.v);
    return rc < 0 ? TALLY_ECORRUPT : 0;
}
