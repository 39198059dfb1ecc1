/*
 * ledger_emit.c — records in and out of the ledger: building a write's
 * record, emitting it (appended live, checked against the log in replay,
 * appended with its original seq when converting release 1), refusals,
 * idempotency, the entries an id names, merchant totals, liability by
 * month, and the names of lots.
 */
#include <assert.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "ledger_int.h"

const char *const ledger_reasons[R_COUNT_] = {
    "",
    "not enough available points",
    "referenced entry not found",
    "referenced entry is not a hold",
    "hold is already closed",
    "capture exceeds the held points",
    "entry cannot be reversed",
    "reversal exceeds the original amount",
    "balance limit exceeded",
    "too many lots for one debit",
    "expiry is already past",
    "the referenced entry belongs to another merchant's request",
    "TRANSFER ALL while the sender has open holds",
    "TRANSFER ALL while the sender owes points (negative balance)",
    "the referenced entry lies before the retained log",
};

/* ---- building and emitting ----------------------------------------------- */

static int ledger_op_kind(int op)
{
    switch (op) {
    case TALLY_OP_EARN: return TALLY_KIND_EARN;
    case TALLY_OP_REDEEM: return TALLY_KIND_REDEEM;
    case TALLY_OP_HOLD: return TALLY_KIND_HOLD;
    case TALLY_OP_CAPTURE: return TALLY_KIND_CAPTURE;
    case TALLY_OP_VOID: return TALLY_KIND_VOID;
    case TALLY_OP_REVERSE: return TALLY_KIND_REVERSE;
    case TALLY_OP_ADJUST: return TALLY_KIND_ADJUST;
    case TALLY_OP_TRANSFER: return TALLY_KIND_TRANSFER;
    default: return TALLY_KIND_NONE;
    }
}

int ledger_kind_op(int kind)
{
    static const uint8_t ops[TALLY_KIND_COUNT] = {
        [TALLY_KIND_EARN] = TALLY_OP_EARN,       [TALLY_KIND_REDEEM] = TALLY_OP_REDEEM,
        [TALLY_KIND_HOLD] = TALLY_OP_HOLD,       [TALLY_KIND_CAPTURE] = TALLY_OP_CAPTURE,
        [TALLY_KIND_VOID] = TALLY_OP_VOID,       [TALLY_KIND_REVERSE] = TALLY_OP_REVERSE,
        [TALLY_KIND_ADJUST] = TALLY_OP_ADJUST,   [TALLY_KIND_TRANSFER] = TALLY_OP_TRANSFER,
    };
    return kind > TALLY_KIND_NONE && kind < TALLY_KIND_COUNT ? ops[kind] : TALLY_OP_NONE;
}

void ledger_record_from_request(const tally_request *q, int kind, record *r)
{
    memset(r, 0, offsetof(record, id));
    r->type = RECORD_ENTRY;
    r->kind = (uint8_t)(kind ? kind : ledger_op_kind(q->op));
    r->merchant = q->merchant;
    r->account = q->account;
    r->account2 = q->account2;
    r->req_points = q->points;
    r->expires = q->expires;
    r->available_at = q->available_at;
    r->timeout_s = (uint32_t)q->timeout_s;
    r->req_flags = q->flags;
    r->id_len = q->id_len;
    r->ref_len = q->ref_len;
    r->memo_len = q->memo_len;
    memcpy(r->id, q->id, q->id_len);
    memcpy(r->ref, q->ref, q->ref_len);
    memcpy(r->memo, q->memo, q->memo_len);
}

int ledger_reserve(ledger *l, const ledger_x *x, uint32_t records)
{
    if (x->src || x->out)
        return 0;
    /* An EXEC's writes share its group, which must lie in one batch: they
     * take the room they need, up to the batch's hard limit (shard.c
     * starts an EXEC in an empty batch and undoes it if it fails). */
    if (log_group_open(l->log))
        return 0;
    /* An empty batch takes any one write (its buffer grows); a started
     * one is sealed first when the write would pass the soft limit. */
    size_t need = (size_t)records * LIMIT_RECORD_BYTES_MAX;
    if (log_batch_bytes(l->log) > 0 && !log_batch_room(l->log, need))
        return TALLY_ETOOBIG;
    return 0;
}

/* Replay: does the logged record g say what re-executing gave (r)? */
static bool ledger_same_outcome(const record *g, const record *r)
{
    return g->type == r->type && g->kind == r->kind && g->error == r->error &&
           g->reason == r->reason && g->account == r->account && g->account2 == r->account2 &&
           g->points == r->points && g->amount == r->amount && g->balance == r->balance &&
           g->held == r->held && g->pending == r->pending && g->acct_prev == r->acct_prev &&
           g->alloc_count == r->alloc_count && g->alloc_len == r->alloc_len &&
           memcmp(g->alloc, r->alloc, r->alloc_len) == 0 && g->id_len == r->id_len &&
           memcmp(g->id, r->id, r->id_len) == 0 && g->ref_len == r->ref_len &&
           memcmp(g->ref, r->ref, r->ref_len) == 0;
}

/* Replay: the next logged record of this write, checked against r. */
static int ledger_emit_replayed(ledger *l, ledger_x *x, record *r, log_loc *loc)
{
    record pulled;
    const record *g = x->replay;
    if (g) {
        *loc = x->replay_loc;
        x->replay = NULL;
    } else {
        int rc = x->src ? x->src->next(x->src->ctx, &pulled, loc) : 0;
        if (rc < 0)
            return rc;
        if (rc == 0) {
            ledger_say(l, 2, "replay: the log ends inside a write (%s %.*s)",
                       tally_kind_name(r->kind), (int)r->id_len, r->id);
            return TALLY_ECORRUPT;
        }
        g = &pulled;
    }
    if (!ledger_same_outcome(g, r)) {
        ledger_say(l, 2,
                   "replay diverges at seq %llu part %u (%s %.*s): log says points %lld amount "
                   "%lld balance %lld held %lld pending %lld error %u, replay gives %lld %lld "
                   "%lld %lld %lld error %u",
                   (unsigned long long)g->seq, g->part, tally_kind_name(g->kind),
                   (int)g->id_len, g->id, (long long)g->points, (long long)g->amount,
                   (long long)g->balance, (long long)g->held, (long long)g->pending, g->error,
                   (long long)r->points, (long long)r->amount, (long long)r->balance,
                   (long long)r->held, (long long)r->pending, r->error);
        return TALLY_ECORRUPT;
    }
    r->seq = g->seq;
    r->part = g->part;
    r->ts_ms = g->ts_ms;
    r->prev = g->prev;
    r->batch_back = g->batch_back;
    r->group_back = g->group_back;
    r->rflags = g->rflags;
    return 0;
}

int ledger_emit(ledger *l, ledger_x *x, record *r, log_loc *loc)
{
    r->epoch = l->epoch;
    if (x->legacy)
        r->rflags |= RECORD_F_LEGACY;
    if (x->imported)
        r->rflags |= RECORD_F_IMPORTED;
    int rc;
    if (x->src || x->replay) {
        rc = ledger_emit_replayed(l, x, r, loc);
    } else if (x->out) {
        r->ts_ms = x->ts_ms;
        rc = log_append_keep_ts(x->out, r, loc);
        if (rc == 0 && r->part == 0 && x->out_got)
            memcpy(x->out_got, r, offsetof(record, id));
        if (rc == 0 && r->seq != x->out_seq) {
            ledger_say(l, 2, "upgrade: seq %llu written as %llu", (unsigned long long)x->out_seq,
                       (unsigned long long)r->seq);
            rc = TALLY_ECORRUPT;
        }
    } else if (x->imported) {
        r->ts_ms = x->ts_ms; /* an import keeps each entry's own time */
        rc = log_append_keep_ts(l->log, r, loc);
    } else {
        rc = log_append(l->log, r, x->ts_ms, loc);
    }
    if (rc < 0)
        return rc;
    l->emit_ts = r->ts_ms;
    l->emit_imported = (r->rflags & RECORD_F_IMPORTED) != 0;
    if (r->type != RECORD_ALLOC && r->id_len > 0 && r->seq > ids_covered_seq(l->ids)) {
        ids_key k = ledger_ids_key(l, r->merchant, r->id, r->id_len);
        rc = ids_put(l->ids, k, r->seq << 1 | (r->type == RECORD_REFUSAL));
        if (rc < 0)
            return rc;
    }
    l->delta_records++;
    if (r->ts_ms > l->last_ts_ms)
        l->last_ts_ms = r->ts_ms;
    return 0;
}

int ledger_emit_allocs(ledger *l, ledger_x *x, record *r, const record_alloc *al, uint32_t n,
                       log_loc *loc)
{
    uint32_t i = 0;
    r->alloc_count = 0;
    r->alloc_len = 0;
    while (i < n && record_alloc_add(r, &al[i]))
        i++;
    if (i < n)
        r->rflags |= RECORD_F_MORE;
    int rc = ledger_emit(l, x, r, loc);
    record *p = &l->rec[2];
    assert(p != r);
    while (rc == 0 && i < n) {
        memset(p, 0, offsetof(record, id));
        p->type = RECORD_ALLOC;
        p->kind = r->kind;
        p->merchant = r->merchant;
        p->account = r->account;
        while (i < n && record_alloc_add(p, &al[i]))
            i++;
        assert(p->alloc_count > 0);
        if (i < n)
            p->rflags |= RECORD_F_MORE;
        log_loc at;
        rc = ledger_emit(l, x, p, &at);
    }
    return rc;
}

int ledger_emit_entry(ledger *l, ledger_x *x, record *r, account *ac, const record_alloc *al,
                      uint32_t n, log_loc *loc)
{
    r->acct_prev = ac->h.head_seq;
    int rc = ledger_emit_allocs(l, x, r, al, n, loc);
    if (rc == 0)
        ac->h.head_seq = r->seq;
    return rc;
}

void ledger_answer_entry(tally_request *q, const record *r)
{
    q->res.status = 0;
    q->res.message[0] = 0;
    q->res.found = true;
    ledger_entry_from_record(r, &q->res.entry);
}

void ledger_answer_refusal(tally_request *q, int code, int reason)
{
    q->res.status = code;
    snprintf(q->res.message, sizeof(q->res.message), "%s",
             reason > 0 && reason < R_COUNT_ ? ledger_reasons[reason] : "refused");
}

int ledger_refuse(ledger *l, ledger_x *x, tally_request *q, record *r, int code, int reason)
{
    r->type = RECORD_REFUSAL;
    r->error = (uint8_t)(TALLY_EBASE - code);
    r->reason = (uint8_t)reason;
    r->points = r->amount = r->balance = r->held = r->pending = 0;
    r->acct_prev = 0;
    r->alloc_count = r->alloc_len = 0;
    r->rflags &= (uint16_t)~RECORD_F_MORE;
    log_loc loc;
    int rc = ledger_emit(l, x, r, &loc);
    if (rc == 0 && q && !x->unanswered)
        ledger_answer_refusal(q, code, reason);
    return rc;
}

void ledger_entry_from_record(const record *r, tally_entry *e)
{
    /* The fixed part only: zeroing the id, ref and memo arrays too (as a
     * compound literal does) was 3% of the write path's CPU. */
    memset(e, 0, offsetof(tally_entry, id));
    e->seq = r->seq;
    e->ts_ms = r->ts_ms;
    e->merchant = r->merchant;
    e->account = r->account;
    e->account2 = r->account2;
    e->points = r->points;
    e->amount = r->amount;
    e->balance = r->balance;
    e->held = r->held;
    e->pending = r->pending;
    e->expires = r->expires;
    e->kind = r->kind;
    e->imported = (r->rflags & RECORD_F_IMPORTED) != 0;
    e->available_at = r->available_at;
    e->timeout_s = r->timeout_s;
    e->req_points = r->req_points;
    e->req_flags = r->req_flags;
    e->id_len = r->id_len;
    e->ref_len = r->ref_len;
    e->memo_len = r->memo_len;
    memcpy(e->id, r->id, r->id_len);
    memcpy(e->ref, r->ref, r->ref_len);
    memcpy(e->memo, r->memo, r->memo_len);
}

/* ---- reading logged entries --------------------------------------------------- */

int ledger_read_allocs(ledger *l, uint64_t seq, record *entry, uint32_t *n)
{
    log_loc loc;
    int rc = log_read_seq(l->log, seq, entry, &loc);
    if (rc < 0)
        return rc;
    uint32_t k = 0;
    const record *cur = entry;
    record part;
    for (;;) {
        size_t pos = 0;
        record_alloc a;
        int ar;
        while ((ar = record_alloc_next(cur, &pos, &a)) == 1) {
            rc = ledger_grow_allocs(&l->allocs2, &l->allocs2_cap, k + 1);
            if (rc < 0)
                return rc;
            l->allocs2[k++] = a;
        }
        if (ar < 0)
            return TALLY_ECORRUPT;
        if (!(cur->rflags & RECORD_F_MORE))
            break;
        rc = log_read_next(l->log, &loc, cur, &part);
        if (rc < 0)
            return rc == TALLY_ENOTFOUND ? TALLY_ECORRUPT : rc;
        if (part.type != RECORD_ALLOC || part.seq != seq)
            return TALLY_ECORRUPT;
        cur = &part;
    }
    *n = k;
    return 0;
}

/* ---- ids ------------------------------------------------------------------------ */

ids_key ledger_ids_key(ledger *l, uint64_t m, const char *id, size_t id_len)
{
    ledger_idkey *c = &l->idkey;
    if (c->len == 0 || c->len != id_len || c->merchant != m || memcmp(c->id, id, id_len) != 0) {
        c->key = ids_key_of(m, id, id_len);
        c->merchant = m;
        c->len = (uint8_t)id_len;
        memcpy(c->id, id, id_len);
    }
    return c->key;
}

int ledger_id_seq(ledger *l, uint64_t m, const char *id, size_t id_len, uint64_t *seq,
                  bool *refusal)
{
    uint64_t v;
    int rc = ids_get(l->ids, ledger_ids_key(l, m, id, id_len), &v);
    if (rc == IDS_ABSENT)
        return 1;
    if (rc < 0)
        return rc;
    *seq = v >> 1;
    *refusal = v & 1;
    return 0;
}

/* Same command and arguments as the logged record? */
static bool ledger_same_request(const tally_request *q, const record *r)
{
    record want;
    ledger_record_from_request(q, 0, &want);
    bool by_ref = q->op == TALLY_OP_CAPTURE || q->op == TALLY_OP_VOID ||
                  q->op == TALLY_OP_REVERSE;
    return want.kind == r->kind && (by_ref || want.account == r->account) &&
           want.account2 == r->account2 && want.req_points == r->req_points &&
           want.expires == r->expires && want.available_at == r->available_at &&
           want.timeout_s == r->timeout_s && want.req_flags == r->req_flags &&
           /* Only writes by reference name one (a transfer's ref is the
            * engine's "~to:ID"). */
           (!by_ref || (want.ref_len == r->ref_len && memcmp(want.ref, r->ref, r->ref_len) == 0)) &&
           want.memo_len == r->memo_len && memcmp(want.memo, r->memo, r->memo_len) == 0;
}

int ledger_idempotent(ledger *l, tally_request *q)
{
    uint64_t seq;
    bool refusal;
    int rc = ledger_id_seq(l, q->merchant, q->id, q->id_len, &seq, &refusal);
    if (rc != 0)
        return rc;
    record *r = &l->rec[1];
    log_loc loc;
    rc = log_read_seq(l->log, seq, r, &loc);
    q->res.replayed = true;
    if (rc == TALLY_EARCHIVED) {
        /* Retention dropped the record: the id stays used (nothing is
         * applied twice) but the first reply cannot be repeated. */
        q->res.status = TALLY_EARCHIVED;
        snprintf(q->res.message, sizeof(q->res.message),
                 "id already used at seq %llu, before the retained log: the original reply "
                 "is no longer available (nothing was applied again)",
                 (unsigned long long)seq);
        return 0;
    }
    if (rc < 0)
        return rc;
    if (r->id_len != q->id_len || memcmp(r->id, q->id, q->id_len) != 0 ||
        r->merchant != q->merchant)
        return TALLY_ECORRUPT; /* a 128-bit collision is not expected */
    if (!ledger_same_request(q, r)) {
        q->res.status = TALLY_ECONFLICT;
        snprintf(q->res.message, sizeof(q->res.message),
                 "id already used by a different request (seq %llu)",
                 (unsigned long long)r->seq);
        return 0;
    }
    if (r->type == RECORD_REFUSAL)
        ledger_answer_refusal(q, TALLY_EBASE - (int)r->error, r->reason);
    else
        ledger_answer_entry(q, r);
    return 0;
}

int ledger_target(ledger *l, uint64_t m, const char *id, size_t id_len, record *out)
{
    uint64_t seq;
    bool refusal;
    int rc = ledger_id_seq(l, m, id, id_len, &seq, &refusal);
    if (rc != 0)
        return rc;
    if (refusal)
        return 1; /* a remembered refusal is not an entry */
    log_loc loc;
    rc = log_read_seq(l->log, seq, out, &loc);
    if (rc < 0)
        return rc;
    /* A 128-bit hash collision would name another id. */
    if (out->id_len != id_len || memcmp(out->id, id, id_len) != 0 || out->merchant != m)
        return 1;
    return 0;
}

/* ---- merchant totals, liability ------------------------------------------------------ */

int ledger_merchant_get(ledger *l, uint64_t m, ledger_merchant *out)
{
    uint8_t k[8];
    ledger_be64(k, m);
    const void *v;
    size_t vl;
    int rc = state_get(l->st, STATE_MERCHANTS, k, 8, &v, &vl);
    if (rc < 0)
        return rc;
    if (rc == 0 && vl != sizeof(*out))
        return TALLY_ECORRUPT;
    if (rc == STATE_ABSENT)
        *out = (ledger_merchant){0};
    else
        memcpy(out, v, sizeof(*out));
    return 0;
}

int ledger_merchant_add(ledger *l, uint64_t m, const ledger_merchant *d)
{
    ledger_merchant t;
    int rc = ledger_merchant_get(l, m, &t);
    if (rc < 0)
        return rc;
    t.accounts += d->accounts;
    t.outstanding += d->outstanding;
    t.earned += d->earned;
    t.redeemed += d->redeemed;
    t.expired += d->expired;
    t.entries += d->entries;
    if (d->entries > 0 && l->emit_imported && l->emit_ts > t.import_ts)
        t.import_ts = l->emit_ts;
    else if (d->entries > 0 && !l->emit_imported && t.live_ts == 0)
        t.live_ts = l->emit_ts;
    uint8_t k[8];
    ledger_be64(k, m);
    return state_put(l->st, STATE_MERCHANTS, k, 8, &t, sizeof(t));
}

uint64_t ledger_month(uint64_t expkey)
{
    if (expkey == UINT64_MAX)
        return UINT64_MAX;
    time_t t = (time_t)expkey;
    struct tm tm;
    gmtime_r(&t, &tm);
    return (uint64_t)(tm.tm_year + 1900) * 100 + (uint64_t)(tm.tm_mon + 1);
}

int ledger_liability_add(ledger *l, uint64_t m, uint64_t expkey, int64_t delta)
{
    if (delta == 0)
        return 0;
    uint8_t k[16];
    size_t kl = ledger_key2(k, m, ledger_month(expkey));
    const void *v;
    size_t vl;
    int64_t cur = 0;
    int rc = state_get(l->st, STATE_LIABILITY, k, kl, &v, &vl);
    if (rc < 0)
        return rc;
    if (rc == 0 && vl != 8)
        return TALLY_ECORRUPT;
    if (rc == 0)
        memcpy(&cur, v, 8);
    cur += delta;
    if (cur == 0)
        return state_del_known(l->st, STATE_LIABILITY, k, kl) < 0 ? TALLY_EFAILED : 0;
    return state_put(l->st, STATE_LIABILITY, k, kl, &cur, 8);
}

/* ---- lot names -------------------------------------------------------------------- */

int ledger_lot_id_put(ledger *l, uint64_t seq, int kind, const char *id, size_t len)
{
    assert(len >= 1 && len <= LIMIT_ENGINE_ID_BYTES_MAX);
    uint8_t k[8], v[1 + LIMIT_ENGINE_ID_BYTES_MAX];
    ledger_be64(k, seq);
    v[0] = (uint8_t)kind;
    memcpy(v + 1, id, len);
    return state_put(l->st, STATE_LOT_IDS, k, 8, v, 1 + len);
}

int ledger_lot_id(ledger *l, uint64_t seq, uint64_t expkey, char *out, size_t *len)
{
    uint8_t k[8];
    ledger_be64(k, seq);
    const void *v;
    size_t vl;
    int rc = state_get(l->st, STATE_LOT_IDS, k, 8, &v, &vl);
    if (rc == STATE_ABSENT)
        return TALLY_ECORRUPT; /* every lot that can expire or mature has one */
    if (rc < 0)
        return rc;
    const uint8_t *p = v;
    if (vl < 2 || vl > 1 + LIMIT_ENGINE_ID_BYTES_MAX || p[0] > LOT_ID_RECEIVED)
        return TALLY_ECORRUPT;
    size_t n = vl - 1;
    memcpy(out, p + 1, n);
    if (p[0] == LOT_ID_RECEIVED) {
        /* A received lot is named by its transfer and its expiry. */
        char tail[32];
        int t = expkey == UINT64_MAX
                    ? snprintf(tail, sizeof(tail), "/never")
                    : snprintf(tail, sizeof(tail), "/%llu", (unsigned long long)expkey);
        if (n + (size_t)t > LIMIT_ENGINE_ID_BYTES_MAX - 30)
            return TALLY_ECORRUPT;
        memcpy(out + n, tail, (size_t)t);
        n += (size_t)t;
    }
    *len = n;
    return 0;
}

int ledger_engine_id(ledger *l, uint64_t m, const char *prefix, const char *id, size_t len,
                     char *out, uint8_t *out_len)
{
    size_t pl = strlen(prefix);
    assert(pl + len + 21 <= LIMIT_ENGINE_ID_BYTES_MAX);
    memcpy(out, prefix, pl);
    memcpy(out + pl, id, len);
    size_t base = pl + len;
    for (uint64_t n = 1;; n++) {
        size_t k = base;
        if (n > 1)
            k += (size_t)snprintf(out + base, LIMIT_ENGINE_ID_BYTES_MAX - base + 1, "#%llu",
                                  (unsigned long long)n);
        uint64_t seq;
        bool refusal;
        int rc = ledger_id_seq(l, m, out, k, &seq, &refusal);
        if (rc < 0)
            return rc;
        if (rc == 1) {
            *out_len = (uint8_t)k;
            return 0;
        }
    }
}
