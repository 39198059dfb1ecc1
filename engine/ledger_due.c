/*
 * ledger_due.c — entries the engine writes itself (SPEC §3): a lot whose
 * expiry passed expires (`~exp:` + the lot's id), a pending lot whose
 * AVAILABLE_AT passed becomes spendable (`~avail:` + the lot's id), a
 * hold whose timeout passed is voided (`~void:` + the hold's id).  Each
 * names its lot in a one-element allocation, so a replay finds it.
 *
 * An account's due entries are written in time order (a hold that timed
 * out before a lot expired goes back to the lot first) before any write
 * touches the account, and by the sweep, which walks STATE_DUE — one row
 * per account at its next due time — in bounded chunks.
 */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "ledger_int.h"

/* What comes due next for an account. */
enum { DUE_NONE = 0, DUE_VOID, DUE_MATURE, DUE_EXPIRE_PENDING, DUE_EXPIRE };

typedef struct ledger_next {
    int what;
    uint64_t at_s;
    uint32_t index;   /* hold or pending lot */
    account_lot lot;  /* the lot that expires or matures */
} ledger_next;

/* The earliest thing due by ts_ms: ties go to holds (their points go back
 * first), then maturities, then expiries. */
static int ledger_next_due(ledger *l, account *ac, uint64_t ts_ms, ledger_next *out)
{
    *out = (ledger_next){.what = DUE_NONE, .at_s = UINT64_MAX};
    for (uint32_t i = 0; i < ac->h.nholds; i++)
        if (ledger_due(ac->holds[i].deadline_s, ts_ms) && ac->holds[i].deadline_s < out->at_s)
            *out = (ledger_next){DUE_VOID, ac->holds[i].deadline_s, i, {0}};
    for (uint32_t i = 0; i < ac->h.npending; i++) {
        const account_lot *p = &ac->pending[i];
        if (ledger_due(p->available_at, ts_ms) && p->available_at < out->at_s)
            *out = (ledger_next){DUE_MATURE, p->available_at, i, *p};
        /* Release 1 accepted an expiry before AVAILABLE_AT. */
        if (ledger_due(p->expkey, ts_ms) && p->expkey < out->at_s)
            *out = (ledger_next){DUE_EXPIRE_PENDING, p->expkey, i, *p};
    }
    account_pos pos;
    account_lot lot;
    int rc = account_lot_first(l->st, ac, &pos, &lot);
    if (rc < 0)
        return rc;
    if (rc == 0 && ledger_due(lot.expkey, ts_ms) && lot.expkey < out->at_s)
        *out = (ledger_next){DUE_EXPIRE, lot.expkey, 0, lot};
    return 0;
}

/* The lot's origin (ref of its engine entries) and its name. */
static int ledger_lot_names(ledger *l, const account_lot *lot, record *r, char *name,
                            size_t *name_len)
{
    int rc = ledger_lot_id(l, lot->seq, lot->expkey, name, name_len);
    if (rc < 0)
        return rc;
    /* The ref is the entry that made the lot: the name without a received
     * lot's "/expiry". */
    uint8_t k[8];
    ledger_be64(k, lot->seq);
    const void *v;
    size_t vl;
    rc = state_get(l->st, STATE_LOT_IDS, k, 8, &v, &vl);
    if (rc != 0 || vl < 2)
        return rc < 0 ? rc : TALLY_ECORRUPT;
    r->ref_len = (uint8_t)(vl - 1);
    memcpy(r->ref, (const uint8_t *)v + 1, vl - 1);
    return 0;
}

/* An engine entry's record for account ac: kind, id prefix + the lot's
 * name, its lot as the allocation. */
static int ledger_engine_record(ledger *l, account *ac, int kind, const char *prefix,
                                const account_lot *lot, bool pending, record *r,
                                record_alloc *al)
{
    memset(r, 0, offsetof(record, id));
    r->type = RECORD_ENTRY;
    r->kind = (uint8_t)kind;
    r->merchant = ac->m;
    r->account = ac->a;
    r->expires = lot->expkey == UINT64_MAX ? 0 : lot->expkey;
    char name[LIMIT_ENGINE_ID_BYTES_MAX];
    size_t name_len;
    int rc = ledger_lot_names(l, lot, r, name, &name_len);
    if (rc == 0)
        rc = ledger_engine_id(l, ac->m, prefix, name, name_len, r->id, &r->id_len);
    *al = (record_alloc){.flags = pending ? RECORD_A_PENDING : 0, .seq = lot->seq,
                         .expkey = lot->expkey, .available_at = pending ? lot->available_at : 0,
                         .points = lot->remaining};
    return rc;
}

/* A lot's expiry: its points are gone (from pending if it was pending). */
static int ledger_expire(ledger *l, ledger_x *x, account *ac, const account_lot *lot,
                         int pending_index)
{
    bool pending = pending_index >= 0;
    record *r = &l->rec[0];
    record_alloc al;
    int rc = ledger_engine_record(l, ac, TALLY_KIND_EXPIRE, "~exp:", lot, pending, r, &al);
    if (rc < 0)
        return rc;
    int64_t gone = lot->remaining;
    account_hdr after = ac->h;
    after.lots_total -= gone;
    if (pending)
        after.pending_total -= gone;
    r->points = pending ? 0 : -gone;
    r->amount = gone;
    r->balance = after.lots_total - after.pending_total - after.debt;
    r->held = after.held;
    r->pending = after.pending_total;
    log_loc loc;
    rc = ledger_emit_entry(l, x, r, ac, &al, 1, &loc);
    if (rc < 0)
        return rc;
    if (pending)
        account_pending_remove(ac, (uint32_t)pending_index);
    else
        rc = account_lot_add(l->st, ac, lot->expkey, lot->seq, -gone);
    ac->h.expired += gone;
    if (rc == 0)
        rc = ledger_liability_add(l, ac->m, lot->expkey, -gone);
    if (rc == 0)
        rc = ledger_acct_save(l, ac);
    ledger_merchant d = {.expired = gone, .outstanding = -gone, .entries = 1};
    return rc == 0 ? ledger_merchant_add(l, ac->m, &d) : rc;
}

/* A pending lot's AVAILABLE_AT came: its points become spendable. */
static int ledger_mature(ledger *l, ledger_x *x, account *ac, uint32_t index)
{
    account_lot lot = ac->pending[index];
    record *r = &l->rec[0];
    record_alloc al;
    int rc = ledger_engine_record(l, ac, TALLY_KIND_AVAILABLE, "~avail:", &lot, true, r, &al);
    if (rc < 0)
        return rc;
    account_hdr after = ac->h;
    after.pending_total -= lot.remaining;
    r->points = lot.remaining;
    r->amount = lot.remaining;
    r->balance = after.lots_total - after.pending_total - after.debt;
    r->held = after.held;
    r->pending = after.pending_total;
    log_loc loc;
    rc = ledger_emit_entry(l, x, r, ac, &al, 1, &loc);
    if (rc < 0)
        return rc;
    account_pending_remove(ac, index);
    if (lot.expkey == UINT64_MAX) {
        ac->h.pool += lot.remaining;
        ac->h.lots_total += lot.remaining;
    } else {
        rc = account_lot_add(l->st, ac, lot.expkey, lot.seq, lot.remaining);
    }
    if (rc == 0)
        rc = ledger_acct_save(l, ac);
    ledger_merchant d = {.entries = 1};
    return rc == 0 ? ledger_merchant_add(l, ac->m, &d) : rc;
}

/* A hold whose timeout passed is voided: its points go back. */
static int ledger_void_timed_out(ledger *l, ledger_x *x, uint64_t hold_seq)
{
    record *h = &l->rec[1];
    log_loc loc;
    int rc = log_read_seq(l->log, hold_seq, h, &loc);
    if (rc < 0)
        return rc == TALLY_EARCHIVED ? TALLY_ECORRUPT : rc; /* open holds are retained */
    record hold = *h;
    return ledger_release(l, x, NULL, &hold, 0);
}

int ledger_mature_silently(ledger *l, account *ac, uint64_t ts_ms)
{
    int rc = 0;
    while (rc == 0 && ac->h.npending > 0 && ledger_due(ac->pending[0].available_at, ts_ms)) {
        account_lot lot = ac->pending[0];
        account_pending_remove(ac, 0);
        if (lot.expkey == UINT64_MAX) {
            ac->h.pool += lot.remaining;
            ac->h.lots_total += lot.remaining;
        } else {
            rc = account_lot_add(l->st, ac, lot.expkey, lot.seq, lot.remaining);
        }
    }
    return rc;
}

int ledger_due_entries(ledger *l, ledger_x *x, uint64_t m, uint64_t a, uint32_t *budget)
{
    if (!x->engine_entries)
        return 0;
    account *ac = &l->acc[2];
    for (;;) {
        int rc = ledger_acct_load(l, ac, m, a);
        if (rc < 0)
            return rc;
        /* The account keeps its next due time: nothing before it. */
        if (!ac->exists || (ac->h.due_s > x->ts_ms / 1000 && ac->h.due_s != 0))
            return 0;
        ledger_next nx;
        rc = ledger_next_due(l, ac, x->ts_ms, &nx);
        if (rc < 0)
            return rc;
        if (nx.what == DUE_NONE) {
            /* A due row left behind (its time passed with nothing due):
             * saving moves it to the account's real next time. */
            if (ac->exists && ac->h.due_s != account_next_due(l->st, ac))
                return ledger_acct_save(l, ac);
            return 0;
        }
        if (*budget == 0)
            return 1;
        rc = ledger_reserve(l, x, 2);
        if (rc < 0)
            return rc;
        switch (nx.what) {
        case DUE_VOID:
            rc = ledger_void_timed_out(l, x, ac->holds[nx.index].seq);
            break;
        case DUE_MATURE:
            rc = ledger_mature(l, x, ac, nx.index);
            break;
        case DUE_EXPIRE_PENDING:
            rc = ledger_expire(l, x, ac, &nx.lot, (int)nx.index);
            break;
        default:
            rc = ledger_expire(l, x, ac, &nx.lot, -1);
            break;
        }
        if (rc < 0)
            return rc;
        (*budget)--;
    }
}

/* ---- replay ---------------------------------------------------------------------- */

/* The lot a replayed engine entry names: from its allocation, or (a record
 * of release 1, or a line of an import: they have none) from its ref and
 * expiry. */
static int ledger_engine_lot(ledger *l, const record *r, record_alloc *out)
{
    size_t pos = 0;
    int rc = record_alloc_next(r, &pos, out);
    if (rc == 1)
        return 0;
    if (rc < 0 || !(r->rflags & (RECORD_F_LEGACY | RECORD_F_IMPORTED)))
        return TALLY_ECORRUPT;
    uint64_t seq;
    bool refusal;
    rc = ledger_id_seq(l, r->merchant, r->ref, r->ref_len, &seq, &refusal);
    if (rc != 0 || refusal)
        return rc < 0 ? rc : TALLY_ECORRUPT;
    *out = (record_alloc){.seq = seq, .expkey = ledger_expkey(r->expires)};
    return 0;
}

int ledger_replay_engine(ledger *l, ledger_x *x, const record *r)
{
    if (r->kind == TALLY_KIND_VOID) {
        record *t = &l->rec[1];
        int rc = ledger_target(l, r->merchant, r->ref, r->ref_len, t);
        if (rc != 0)
            return rc < 0 ? rc : TALLY_ECORRUPT;
        record hold = *t;
        return ledger_release(l, x, NULL, &hold, 0);
    }
    record_alloc want;
    int rc = ledger_engine_lot(l, r, &want);
    account *ac = &l->acc[2];
    if (rc == 0)
        rc = ledger_acct_load(l, ac, r->merchant, r->account);
    if (rc == 0 && x->legacy)
        rc = ledger_mature_silently(l, ac, x->ts_ms);
    if (rc < 0)
        return rc;
    /* A pending lot (by seq and expiry), else a spendable one. */
    for (uint32_t i = 0; i < ac->h.npending; i++) {
        const account_lot *p = &ac->pending[i];
        if (p->seq == want.seq && p->expkey == want.expkey &&
            (!(want.flags & RECORD_A_PENDING) || p->available_at == want.available_at)) {
            account_lot lot = *p;
            return r->kind == TALLY_KIND_AVAILABLE ? ledger_mature(l, x, ac, i)
                                                   : ledger_expire(l, x, ac, &lot, (int)i);
        }
    }
    if (r->kind != TALLY_KIND_EXPIRE)
        return TALLY_ECORRUPT;
    account_lot lot = {.expkey = want.expkey, .seq = want.seq};
    rc = account_lot_get(l->st, ac, want.expkey, want.seq, &lot.remaining);
    if (rc < 0)
        return rc;
    if (lot.remaining == 0) {
        ledger_say(l, 2, "replay of seq %llu: the lot it expires is not there",
                   (unsigned long long)r->seq);
        return TALLY_ECORRUPT;
    }
    return ledger_expire(l, x, ac, &lot, -1);
}

/* ---- the sweep ---------------------------------------------------------------------- */

typedef struct ledger_due_list {
    uint64_t t[64], m[64], a[64];
    uint32_t n;
} ledger_due_list;

static int ledger_collect_due(void *ctx, const void *k, size_t kl, const void *v, size_t vl)
{
    (void)v;
    (void)vl;
    ledger_due_list *d = ctx;
    if (kl != 24)
        return TALLY_ECORRUPT;
    d->t[d->n] = ledger_get_be64(k);
    d->m[d->n] = ledger_get_be64((const uint8_t *)k + 8);
    d->a[d->n] = ledger_get_be64((const uint8_t *)k + 16);
    return ++d->n == 64 ? 1 : 0;
}

int ledger_sweep(ledger *l, uint64_t now_ms, uint32_t max, uint32_t *count, bool *more)
{
    uint64_t ts = now_ms > l->last_ts_ms ? now_ms : l->last_ts_ms;
    ledger_x x = {.ts_ms = ts, .engine_entries = true};
    uint32_t budget = max;
    *count = 0;
    *more = false;
    uint8_t to[24];
    ledger_key3(to, ts / 1000 + 1, 0, 0);
    ledger_due_list d = {.n = 0};
    int rc = state_scan(l->st, STATE_DUE, NULL, 0, to, sizeof(to), ledger_collect_due, &d);
    if (rc < 0)
        return rc;
    for (uint32_t i = 0; i < d.n; i++) {
        /* A row that is not the account's due time any more (never
         * expected: the account keeps its row) would come back every
         * turn: it goes. */
        rc = ledger_acct_load(l, &l->acc[2], d.m[i], d.a[i]);
        if (rc < 0)
            return rc;
        if (l->acc[2].h.due_s != d.t[i]) {
            uint8_t k[24];
            rc = state_del(l->st, STATE_DUE, k, ledger_key3(k, d.t[i], d.m[i], d.a[i]));
            if (rc < 0)
                return rc;
            continue;
        }
        rc = ledger_due_entries(l, &x, d.m[i], d.a[i], &budget);
        if (rc == 1 || rc == TALLY_ETOOBIG) {
            *more = true;
            break;
        }
        if (rc < 0)
            return rc;
    }
    /* A full list may have more behind it: the next turn looks again. */
    if (d.n == 64)
        *more = true;
    *count = max - budget;
    return 0;
}
