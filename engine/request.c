/*
 * request.c — what can be said about a request without the ledger: error
 * names, kind and op names, and the checks that refuse a malformed request
 * before it reaches a shard (SPEC §3: such a request records nothing).
 */
#include <assert.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tally.h"

/* ---- names -------------------------------------------------------------- */

static const char *const request_kind_names[TALLY_KIND_COUNT] = {
    [TALLY_KIND_NONE] = "",         [TALLY_KIND_EARN] = "earn",
    [TALLY_KIND_REDEEM] = "redeem", [TALLY_KIND_HOLD] = "hold",
    [TALLY_KIND_CAPTURE] = "capture", [TALLY_KIND_VOID] = "void",
    [TALLY_KIND_REVERSE] = "reverse", [TALLY_KIND_ADJUST] = "adjust",
    [TALLY_KIND_EXPIRE] = "expire", [TALLY_KIND_TRANSFER] = "transfer",
    [TALLY_KIND_AVAILABLE] = "available",
};

const char *tally_kind_name(int kind)
{
    if (kind <= TALLY_KIND_NONE || kind >= TALLY_KIND_COUNT)
        return "";
    return request_kind_names[kind];
}

void tally_entry_moves(const tally_entry *e, int64_t *held, int64_t *pending)
{
    *held = 0;
    *pending = 0;
    switch (e->kind) {
    case TALLY_KIND_EARN:
    case TALLY_KIND_ADJUST: /* what did not become available is pending */
        *pending = e->points >= 0 ? e->amount - e->points : 0;
        break;
    case TALLY_KIND_HOLD:
        *held = e->amount;
        break;
    case TALLY_KIND_CAPTURE: /* captured (amount) and released (points) */
        *held = -(e->amount + e->points);
        break;
    case TALLY_KIND_VOID:
        *held = -e->amount;
        break;
    case TALLY_KIND_REVERSE: /* a clawback or an expiry takes pending points too */
    case TALLY_KIND_EXPIRE:
        *pending = e->points <= 0 ? -(e->amount + e->points) : 0;
        break;
    case TALLY_KIND_AVAILABLE:
        *pending = -e->amount;
        break;
    case TALLY_KIND_TRANSFER: /* pending lots move with the spendable ones */
        *pending = e->points <= 0 ? -(e->amount + e->points) : e->amount - e->points;
        break;
    default:
        break;
    }
}

bool tally_op_is_write(int op)
{
    return op >= TALLY_OP_EARN && op <= TALLY_OP_TRANSFER;
}

const char *tally_strerror(int err)
{
    switch (err) {
    case 0: return "ok";
    case TALLY_EINSUFFICIENT: return "not enough available points";
    case TALLY_ENOTFOUND: return "referenced entry does not exist";
    case TALLY_ECONFLICT: return "id already used by a different request";
    case TALLY_EINVALID: return "invalid request";
    case TALLY_ESYNTAX: return "syntax error";
    case TALLY_ECORRUPT: return "corrupt log or state: shard refused";
    case TALLY_EFAILED: return "shard stopped taking writes after an I/O failure";
    case TALLY_EFORMAT: return "unknown on-disk format";
    case TALLY_ESHARDS: return "shard count differs from the data directory's manifest";
    case TALLY_ELOCKED: return "data directory is in use by another process";
    case TALLY_ECLOSED: return "engine is shutting down";
    case TALLY_ETOOBIG: return "request exceeds an engine limit";
    case TALLY_EARCHIVED: return "the entry lies before the retained log";
    case TALLY_ETRYAGAIN: return "not acknowledged by the cluster: retry with the same id";
    default: break;
    }
    if (err < 0 && err > TALLY_EBASE)
        return strerror(-err);
    return "unknown error";
}

const char *tally_error_code(int err)
{
    switch (err) {
    case TALLY_EINSUFFICIENT: return "INSUFFICIENT";
    case TALLY_ENOTFOUND: return "NOTFOUND";
    case TALLY_ECONFLICT: return "CONFLICT";
    case TALLY_EINVALID: return "INVALID";
    case TALLY_ETRYAGAIN: return "TRYAGAIN";
    default: return "ERR";
    }
}

/* ---- lifecycle ---------------------------------------------------------- */

void tally_result_free(tally_result *res)
{
    free(res->items);
    free(res->rows);
    res->items = NULL;
    res->rows = NULL;
    res->items_count = 0;
    res->rows_count = 0;
}

void tally_request_release(tally_request *req)
{
    tally_result_free(&req->res);
    for (uint32_t i = 0; i < req->cmds_count; i++)
        tally_request_release(&req->cmds[i]);
    free(req->cmds);
    free(req->cursors);
    req->cmds = NULL;
    req->cmds_count = 0;
    req->cursors = NULL;
    req->cursors_count = 0;
}

void tally_request_init(tally_request *req)
{
    tally_result_free(&req->res);
    memset(req, 0, sizeof(*req));
}

void tally_request_reset(tally_request *req)
{
    static_assert(offsetof(tally_request, id) < offsetof(tally_request, res),
                  "the fixed fields come before the id bytes");
    memset(req, 0, offsetof(tally_request, id));
    req->res.status = 0;
    req->res.message[0] = 0;
    req->res.found = false;
    req->res.replayed = false;
    req->res.items = NULL;
    req->res.items_count = 0;
    req->res.rows = NULL;
    req->res.rows_count = 0;
    req->res.cursor = 0;
    req->done = NULL;
    req->user = NULL;
    req->next_ = NULL;
    req->engine_ = NULL;
}

/* ---- checks ------------------------------------------------------------- */

int tally_fail(tally_request *req, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(req->res.message, sizeof(req->res.message), fmt, ap);
    va_end(ap);
    req->res.status = code;
    return code;
}

/* What a malformed id is told, whatever is wrong with it (empty, too long,
 * a blank or a control byte, a leading '~'). */
#define REQUEST_ID_MESSAGE \
    "id must be 1..64 printable ASCII bytes (0x21..0x7e), not starting with '~'"
#define REQUEST_REF_MESSAGE "referenced id must be 1..128 printable ASCII bytes (0x21..0x7e)"

/* A client id: 1..64 bytes of 0x21..0x7e, not starting with '~' (reserved
 * for the engine's own entries) when it names a new write. */
static bool request_id_ok(const char *id, unsigned len, bool allow_engine)
{
    if (len < 1 || len > (allow_engine ? LIMIT_ENGINE_ID_BYTES_MAX : LIMIT_ID_BYTES_MAX))
        return false;
    for (unsigned i = 0; i < len; i++) {
        unsigned char c = (unsigned char)id[i];
        if (c < 0x21 || c > 0x7e)
            return false;
    }
    return allow_engine || id[0] != '~';
}

static bool request_amount_ok(int64_t points)
{
    return points >= 1 && points <= LIMIT_AMOUNT_MAX;
}

/* Unix seconds of EXPIRES / AVAILABLE_AT when given: 1..LIMIT_UNIX_S_MAX. */
static bool request_unix_s_ok(const tally_request *req, uint32_t flag, uint64_t v)
{
    return !(req->flags & flag) || (v >= 1 && v <= LIMIT_UNIX_S_MAX);
}

/* The option combinations that can never make sense (SPEC §3): points
 * that expire before they become available could never be spent, and a
 * debit has no lot to give an expiry to. */
static int request_check_combinations(tally_request *req)
{
    bool expires = req->flags & TALLY_REQ_EXPIRES;
    if (expires && (req->flags & TALLY_REQ_AVAILABLE_AT) && req->expires <= req->available_at)
        return tally_fail(req, TALLY_EINVALID,
                          "EXPIRES must be after AVAILABLE_AT (the points could never be "
                          "spent)");
    if (expires && req->op == TALLY_OP_ADJUST && req->points < 0)
        return tally_fail(req, TALLY_EINVALID,
                          "EXPIRES cannot be given to a negative ADJUST (a debit makes no lot)");
    return 0;
}

static int request_check_write(tally_request *req)
{
    if (!request_id_ok(req->id, req->id_len, false))
        return tally_fail(req, TALLY_EINVALID, REQUEST_ID_MESSAGE);
    bool needs_ref = req->op == TALLY_OP_CAPTURE || req->op == TALLY_OP_VOID ||
                     req->op == TALLY_OP_REVERSE;
    if (needs_ref && !request_id_ok(req->ref, req->ref_len, true))
        return tally_fail(req, TALLY_EINVALID, REQUEST_REF_MESSAGE);
    if (req->op == TALLY_OP_ADJUST) {
        int64_t mag = req->points < 0 ? -req->points : req->points;
        if (req->points == INT64_MIN || !request_amount_ok(mag))
            return tally_fail(req, TALLY_EINVALID,
                              "points must be -1000000000000000..-1 or 1..1000000000000000");
    } else if (req->op == TALLY_OP_TRANSFER) {
        if (req->account2 == 0)
            return tally_fail(req, TALLY_EINVALID, "to_account must be 1..18446744073709551615");
        if (req->account2 == req->account)
            return tally_fail(req, TALLY_EINVALID,
                              "from_account and to_account must differ");
        if (!(req->flags & TALLY_REQ_ALL) && !request_amount_ok(req->points))
            return tally_fail(req, TALLY_EINVALID, "points must be 1..1000000000000000 or ALL");
    } else if (!needs_ref || (req->flags & TALLY_REQ_POINTS)) {
        if (req->op != TALLY_OP_VOID && !request_amount_ok(req->points))
            return tally_fail(req, TALLY_EINVALID, "%s must be 1..1000000000000000",
                              needs_ref ? "POINTS" : "points");
    }
    if (!request_unix_s_ok(req, TALLY_REQ_EXPIRES, req->expires))
        return tally_fail(req, TALLY_EINVALID,
                          "EXPIRES must be 1..253402300799 (unix seconds)");
    if (!request_unix_s_ok(req, TALLY_REQ_AVAILABLE_AT, req->available_at))
        return tally_fail(req, TALLY_EINVALID,
                          "AVAILABLE_AT must be 1..253402300799 (unix seconds)");
    if ((req->flags & TALLY_REQ_TIMEOUT) &&
        (req->timeout_s == 0 || req->timeout_s > LIMIT_HOLD_TIMEOUT_MAX_S))
        return tally_fail(req, TALLY_EINVALID, "TIMEOUT must be 1..31622400 (seconds)");
    if (req->memo_len > LIMIT_MEMO_BYTES_MAX)
        return tally_fail(req, TALLY_EINVALID, "MEMO must be 0..128 bytes");
    return request_check_combinations(req);
}

/* FOLLOW: COUNT and BLOCK in range; FOLLOW * carries its cursors. */
static int request_check_follow(tally_request *req)
{
    if (req->limit > LIMIT_FOLLOW_MAX)
        return tally_fail(req, TALLY_EINVALID, "COUNT must be 1..%d", LIMIT_FOLLOW_MAX);
    if ((req->flags & TALLY_REQ_BLOCK) && req->block_ms > LIMIT_FOLLOW_BLOCK_MS_MAX)
        return tally_fail(req, TALLY_EINVALID, "BLOCK must be 0..%llu (milliseconds)",
                          (unsigned long long)LIMIT_FOLLOW_BLOCK_MS_MAX);
    if (req->merchant == 0 && req->cursors == NULL)
        return tally_fail(req, TALLY_ESYNTAX, "FOLLOW * needs its cursors");
    return 0;
}

/* EXEC: at least one queued request, every one for the EXEC's merchant
 * and already checked when it was queued (checked again: it is cheap). */
static int request_check_exec(tally_request *req)
{
    if (req->cmds_count == 0 || req->cmds_count > LIMIT_MULTI_COMMANDS_MAX || !req->cmds)
        return tally_fail(req, TALLY_ESYNTAX, "EXEC needs 1..%d queued commands",
                          LIMIT_MULTI_COMMANDS_MAX);
    for (uint32_t i = 0; i < req->cmds_count; i++) {
        tally_request *c = &req->cmds[i];
        bool allowed = c->op >= TALLY_OP_EARN && c->op <= TALLY_OP_LIABILITY;
        if (!allowed || c->merchant != req->merchant)
            return tally_fail(req, TALLY_ESYNTAX,
                              "EXEC runs ledger commands of its own merchant only");
        if (tally_request_check(c) != 0)
            return tally_fail(req, c->res.status, "%s", c->res.message);
    }
    return 0;
}

int tally_request_check(tally_request *req)
{
    req->res.status = 0;
    req->res.message[0] = '\0';
    if (req->op <= TALLY_OP_NONE || req->op >= TALLY_OP_COUNT)
        return tally_fail(req, TALLY_ESYNTAX, "unknown operation");
    if (req->op == TALLY_OP_FOLLOW)
        return request_check_follow(req);
    bool admin = req->op == TALLY_OP_VERIFY || req->op == TALLY_OP_SNAPSHOT;
    if (req->merchant == 0 && !admin)
        return tally_fail(req, TALLY_EINVALID, "merchant must be 1..18446744073709551615");
    bool has_account = req->op == TALLY_OP_EARN || req->op == TALLY_OP_REDEEM ||
                       req->op == TALLY_OP_HOLD || req->op == TALLY_OP_ADJUST ||
                       req->op == TALLY_OP_TRANSFER || req->op == TALLY_OP_BALANCE ||
                       req->op == TALLY_OP_HISTORY;
    if (has_account && req->account == 0)
        return tally_fail(req, TALLY_EINVALID, "account must be 1..18446744073709551615");
    if (tally_op_is_write(req->op))
        return request_check_write(req);
    if (req->op == TALLY_OP_EXEC)
        return request_check_exec(req);
    if (req->op == TALLY_OP_ENTRY && !request_id_ok(req->ref, req->ref_len, true))
        return tally_fail(req, TALLY_EINVALID,
                          "id must be 1..128 printable ASCII bytes (0x21..0x7e)");
    /* LIMIT 0 is the default (not given); BEFORE only when given. */
    if (req->op == TALLY_OP_HISTORY && req->limit > LIMIT_HISTORY_MAX)
        return tally_fail(req, TALLY_EINVALID, "LIMIT must be 1..1000");
    if (req->op == TALLY_OP_HISTORY && (req->flags & TALLY_REQ_BEFORE) && req->before_seq == 0)
        return tally_fail(req, TALLY_EINVALID,
                          "BEFORE must be 1..18446744073709551615 (a seq)");
    return 0;
}
