/*
 * ledger_import.c — one line of an import (SPEC §8), applied through the
 * write path at the line's own time and marked imported.
 *
 * A line is the request it came from: the dump says the request's points
 * and options (arg_points, given), or, for other sources, they are worked
 * out from the entry's kind and amount.  The outcome is then checked
 * against what the line says (points, amount, balance, held, pending):
 * balances are computed, never taken.  Engine entries in the input
 * (~exp:, ~avail:, ~void:) are applied where they stand, naming their lot
 * by ref and expiry; a transfer's receiving entry (~to:) is written by its
 * sender's line and only compared.  Writes generate the engine entries
 * that are due for the accounts they touch, as live writes do — for a
 * dump of tally those are already in the input, just before.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "ledger_int.h"

static int ledger_import_fail(char *msg, size_t cap, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int ledger_import_fail(char *msg, size_t cap, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, cap, fmt, ap);
    va_end(ap);
    return code;
}

static const struct {
    const char *prefix;
    uint8_t kind;
} ledger_engine_prefixes[] = {
    {"~exp:", TALLY_KIND_EXPIRE},
    {"~avail:", TALLY_KIND_AVAILABLE},
    {"~void:", TALLY_KIND_VOID},
    {"~to:", TALLY_KIND_TRANSFER},
};

/* Does the outcome r say what the line says?  0, or EINVALID with msg. */
static int ledger_import_check(const tally_import_item *it, const record *r, char *msg,
                               size_t cap)
{
    const tally_entry *e = &it->e;
    static const char *const names[] = {"points", "amount", "balance", "held", "pending"};
    const int64_t got[] = {r->points, r->amount, r->balance, r->held, r->pending};
    const int64_t want[] = {e->points, e->amount, e->balance, e->held, e->pending};
    const uint32_t have[] = {TALLY_HAVE_POINTS, TALLY_HAVE_AMOUNT, TALLY_HAVE_BALANCE,
                             TALLY_HAVE_HELD, TALLY_HAVE_PENDING};
    for (int i = 0; i < 5; i++)
        if ((it->have & have[i]) && got[i] != want[i])
            return ledger_import_fail(msg, cap, TALLY_EINVALID,
                                      "%s after it is %" PRId64 " here, the line says %" PRId64
                                      " (the history before it differs from the source's)",
                                      names[i], got[i], want[i]);
    if (r->account != e->account || (e->account2 && r->account2 != e->account2))
        return ledger_import_fail(msg, cap, TALLY_EINVALID, "the entry here is of account %" PRIu64,
                                  r->account);
    return 0;
}

/* The request a line came from. */
static int ledger_import_request(const tally_import_item *it, tally_request *q, char *msg,
                                 size_t cap)
{
    const tally_entry *e = &it->e;
    tally_request_reset(q);
    q->op = (uint8_t)ledger_kind_op(e->kind);
    if (q->op == TALLY_OP_NONE)
        return ledger_import_fail(msg, cap, TALLY_EINVALID,
                                  "kind %s is written by the engine: its id must be an engine "
                                  "id (~exp:LOT, ~avail:LOT)",
                                  tally_kind_name(e->kind));
    q->merchant = e->merchant;
    q->account = e->account;
    q->account2 = e->account2;
    q->expires = e->expires;
    q->available_at = e->available_at;
    q->timeout_s = e->timeout_s;
    q->id_len = e->id_len;
    q->ref_len = e->ref_len;
    q->memo_len = e->memo_len;
    memcpy(q->id, e->id, e->id_len);
    memcpy(q->ref, e->ref, e->ref_len);
    memcpy(q->memo, e->memo, e->memo_len);
    int64_t size = (it->have & TALLY_HAVE_AMOUNT) ? e->amount
                   : e->points < 0                ? -e->points
                                                  : e->points;
    if (it->have & TALLY_HAVE_ARG_POINTS)
        q->points = e->req_points;
    else if (q->op == TALLY_OP_ADJUST)
        q->points = (it->have & TALLY_HAVE_POINTS) ? e->points : e->amount;
    else if (q->op != TALLY_OP_VOID && q->op != TALLY_OP_CAPTURE && q->op != TALLY_OP_REVERSE)
        q->points = size;
    if (it->have & (TALLY_HAVE_GIVEN | TALLY_HAVE_ARG_POINTS)) {
        /* The request as tally's dump writes it: arg_points on every line,
         * given when an option was. */
        q->flags = e->req_flags;
    } else {
        /* Another source: the options its fields imply. */
        q->flags = (e->expires ? TALLY_REQ_EXPIRES : 0) |
                   (e->available_at ? TALLY_REQ_AVAILABLE_AT : 0) |
                   (e->timeout_s ? TALLY_REQ_TIMEOUT : 0) | (e->memo_len ? TALLY_REQ_MEMO : 0);
        if ((q->op == TALLY_OP_CAPTURE || q->op == TALLY_OP_REVERSE) &&
            (it->have & TALLY_HAVE_AMOUNT)) {
            q->points = e->amount;
            q->flags |= TALLY_REQ_POINTS;
        }
    }
    if (tally_request_check(q) != 0)
        return ledger_import_fail(msg, cap, q->res.status, "%s", q->res.message);
    return 0;
}

/* An id that is there already: the same line again (1), or a conflict. */
static int ledger_import_present(ledger *l, const tally_import_item *it, const record *r,
                                 char *msg, size_t cap)
{
    const tally_entry *e = &it->e;
    bool refused = r->type == RECORD_REFUSAL;
    if (refused != (it->refused != 0) || r->kind != e->kind)
        return ledger_import_fail(msg, cap, TALLY_ECONFLICT,
                                  "id already used by a different request (seq %" PRIu64 ")",
                                  r->seq);
    if (!refused) {
        int rc = ledger_import_check(it, r, msg, cap);
        if (rc < 0)
            return ledger_import_fail(msg, cap, TALLY_ECONFLICT,
                                      "id already used at seq %" PRIu64 " with another outcome",
                                      r->seq);
    }
    (void)l;
    return 1;
}

static int ledger_import_engine(ledger *l, const tally_import_item *it, uint8_t kind, char *msg,
                                size_t cap)
{
    const tally_entry *e = &it->e;
    record *t = &l->rec[1];
    int rc = ledger_target(l, e->merchant, e->id, e->id_len, t);
    if (rc < 0)
        return rc;
    if (rc == 0)
        return ledger_import_present(l, it, t, msg, cap);
    if (kind == TALLY_KIND_TRANSFER)
        return ledger_import_fail(msg, cap, TALLY_EINVALID,
                                  "a transfer's receiving entry without its sender's line "
                                  "(id %.*s) before it",
                                  (int)(e->ref_len), e->ref);
    if (it->refused)
        return ledger_import_fail(msg, cap, TALLY_EINVALID, "engine entries are never refused");
    /* Applied as recovery replays one, from its lot's id and expiry. */
    record *r = &l->rec[0];
    memset(r, 0, offsetof(record, id));
    r->type = RECORD_ENTRY;
    r->kind = kind;
    r->merchant = e->merchant;
    r->account = e->account;
    r->expires = e->expires;
    r->rflags = RECORD_F_IMPORTED;
    r->id_len = e->id_len;
    r->ref_len = e->ref_len;
    r->memo_len = 0;
    memcpy(r->id, e->id, e->id_len);
    memcpy(r->ref, e->ref, e->ref_len);
    ledger_x x = {.ts_ms = e->ts_ms, .imported = true};
    rc = ledger_replay_engine(l, &x, r);
    if (rc == TALLY_ECORRUPT || rc == TALLY_EARCHIVED)
        return ledger_import_fail(msg, cap, TALLY_EINVALID,
                                  "%s names no lot or hold here (ref %.*s, expires %" PRIu64 ")",
                                  tally_kind_name(kind), (int)e->ref_len, e->ref, e->expires);
    if (rc < 0)
        return rc;
    rc = ledger_target(l, e->merchant, e->id, e->id_len, t);
    if (rc < 0)
        return rc;
    if (rc == 1)
        return ledger_import_fail(msg, cap, TALLY_EINVALID,
                                  "the engine names this %s otherwise here (ref %.*s): the "
                                  "history before it differs from the source's",
                                  tally_kind_name(kind), (int)e->ref_len, e->ref);
    return ledger_import_check(it, t, msg, cap);
}

int ledger_import(ledger *l, const tally_import_item *it, char *msg, size_t cap)
{
    const tally_entry *e = &it->e;
    msg[0] = 0;
    if (e->ts_ms == 0)
        return ledger_import_fail(msg, cap, TALLY_EINVALID, "ts must be a unix time in ms");
    if (e->merchant == 0)
        return ledger_import_fail(msg, cap, TALLY_EINVALID, "merchant 0 is not a merchant");
    if (e->id_len > 0 && e->id[0] == '~') {
        for (size_t i = 0; i < sizeof(ledger_engine_prefixes) / sizeof(ledger_engine_prefixes[0]);
             i++) {
            size_t n = strlen(ledger_engine_prefixes[i].prefix);
            if (e->id_len > n && memcmp(e->id, ledger_engine_prefixes[i].prefix, n) == 0) {
                if (ledger_engine_prefixes[i].kind != e->kind)
                    break;
                return ledger_import_engine(l, it, e->kind, msg, cap);
            }
        }
        return ledger_import_fail(msg, cap, TALLY_EINVALID,
                                  "an id starting with '~' must be an engine entry's (~exp:, "
                                  "~avail:, ~void:, ~to:) of its kind");
    }
    tally_request *q = l->scratch;
    int rc = ledger_import_request(it, q, msg, cap);
    if (rc < 0)
        return rc;
    /* Already there: the same request is skipped, another is a conflict. */
    uint64_t seq;
    bool refusal;
    rc = ledger_id_seq(l, q->merchant, q->id, q->id_len, &seq, &refusal);
    if (rc < 0)
        return rc;
    if (rc == 0) {
        rc = ledger_idempotent(l, q);
        if (rc < 0)
            return rc;
        if (q->res.status == TALLY_ECONFLICT || q->res.status == TALLY_EARCHIVED)
            return ledger_import_fail(msg, cap, q->res.status, "%s", q->res.message);
        return ledger_import_present(l, it, &l->rec[1], msg, cap);
    }
    /* New: the merchant's imported history runs in time and before it
     * went live here. */
    ledger_merchant mm;
    rc = ledger_merchant_get(l, e->merchant, &mm);
    if (rc < 0)
        return rc;
    if (mm.live_ts && e->ts_ms >= mm.live_ts)
        return ledger_import_fail(msg, cap, TALLY_EINVALID,
                                  "merchant %" PRIu64 " has live entries since ts %" PRIu64
                                  ": what is imported must be older",
                                  e->merchant, mm.live_ts);
    if (e->ts_ms < mm.import_ts)
        return ledger_import_fail(msg, cap, TALLY_EINVALID,
                                  "merchant %" PRIu64 "'s entries are not in time order: ts "
                                  "%" PRIu64 " after ts %" PRIu64,
                                  e->merchant, e->ts_ms, mm.import_ts);
    ledger_x x = {.ts_ms = e->ts_ms, .engine_entries = true, .imported = true};
    if (it->refused) {
        /* A remembered refusal stays one: the same request later answers
         * it again. */
        int code = it->refused;
        int reason = code == TALLY_EINSUFFICIENT ? R_INSUFFICIENT
                     : code == TALLY_ENOTFOUND   ? R_NOTFOUND
                                                 : R_NONE;
        record *r = &l->rec[0];
        ledger_record_from_request(q, 0, r);
        return ledger_refuse(l, &x, NULL, r, code, reason);
    }
    rc = ledger_write(l, &x, q);
    if (rc < 0)
        return rc;
    if (q->res.status != 0)
        return ledger_import_fail(msg, cap, q->res.status, "the ledger refuses it: %s",
                                  q->res.message);
    /* The entry as the write answered it. */
    const tally_entry *got = &q->res.entry;
    record *t = &l->rec[1];
    memset(t, 0, offsetof(record, id));
    t->points = got->points;
    t->amount = got->amount;
    t->balance = got->balance;
    t->held = got->held;
    t->pending = got->pending;
    t->account = got->account;
    t->account2 = got->account2;
    return ledger_import_check(it, t, msg, cap);
}
