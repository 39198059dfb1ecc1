/*
 * ledger_write.c — the writes (SPEC §2): credits (EARN, positive ADJUST),
 * debits (REDEEM, HOLD, negative ADJUST), releases of holds (CAPTURE,
 * VOID), reversals (claw-backs of earns, refunds of redeems and
 * captures) and transfers between accounts.
 *
 * Every write runs in three steps: plan (read the state, decide the
 * outcome: an entry or a refusal), emit (append its records to the log's
 * filling batch — or, when replaying, check them against the logged
 * ones), apply (change the state).  Emitting before applying means a
 * failed append leaves the state as it was.
 *
 * Lots: debits take from spendable lots soonest-expiring first, then the
 * account's never-expiring pool (SPEC §1); what they took is listed in
 * their record (the allocation), which is what a refund or a void gives
 * back, to the same lots.  Every change to available, held or pending is
 * an entry whose balance/held/pending say the result (SPEC §3).
 */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ledger_int.h"

/* ---- lots ------------------------------------------------------------------ */

/* Adds delta to the lot an allocation names (the pool, or an expiring
 * lot, recreated if it was emptied); liab: to its month's liability too. */
static int ledger_lot_change(ledger *l, account *ac, const record_alloc *a, int64_t delta,
                             bool liab)
{
    int rc = 0;
    if (a->flags & RECORD_A_POOL) {
        ac->h.pool += delta;
        ac->h.lots_total += delta;
        assert(ac->h.pool >= 0);
    } else {
        rc = account_lot_add(l->st, ac, a->expkey, a->seq, delta);
    }
    if (rc == 0 && liab)
        rc = ledger_liability_add(l, ac->m, (a->flags & RECORD_A_POOL) ? UINT64_MAX : a->expkey,
                                  delta);
    return rc;
}

/* Plans a debit of `amount` from the account's spendable lots, soonest
 * expiry first, the pool last (skipping the lot of skip_seq, and the pool
 * if skip_pool): allocations into l->allocs from index *n on; *taken is
 * what they hold (< amount if short). */
static int ledger_plan_debit(ledger *l, account *ac, int64_t amount, uint64_t ts_ms,
                             uint64_t skip_seq, bool skip_pool, uint32_t *n, int64_t *taken)
{
    int64_t got = 0;
    account_pos pos;
    account_lot lot;
    int rc;
    for (rc = account_lot_first(l->st, ac, &pos, &lot); rc == 0 && got < amount;
         rc = account_lot_next(l->st, ac, &pos, &lot)) {
        if (ledger_due(lot.expkey, ts_ms) || lot.seq == skip_seq)
            continue; /* expired (its entry comes first) or the caller's own */
        int64_t take = amount - got < lot.remaining ? amount - got : lot.remaining;
        rc = ledger_grow_allocs(&l->allocs, &l->allocs_cap, *n + 1);
        if (rc < 0)
            return rc;
        l->allocs[(*n)++] = (record_alloc){.seq = lot.seq, .expkey = lot.expkey, .points = take};
        got += take;
    }
    if (rc < 0)
        return rc;
    if (got < amount && !skip_pool && ac->h.pool > 0) {
        int64_t take = amount - got < ac->h.pool ? amount - got : ac->h.pool;
        rc = ledger_grow_allocs(&l->allocs, &l->allocs_cap, *n + 1);
        if (rc < 0)
            return rc;
        l->allocs[(*n)++] = (record_alloc){.flags = RECORD_A_POOL, .expkey = UINT64_MAX,
                                           .points = take};
        got += take;
    }
    *taken = got;
    return 0;
}

int ledger_return_allocs(ledger *l, account *ac, const record_alloc *al, uint32_t n,
                         int64_t from, int64_t to, bool liab)
{
    /* Each allocation covers [pos, pos + points) of the list; the overlap
     * with [from, to) goes back, the last allocation first. */
    int64_t pos = 0;
    for (uint32_t i = 0; i < n; i++)
        pos += al[i].points;
    for (uint32_t i = n; i-- > 0;) {
        int64_t hi = pos, lo = pos - al[i].points;
        pos = lo;
        int64_t s = lo > from ? lo : from, e = hi < to ? hi : to;
        if (e <= s)
            continue;
        int rc = ledger_lot_change(l, ac, &al[i], e - s, liab);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Allocations [from, to) of a list into out (grown): returns the count. */
static int ledger_slice_allocs(const record_alloc *al, uint32_t n, int64_t from, int64_t to,
                               record_alloc **out, uint32_t *out_cap, uint32_t *count)
{
    int64_t pos = 0;
    uint32_t k = 0;
    for (uint32_t i = 0; i < n; i++) {
        int64_t lo = pos, hi = pos + al[i].points;
        pos = hi;
        int64_t s = lo > from ? lo : from, e = hi < to ? hi : to;
        if (e <= s)
            continue;
        int rc = ledger_grow_allocs(out, out_cap, k + 1);
        if (rc < 0)
            return rc;
        (*out)[k] = al[i];
        (*out)[k++].points = e - s;
    }
    *count = k;
    return 0;
}

/* The outcome fields of an entry from the account's totals after it. */
static void ledger_result(record *r, const account_hdr *after)
{
    r->balance = after->lots_total - after->pending_total - after->debt;
    r->held = after->held;
    r->pending = after->pending_total;
}

static bool ledger_hdr_ok(const account_hdr *h)
{
    account tmp = {.h = *h};
    return ledger_balance_ok(&tmp);
}

/* The account's totals and merchant counters after an entry. */
static int ledger_count_entry(ledger *l, account *ac, ledger_merchant d)
{
    d.entries += 1;
    d.accounts += ac->exists ? 0 : 1;
    int rc = ledger_acct_save(l, ac);
    return rc == 0 ? ledger_merchant_add(l, ac->m, &d) : rc;
}

/* Engine entries due for an account before a write touches it. */
static int ledger_due_first(ledger *l, ledger_x *x, uint64_t m, uint64_t a)
{
    uint32_t budget = UINT32_MAX;
    int rc = ledger_due_entries(l, x, m, a, &budget);
    if (rc == 0 && x->engine_entries) {
        /* acc[2] holds the account as stored now: the write takes it
         * instead of loading it again (the structs own their buffers, so
         * they are swapped whole). */
        account t = l->acc[0];
        l->acc[0] = l->acc[2];
        l->acc[2] = t;
        l->acc0_loaded = true;
    }
    return rc < 0 ? rc : 0;
}

/* The write's account into acc[0]: as ledger_due_first left it, or loaded. */
static int ledger_write_acct(ledger *l, uint64_t m, uint64_t a)
{
    account *ac = &l->acc[0];
    bool ready = l->acc0_loaded && ac->m == m && ac->a == a;
    l->acc0_loaded = false;
    return ready ? 0 : ledger_acct_load(l, ac, m, a);
}

/* After a write that gave points back to lots (a void, a refund): those
 * whose expiry passed expire now — as many as the batch takes, the rest
 * with the sweep (never a reason to retry the write, already applied). */
static int ledger_due_after(ledger *l, ledger_x *x, uint64_t m, uint64_t a)
{
    uint32_t budget = UINT32_MAX;
    int rc = ledger_due_entries(l, x, m, a, &budget);
    return rc == TALLY_ETOOBIG || rc > 0 ? 0 : rc;
}

/* ---- credits: earn, positive adjust ---------------------------------------- */

static int ledger_credit(ledger *l, ledger_x *x, tally_request *q)
{
    record *r = &l->rec[0];
    ledger_record_from_request(q, 0, r);
    account *ac = &l->acc[0];
    int rc = ledger_write_acct(l, q->merchant, q->account);
    if (rc == 0 && x->legacy)
        rc = ledger_mature_silently(l, ac, x->ts_ms);
    if (rc < 0)
        return rc;
    int64_t amount = q->points;
    if (q->expires && q->expires <= x->ts_ms / 1000)
        return ledger_refuse(l, x, q, r, TALLY_EINVALID, R_EXPIRED);
    bool pending = q->available_at && q->available_at > x->ts_ms / 1000;
    int64_t repay = pending ? 0 : (ac->h.debt < amount ? ac->h.debt : amount);
    uint64_t expkey = ledger_expkey(q->expires);
    account_hdr after = ac->h;
    after.debt -= repay;
    after.lots_total += amount - repay;
    if (pending)
        after.pending_total += amount;
    after.earned += amount;
    if (!ledger_hdr_ok(&after))
        return ledger_refuse(l, x, q, r, TALLY_EINVALID, R_BALANCE_LIMIT);
    r->points = pending ? 0 : amount;
    r->amount = amount;
    ledger_result(r, &after);
    log_loc loc;
    rc = ledger_emit_entry(l, x, r, ac, NULL, 0, &loc);
    if (rc < 0)
        return rc;
    ac->h.debt -= repay;
    ac->h.earned += amount;
    int64_t lot = amount - repay;
    if (lot > 0 && pending)
        rc = account_pending_add(ac, &(account_lot){.expkey = expkey, .seq = r->seq,
                                                    .remaining = lot,
                                                    .available_at = q->available_at});
    else if (lot > 0)
        rc = ledger_lot_change(l, ac,
                               &(record_alloc){.flags = expkey == UINT64_MAX ? RECORD_A_POOL : 0,
                                               .seq = r->seq, .expkey = expkey},
                               lot, false);
    /* Lots that can expire or mature are named after their earn. */
    if (rc == 0 && lot > 0 && (pending || expkey != UINT64_MAX))
        rc = ledger_lot_id_put(l, r->seq, LOT_ID_PLAIN, r->id, r->id_len);
    if (rc == 0)
        rc = ledger_liability_add(l, q->merchant, expkey, lot);
    if (rc == 0)
        rc = ledger_liability_add(l, q->merchant, UINT64_MAX, repay);
    if (rc == 0)
        rc = ledger_count_entry(l, ac, (ledger_merchant){.earned = amount, .outstanding = amount});
    if (rc == 0)
        ledger_answer_write(x, q, r);
    return rc;
}

/* ---- debits: redeem, hold, negative adjust ---------------------------------- */

static int ledger_debit(ledger *l, ledger_x *x, tally_request *q)
{
    bool hold = q->op == TALLY_OP_HOLD, adjust = q->op == TALLY_OP_ADJUST;
    int64_t amount = adjust ? -q->points : q->points;
    record *r = &l->rec[0];
    ledger_record_from_request(q, 0, r);
    account *ac = &l->acc[0];
    int rc = ledger_write_acct(l, q->merchant, q->account);
    if (rc == 0 && x->legacy)
        rc = ledger_mature_silently(l, ac, x->ts_ms);
    if (rc < 0)
        return rc;
    if (!adjust && ledger_available(ac) < amount)
        return ledger_refuse(l, x, q, r, TALLY_EINSUFFICIENT, R_INSUFFICIENT);
    uint32_t n = 0;
    int64_t taken = 0;
    rc = ledger_plan_debit(l, ac, amount, x->ts_ms, 0, false, &n, &taken);
    if (rc < 0)
        return rc;
    if (!adjust && taken < amount) /* debt makes available < lots */
        return ledger_refuse(l, x, q, r, TALLY_EINSUFFICIENT, R_INSUFFICIENT);
    account_hdr after = ac->h;
    after.lots_total -= taken;
    after.debt += amount - taken;
    if (hold)
        after.held += amount;
    else
        after.redeemed += amount;
    if (!ledger_hdr_ok(&after))
        return ledger_refuse(l, x, q, r, TALLY_EINVALID, R_BALANCE_LIMIT);
    rc = ledger_reserve(l, x, 1 + n / 24);
    if (rc < 0)
        return rc;
    r->points = -amount;
    r->amount = amount;
    ledger_result(r, &after);
    log_loc loc;
    rc = ledger_emit_entry(l, x, r, ac, l->allocs, n, &loc);
    for (uint32_t i = 0; rc == 0 && i < n; i++)
        rc = ledger_lot_change(l, ac, &l->allocs[i], -l->allocs[i].points, !hold);
    ac->h.debt += amount - taken;
    if (rc == 0)
        rc = ledger_liability_add(l, q->merchant, UINT64_MAX, -(amount - taken));
    if (rc == 0 && hold) {
        uint64_t timeout = q->flags & TALLY_REQ_TIMEOUT ? q->timeout_s
                                                         : LIMIT_HOLD_TIMEOUT_DEFAULT_S;
        account_hold h = {.seq = r->seq, .amount = amount,
                          .deadline_s = r->ts_ms / 1000 + timeout};
        rc = account_hold_add(ac, &h);
        uint8_t k[8], v[16];
        ledger_be64(k, r->seq);
        ledger_key2(v, q->merchant, q->account);
        if (rc == 0)
            rc = state_put(l->st, STATE_HOLDS, k, 8, v, 16);
    } else if (rc == 0) {
        ac->h.redeemed += amount;
    }
    ledger_merchant d = {.redeemed = hold ? 0 : amount, .outstanding = hold ? 0 : -amount};
    if (rc == 0)
        rc = ledger_count_entry(l, ac, d);
    if (rc == 0)
        ledger_answer_write(x, q, r);
    return rc;
}

/* ---- holds: capture, void (client or engine) ---------------------------------- */

int ledger_release(ledger *l, ledger_x *x, tally_request *q, const record *hold,
                   int64_t capture)
{
    uint64_t m = hold->merchant, a = hold->account;
    record *r = &l->rec[0];
    if (q) {
        ledger_record_from_request(q, 0, r);
    } else {
        memset(r, 0, offsetof(record, id));
        r->type = RECORD_ENTRY;
        r->kind = TALLY_KIND_VOID;
        r->merchant = m;
        r->ref_len = hold->id_len;
        memcpy(r->ref, hold->id, hold->id_len);
        int rc = ledger_engine_id(l, m, "~void:", hold->id, hold->id_len, r->id, &r->id_len);
        if (rc < 0)
            return rc;
    }
    r->account = a;
    account *ac = &l->acc[0];
    int rc = ledger_acct_load(l, ac, m, a);
    if (rc == 0 && x->legacy)
        rc = ledger_mature_silently(l, ac, x->ts_ms);
    if (rc < 0)
        return rc;
    int idx = account_hold_find(ac, hold->seq);
    if (idx < 0 && !q)
        return TALLY_ECORRUPT; /* the engine voids open holds only */
    if (idx < 0)
        return ledger_refuse(l, x, q, r, TALLY_EINVALID, R_CLOSED);
    account_hold h = ac->holds[idx];
    if (capture < 0)
        capture = h.amount; /* CAPTURE without POINTS: all of it */
    if (capture > h.amount)
        return ledger_refuse(l, x, q, r, TALLY_EINVALID, R_CAPTURE_EXCEEDS);
    record held_rec;
    uint32_t n = 0;
    rc = ledger_read_allocs(l, hold->seq, &held_rec, &n);
    if (rc < 0)
        return rc == TALLY_EARCHIVED ? TALLY_ECORRUPT : rc; /* open holds are retained */
    uint32_t kept = 0;
    rc = ledger_slice_allocs(l->allocs2, n, 0, capture, &l->allocs, &l->allocs_cap, &kept);
    if (rc == 0)
        rc = ledger_reserve(l, x, 1 + kept / 24);
    if (rc < 0)
        return rc;
    int64_t released = h.amount - capture;
    account_hdr after = ac->h;
    after.held -= h.amount;
    after.lots_total += released;
    after.redeemed += capture;
    r->points = released;
    r->amount = capture > 0 ? capture : released;
    ledger_result(r, &after);
    log_loc loc;
    rc = ledger_emit_entry(l, x, r, ac, capture > 0 ? l->allocs : NULL, capture > 0 ? kept : 0,
                           &loc);
    /* The first `capture` points of the hold are kept; the rest go back. */
    if (rc == 0)
        rc = ledger_return_allocs(l, ac, l->allocs2, n, capture, h.amount, false);
    for (uint32_t i = 0; rc == 0 && i < kept; i++)
        rc = ledger_liability_add(l, m,
                                  (l->allocs[i].flags & RECORD_A_POOL) ? UINT64_MAX
                                                                       : l->allocs[i].expkey,
                                  -l->allocs[i].points);
    if (rc == 0) {
        account_hold_remove(ac, (uint32_t)idx);
        ac->h.redeemed += capture;
        uint8_t k[8];
        ledger_be64(k, hold->seq);
        /* The account's hold is the row it has. */
        rc = state_del_known(l->st, STATE_HOLDS, k, 8) < 0 ? TALLY_EFAILED : 0;
    }
    if (rc == 0)
        rc = ledger_count_entry(l, ac,
                                (ledger_merchant){.redeemed = capture, .outstanding = -capture});
    if (rc == 0 && q)
        ledger_answer_write(x, q, r);
    if (rc == 0 && released > 0)
        rc = ledger_due_after(l, x, m, a); /* released into expired lots */
    return rc;
}

static int ledger_hold_op(ledger *l, ledger_x *x, tally_request *q)
{
    /* On the stack: the engine entries below use the ledger's records. */
    record hold, *t = &hold;
    int rc = ledger_target(l, q->merchant, q->ref, q->ref_len, t);
    record *r = &l->rec[0];
    ledger_record_from_request(q, 0, r);
    if (rc == 1)
        return ledger_refuse(l, x, q, r, TALLY_ENOTFOUND, R_NOTFOUND);
    if (rc == TALLY_EARCHIVED) /* open holds are retained: this one is closed */
        return ledger_refuse(l, x, q, r, TALLY_EINVALID, R_ARCHIVED_TARGET);
    if (rc < 0)
        return rc;
    r->account = t->account;
    if (t->type != RECORD_ENTRY || t->kind != TALLY_KIND_HOLD)
        return ledger_refuse(l, x, q, r, TALLY_EINVALID, R_NOT_HOLD);
    /* The engine may void it now (timed out): then it is closed. */
    rc = ledger_due_first(l, x, q->merchant, t->account);
    if (rc < 0)
        return rc;
    ledger_record_from_request(q, 0, r); /* the engine entries used it */
    int64_t capture = 0;
    if (q->op == TALLY_OP_CAPTURE)
        capture = q->flags & TALLY_REQ_POINTS ? q->points : -1;
    return ledger_release(l, x, q, &hold, capture);
}

/* ---- reverse -------------------------------------------------------------------- */

static int ledger_reversed(ledger *l, uint64_t m, uint64_t seq, int64_t *out)
{
    uint8_t k[16];
    const void *v;
    size_t vl;
    *out = 0;
    int rc = state_get(l->st, STATE_REVERSED, k, ledger_key2(k, m, seq), &v, &vl);
    if (rc == 0 && vl != 8)
        return TALLY_ECORRUPT;
    if (rc == 0)
        memcpy(out, v, 8);
    return rc < 0 ? rc : 0;
}

/* Claw back n points of an earn t: its own lot first (pending part
 * included), then other spendable lots, then the account owes the rest. */
static int ledger_clawback(ledger *l, ledger_x *x, tally_request *q, record *r, account *ac,
                           const record *t, int64_t n)
{
    uint64_t own_exp = ledger_expkey(t->expires);
    int pidx = account_pending_find(ac, t->seq);
    int64_t own = 0;
    bool own_pool = false;
    int rc = 0;
    if (pidx >= 0)
        own = ac->pending[pidx].remaining;
    else if (own_exp == UINT64_MAX)
        own = ac->h.pool, own_pool = true;
    else
        rc = account_lot_get(l->st, ac, own_exp, t->seq, &own);
    if (rc < 0)
        return rc;
    int64_t from_own = own < n ? own : n;
    int64_t own_pending = pidx >= 0 ? from_own : 0;
    uint32_t cnt = 0;
    if (from_own > 0) {
        rc = ledger_grow_allocs(&l->allocs, &l->allocs_cap, 1);
        if (rc < 0)
            return rc;
        l->allocs[cnt++] = (record_alloc){
            .flags = (uint8_t)((own_pool ? RECORD_A_POOL : 0) | (pidx >= 0 ? RECORD_A_PENDING : 0)),
            .seq = own_pool ? 0 : t->seq, .expkey = own_exp,
            .available_at = pidx >= 0 ? ac->pending[pidx].available_at : 0, .points = from_own};
    }
    int64_t from_lots = 0;
    rc = ledger_plan_debit(l, ac, n - from_own, x->ts_ms, t->seq, own_pool, &cnt, &from_lots);
    if (rc < 0)
        return rc;
    int64_t owed = n - from_own - from_lots;
    account_hdr after = ac->h;
    after.lots_total -= from_own + from_lots;
    after.pending_total -= own_pending;
    after.debt += owed;
    after.earned -= n;
    if (!ledger_hdr_ok(&after))
        return ledger_refuse(l, x, q, r, TALLY_EINVALID, R_BALANCE_LIMIT);
    rc = ledger_reserve(l, x, 1 + cnt / 24);
    if (rc < 0)
        return rc;
    r->points = -(n - own_pending);
    r->amount = n;
    ledger_result(r, &after);
    log_loc loc;
    rc = ledger_emit_entry(l, x, r, ac, l->allocs, cnt, &loc);
    for (uint32_t i = 0; rc == 0 && i < cnt; i++) {
        const record_alloc *al = &l->allocs[i];
        if (al->flags & RECORD_A_PENDING) {
            if (ac->pending[pidx].remaining == al->points) {
                account_pending_remove(ac, (uint32_t)pidx);
            } else {
                ac->pending[pidx].remaining -= al->points;
                ac->h.pending_total -= al->points;
                ac->h.lots_total -= al->points;
            }
            rc = ledger_liability_add(l, ac->m, al->expkey, -al->points);
        } else {
            rc = ledger_lot_change(l, ac, al, -al->points, true);
        }
    }
    ac->h.debt += owed;
    ac->h.earned -= n;
    if (rc == 0)
        rc = ledger_liability_add(l, ac->m, UINT64_MAX, -owed);
    return rc;
}

/* Refund n points of a redeem or capture t to its own lots: the most
 * recently refunded part is the end of its allocation. */
static int ledger_refund(ledger *l, ledger_x *x, tally_request *q, record *r, account *ac,
                         const record *t, int64_t left, int64_t n)
{
    record orig;
    uint32_t total = 0, cnt = 0;
    int rc = ledger_read_allocs(l, t->seq, &orig, &total);
    if (rc == TALLY_EARCHIVED)
        return ledger_refuse(l, x, q, r, TALLY_EINVALID, R_ARCHIVED_TARGET);
    if (rc == 0)
        rc = ledger_slice_allocs(l->allocs2, total, left - n, left, &l->allocs, &l->allocs_cap,
                                 &cnt);
    if (rc < 0)
        return rc;
    account_hdr after = ac->h;
    after.lots_total += n;
    after.redeemed -= n;
    if (!ledger_hdr_ok(&after))
        return ledger_refuse(l, x, q, r, TALLY_EINVALID, R_BALANCE_LIMIT);
    rc = ledger_reserve(l, x, 1 + cnt / 24);
    if (rc < 0)
        return rc;
    r->points = n;
    r->amount = n;
    ledger_result(r, &after);
    log_loc loc;
    rc = ledger_emit_entry(l, x, r, ac, l->allocs, cnt, &loc);
    if (rc == 0)
        rc = ledger_return_allocs(l, ac, l->allocs2, total, left - n, left, true);
    ac->h.redeemed -= n;
    return rc;
}

static int ledger_reverse(ledger *l, ledger_x *x, tally_request *q)
{
    uint64_t m = q->merchant;
    /* On the stack: the engine entries below use the ledger's records. */
    record target, *t = &target;
    int rc = ledger_target(l, m, q->ref, q->ref_len, t);
    record *r = &l->rec[0];
    ledger_record_from_request(q, 0, r);
    if (rc == 1)
        return ledger_refuse(l, x, q, r, TALLY_ENOTFOUND, R_NOTFOUND);
    if (rc == TALLY_EARCHIVED)
        return ledger_refuse(l, x, q, r, TALLY_EINVALID, R_ARCHIVED_TARGET);
    if (rc < 0)
        return rc;
    r->account = t->account;
    bool credit = t->type == RECORD_ENTRY && t->kind == TALLY_KIND_EARN;
    bool debit = t->type == RECORD_ENTRY &&
                 (t->kind == TALLY_KIND_REDEEM || t->kind == TALLY_KIND_CAPTURE);
    if (!credit && !debit)
        return ledger_refuse(l, x, q, r, TALLY_EINVALID, R_NOT_REVERSIBLE);
    rc = ledger_due_first(l, x, m, t->account);
    if (rc < 0)
        return rc;
    ledger_record_from_request(q, 0, r); /* the engine entries used it */
    r->account = t->account;
    int64_t reversed;
    rc = ledger_reversed(l, m, target.seq, &reversed);
    if (rc < 0)
        return rc;
    int64_t left = target.amount - reversed;
    int64_t n = q->flags & TALLY_REQ_POINTS ? q->points : left;
    if (n <= 0 || n > left)
        return ledger_refuse(l, x, q, r, TALLY_EINVALID, R_OVER_REVERSAL);
    account *ac = &l->acc[0];
    rc = ledger_acct_load(l, ac, m, target.account);
    if (rc == 0 && x->legacy)
        rc = ledger_mature_silently(l, ac, x->ts_ms);
    if (rc < 0)
        return rc;
    rc = credit ? ledger_clawback(l, x, q, r, ac, &target, n)
                : ledger_refund(l, x, q, r, ac, &target, left, n);
    if (rc < 0 || r->type == RECORD_REFUSAL)
        return rc;
    uint8_t k[16];
    int64_t now_reversed = reversed + n;
    rc = state_put(l->st, STATE_REVERSED, k, ledger_key2(k, m, target.seq), &now_reversed, 8);
    ledger_merchant d = credit ? (ledger_merchant){.earned = -n, .outstanding = -n}
                               : (ledger_merchant){.redeemed = -n, .outstanding = n};
    if (rc == 0)
        rc = ledger_count_entry(l, ac, d);
    if (rc == 0)
        ledger_answer_write(x, q, r);
    if (rc == 0 && debit)
        rc = ledger_due_after(l, x, m, target.account); /* refunded into expired lots */
    return rc;
}

/* ---- transfer ---------------------------------------------------------------------- */

/* Everything the sender has: spendable lots, the pool, pending lots. */
static int ledger_plan_all(ledger *l, account *ac, uint64_t ts_ms, uint32_t *n, int64_t *avail,
                           int64_t *pend)
{
    int64_t got = 0;
    int rc = ledger_plan_debit(l, ac, INT64_MAX, ts_ms, 0, false, n, &got);
    *avail = got;
    *pend = 0;
    for (uint32_t i = 0; rc == 0 && i < ac->h.npending; i++) {
        const account_lot *p = &ac->pending[i];
        rc = ledger_grow_allocs(&l->allocs, &l->allocs_cap, *n + 1);
        if (rc == 0)
            l->allocs[(*n)++] = (record_alloc){.flags = RECORD_A_PENDING, .seq = p->seq,
                                               .expkey = p->expkey,
                                               .available_at = p->available_at,
                                               .points = p->remaining};
        *pend += p->remaining;
    }
    return rc;
}

static int ledger_alloc_keycmp(const void *a, const void *b)
{
    const record_alloc *x = a, *y = b;
    int px = (x->flags & RECORD_A_PENDING) != 0, py = (y->flags & RECORD_A_PENDING) != 0;
    if (px != py)
        return px - py;
    if (x->available_at != y->available_at)
        return x->available_at < y->available_at ? -1 : 1;
    return x->expkey < y->expkey ? -1 : x->expkey > y->expkey;
}

/* The receiver's lots: what was taken, merged by (pending, available_at,
 * expiry) — lots keep their expiry; each becomes a lot of the receiver's
 * entry (seq 0 in its allocation: "this record's"). */
static int ledger_received(ledger *l, uint32_t n, uint32_t *out)
{
    int rc = ledger_grow_allocs(&l->allocs2, &l->allocs2_cap, n);
    if (rc < 0)
        return rc;
    memcpy(l->allocs2, l->allocs, n * sizeof(*l->allocs2));
    qsort(l->allocs2, n, sizeof(*l->allocs2), ledger_alloc_keycmp);
    uint32_t k = 0;
    for (uint32_t i = 0; i < n; i++) {
        record_alloc a = l->allocs2[i];
        bool pool = !(a.flags & RECORD_A_PENDING) && a.expkey == UINT64_MAX;
        a.flags = (uint8_t)((a.flags & RECORD_A_PENDING) | (pool ? RECORD_A_POOL : 0));
        a.seq = 0;
        if (k > 0 && ledger_alloc_keycmp(&l->allocs2[k - 1], &a) == 0 &&
            l->allocs2[k - 1].flags == a.flags)
            l->allocs2[k - 1].points += a.points;
        else
            l->allocs2[k++] = a;
    }
    *out = k;
    return 0;
}

/* Applies a transfer to both accounts (the records are emitted). */
static int ledger_transfer_apply(ledger *l, account *from, account *to, uint32_t n,
                                 uint32_t received, uint64_t to_seq, int64_t total)
{
    int rc = 0;
    bool pending_moved = false;
    for (uint32_t i = 0; rc == 0 && i < n; i++) {
        const record_alloc *al = &l->allocs[i];
        if (al->flags & RECORD_A_PENDING)
            pending_moved = true; /* ALL: every pending lot goes, cleared below */
        else
            rc = ledger_lot_change(l, from, al, -al->points, false);
    }
    while (rc == 0 && pending_moved && from->h.npending > 0)
        account_pending_remove(from, from->h.npending - 1);
    from->h.transferred -= total;
    bool named = false;
    for (uint32_t i = 0; rc == 0 && i < received; i++) {
        record_alloc al = l->allocs2[i];
        al.seq = to_seq;
        if (al.flags & RECORD_A_PENDING)
            rc = account_pending_add(to, &(account_lot){.expkey = al.expkey, .seq = to_seq,
                                                        .remaining = al.points,
                                                        .available_at = al.available_at});
        else
            rc = ledger_lot_change(l, to, &al, al.points, false);
        named = named || (al.flags & RECORD_A_PENDING) || al.expkey != UINT64_MAX;
    }
    to->h.transferred += total;
    if (rc == 0 && named) {
        record *rr = &l->rec[1];
        rc = ledger_lot_id_put(l, to_seq, LOT_ID_RECEIVED, rr->id, rr->id_len);
    }
    return rc;
}

static int ledger_transfer(ledger *l, ledger_x *x, tally_request *q)
{
    uint64_t m = q->merchant;
    bool all = q->flags & TALLY_REQ_ALL;
    int rc = ledger_due_first(l, x, m, q->account);
    if (rc == 0)
        rc = ledger_due_first(l, x, m, q->account2);
    if (rc < 0)
        return rc;
    record *r = &l->rec[0], *rr = &l->rec[1];
    ledger_record_from_request(q, 0, r);
    account *from = &l->acc[0], *to = &l->acc[1];
    rc = ledger_acct_load(l, from, m, q->account);
    if (rc == 0)
        rc = ledger_acct_load(l, to, m, q->account2);
    if (rc < 0)
        return rc;
    if (all && from->h.nholds > 0)
        return ledger_refuse(l, x, q, r, TALLY_EINVALID, R_TRANSFER_HOLDS);
    if (all && from->h.debt > 0)
        return ledger_refuse(l, x, q, r, TALLY_EINVALID, R_TRANSFER_DEBT);
    uint32_t n = 0;
    int64_t avail = 0, pend = 0;
    if (all) {
        rc = ledger_plan_all(l, from, x->ts_ms, &n, &avail, &pend);
    } else {
        if (ledger_available(from) < q->points)
            return ledger_refuse(l, x, q, r, TALLY_EINSUFFICIENT, R_INSUFFICIENT);
        rc = ledger_plan_debit(l, from, q->points, x->ts_ms, 0, false, &n, &avail);
        if (rc == 0 && avail < q->points)
            return ledger_refuse(l, x, q, r, TALLY_EINSUFFICIENT, R_INSUFFICIENT);
    }
    uint32_t received = 0;
    if (rc == 0)
        rc = ledger_received(l, n, &received);
    if (rc < 0)
        return rc;
    int64_t total = avail + pend;
    account_hdr fa = from->h, ta = to->h;
    fa.lots_total -= total;
    fa.pending_total -= pend;
    ta.lots_total += total;
    ta.pending_total += pend;
    if (!ledger_hdr_ok(&fa) || !ledger_hdr_ok(&ta))
        return ledger_refuse(l, x, q, r, TALLY_EINVALID, R_BALANCE_LIMIT);
    rc = ledger_reserve(l, x, 2 + (n + received) / 24);
    if (rc < 0)
        return rc;
    /* The sender's entry, then the receiver's "~to:ID", one group. */
    r->points = -avail;
    r->amount = total;
    r->ref_len = (uint8_t)snprintf(r->ref, sizeof(r->ref), "~to:%.*s", (int)q->id_len, q->id);
    ledger_result(r, &fa);
    *rr = *r;
    rr->account = q->account2;
    rr->account2 = q->account;
    rr->points = avail;
    rr->id_len = r->ref_len;
    memcpy(rr->id, r->ref, r->ref_len);
    rr->ref_len = q->id_len;
    memcpy(rr->ref, q->id, q->id_len);
    ledger_result(rr, &ta);
    /* Inside an EXEC the two entries are already in its group. */
    bool live = !x->src && !x->replay && !x->out && !log_group_open(l->log);
    if (live)
        log_group_begin(l->log);
    log_loc loc;
    rc = ledger_emit_entry(l, x, r, from, l->allocs, n, &loc);
    if (rc == 0)
        rc = ledger_emit_entry(l, x, rr, to, l->allocs2, received, &loc);
    if (live)
        log_group_end(l->log);
    if (rc == 0)
        rc = ledger_transfer_apply(l, from, to, n, received, rr->seq, total);
    if (rc == 0)
        rc = ledger_count_entry(l, from, (ledger_merchant){0});
    if (rc == 0)
        rc = ledger_count_entry(l, to, (ledger_merchant){0});
    if (rc == 0)
        ledger_answer_write(x, q, r);
    return rc;
}

/* ---- dispatch -------------------------------------------------------------------------- */

int ledger_write(ledger *l, ledger_x *x, tally_request *q)
{
    l->acc0_loaded = false;
    int rc = ledger_reserve(l, x, 1);
    if (rc < 0)
        return rc;
    switch (q->op) {
    case TALLY_OP_EARN:
    case TALLY_OP_REDEEM:
    case TALLY_OP_HOLD:
    case TALLY_OP_ADJUST:
        rc = ledger_due_first(l, x, q->merchant, q->account);
        if (rc < 0)
            return rc;
        if (q->op == TALLY_OP_EARN || (q->op == TALLY_OP_ADJUST && q->points > 0))
            return ledger_credit(l, x, q);
        return ledger_debit(l, x, q);
    case TALLY_OP_CAPTURE:
    case TALLY_OP_VOID:
        return ledger_hold_op(l, x, q);
    case TALLY_OP_REVERSE:
        return ledger_reverse(l, x, q);
    case TALLY_OP_TRANSFER:
        return ledger_transfer(l, x, q);
    default:
        return -EINVAL;
    }
}
