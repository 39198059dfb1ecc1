/*
 * command.c — what the words of a command mean (command.h); the table of
 * commands is commands.def.
 *
 * Engine commands are parsed by one table-driven function: the row's
 * shape string names the positional arguments, its options mask the NAME
 * value pairs allowed after them.  Everything that can be checked without
 * the ledger is checked here (tally_request_check included), so a
 * malformed request is answered at once and never reaches a shard.
 */
#include <assert.h>
#include <errno.h>
#include <fnmatch.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "cluster_reply.h"
#include "command.h"
#include "repl.h"

#define COMMAND_VERSION "0.1.0"
/* Reported as redis_version so that client libraries which gate features
 * on it (RESP3, HELLO, CLIENT SETINFO) use the protocol tally speaks. */
#define COMMAND_REDIS_VERSION "7.0.0"

/* ---- flags and options ------------------------------------------------ */

enum {
    CMD_WRITE = 1u << 0,
    CMD_READONLY = 1u << 1,
    CMD_ADMIN = 1u << 2,
    CMD_FAST = 1u << 3,
    CMD_NOAUTH = 1u << 4, /* allowed before AUTH */
    CMD_STALE = 1u << 5,
};

enum {
    OPT_EXPIRES = 1u << 0,
    OPT_AVAILABLE_AT = 1u << 1,
    OPT_MEMO = 1u << 2,
    OPT_TIMEOUT = 1u << 3,
    OPT_POINTS = 1u << 4,
    OPT_BEFORE = 1u << 5,
    OPT_LIMIT = 1u << 6,
    OPT_AFTER = 1u << 7,
    OPT_COUNT = 1u << 8,
    OPT_BLOCK = 1u << 9,
};

/* One call: the command's words and where the answer goes. */
typedef struct command_call {
    const command_env *env;
    command_session *s;
    const resp_command *cmd;
    const char *buf;
    tally_request *req;
    resp_out *out;
    const struct command_def *def;
} command_call;

typedef int (*command_fn)(command_call *c);

typedef struct command_def {
    const char *name;
    size_t name_len;
    int arity;
    uint32_t flags;
    int key_first;
    int op;
    const char *shape;
    uint32_t options;
    command_fn handler;
    const char *summary;
    const char *args;
} command_def;

static int command_engine(command_call *c);
static int command_ping(command_call *c);
static int command_echo(command_call *c);
static int command_hello(command_call *c);
static int command_auth(command_call *c);
static int command_quit(command_call *c);
static int command_info(command_call *c);
static int command_command(command_call *c);
static int command_config(command_call *c);
static int command_client(command_call *c);
static int command_select(command_call *c);
static int command_follow(command_call *c);
static int command_multi(command_call *c);
static int command_exec(command_call *c);
static int command_discard(command_call *c);
static int command_watch(command_call *c);
static int command_unwatch(command_call *c);
static int command_cluster(command_call *c);
static int command_readonly(command_call *c);
static int command_asking(command_call *c);

static const command_def command_table[] = {
#define CMD(name, arity, flags, key, op, shape, options, handler, summary, args) \
    {name, sizeof(name) - 1, arity, flags, key, op, shape, options, handler, summary, args},
#include "commands.def"
#undef CMD
};

#define COMMAND_TABLE_COUNT (sizeof(command_table) / sizeof(command_table[0]))

static const struct {
    const char *name;
    uint32_t flag;
} command_flag_names[] = {
    {"write", CMD_WRITE}, {"readonly", CMD_READONLY}, {"admin", CMD_ADMIN},
    {"fast", CMD_FAST},   {"no-auth", CMD_NOAUTH},    {"stale", CMD_STALE},
};

static const struct {
    const char *name;
    uint32_t flag;
} command_option_names[] = {
    {"EXPIRES", OPT_EXPIRES}, {"AVAILABLE_AT", OPT_AVAILABLE_AT}, {"MEMO", OPT_MEMO},
    {"TIMEOUT", OPT_TIMEOUT}, {"POINTS", OPT_POINTS},             {"BEFORE", OPT_BEFORE},
    {"LIMIT", OPT_LIMIT},       {"AFTER", OPT_AFTER},               {"COUNT", OPT_COUNT},
    {"BLOCK", OPT_BLOCK},
};

static_assert(COMMAND_TABLE_COUNT < METRICS_COMMANDS_MAX, "every command is counted apart");

unsigned command_count(void) { return (unsigned)COMMAND_TABLE_COUNT; }

const char *command_name(unsigned i)
{
    assert(i < COMMAND_TABLE_COUNT);
    return command_table[i].name;
}

/* ---- small helpers ------------------------------------------------------ */

static const char *command_arg(const command_call *c, uint32_t i, size_t *len)
{
    *len = c->cmd->argl[i];
    return resp_arg(c->cmd, c->buf, i);
}

static bool command_arg_is(const command_call *c, uint32_t i, const char *word)
{
    size_t n;
    const char *a = command_arg(c, i, &n);
    return n == strlen(word) && strncasecmp(a, word, n) == 0;
}

static const command_def *command_find(const char *name, size_t len)
{
    for (size_t i = 0; i < COMMAND_TABLE_COUNT; i++) {
        const command_def *d = &command_table[i];
        if (d->name_len == len && strncasecmp(d->name, name, len) == 0)
            return d;
    }
    return NULL;
}

/* Unsigned integers: integers when they fit in RESP's signed 64 bits;
 * otherwise a bulk string of the decimal digits, in RESP2 and RESP3 alike.
 * Not RESP3's big number: hiredis and most clients reject an integer reply
 * above INT64_MAX, and redis-cli 7.0 does not know the big-number type
 * ("Unknown reply type: 13"). */
static void command_u64(resp_out *o, uint64_t v)
{
    if (v <= (uint64_t)INT64_MAX) {
        resp_int(o, (int64_t)v);
        return;
    }
    char b[32];
    int n = snprintf(b, sizeof(b), "%llu", (unsigned long long)v);
    resp_bulk(o, b, (size_t)n);
}

static int command_err(command_call *c, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int command_err(command_call *c, const char *code, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    resp_error(c->out, code, msg);
    return COMMAND_REPLIED;
}

static int command_arity_error(command_call *c)
{
    return command_err(c, "ERR", "wrong number of arguments for '%s' command", c->def->name);
}

static int command_syntax_error(command_call *c)
{
    return command_err(c, "ERR", "syntax error");
}

/* ---- argument parsing for engine commands --------------------------------- */

/* Every numeric field a command takes, with its name as errors say it and
 * its range (docs/REFERENCE.md, "Numbers").  One rule for all of them: a
 * token that is not a number is -ERR in Redis's words; a number outside
 * the field's range is -INVALID naming the field and the range.  signed_ok:
 * a negative number is in range when its magnitude is (ADJUST's points). */
typedef struct command_field {
    const char *name;
    uint64_t lo, hi;
    bool signed_ok;
    const char *unit; /* said after the range, "" for none */
} command_field;

enum {
    FIELD_MERCHANT,
    FIELD_ACCOUNT,
    FIELD_FROM_ACCOUNT,
    FIELD_TO_ACCOUNT,
    FIELD_POINTS,
    FIELD_SIGNED_POINTS,
    FIELD_EXPIRES,
    FIELD_AVAILABLE_AT,
    FIELD_TIMEOUT,
    FIELD_POINTS_OPTION,
    FIELD_BEFORE,
    FIELD_LIMIT,
    FIELD_AFTER,
    FIELD_COUNT,
    FIELD_BLOCK,
};

static const command_field command_fields[] = {
    [FIELD_MERCHANT] = {"merchant", 1, UINT64_MAX, false, ""},
    [FIELD_ACCOUNT] = {"account", 1, UINT64_MAX, false, ""},
    [FIELD_FROM_ACCOUNT] = {"from_account", 1, UINT64_MAX, false, ""},
    [FIELD_TO_ACCOUNT] = {"to_account", 1, UINT64_MAX, false, ""},
    [FIELD_POINTS] = {"points", 1, LIMIT_AMOUNT_MAX, false, ""},
    [FIELD_SIGNED_POINTS] = {"points", 1, LIMIT_AMOUNT_MAX, true, ""},
    [FIELD_EXPIRES] = {"EXPIRES", 1, LIMIT_UNIX_S_MAX, false, " (unix seconds)"},
    [FIELD_AVAILABLE_AT] = {"AVAILABLE_AT", 1, LIMIT_UNIX_S_MAX, false, " (unix seconds)"},
    [FIELD_TIMEOUT] = {"TIMEOUT", 1, LIMIT_HOLD_TIMEOUT_MAX_S, false, " (seconds)"},
    [FIELD_POINTS_OPTION] = {"POINTS", 1, LIMIT_AMOUNT_MAX, false, ""},
    [FIELD_BEFORE] = {"BEFORE", 1, UINT64_MAX, false, " (a seq)"},
    [FIELD_LIMIT] = {"LIMIT", 1, LIMIT_HISTORY_MAX, false, ""},
    [FIELD_AFTER] = {"AFTER", 0, UINT64_MAX, false, " (a seq)"},
    [FIELD_COUNT] = {"COUNT", 1, LIMIT_FOLLOW_MAX, false, ""},
    [FIELD_BLOCK] = {"BLOCK", 0, LIMIT_FOLLOW_BLOCK_MS_MAX, false, " (milliseconds)"},
};

/* A number: an optional '-', then decimal digits (leading zeros allowed),
 * whose value fits in 64 bits, -2^63..2^64-1.  Anything else — empty, a
 * '+', blanks, "1e3", "--5", more than 64 bits — is not a number, as Redis
 * says of a value past its 64 bits. */
static bool command_number(const char *a, size_t n, bool *neg, uint64_t *mag)
{
    bool minus = n > 0 && a[0] == '-';
    uint64_t v = 0;
    if (config_parse_u64(a + minus, n - minus, &v) != 0)
        return false;
    if (minus && v > (uint64_t)INT64_MAX + 1)
        return false;
    *neg = minus;
    *mag = v;
    return true;
}

/* Argument i as field f: the magnitude and sign (a negative value only for
 * a signed field; "-0" is 0).  Returns true if in range; otherwise the
 * error reply is written. */
static bool command_field_arg(command_call *c, uint32_t i, int f, uint64_t *mag, bool *neg)
{
    const command_field *fd = &command_fields[f];
    size_t n;
    const char *a = command_arg(c, i, &n);
    bool minus = false;
    uint64_t v = 0;
    if (!command_number(a, n, &minus, &v)) {
        command_err(c, "ERR", "value is not an integer or out of range");
        return false;
    }
    minus = minus && v != 0;
    bool in = v >= fd->lo && v <= fd->hi && (!minus || fd->signed_ok);
    if (!in && fd->signed_ok) {
        command_err(c, "INVALID", "%s must be -%llu..-%llu or %llu..%llu%s", fd->name,
                    (unsigned long long)fd->hi, (unsigned long long)fd->lo,
                    (unsigned long long)fd->lo, (unsigned long long)fd->hi, fd->unit);
        return false;
    }
    if (!in) {
        command_err(c, "INVALID", "%s must be %llu..%llu%s", fd->name,
                    (unsigned long long)fd->lo, (unsigned long long)fd->hi, fd->unit);
        return false;
    }
    *mag = v;
    *neg = minus;
    return true;
}

/* An unsigned field into *out. */
static bool command_u64_arg(command_call *c, uint32_t i, int f, uint64_t *out)
{
    assert(!command_fields[f].signed_ok);
    bool neg;
    uint64_t v;
    if (!command_field_arg(c, i, f, &v, &neg))
        return false;
    assert(!neg);
    *out = v;
    return true;
}

/* An amount of points (1..10^15, or signed for ADJUST) into *out. */
static bool command_points_arg(command_call *c, uint32_t i, int f, int64_t *out)
{
    static_assert(LIMIT_AMOUNT_MAX < INT64_MAX, "an amount fits a signed points field");
    bool neg;
    uint64_t v;
    if (!command_field_arg(c, i, f, &v, &neg))
        return false;
    assert(v <= (uint64_t)LIMIT_AMOUNT_MAX);
    *out = neg ? -(int64_t)v : (int64_t)v;
    return true;
}

/* An id or reference.  One that cannot fit the request's field is left
 * empty: tally_request_check then refuses it in the same words as any
 * other malformed id (printable, 1..64, no '~' for new ids). */
static void command_id_arg(command_call *c, uint32_t i, char *dst, uint8_t *dst_len)
{
    size_t n;
    const char *a = command_arg(c, i, &n);
    if (n > LIMIT_ENGINE_ID_BYTES_MAX)
        n = 0;
    memcpy(dst, a, n);
    *dst_len = (uint8_t)n;
}

static bool command_positional(command_call *c, char letter, uint32_t i)
{
    tally_request *r = c->req;
    switch (letter) {
    case 'm':
    case 'M':
        return command_u64_arg(c, i, FIELD_MERCHANT, &r->merchant);
    case 'a':
        return command_u64_arg(c, i, FIELD_ACCOUNT, &r->account);
    case 'p':
        return command_points_arg(c, i, FIELD_POINTS, &r->points);
    case 'f':
        return command_u64_arg(c, i, FIELD_FROM_ACCOUNT, &r->account);
    case 't':
        return command_u64_arg(c, i, FIELD_TO_ACCOUNT, &r->account2);
    case 'P': {
        /* points, or ALL (TRANSFER: everything the sender has) */
        size_t n;
        const char *a = command_arg(c, i, &n);
        if (n == 3 && strncasecmp(a, "all", 3) == 0) {
            r->flags |= TALLY_REQ_ALL;
            return true;
        }
        return command_points_arg(c, i, FIELD_POINTS, &r->points);
    }
    case 's':
        return command_points_arg(c, i, FIELD_SIGNED_POINTS, &r->points);
    case 'i':
        command_id_arg(c, i, r->id, &r->id_len);
        return true;
    case 'r':
        command_id_arg(c, i, r->ref, &r->ref_len);
        return true;
    default:
        abort(); /* a shape letter commands.def does not define */
    }
}

/* FOLLOW's AFTER: a seq for one merchant, FOLLOW *'s cursor text for
 * every merchant. */
static bool command_after(command_call *c, uint32_t i)
{
    tally_request *r = c->req;
    if (r->merchant)
        return command_u64_arg(c, i, FIELD_AFTER, &r->after_seq);
    size_t n;
    const char *a = command_arg(c, i, &n);
    char msg[160];
    if (tally_cursor_parse(a, n, r->cursors_count, r->cursors, msg, sizeof(msg)) == 0)
        return true;
    command_err(c, "ERR", "%s", msg);
    return false;
}

/* One NAME value option into the request. */
static bool command_option(command_call *c, uint32_t flag, uint32_t i)
{
    tally_request *r = c->req;
    uint64_t v;
    size_t n;
    const char *a;
    switch (flag) {
    case OPT_EXPIRES:
        r->flags |= TALLY_REQ_EXPIRES;
        return command_u64_arg(c, i, FIELD_EXPIRES, &r->expires);
    case OPT_AVAILABLE_AT:
        r->flags |= TALLY_REQ_AVAILABLE_AT;
        return command_u64_arg(c, i, FIELD_AVAILABLE_AT, &r->available_at);
    case OPT_TIMEOUT:
        r->flags |= TALLY_REQ_TIMEOUT;
        return command_u64_arg(c, i, FIELD_TIMEOUT, &r->timeout_s);
    case OPT_POINTS:
        r->flags |= TALLY_REQ_POINTS;
        return command_points_arg(c, i, FIELD_POINTS_OPTION, &r->points);
    case OPT_BEFORE:
        r->flags |= TALLY_REQ_BEFORE;
        return command_u64_arg(c, i, FIELD_BEFORE, &r->before_seq);
    case OPT_LIMIT: /* HISTORY's */
    case OPT_COUNT: /* FOLLOW's */
        if (!command_u64_arg(c, i, flag == OPT_LIMIT ? FIELD_LIMIT : FIELD_COUNT, &v))
            return false;
        static_assert(LIMIT_HISTORY_MAX <= UINT32_MAX && LIMIT_FOLLOW_MAX <= UINT32_MAX,
                      "LIMIT and COUNT fit the request's field");
        r->limit = (uint32_t)v;
        return true;
    case OPT_AFTER:
        return command_after(c, i);
    case OPT_BLOCK:
        r->flags |= TALLY_REQ_BLOCK;
        return command_u64_arg(c, i, FIELD_BLOCK, &r->block_ms);
    case OPT_MEMO:
        r->flags |= TALLY_REQ_MEMO;
        a = command_arg(c, i, &n);
        if (n > LIMIT_MEMO_BYTES_MAX) {
            command_err(c, "INVALID", "MEMO must be 0..%d bytes", LIMIT_MEMO_BYTES_MAX);
            return false;
        }
        memcpy(r->memo, a, n);
        r->memo_len = (uint8_t)n;
        return true;
    default:
        abort();
    }
}

/* The NAME value pairs after the positional arguments. */
static bool command_options(command_call *c, uint32_t first)
{
    uint32_t seen = 0;
    for (uint32_t i = first; i < c->cmd->argc; i += 2) {
        uint32_t flag = 0;
        for (size_t k = 0; k < sizeof(command_option_names) / sizeof(command_option_names[0]);
             k++)
            if (command_arg_is(c, i, command_option_names[k].name))
                flag = command_option_names[k].flag;
        if (!flag || !(c->def->options & flag) || (seen & flag) || i + 1 >= c->cmd->argc) {
            command_syntax_error(c);
            return false;
        }
        seen |= flag;
        if (!command_option(c, flag, i + 1))
            return false;
    }
    return true;
}

/* ---- permissions -------------------------------------------------------- */

static bool command_authed(const command_call *c)
{
    return c->env->auth == NULL || c->s->token != NULL;
}

/* May this session see the server as a whole (process, data directory,
 * every shard's figures)?  On an open server, or with an admin token; a
 * merchant token sees only what concerns its own connection and
 * merchants, as other tenants' volume is not its business. */
static bool command_sees_server(const command_call *c)
{
    return c->env->auth == NULL || (c->s->token != NULL && c->s->token->admin);
}

/* NOPERM unless the session's token may act for merchant m (0: the admin
 * commands over every shard). */
static bool command_allowed(command_call *c, uint64_t m)
{
    if (c->env->auth == NULL)
        return true;
    const config_token *t = c->s->token;
    if (m == 0) {
        if (t->admin)
            return true;
        command_err(c, "NOPERM", "this command needs an admin token");
        return false;
    }
    if (config_token_allows(t, m))
        return true;
    command_err(c, "NOPERM", "token not allowed for merchant %llu", (unsigned long long)m);
    return false;
}

/* ---- engine commands ------------------------------------------------------- */

/* The request as parsed goes to the engine if the engine's own checks
 * pass (tally_request_check), else their error is the reply. */
static int command_checked(command_call *c)
{
    if (tally_request_check(c->req) == 0)
        return COMMAND_SUBMIT;
    resp_error(c->out, tally_error_code(c->req->res.status), c->req->res.message);
    return COMMAND_REPLIED;
}

static int command_engine(command_call *c)
{
    const command_def *d = c->def;
    tally_request *r = c->req;
    r->op = (uint8_t)d->op;
    uint32_t n = (uint32_t)strlen(d->shape);
    if (d->shape[0] == 'M' && c->cmd->argc > 2)
        return command_arity_error(c);
    uint32_t i = 1;
    /* The merchant first, so NOPERM is said before anything about the
     * rest of the request. */
    for (; i <= n && i < c->cmd->argc; i++) {
        if (!command_positional(c, d->shape[i - 1], i))
            return COMMAND_REPLIED;
        if (i == 1 && !command_allowed(c, r->merchant))
            return COMMAND_REPLIED;
    }
    if (i == 1 && !command_allowed(c, 0)) /* no merchant: every shard */
        return COMMAND_REPLIED;
    if (d->shape[0] != 'M' && i <= n)
        return command_arity_error(c);
    if (!command_options(c, i))
        return COMMAND_REPLIED;
    return command_checked(c);
}

/* FOLLOW m or FOLLOW * (an admin's: every merchant, one cursor per
 * shard). */
static int command_follow(command_call *c)
{
    tally_request *r = c->req;
    r->op = TALLY_OP_FOLLOW;
    if (command_arg_is(c, 1, "*")) {
        if (!command_allowed(c, 0))
            return COMMAND_REPLIED;
        /* One cursor per shard of one engine: a cluster node has several,
         * each a group, whose merchants are followed where they are. */
        if (c->env->cluster)
            return command_err(c, "ERR", "FOLLOW * is not served in cluster mode: FOLLOW each "
                                         "merchant (-MOVED takes it to its group)");
        uint32_t n = c->env->t ? tally_shard_count(c->env->t) : 0;
        r->cursors = n ? calloc(n, sizeof(*r->cursors)) : NULL;
        if (!r->cursors)
            return command_err(c, "ERR", "FOLLOW *: out of memory");
        r->cursors_count = n;
    } else if (!command_u64_arg(c, 1, FIELD_MERCHANT, &r->merchant) ||
               !command_allowed(c, r->merchant)) {
        return COMMAND_REPLIED;
    }
    if (!command_options(c, 2))
        return COMMAND_REPLIED;
    return command_checked(c);
}

/* ---- MULTI / EXEC ---------------------------------------------------------------
 *
 * Redis's semantics, for the ledger commands of one merchant: between
 * MULTI and EXEC every command is checked as it would be alone and queued
 * (+QUEUED) or refused; a refusal — a malformed command, another
 * merchant's (-CROSSSLOT), one that is not a ledger command — makes the
 * EXEC answer -EXECABORT.  EXEC hands the queue to the merchant's shard as
 * one request (tally.h, TALLY_OP_EXEC); its reply is the array of the
 * commands' replies.  MULTI, EXEC, DISCARD, WATCH, UNWATCH and QUIT are
 * never queued. */

static void command_multi_reset(command_session *s)
{
    for (uint32_t i = 0; i < s->multi_count; i++)
        tally_request_release(&s->multi_cmds[i]);
    free(s->multi_cmds);
    s->multi_cmds = NULL;
    s->multi_count = s->multi_cap = 0;
    s->multi = s->multi_failed = false;
    s->multi_merchant = 0;
    s->multi_units = 0;
}

void command_session_free(command_session *s) { command_multi_reset(s); }

static bool command_immediate(const command_def *d)
{
    return d->handler == command_multi || d->handler == command_exec ||
           d->handler == command_discard || d->handler == command_watch ||
           d->handler == command_unwatch || d->handler == command_quit;
}

/* Refuses a command inside MULTI: the transaction will abort. */
static int command_queue_refuse(command_call *c, tally_request *q, const char *code,
                                const char *why)
{
    if (q)
        tally_request_release(q);
    c->s->multi_failed = true;
    if (code)
        return command_err(c, code, "%s", why);
    return COMMAND_REPLIED; /* the reply is written already */
}

static int command_route_merchant(command_call *c, uint64_t merchant, const char *m, size_t n,
                                  bool write, bool readonly);

/* In a cluster, a command queued in MULTI must be one this node serves
 * (as Redis Cluster answers -MOVED at queueing, and EXEC then aborts). */
static int command_queue_route(command_call *c)
{
    if (!c->env->cluster)
        return COMMAND_SUBMIT;
    size_t n;
    const char *m = command_arg(c, (uint32_t)c->def->key_first, &n);
    return command_route_merchant(c, c->req->merchant, m, n, (c->def->flags & CMD_WRITE) != 0,
                                  c->s->readonly);
}

static int command_queue(command_call *c)
{
    command_session *s = c->s;
    const command_def *d = c->def;
    char why[200];
    if (d->op < TALLY_OP_EARN || d->op > TALLY_OP_LIABILITY) {
        snprintf(why, sizeof(why), "%s is not allowed in MULTI: a transaction holds ledger "
                                   "commands of one merchant", d->name);
        return command_queue_refuse(c, NULL, "ERR", why);
    }
    if (s->multi_count == LIMIT_MULTI_COMMANDS_MAX) {
        snprintf(why, sizeof(why), "MULTI holds at most %d commands", LIMIT_MULTI_COMMANDS_MAX);
        return command_queue_refuse(c, NULL, "ERR", why);
    }
    if (s->multi_count == s->multi_cap) {
        uint32_t cap = s->multi_cap ? s->multi_cap * 2 : 8;
        tally_request *v = realloc(s->multi_cmds, cap * sizeof(*v));
        if (!v)
            return command_queue_refuse(c, NULL, "ERR", "out of memory");
        s->multi_cmds = v;
        s->multi_cap = cap;
    }
    tally_request *q = &s->multi_cmds[s->multi_count];
    memset(q, 0, sizeof(*q));
    command_call qc = *c;
    qc.req = q;
    if (command_engine(&qc) != COMMAND_SUBMIT || command_queue_route(&qc) != COMMAND_SUBMIT)
        return command_queue_refuse(c, q, NULL, NULL);
    if (s->multi_merchant && q->merchant != s->multi_merchant) {
        snprintf(why, sizeof(why), "Keys in request don't hash to the same slot (this MULTI "
                                   "is for merchant %llu)", (unsigned long long)s->multi_merchant);
        return command_queue_refuse(c, q, "CROSSSLOT", why);
    }
    uint32_t units = command_units(q);
    if (s->multi_units + units > LIMIT_CLIENT_PIPELINE_MAX) {
        snprintf(why, sizeof(why), "MULTI's replies may hold at most %d entries",
                 LIMIT_CLIENT_PIPELINE_MAX);
        return command_queue_refuse(c, q, "ERR", why);
    }
    s->multi_merchant = q->merchant;
    s->multi_units += units;
    s->multi_count++;
    resp_simple(c->out, "QUEUED");
    return COMMAND_REPLIED;
}

static int command_multi(command_call *c)
{
    if (c->s->multi)
        return command_err(c, "ERR", "MULTI calls can not be nested");
    c->s->multi = true;
    resp_simple(c->out, "OK");
    return COMMAND_REPLIED;
}

static int command_exec(command_call *c)
{
    command_session *s = c->s;
    if (!s->multi)
        return command_err(c, "ERR", "EXEC without MULTI");
    if (s->multi_failed) {
        command_multi_reset(s);
        return command_err(c, "EXECABORT", "Transaction discarded because of previous errors.");
    }
    if (s->multi_count == 0) {
        command_multi_reset(s);
        resp_array(c->out, 0);
        return COMMAND_REPLIED;
    }
    tally_request *r = c->req;
    r->op = TALLY_OP_EXEC;
    r->merchant = s->multi_merchant;
    r->cmds = s->multi_cmds;
    r->cmds_count = s->multi_count;
    s->multi_cmds = NULL;
    s->multi_count = 0;
    command_multi_reset(s);
    return COMMAND_SUBMIT;
}

static int command_discard(command_call *c)
{
    if (!c->s->multi)
        return command_err(c, "ERR", "DISCARD without MULTI");
    command_multi_reset(c->s);
    resp_simple(c->out, "OK");
    return COMMAND_REPLIED;
}

static int command_watch(command_call *c)
{
    if (c->s->multi)
        return command_err(c, "ERR", "WATCH inside MULTI is not allowed");
    return command_err(c, "ERR", "WATCH is not supported: an EXEC runs its commands back to "
                                 "back with nothing interleaved, so there is nothing to watch");
}

static int command_unwatch(command_call *c)
{
    resp_simple(c->out, "OK");
    return COMMAND_REPLIED;
}

uint32_t command_units(const tally_request *req)
{
    switch (req->op) {
    case TALLY_OP_HISTORY:
        return req->limit ? req->limit : LIMIT_HISTORY_DEFAULT;
    case TALLY_OP_FOLLOW:
        return req->limit ? req->limit : LIMIT_FOLLOW_DEFAULT;
    case TALLY_OP_EXEC: {
        uint32_t n = 0;
        for (uint32_t i = 0; i < req->cmds_count; i++)
            n += command_units(&req->cmds[i]);
        return n;
    }
    default:
        return 1;
    }
}

/* ---- replies to engine requests --------------------------------------------- */

static void command_entry(resp_out *o, const tally_entry *e, int proto)
{
    resp_map(o, 15, proto);
    resp_bulk_str(o, "id");
    resp_bulk(o, e->id, e->id_len);
    resp_bulk_str(o, "kind");
    resp_bulk_str(o, tally_kind_name(e->kind));
    resp_bulk_str(o, "merchant");
    command_u64(o, e->merchant);
    resp_bulk_str(o, "account");
    command_u64(o, e->account);
    resp_bulk_str(o, "points");
    resp_int(o, e->points);
    resp_bulk_str(o, "amount");
    resp_int(o, e->amount);
    resp_bulk_str(o, "balance");
    resp_int(o, e->balance);
    resp_bulk_str(o, "held");
    resp_int(o, e->held);
    resp_bulk_str(o, "pending");
    resp_int(o, e->pending);
    resp_bulk_str(o, "ts");
    command_u64(o, e->ts_ms);
    resp_bulk_str(o, "seq");
    command_u64(o, e->seq);
    resp_bulk_str(o, "ref");
    resp_bulk(o, e->ref, e->ref_len);
    resp_bulk_str(o, "expires");
    command_u64(o, e->expires);
    resp_bulk_str(o, "memo");
    resp_bulk(o, e->memo, e->memo_len);
    resp_bulk_str(o, "imported");
    resp_int(o, e->imported ? 1 : 0);
}

static void command_balance(resp_out *o, const tally_balance *b, int proto)
{
    resp_map(o, 8, proto);
    resp_bulk_str(o, "available");
    resp_int(o, b->available);
    resp_bulk_str(o, "held");
    resp_int(o, b->held);
    resp_bulk_str(o, "pending");
    resp_int(o, b->pending);
    resp_bulk_str(o, "earned");
    resp_int(o, b->earned);
    resp_bulk_str(o, "redeemed");
    resp_int(o, b->redeemed);
    resp_bulk_str(o, "expired");
    resp_int(o, b->expired);
    resp_bulk_str(o, "next_expiry");
    command_u64(o, b->next_expiry);
    resp_bulk_str(o, "expiring");
    resp_int(o, b->expiring);
}

static void command_merchant(resp_out *o, const tally_merchant *m, int proto)
{
    resp_map(o, 6, proto);
    resp_bulk_str(o, "accounts");
    resp_int(o, m->accounts);
    resp_bulk_str(o, "outstanding");
    resp_int(o, m->outstanding);
    resp_bulk_str(o, "earned");
    resp_int(o, m->earned);
    resp_bulk_str(o, "redeemed");
    resp_int(o, m->redeemed);
    resp_bulk_str(o, "expired");
    resp_int(o, m->expired);
    resp_bulk_str(o, "entries");
    resp_int(o, m->entries);
}

/* [YYYY-MM, points] pairs in month order, then [never, points] (always
 * present, 0 when nothing is outstanding without expiry). */
static void command_liability(resp_out *o, const tally_result *res)
{
    int64_t never = 0;
    uint32_t months = 0;
    for (uint32_t i = 0; i < res->rows_count; i++) {
        if (res->rows[i].year == 0)
            never += res->rows[i].points;
        else
            months++;
    }
    resp_array(o, months + 1);
    for (uint32_t i = 0; i < res->rows_count; i++) {
        const tally_liability_row *row = &res->rows[i];
        if (row->year == 0)
            continue;
        char ym[16];
        int n = snprintf(ym, sizeof(ym), "%04d-%02d", row->year, row->month);
        resp_array(o, 2);
        resp_bulk(o, ym, (size_t)n);
        resp_int(o, row->points);
    }
    resp_array(o, 2);
    resp_bulk_str(o, "never");
    resp_int(o, never);
}

/* [cursor, entries]: the cursor a bulk string (a seq's digits, or FOLLOW
 * *'s text), the entries as HISTORY's, oldest first. */
static void command_follow_reply(int proto, const tally_request *req, resp_out *out)
{
    char cursor[TALLY_CURSOR_BYTES_MAX];
    size_t n = req->merchant
                   ? (size_t)snprintf(cursor, sizeof(cursor), "%llu",
                                      (unsigned long long)req->res.cursor)
                   : tally_cursor_format(req->cursors, req->cursors_count, cursor, sizeof(cursor));
    resp_array(out, 2);
    resp_bulk(out, cursor, n);
    resp_array(out, req->res.items_count);
    for (uint32_t i = 0; i < req->res.items_count; i++)
        command_entry(out, &req->res.items[i], proto);
}

void command_reply(int proto, const tally_request *req, resp_out *out)
{
    const tally_result *res = &req->res;
    if (res->status != 0) {
        const char *msg = res->message[0] ? res->message : tally_strerror(res->status);
        if (req->op == TALLY_OP_VERIFY && res->status == TALLY_ECORRUPT)
            resp_errorf(out, "ERR", "verify failed: %s", msg);
        else
            resp_error(out, tally_error_code(res->status), msg);
        return;
    }
    switch (req->op) {
    case TALLY_OP_BALANCE:
        command_balance(out, &res->balance, proto);
        break;
    case TALLY_OP_ENTRY:
        if (res->found)
            command_entry(out, &res->entry, proto);
        else
            resp_null(out, proto);
        break;
    case TALLY_OP_HISTORY:
        resp_array(out, res->items_count);
        for (uint32_t i = 0; i < res->items_count; i++)
            command_entry(out, &res->items[i], proto);
        break;
    case TALLY_OP_MERCHANT:
        command_merchant(out, &res->merchant, proto);
        break;
    case TALLY_OP_LIABILITY:
        command_liability(out, res);
        break;
    case TALLY_OP_VERIFY:
    case TALLY_OP_SNAPSHOT:
        resp_simple(out, "OK");
        break;
    case TALLY_OP_FOLLOW:
        command_follow_reply(proto, req, out);
        break;
    case TALLY_OP_EXEC:
        resp_array(out, req->cmds_count);
        for (uint32_t i = 0; i < req->cmds_count; i++)
            command_reply(proto, &req->cmds[i], out);
        break;
    default:
        command_entry(out, &res->entry, proto);
        break;
    }
}

/* ---- connection commands ----------------------------------------------------- */

static int command_ping(command_call *c)
{
    if (c->cmd->argc > 2)
        return command_arity_error(c);
    if (c->cmd->argc == 2) {
        size_t n;
        const char *a = command_arg(c, 1, &n);
        resp_bulk(c->out, a, n);
    } else {
        resp_simple(c->out, "PONG");
    }
    return COMMAND_REPLIED;
}

static int command_echo(command_call *c)
{
    size_t n;
    const char *a = command_arg(c, 1, &n);
    resp_bulk(c->out, a, n);
    return COMMAND_REPLIED;
}

/* Checks a token; writes the WRONGPASS / ERR reply if it fails. */
static bool command_check_token(command_call *c, uint32_t i)
{
    if (c->env->auth == NULL) {
        command_err(c, "ERR",
                    "AUTH <password> called without any password configured for the default "
                    "user. Are you sure your configuration is correct?");
        return false;
    }
    size_t n;
    const char *a = command_arg(c, i, &n);
    const config_token *t = config_auth_find(c->env->auth, a, n);
    if (!t) {
        command_err(c, "WRONGPASS", "invalid username-password pair or user is disabled.");
        return false;
    }
    c->s->token = t;
    return true;
}

static int command_auth(command_call *c)
{
    if (c->cmd->argc > 3)
        return command_arity_error(c);
    /* AUTH token, or AUTH user token: the user name is not used. */
    if (!command_check_token(c, c->cmd->argc - 1))
        return COMMAND_REPLIED;
    resp_simple(c->out, "OK");
    return COMMAND_REPLIED;
}

/* Redis's rule for client names and library attributes: printable ASCII
 * without blanks (0x21..0x7e), so that CLIENT INFO stays one word per
 * field. */
static bool command_name_ok(const char *a, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (a[i] < '!' || a[i] > '~')
            return false;
    return true;
}

/* Stores a client name or library attribute (CLIENT SETNAME, HELLO
 * SETNAME, CLIENT SETINFO); false, with Redis's error written, if Redis
 * would refuse it.  A longer one is cut to the session's buffer. */
static bool command_set_name(command_call *c, char *dst, size_t cap, const char *a, size_t n,
                             const char *what)
{
    if (!command_name_ok(a, n)) {
        command_err(c, "ERR", "%s cannot contain spaces, newlines or special characters.",
                    what);
        return false;
    }
    size_t k = n < cap - 1 ? n : cap - 1;
    memcpy(dst, a, k);
    dst[k] = 0;
    return true;
}

static void command_hello_reply(command_call *c)
{
    resp_map(c->out, 7, c->s->proto);
    resp_bulk_str(c->out, "server");
    resp_bulk_str(c->out, "tally");
    resp_bulk_str(c->out, "version");
    resp_bulk_str(c->out, COMMAND_REDIS_VERSION);
    resp_bulk_str(c->out, "proto");
    resp_int(c->out, c->s->proto);
    resp_bulk_str(c->out, "id");
    resp_int(c->out, (int64_t)c->s->id);
    resp_bulk_str(c->out, "mode");
    resp_bulk_str(c->out, "standalone");
    resp_bulk_str(c->out, "role");
    resp_bulk_str(c->out, "master");
    resp_bulk_str(c->out, "modules");
    resp_array(c->out, 0);
}

static int command_hello(command_call *c)
{
    int proto = c->s->proto;
    uint32_t i = 1;
    if (c->cmd->argc >= 2) {
        size_t n;
        const char *a = command_arg(c, 1, &n);
        uint64_t v = 0;
        if (config_parse_u64(a, n, &v) != 0)
            return command_err(c, "ERR", "Protocol version is not an integer or out of range");
        if (v != 2 && v != 3)
            return command_err(c, "NOPROTO", "unsupported protocol version");
        proto = (int)v;
        i = 2;
    }
    const char *name = NULL;
    size_t name_len = 0;
    for (; i < c->cmd->argc; i++) {
        if (command_arg_is(c, i, "AUTH") && i + 2 < c->cmd->argc) {
            if (!command_check_token(c, i + 2))
                return COMMAND_REPLIED;
            i += 2;
        } else if (command_arg_is(c, i, "SETNAME") && i + 1 < c->cmd->argc) {
            name = command_arg(c, i + 1, &name_len);
            if (!command_name_ok(name, name_len))
                return command_err(c, "ERR", "Client names cannot contain spaces, newlines "
                                             "or special characters.");
            i += 1;
        } else {
            return command_err(c, "ERR", "Syntax error in HELLO option '%.*s'",
                               (int)c->cmd->argl[i], resp_arg(c->cmd, c->buf, i));
        }
    }
    if (!command_authed(c))
        return command_err(c, "NOAUTH", "HELLO must be called with the client already "
                                        "authenticated, otherwise the HELLO <proto> AUTH "
                                        "<user> <pass> option can be used to authenticate the "
                                        "client and select the RESP protocol version at the "
                                        "same time");
    if (name)
        command_set_name(c, c->s->name, sizeof(c->s->name), name, name_len, "Client names");
    c->s->proto = proto;
    command_hello_reply(c);
    return COMMAND_REPLIED;
}

static int command_quit(command_call *c)
{
    c->s->quit = true;
    resp_simple(c->out, "OK");
    return COMMAND_REPLIED;
}

static int command_select(command_call *c)
{
    size_t n;
    const char *a = command_arg(c, 1, &n);
    bool neg;
    uint64_t v;
    if (!command_number(a, n, &neg, &v))
        return command_err(c, "ERR", "value is not an integer or out of range");
    if (v != 0)
        return command_err(c, "ERR", "DB index is out of range");
    resp_simple(c->out, "OK");
    return COMMAND_REPLIED;
}

/* CLIENT SETINFO LIB-NAME|LIB-VER value, as Redis 7.2 takes it. */
static int command_client_setinfo(command_call *c)
{
    size_t n;
    const char *v = command_arg(c, 3, &n);
    if (command_arg_is(c, 2, "LIB-NAME")) {
        if (!command_set_name(c, c->s->lib_name, sizeof(c->s->lib_name), v, n, "lib-name"))
            return COMMAND_REPLIED;
    } else if (command_arg_is(c, 2, "LIB-VER")) {
        if (!command_set_name(c, c->s->lib_ver, sizeof(c->s->lib_ver), v, n, "lib-ver"))
            return COMMAND_REPLIED;
    } else {
        return command_err(c, "ERR", "Unrecognized option '%.*s'", (int)c->cmd->argl[2],
                           resp_arg(c->cmd, c->buf, 2));
    }
    resp_simple(c->out, "OK");
    return COMMAND_REPLIED;
}

static int command_client(command_call *c)
{
    if (command_arg_is(c, 1, "ID")) {
        resp_int(c->out, (int64_t)c->s->id);
    } else if (command_arg_is(c, 1, "SETNAME") && c->cmd->argc == 3) {
        size_t n;
        const char *a = command_arg(c, 2, &n);
        if (command_set_name(c, c->s->name, sizeof(c->s->name), a, n, "Client names"))
            resp_simple(c->out, "OK");
    } else if (command_arg_is(c, 1, "GETNAME")) {
        if (c->s->name[0])
            resp_bulk_str(c->out, c->s->name);
        else
            resp_null(c->out, c->s->proto);
    } else if (command_arg_is(c, 1, "SETINFO") && c->cmd->argc == 4) {
        return command_client_setinfo(c);
    } else if (command_arg_is(c, 1, "INFO")) {
        char b[320];
        int n = snprintf(b, sizeof(b), "id=%llu name=%s resp=%d db=0 lib-name=%s lib-ver=%s\n",
                         (unsigned long long)c->s->id, c->s->name, c->s->proto,
                         c->s->lib_name, c->s->lib_ver);
        resp_bulk(c->out, b, (size_t)n);
    } else {
        return command_err(c, "ERR", "unknown subcommand or wrong number of arguments for "
                                     "'client|%.*s' command",
                           (int)c->cmd->argl[1], resp_arg(c->cmd, c->buf, 1));
    }
    return COMMAND_REPLIED;
}

/* CONFIG GET answers the settings a client may ask about (redis-benchmark
 * asks for save and appendonly), by name or glob pattern as Redis matches
 * them; unknown parameters are simply absent.  Where the data lives and
 * how it is sharded are the operator's business: a merchant token does not
 * see them (see command_sees_server). */
static int command_config(command_call *c)
{
    if (!command_arg_is(c, 1, "GET") || c->cmd->argc < 3)
        return command_err(c, "ERR", "only CONFIG GET parameter... is supported");
    const command_server_info *in = c->env->info;
    char port[16] = "", shards[16] = "", maxclients[16] = "";
    if (in) {
        snprintf(port, sizeof(port), "%u", in->port);
        snprintf(maxclients, sizeof(maxclients), "%u", in->max_clients);
    }
    if (c->env->t)
        snprintf(shards, sizeof(shards), "%u", tally_shard_count(c->env->t));
    const struct {
        const char *name, *value;
        bool internal;
    } known[] = {
        {"port", port, false},
        {"bind", in && in->bind ? in->bind : "", false},
        {"dir", in && in->dir ? in->dir : "", true},
        {"appendfsync", in && in->sync == TALLY_SYNC_NONE ? "no" : "always", false},
        {"appendonly", "yes", false},
        {"save", "", false},
        {"shards", shards, true},
        {"databases", "1", false},
        {"maxclients", maxclients, false},
    };
    enum { KNOWN = sizeof(known) / sizeof(known[0]) };
    bool hit[KNOWN] = {false};
    uint32_t hits = 0;
    bool all = command_sees_server(c);
    for (uint32_t i = 2; i < c->cmd->argc; i++) {
        char pattern[128];
        size_t n;
        const char *a = command_arg(c, i, &n);
        snprintf(pattern, sizeof(pattern), "%.*s", (int)(n < 127 ? n : 127), a);
        for (size_t k = 0; k < KNOWN; k++) {
            if (hit[k] || (known[k].internal && !all) ||
                fnmatch(pattern, known[k].name, FNM_CASEFOLD) != 0)
                continue;
            hit[k] = true;
            hits++;
        }
    }
    resp_map(c->out, hits, c->s->proto);
    for (size_t k = 0; k < KNOWN; k++) {
        if (!hit[k])
            continue;
        resp_bulk_str(c->out, known[k].name);
        resp_bulk_str(c->out, known[k].value);
    }
    return COMMAND_REPLIED;
}

/* ---- COMMAND ---------------------------------------------------------------- */

static void command_describe(resp_out *o, const command_def *d, int proto)
{
    uint32_t nflags = 0;
    for (size_t k = 0; k < sizeof(command_flag_names) / sizeof(command_flag_names[0]); k++)
        nflags += (d->flags & command_flag_names[k].flag) != 0;
    resp_array(o, 10);
    resp_bulk_str(o, d->name);
    resp_int(o, d->arity);
    resp_array(o, nflags);
    for (size_t k = 0; k < sizeof(command_flag_names) / sizeof(command_flag_names[0]); k++)
        if (d->flags & command_flag_names[k].flag)
            resp_simple(o, command_flag_names[k].name);
    resp_int(o, d->key_first);
    resp_int(o, d->key_first);
    resp_int(o, d->key_first ? 1 : 0);
    resp_array(o, 0); /* ACL categories */
    resp_array(o, 0); /* tips */
    if (d->key_first) {
        /* One key spec: the merchant at index 1 (Redis 7 clients route by it). */
        resp_array(o, 1);
        resp_map(o, 3, proto);
        resp_bulk_str(o, "flags");
        resp_array(o, 1);
        resp_simple(o, d->flags & CMD_WRITE ? "RW" : "RO");
        resp_bulk_str(o, "begin_search");
        resp_map(o, 2, proto);
        resp_bulk_str(o, "type");
        resp_bulk_str(o, "index");
        resp_bulk_str(o, "spec");
        resp_map(o, 1, proto);
        resp_bulk_str(o, "index");
        resp_int(o, d->key_first);
        resp_bulk_str(o, "find_keys");
        resp_map(o, 2, proto);
        resp_bulk_str(o, "type");
        resp_bulk_str(o, "range");
        resp_bulk_str(o, "spec");
        resp_map(o, 3, proto);
        resp_bulk_str(o, "lastkey");
        resp_int(o, 0);
        resp_bulk_str(o, "keystep");
        resp_int(o, 1);
        resp_bulk_str(o, "limit");
        resp_int(o, 0);
    } else {
        resp_array(o, 0);
    }
    resp_array(o, 0); /* subcommands */
}

static void command_doc(resp_out *o, const command_def *d, int proto)
{
    resp_bulk_str(o, d->name);
    resp_map(o, 4, proto);
    resp_bulk_str(o, "summary");
    resp_bulk_str(o, d->summary);
    resp_bulk_str(o, "since");
    resp_bulk_str(o, "0.1.0");
    resp_bulk_str(o, "group");
    resp_bulk_str(o, d->op != TALLY_OP_NONE ? "ledger" : "connection");
    resp_bulk_str(o, "syntax");
    resp_bulk_str(o, d->args);
}

static int command_command(command_call *c)
{
    resp_out *o = c->out;
    int proto = c->s->proto;
    uint32_t argc = c->cmd->argc;
    if (argc == 1 || command_arg_is(c, 1, "INFO") || command_arg_is(c, 1, "DOCS")) {
        bool docs = argc > 1 && command_arg_is(c, 1, "DOCS");
        const command_def *picked[COMMAND_TABLE_COUNT];
        uint32_t n = 0, named = argc > 2 ? argc - 2 : 0;
        for (size_t i = 0; i < COMMAND_TABLE_COUNT && named == 0; i++)
            picked[n++] = &command_table[i];
        if (docs) {
            for (uint32_t k = 0; k < named && n < COMMAND_TABLE_COUNT; k++) {
                size_t len;
                const char *a = command_arg(c, 2 + k, &len);
                const command_def *d = command_find(a, len);
                if (d)
                    picked[n++] = d;
            }
            resp_map(o, n, proto);
            for (uint32_t k = 0; k < n; k++)
                command_doc(o, picked[k], proto);
            return COMMAND_REPLIED;
        }
        if (named) {
            resp_array(o, named);
            for (uint32_t k = 0; k < named; k++) {
                size_t len;
                const char *a = command_arg(c, 2 + k, &len);
                const command_def *d = command_find(a, len);
                if (d)
                    command_describe(o, d, proto);
                else
                    resp_null(o, proto);
            }
            return COMMAND_REPLIED;
        }
        resp_array(o, n);
        for (uint32_t k = 0; k < n; k++)
            command_describe(o, picked[k], proto);
    } else if (command_arg_is(c, 1, "COUNT")) {
        resp_int(o, (int64_t)COMMAND_TABLE_COUNT);
    } else if (command_arg_is(c, 1, "LIST")) {
        resp_array(o, COMMAND_TABLE_COUNT);
        for (size_t i = 0; i < COMMAND_TABLE_COUNT; i++)
            resp_bulk_str(o, command_table[i].name);
    } else if (command_arg_is(c, 1, "HELP")) {
        /* The unknown-subcommand error below suggests it, as Redis's does. */
        static const char *const help[] = {
            "COMMAND <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "(no subcommand)",
            "    Return details about all tally commands.",
            "COUNT",
            "    Return the total number of commands in this server.",
            "LIST",
            "    Return a list of all commands in this server.",
            "INFO [<command-name> ...]",
            "    Return details about multiple commands.",
            "    If no command names are given, documentation details for all",
            "    commands are returned.",
            "DOCS [<command-name> ...]",
            "    Return documentation details about multiple commands.",
            "    If no command names are given, documentation details for all",
            "    commands are returned.",
            "HELP",
            "    Print this help.",
        };
        resp_array(o, sizeof(help) / sizeof(help[0]));
        for (size_t i = 0; i < sizeof(help) / sizeof(help[0]); i++)
            resp_simple(o, help[i]);
    } else {
        return command_err(c, "ERR", "unknown subcommand '%.*s'. Try COMMAND HELP.",
                           (int)c->cmd->argl[1], resp_arg(c->cmd, c->buf, 1));
    }
    return COMMAND_REPLIED;
}

/* ---- INFO --------------------------------------------------------------------- */

/* INFO's figures are the metrics module's (metrics.h), as /metrics reports
 * them; this is only their Redis-style text. */

static uint64_t command_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void command_info_server(metrics_text *t, const command_env *env)
{
    const command_server_info *in = env->info;
    const metrics *m = env->metrics;
    uint64_t up = m ? (command_now_ms() - m->start_ms) / 1000 : 0;
    metrics_textf(t,
                  "# Server\r\ntally_version:%s\r\nredis_version:%s\r\nredis_mode:%s\r\n"
                  "process_id:%ld\r\ntcp_port:%u\r\nuptime_in_seconds:%llu\r\n"
                  "sync:%s\r\nshards:%u\r\ndir:%s\r\n\r\n",
                  COMMAND_VERSION, COMMAND_REDIS_VERSION,
                  env->cluster ? "cluster" : "standalone", (long)getpid(), in ? in->port : 0,
                  (unsigned long long)up,
                  in && in->sync == TALLY_SYNC_NONE ? "none" : "always",
                  env->t ? tally_shard_count(env->t) : 0, in && in->dir ? in->dir : "");
}

static void command_info_clients(metrics_text *t, const command_env *env)
{
    const metrics *m = env->metrics;
    if (!m)
        return;
    metrics_textf(t,
                  "# Clients\r\nconnected_clients:%u\r\nmaxclients:%u\r\n"
                  "total_connections_received:%llu\r\nrejected_connections:%llu\r\n"
                  "total_commands_processed:%llu\r\nprotocol_errors:%llu\r\n"
                  "requests_in_flight:%llu\r\n\r\n",
                  m->clients, m->max_clients, (unsigned long long)m->connections_accepted,
                  (unsigned long long)m->connections_rejected,
                  (unsigned long long)m->commands_total,
                  (unsigned long long)m->protocol_errors,
                  (unsigned long long)m->requests_inflight);
}

/* Every shard's counters: the engine's shards, or in cluster mode one
 * row per shard group this node serves (labels[i]: the group).  *n rows
 * into st[LIMIT_SHARDS_MAX]. */
static void command_engine_rows(const command_env *env, tally_shard_stats *st,
                                uint32_t *labels, uint32_t *n)
{
    *n = 0;
    if (env->cluster) {
        for (uint32_t g = 0; g < LIMIT_CLUSTER_GROUPS_MAX; g++)
            if (repl_group_stats(env->cluster, g, &st[*n]) == 0)
                labels[(*n)++] = g;
        return;
    }
    uint32_t count = env->t ? tally_shard_count(env->t) : 0;
    for (uint32_t i = 0; i < count; i++) {
        tally_shard_stats_get(env->t, i, &st[i]);
        labels[i] = i;
    }
    *n = count;
}

static_assert(LIMIT_CLUSTER_GROUPS_MAX <= LIMIT_SHARDS_MAX, "a row per group fits");

static void command_info_shards(metrics_text *t, const tally_shard_stats *rows,
                                const uint32_t *labels, uint32_t n)
{
    metrics_textf(t, "# Shards\r\n");
    for (uint32_t k = 0; k < n; k++) {
        const tally_shard_stats st = rows[k];
        uint32_t i = labels[k];
        const char *status = st.status == 0 ? "ok"
                             : st.status == TALLY_ECORRUPT ? "corrupt" : "failed";
        metrics_textf(t,
                      "shard%u:status=%s,seq=%llu,durable_seq=%llu,checkpoint_seq=%llu,"
                      "log_first_seq=%llu,log_bytes=%llu,snapshot_seq=%llu,"
                      "snapshot_bytes=%llu,snapshots_taken=%llu,snapshot_ms_last=%llu,"
                      "sweep_entries=%llu,sweep_chunks=%llu,sweep_chunk_entries_max=%llu%s%s\r\n",
                      i, status, (unsigned long long)st.seq,
                      (unsigned long long)st.durable_seq,
                      (unsigned long long)st.checkpoint_seq,
                      (unsigned long long)st.log_first_seq,
                      (unsigned long long)st.log_bytes, (unsigned long long)st.snapshot_seq,
                      (unsigned long long)st.snapshot_bytes,
                      (unsigned long long)st.snapshots,
                      (unsigned long long)st.snapshot_ms_last,
                      (unsigned long long)st.sweep_entries, (unsigned long long)st.sweep_chunks,
                      (unsigned long long)st.sweep_chunk_entries_max, st.status ? ",reason=" : "",
                      st.status ? st.status_message : "");
    }
    metrics_textf(t, "\r\n");
}

/* Ledger, shards and commit sections from the engine's counters. */
static void command_info_engine(metrics_text *t, const command_env *env, bool ledger,
                                bool shards, bool commit)
{
    if (!env->t && !env->cluster)
        return;
    tally_shard_stats *rows = calloc(LIMIT_SHARDS_MAX, sizeof(*rows));
    uint32_t labels[LIMIT_SHARDS_MAX], n = 0;
    if (!rows) {
        t->oom = true;
        return;
    }
    command_engine_rows(env, rows, labels, &n);
    metrics_engine e;
    metrics_engine_sum(rows, n, &e);
    const tally_shard_stats *sum = &e.sum;
    if (ledger)
        metrics_textf(t,
                      "# Ledger\r\nrecords:%llu\r\ndurable_records:%llu\r\n"
                      "records_since_start:%llu\r\nengine_entries_since_start:%llu\r\n"
                      "log_bytes:%llu\r\ncheckpoints:%llu\r\nshards_failed:%u\r\n\r\n",
                      (unsigned long long)sum->seq, (unsigned long long)sum->durable_seq,
                      (unsigned long long)sum->entries, (unsigned long long)sum->sweep_entries,
                      (unsigned long long)sum->log_bytes, (unsigned long long)sum->checkpoints,
                      e.shards_failed);
    if (shards)
        command_info_shards(t, rows, labels, n);
    free(rows);
    if (commit) {
        double avg_us = sum->batches ? (double)sum->flush_us_total / (double)sum->batches : 0;
        double per_batch = sum->batches ? (double)sum->entries / (double)sum->batches : 0;
        metrics_textf(t,
                      "# Commit\r\nbatches:%llu\r\nbatch_records_avg:%.1f\r\n"
                      "batch_records_max:%llu\r\nflush_latency_us_avg:%.0f\r\n"
                      "flush_latency_us_max:%llu\r\ncheckpoints:%llu\r\n"
                      "checkpoint_us_avg:%.0f\r\ncheckpoint_us_max:%llu\r\n"
                      "checkpoint_stall_us_max:%llu\r\n\r\n",
                      (unsigned long long)sum->batches, per_batch,
                      (unsigned long long)sum->batch_entries_max, avg_us,
                      (unsigned long long)sum->flush_us_max,
                      (unsigned long long)sum->checkpoints,
                      sum->checkpoints
                          ? (double)sum->checkpoint_us_total / (double)sum->checkpoints
                          : 0,
                      (unsigned long long)sum->checkpoint_us_max,
                      (unsigned long long)sum->checkpoint_stall_us_max);
    }
}

/* What a merchant token's INFO says: the versions clients check, and its
 * own connection (ioredis' ready check and other clients call INFO at
 * connect, so it must answer). */
static void command_info_tenant(metrics_text *t, const command_call *c, bool server,
                                bool clients)
{
    if (server)
        metrics_textf(t, "# Server\r\ntally_version:%s\r\nredis_version:%s\r\n"
                         "redis_mode:standalone\r\n\r\n",
                      COMMAND_VERSION, COMMAND_REDIS_VERSION);
    if (clients)
        metrics_textf(t, "# Clients\r\nclient_id:%llu\r\nclient_name:%s\r\nresp:%d\r\n\r\n",
                      (unsigned long long)c->s->id, c->s->name, c->s->proto);
}

/* Cluster mode: one line per group this node serves (repl.h's figures):
 * its role, epochs, seqs, the chain value at its durable seq (equal on
 * members that hold the same log) and lag. */
static void command_info_replication(metrics_text *t, const command_env *env)
{
    repl_group_info in[LIMIT_CLUSTER_GROUPS_MAX];
    uint32_t n = repl_groups(env->cluster, in, LIMIT_CLUSTER_GROUPS_MAX);
    const cluster_map *m = repl_map_acquire(env->cluster);
    metrics_textf(t, "# Replication\r\ncluster_name:%s\r\nnode_id:%s\r\ngroups:%u\r\n", m->name,
                  m->nodes[repl_self(env->cluster)].id, n);
    repl_map_release(env->cluster, m);
    for (uint32_t i = 0; i < n; i++)
        metrics_textf(t,
                      "group%u:role=%s,leader=%s,epoch=%llu,durable_seq=%llu,durable_epoch=%llu,"
                      "replicated_seq=%llu,commit_seq=%llu,chain=%016llx,replicas=%u,lag=%llu,"
                      "open=%d\r\n",
                      in[i].group, repl_role_name(in[i].role), in[i].leader[0] ? in[i].leader : "-",
                      (unsigned long long)in[i].epoch, (unsigned long long)in[i].durable_seq,
                      (unsigned long long)in[i].durable_epoch,
                      (unsigned long long)in[i].replicated_seq,
                      (unsigned long long)in[i].commit_seq, (unsigned long long)in[i].chain,
                      in[i].replicas, (unsigned long long)in[i].lag, in[i].open);
    metrics_textf(t, "\r\n");
}

static int command_info(command_call *c)
{
    bool all = c->cmd->argc == 1;
    bool want[6] = {all, all, all, all, all, all};
    static const char *const sections[6] = {"server", "clients", "ledger", "shards", "commit",
                                            "replication"};
    for (uint32_t i = 1; i < c->cmd->argc; i++) {
        if (command_arg_is(c, i, "all") || command_arg_is(c, i, "default") ||
            command_arg_is(c, i, "everything"))
            for (int k = 0; k < 6; k++)
                want[k] = true;
        for (int k = 0; k < 6; k++)
            if (command_arg_is(c, i, sections[k]))
                want[k] = true;
    }
    metrics_text t = {0};
    if (c->env->cluster && want[0])
        metrics_textf(&t, "# Cluster\r\ncluster_enabled:1\r\n\r\n"); /* what clients check */
    if (!command_sees_server(c)) {
        command_info_tenant(&t, c, want[0], want[1]);
    } else {
        if (want[0])
            command_info_server(&t, c->env);
        if (want[1])
            command_info_clients(&t, c->env);
        command_info_engine(&t, c->env, want[2], want[3], want[4]);
        if (want[5] && c->env->cluster)
            command_info_replication(&t, c->env);
    }
    if (t.oom)
        resp_error(c->out, "ERR", "out of memory");
    else
        resp_bulk(c->out, t.buf ? t.buf : "", t.len);
    metrics_text_free(&t);
    return COMMAND_REPLIED;
}

/* ---- cluster mode (SPEC §8; repl.h) ------------------------------------------------ */

static int command_no_cluster(command_call *c)
{
    return command_err(c, "ERR", "This instance has cluster support disabled");
}

/* CLUSTER INFO's text, Redis's fields. */
static void command_cluster_info(command_call *c, const cluster_map *m)
{
    uint32_t slots_ok = 0, leaders = 0;
    uint64_t epoch = 0, my_epoch = 0;
    uint32_t self = repl_self(c->env->cluster);
    for (uint32_t g = 0; g < m->group_count; g++) {
        const cluster_group *gr = &m->groups[g];
        int leader = cluster_group_leader(m, g);
        uint16_t ranges[64][2];
        uint32_t n = cluster_slot_ranges(m, g, ranges, 64);
        for (uint32_t i = 0; leader >= 0 && i < n && i < 64; i++)
            slots_ok += (uint32_t)(ranges[i][1] - ranges[i][0] + 1);
        leaders += leader >= 0;
        epoch = gr->epoch > epoch ? gr->epoch : epoch;
        if (leader == (int)self && gr->leader_epoch > my_epoch)
            my_epoch = gr->leader_epoch;
    }
    char text[768];
    int n = snprintf(text, sizeof(text),
                     "cluster_enabled:1\r\ncluster_state:%s\r\ncluster_slots_assigned:%u\r\n"
                     "cluster_slots_ok:%u\r\ncluster_slots_pfail:0\r\ncluster_slots_fail:%u\r\n"
                     "cluster_known_nodes:%u\r\ncluster_size:%u\r\ncluster_current_epoch:%llu\r\n"
                     "cluster_my_epoch:%llu\r\ncluster_groups_led:%u\r\n",
                     leaders == m->group_count ? "ok" : "fail", LIMIT_CLUSTER_SLOTS, slots_ok,
                     LIMIT_CLUSTER_SLOTS - slots_ok, m->node_count, m->group_count,
                     (unsigned long long)epoch, (unsigned long long)my_epoch, leaders);
    resp_bulk(c->out, text, (size_t)n);
}

static int command_cluster(command_call *c)
{
    if (!c->env->cluster)
        return command_no_cluster(c);
    uint32_t argc = c->cmd->argc;
    const cluster_map *m = repl_map_acquire(c->env->cluster);
    int proto = c->s->proto;
    if (command_arg_is(c, 1, "slots") && argc == 2)
        cluster_reply_slots(c->out, m, proto);
    else if (command_arg_is(c, 1, "shards") && argc == 2)
        cluster_reply_shards(c->out, m, proto);
    else if (command_arg_is(c, 1, "nodes") && argc == 2)
        cluster_reply_nodes(c->out, m, repl_self(c->env->cluster), proto);
    else if (command_arg_is(c, 1, "info") && argc == 2)
        command_cluster_info(c, m);
    else if (command_arg_is(c, 1, "myid") && argc == 2)
        resp_bulk_str(c->out, m->nodes[repl_self(c->env->cluster)].id);
    else if (command_arg_is(c, 1, "keyslot") && argc == 3) {
        size_t n;
        const char *k = command_arg(c, 2, &n);
        resp_int(c->out, cluster_keyslot(k, n));
    } else
        command_err(c, "ERR", "unknown subcommand or wrong number of arguments for 'cluster|%.*s'",
                    (int)(c->cmd->argl[1] < 40 ? c->cmd->argl[1] : 40),
                    resp_arg(c->cmd, c->buf, 1));
    repl_map_release(c->env->cluster, m);
    return COMMAND_REPLIED;
}

/* READONLY and READWRITE: whether a replica may serve this connection's
 * reads. */
static int command_readonly(command_call *c)
{
    if (!c->env->cluster)
        return command_no_cluster(c);
    c->s->readonly = strcmp(c->def->name, "readonly") == 0;
    resp_simple(c->out, "OK");
    return COMMAND_REPLIED;
}

/* tally never moves a slot while it migrates (no -ASK), so ASKING has
 * nothing to allow: accepted, as clients send it after an -ASK. */
static int command_asking(command_call *c)
{
    resp_simple(c->out, "OK");
    return COMMAND_REPLIED;
}

/* Where a command for merchant m — written m[0, n) by the client, which
 * hashed those bytes — goes in a cluster: its slot's group here
 * (COMMAND_SUBMIT, s->route_group), or -INVALID (not canonical), -MOVED
 * or -TRYAGAIN written into out (COMMAND_REPLIED). */
static int command_route_merchant(command_call *c, uint64_t merchant, const char *m, size_t n,
                                  bool write, bool readonly)
{
    repl *r = c->env->cluster;
    if (n > 1 && m[0] == '0') {
        resp_errorf(c->out, "INVALID", "merchant must be written in canonical decimal in cluster "
                                       "mode (%llu, not %.*s): clients hash its bytes",
                    (unsigned long long)merchant, (int)(n < 24 ? n : 24), m);
        return COMMAND_REPLIED;
    }
    uint16_t slot = cluster_keyslot(m, n);
    uint32_t group = 0, node = 0;
    const char *why = "";
    int route = repl_route(r, slot, write, readonly, &group, &node, &why);
    if (route == REPL_ROUTE_LOCAL) {
        c->s->route_group = group;
        return COMMAND_SUBMIT;
    }
    if (route == REPL_ROUTE_TRYAGAIN) {
        resp_error(c->out, "TRYAGAIN", why);
        return COMMAND_REPLIED;
    }
    const cluster_map *map = repl_map_acquire(r);
    cluster_reply_moved(c->out, map, slot, node);
    repl_map_release(r, map);
    return COMMAND_REPLIED;
}

/* Where a command the engine would run goes in a cluster (SPEC §8): to
 * its merchant's group; an EXEC to its transaction's merchant's (a write
 * if any command of it writes); VERIFY and SNAPSHOT without a merchant
 * to every group here. */
static int command_route(command_call *c)
{
    const command_def *d = c->def;
    tally_request *q = c->req;
    if (q->op == TALLY_OP_EXEC) {
        char m[24];
        int n = snprintf(m, sizeof(m), "%llu", (unsigned long long)q->merchant);
        bool write = false;
        for (uint32_t i = 0; i < q->cmds_count; i++)
            write = write || tally_op_is_write(q->cmds[i].op);
        return command_route_merchant(c, q->merchant, m, (size_t)n, write, c->s->readonly);
    }
    if (d->key_first == 0 || q->merchant == 0) {
        c->s->route_group = COMMAND_ALL_GROUPS; /* VERIFY, SNAPSHOT: every engine here */
        return COMMAND_SUBMIT;
    }
    size_t n;
    const char *m = command_arg(c, (uint32_t)d->key_first, &n);
    /* An admin VERIFY checks this node's copy when it has one. */
    bool readonly = c->s->readonly || d->op == TALLY_OP_VERIFY;
    return command_route_merchant(c, q->merchant, m, n, (d->flags & CMD_WRITE) != 0, readonly);
}

/* ---- dispatch ------------------------------------------------------------------ */

static int command_unknown(command_call *c)
{
    char args[160];
    size_t o = 0;
    for (uint32_t i = 1; i < c->cmd->argc && o < sizeof(args) - 1; i++) {
        int n = snprintf(args + o, sizeof(args) - o, "'%.*s' ",
                         (int)(c->cmd->argl[i] < 40 ? c->cmd->argl[i] : 40),
                         resp_arg(c->cmd, c->buf, i));
        if (n < 0)
            break;
        o += (size_t)n;
    }
    if (o >= sizeof(args))
        o = sizeof(args) - 1;
    args[o] = 0;
    size_t n;
    const char *raw = command_arg(c, 0, &n);
    char name[65];
    n = n < 64 ? n : 64;
    /* Echo the name printable only: the reply is one text line. */
    for (size_t i = 0; i < n; i++)
        name[i] = raw[i] >= 0x20 && raw[i] < 0x7f ? raw[i] : '?';
    name[n] = 0;
    for (size_t i = 0; i < o; i++)
        if (args[i] < 0x20 || args[i] >= 0x7f)
            args[i] = '?';
    return command_err(c, "ERR", "unknown command '%s', with args beginning with: %s", name,
                       args);
}

int command_dispatch(const command_env *env, command_session *s, const resp_command *cmd,
                     const char *buf, tally_request *req, resp_out *out)
{
    command_call c = {.env = env, .s = s, .cmd = cmd, .buf = buf, .req = req, .out = out};
    size_t n;
    const char *name = command_arg(&c, 0, &n);
    c.def = command_find(name, n);
    s->command = c.def ? (uint32_t)(c.def - command_table) : (uint32_t)COMMAND_TABLE_COUNT;
    int arity = c.def ? c.def->arity : 0;
    int rc;
    if (!c.def)
        rc = command_unknown(&c);
    else if (!command_authed(&c) && !(c.def->flags & CMD_NOAUTH))
        rc = command_err(&c, "NOAUTH", "Authentication required.");
    else if ((arity > 0 && cmd->argc != (uint32_t)arity) ||
             (arity < 0 && cmd->argc < (uint32_t)-arity))
        rc = command_arity_error(&c);
    else if (s->multi && !command_immediate(c.def))
        return command_queue(&c);
    else if ((rc = c.def->handler(&c)) == COMMAND_SUBMIT && env->cluster)
        return command_route(&c);
    else
        return rc;
    /* A command refused inside MULTI aborts its EXEC, as in Redis. */
    if (s->multi)
        s->multi_failed = true;
    return rc;
}
