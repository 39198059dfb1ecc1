/*
 * ledger_read.c — the reads (SPEC §2): BALANCE as of now, ENTRY by id,
 * HISTORY through the account's chain of entries in the log, MERCHANT
 * totals, LIABILITY by month.  Reads change nothing.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ledger_int.h"

/* ---- balance --------------------------------------------------------------- */

/* Points a due hold's release gives back: to lots still spendable
 * (*released) or to lots whose expiry passed (*expired). */
static int ledger_due_hold_release(ledger *l, uint64_t hold_seq, uint64_t now_ms,
                                   int64_t *released, int64_t *expired)
{
    record h;
    uint32_t n = 0;
    int rc = ledger_read_allocs(l, hold_seq, &h, &n);
    if (rc < 0)
        return rc == TALLY_EARCHIVED ? TALLY_ECORRUPT : rc;
    for (uint32_t i = 0; i < n; i++) {
        const record_alloc *a = &l->allocs2[i];
        if (!(a->flags & RECORD_A_POOL) && ledger_due(a->expkey, now_ms))
            *expired += a->points;
        else
            *released += a->points;
    }
    return 0;
}

/* BALANCE as of now: lots past their expiry count as expired, matured
 * pending lots as available, holds past their deadline as released —
 * before the sweep has written their entries (SPEC §3). */
static int ledger_balance(ledger *l, uint64_t m, uint64_t a, uint64_t now_ms, tally_balance *b)
{
    account *ac = &l->acc[2];
    int rc = ledger_acct_load(l, ac, m, a);
    if (rc < 0)
        return rc;
    int64_t expired_now = 0, pending_now = 0, released = 0, released_expired = 0;
    int64_t next_pts = 0;
    uint64_t next_exp = UINT64_MAX;
    for (uint32_t i = 0; i < ac->h.npending; i++) {
        const account_lot *p = &ac->pending[i];
        if (ledger_due(p->expkey, now_ms))
            expired_now += p->remaining;
        else if (!ledger_due(p->available_at, now_ms))
            pending_now += p->remaining;
        if (!ledger_due(p->expkey, now_ms) && p->expkey != UINT64_MAX && p->expkey <= next_exp) {
            next_pts = p->expkey == next_exp ? next_pts + p->remaining : p->remaining;
            next_exp = p->expkey;
        }
    }
    /* Spendable lots: the due ones at the front, then the soonest. */
    account_pos pos;
    account_lot lot;
    for (rc = account_lot_first(l->st, ac, &pos, &lot); rc == 0;
         rc = account_lot_next(l->st, ac, &pos, &lot)) {
        if (ledger_due(lot.expkey, now_ms)) {
            expired_now += lot.remaining;
            continue;
        }
        if (lot.expkey > next_exp)
            break;
        next_pts = lot.expkey == next_exp ? next_pts + lot.remaining : lot.remaining;
        next_exp = lot.expkey;
    }
    if (rc < 0)
        return rc;
    int64_t held = ac->h.held;
    for (uint32_t i = 0; i < ac->h.nholds; i++) {
        if (!ledger_due(ac->holds[i].deadline_s, now_ms))
            continue;
        held -= ac->holds[i].amount;
        rc = ledger_due_hold_release(l, ac->holds[i].seq, now_ms, &released, &released_expired);
        if (rc < 0)
            return rc;
    }
    *b = (tally_balance){
        .available = ac->h.lots_total - expired_now - pending_now - ac->h.debt + released,
        .held = held,
        .pending = pending_now,
        .earned = ac->h.earned,
        .redeemed = ac->h.redeemed,
        .expired = ac->h.expired + expired_now + released_expired,
        .next_expiry = next_exp == UINT64_MAX ? 0 : next_exp,
        .expiring = next_exp == UINT64_MAX ? 0 : next_pts,
    };
    return 0;
}

/* ---- entry, history --------------------------------------------------------------- */

static void ledger_archived(tally_request *q, const char *fmt, unsigned long long seq)
{
    q->res.status = TALLY_EARCHIVED;
    snprintf(q->res.message, sizeof(q->res.message), fmt, seq);
}

static int ledger_read_entry(ledger *l, tally_request *q)
{
    q->res.found = false;
    record *r = &l->rec[1];
    int rc = ledger_target(l, q->merchant, q->ref, q->ref_len, r);
    if (rc == 1)
        return 0;
    if (rc == TALLY_EARCHIVED) {
        uint64_t seq = 0;
        bool refusal;
        ledger_id_seq(l, q->merchant, q->ref, q->ref_len, &seq, &refusal);
        q->res.status = TALLY_EARCHIVED;
        snprintf(q->res.message, sizeof(q->res.message),
                 "entry %.*s (seq %llu) lies before the retained log", (int)q->ref_len, q->ref,
                 (unsigned long long)seq);
        return 0;
    }
    if (rc < 0)
        return rc;
    q->res.found = true;
    ledger_entry_from_record(r, &q->res.entry);
    return 0;
}

/* Room for one more history item (grown with what is found: a pipeline
 * of HISTORY requests for short histories must not pin LIMIT entries
 * each). */
static int ledger_history_room(tally_result *res, uint32_t *cap, uint32_t limit)
{
    if (res->items_count < *cap)
        return 0;
    *cap = *cap ? (*cap * 2 < limit ? *cap * 2 : limit) : (limit < 8 ? limit : 8);
    tally_entry *n = realloc(res->items, *cap * sizeof(*n));
    if (!n)
        return -ENOMEM;
    res->items = n;
    return 0;
}

/* The newest entry of the account before seq `before`: 0 and *seq (0 if
 * none).  From the entry at `before` itself when it is the account's (a
 * client paging with the last seq it saw), else down the chain. */
static int ledger_history_start(ledger *l, account *ac, uint64_t before, uint64_t *seq)
{
    *seq = ac->h.head_seq;
    if (before == UINT64_MAX || *seq < before)
        return 0;
    record *r = &l->rec[1];
    log_loc loc;
    int rc = before <= log_last_seq(l->log) ? log_read_seq(l->log, before, r, &loc)
                                            : TALLY_ENOTFOUND;
    if (rc == 0 && r->type == RECORD_ENTRY && r->merchant == ac->m && r->account == ac->a) {
        *seq = r->acct_prev;
        return 0;
    }
    if (rc < 0 && rc != TALLY_ENOTFOUND && rc != TALLY_EARCHIVED)
        return rc;
    while (*seq >= before) {
        rc = log_read_seq(l->log, *seq, r, &loc);
        if (rc < 0)
            return rc;
        *seq = r->acct_prev;
    }
    return 0;
}

static int ledger_history(ledger *l, tally_request *q)
{
    uint32_t limit = q->limit ? q->limit : LIMIT_HISTORY_DEFAULT, cap = 0;
    account *ac = &l->acc[2];
    int rc = ledger_acct_load(l, ac, q->merchant, q->account);
    if (rc < 0)
        return rc;
    uint64_t before = q->flags & TALLY_REQ_BEFORE ? q->before_seq : UINT64_MAX;
    uint64_t seq;
    rc = ledger_history_start(l, ac, before, &seq);
    if (rc == TALLY_EARCHIVED) {
        ledger_archived(q, "entries before seq %llu lie before the retained log",
                        (unsigned long long)before);
        return 0;
    }
    record *r = &l->rec[1];
    while (rc == 0 && seq != 0 && q->res.items_count < limit) {
        log_loc loc;
        rc = log_read_seq(l->log, seq, r, &loc);
        if (rc == TALLY_EARCHIVED) {
            /* Older entries lie before the retained log: a page ends
             * here, and a page that would start here says so. */
            if (q->res.items_count == 0)
                ledger_archived(q, "entries before seq %llu lie before the retained log",
                                (unsigned long long)(seq + 1));
            return 0;
        }
        if (rc == 0 && (r->type != RECORD_ENTRY || r->account != q->account ||
                        r->merchant != q->merchant))
            rc = TALLY_ECORRUPT; /* the chain names another's record */
        if (rc == 0)
            rc = ledger_history_room(&q->res, &cap, limit);
        if (rc == 0)
            ledger_entry_from_record(r, &q->res.items[q->res.items_count++]);
        seq = r->acct_prev;
    }
    return rc < 0 ? rc : 0;
}

/* ---- merchant, liability ------------------------------------------------------------ */

typedef struct ledger_rows {
    tally_result *res;
    uint32_t cap;
    int rc;
} ledger_rows;

static int ledger_liability_row(void *ctx, const void *k, size_t kl, const void *v, size_t vl)
{
    ledger_rows *rows = ctx;
    tally_result *res = rows->res;
    if (kl != 16 || vl != 8)
        return TALLY_ECORRUPT;
    int64_t pts;
    memcpy(&pts, v, 8);
    if (pts == 0)
        return 0;
    if (res->rows_count == rows->cap) {
        rows->cap = rows->cap ? rows->cap * 2 : 16;
        tally_liability_row *n = realloc(res->rows, rows->cap * sizeof(*n));
        if (!n)
            return -ENOMEM;
        res->rows = n;
    }
    uint64_t month = ledger_get_be64((const uint8_t *)k + 8);
    res->rows[res->rows_count++] = (tally_liability_row){
        .year = month == UINT64_MAX ? 0 : (int32_t)(month / 100),
        .month = month == UINT64_MAX ? 0 : (int32_t)(month % 100),
        .points = pts,
    };
    return 0;
}

/* In month order, "never" last (its key sorts last), months with nothing
 * outstanding left out. */
static int ledger_liability(ledger *l, tally_request *q)
{
    uint8_t from[16], to[16];
    ledger_key2(from, q->merchant, 0);
    size_t to_len = q->merchant == UINT64_MAX ? 0 : ledger_key2(to, q->merchant + 1, 0);
    ledger_rows rows = {.res = &q->res};
    return state_scan(l->st, STATE_LIABILITY, from, 16, to, to_len, ledger_liability_row, &rows);
}

int ledger_read(ledger *l, tally_request *q, uint64_t now_ms)
{
    switch (q->op) {
    case TALLY_OP_BALANCE:
        return ledger_balance(l, q->merchant, q->account, now_ms, &q->res.balance);
    case TALLY_OP_ENTRY:
        return ledger_read_entry(l, q);
    case TALLY_OP_HISTORY:
        return ledger_history(l, q);
    case TALLY_OP_MERCHANT: {
        ledger_merchant mm;
        int rc = ledger_merchant_get(l, q->merchant, &mm);
        if (rc == 0)
            q->res.merchant = (tally_merchant){mm.accounts, mm.outstanding, mm.earned,
                                               mm.redeemed, mm.expired, mm.entries};
        return rc;
    }
    case TALLY_OP_LIABILITY:
        return ledger_liability(l, q);
    default:
        q->res.status = TALLY_ESYNTAX;
        snprintf(q->res.message, sizeof(q->res.message), "not supported here");
        return 0;
    }
}
