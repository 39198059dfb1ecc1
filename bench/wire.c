/*
 * wire.c — command encoding and reply scanning for the load generator
 * (wire.h), and the Redis peer's Lua script.
 */
#include <assert.h>
#include <stdbool.h>
#include <string.h>
#include <strings.h>

#include "wire.h"

/* ---- the Redis peer ----------------------------------------------------- */

/*
 * The same logical operations as tally's, with comparable work per write:
 * an idempotency check (the id's key), the balance update, a per-merchant
 * sequence number, the entry record itself (a hash under the id's key, so
 * the idempotency index and the record are one key), and the account's
 * history index (a list of ids) — what tally writes to its log and state.
 * A refused write is remembered under its id like tally does, and a retry
 * of an existing id replays the stored answer.  Keys are built inside the
 * script (numkeys 0): fine on a single Redis, which is what we compare.
 *
 * ARGV: op, merchant, account (or hold id for capture), points, id.
 */
const char wire_redis_script[] =
    "local op, m = ARGV[1], ARGV[2]\n"
    "if op == 'balance' then\n"
    "  local b = redis.call('HMGET', 'a:'..m..':'..ARGV[3], 'available', 'held')\n"
    "  return {'available', tonumber(b[1]) or 0, 'held', tonumber(b[2]) or 0}\n"
    "end\n"
    "local id = (op == 'capture') and ARGV[4] or ARGV[5]\n"
    "local ik = 'i:'..m..':'..id\n"
    "local prev = redis.call('HGETALL', ik)\n"
    "if #prev > 0 then\n"
    "  if prev[2] == 'refused' then return redis.error_reply(prev[4]) end\n"
    "  return prev\n"
    "end\n"
    "local a, p, hold, hk\n"
    "if op == 'capture' then\n"
    "  hk = 'i:'..m..':'..ARGV[3]\n"
    "  local h = redis.call('HMGET', hk, 'kind', 'account', 'open')\n"
    "  if h[1] ~= 'hold' then\n"
    "    redis.call('HSET', ik, 'kind', 'refused', 'code', 'NOTFOUND no such hold')\n"
    "    return redis.error_reply('NOTFOUND no such hold')\n"
    "  end\n"
    "  a, p = h[2], tonumber(h[3])\n"
    "  if p <= 0 then\n"
    "    redis.call('HSET', ik, 'kind', 'refused', 'code', 'INVALID hold is closed')\n"
    "    return redis.error_reply('INVALID hold is closed')\n"
    "  end\n"
    "else\n"
    "  a, p = ARGV[3], tonumber(ARGV[4])\n"
    "end\n"
    "local ak = 'a:'..m..':'..a\n"
    "local bal = tonumber(redis.call('HGET', ak, 'available')) or 0\n"
    "local held = tonumber(redis.call('HGET', ak, 'held')) or 0\n"
    "local change = 0\n"
    "if op == 'earn' then change = p\n"
    "elseif op == 'redeem' or op == 'hold' then\n"
    "  if bal < p then\n"
    "    redis.call('HSET', ik, 'kind', 'refused', 'code', 'INSUFFICIENT not enough points')\n"
    "    return redis.error_reply('INSUFFICIENT not enough points')\n"
    "  end\n"
    "  change = -p\n"
    "  if op == 'hold' then held = held + p end\n"
    "elseif op == 'capture' then\n"
    "  held = held - p\n"
    "  redis.call('HSET', hk, 'open', 0)\n"
    "else return redis.error_reply('ERR unknown op') end\n"
    "bal = bal + change\n"
    "redis.call('HSET', ak, 'available', bal, 'held', held)\n"
    "local seq = redis.call('INCR', 's:'..m)\n"
    "local t = redis.call('TIME')\n"
    "local ts = t[1] * 1000 + math.floor(t[2] / 1000)\n"
    "local e = {'id', id, 'kind', op, 'merchant', m, 'account', a, 'points', change,\n"
    "  'balance', bal, 'held', held, 'ts', ts, 'seq', seq}\n"
    "redis.call('HSET', ik, unpack(e))\n"
    "if op == 'hold' then redis.call('HSET', ik, 'open', p) end\n"
    "redis.call('RPUSH', 'h:'..m..':'..a, id)\n"
    "return e\n";

/* ---- encoding ----------------------------------------------------------- */

/* Decimal digits of v into out; returns their count.  No snprintf: this
 * runs for every argument of every command. */
static size_t wire_u64(char *out, uint64_t v)
{
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

static size_t wire_header(char *out, char mark, uint64_t n)
{
    out[0] = mark;
    size_t len = 1 + wire_u64(out + 1, n);
    out[len++] = '\r';
    out[len++] = '\n';
    return len;
}

static size_t wire_bulk(char *out, const char *s, size_t n)
{
    size_t len = wire_header(out, '$', n);
    memcpy(out + len, s, n);
    len += n;
    out[len++] = '\r';
    out[len++] = '\n';
    return len;
}

static size_t wire_bulk_u64(char *out, uint64_t v)
{
    char digits[24];
    size_t n = wire_u64(digits, v);
    return wire_bulk(out, digits, n);
}

static size_t wire_bulk_str(char *out, const char *s)
{
    return wire_bulk(out, s, strlen(s));
}

/* The arguments after the command name, the same for tally and for the
 * Redis script: merchant, then (ref, id) for CAPTURE and REVERSE, else
 * account and, but for BALANCE, points and id, and EXPIRES for an EARN
 * that has one. */
static size_t wire_op_args(char *out, const workload_op *op)
{
    size_t len = wire_bulk_u64(out, op->merchant);
    if (op->kind == WORKLOAD_OP_CAPTURE || op->kind == WORKLOAD_OP_REVERSE) {
        len += wire_bulk(out + len, op->ref, op->ref_len);
        return len + wire_bulk(out + len, op->id, op->id_len);
    }
    len += wire_bulk_u64(out + len, op->account);
    if (op->kind == WORKLOAD_OP_BALANCE)
        return len;
    if (op->kind == WORKLOAD_OP_TRANSFER)
        len += wire_bulk_u64(out + len, op->account2);
    len += wire_bulk_u64(out + len, (uint64_t)op->points);
    len += wire_bulk(out + len, op->id, op->id_len);
    if (op->expires == 0)
        return len;
    len += wire_bulk_str(out + len, "EXPIRES");
    return len + wire_bulk_u64(out + len, op->expires);
}

/* How many arguments wire_op_args writes. */
static uint32_t wire_op_argc(const workload_op *op)
{
    if (op->kind == WORKLOAD_OP_PING)
        return 0;
    if (op->kind == WORKLOAD_OP_CAPTURE || op->kind == WORKLOAD_OP_REVERSE)
        return 3;
    if (op->kind == WORKLOAD_OP_BALANCE)
        return 2;
    if (op->kind == WORKLOAD_OP_TRANSFER)
        return 5;
    return op->expires ? 6 : 4;
}

static size_t wire_encode_tally(char *out, const workload_op *op)
{
    static const char *const names[WORKLOAD_OP_COUNT] = {
        [WORKLOAD_OP_EARN] = "EARN", [WORKLOAD_OP_REDEEM] = "REDEEM",
        [WORKLOAD_OP_BALANCE] = "BALANCE", [WORKLOAD_OP_HOLD] = "HOLD",
        [WORKLOAD_OP_CAPTURE] = "CAPTURE", [WORKLOAD_OP_PING] = "PING",
        [WORKLOAD_OP_REVERSE] = "REVERSE", [WORKLOAD_OP_TRANSFER] = "TRANSFER",
    };
    size_t len = wire_header(out, '*', 1 + wire_op_argc(op));
    len += wire_bulk_str(out + len, names[op->kind]);
    if (op->kind == WORKLOAD_OP_PING)
        return len;
    return len + wire_op_args(out + len, op);
}

static size_t wire_encode_redis(char *out, const char *sha, const workload_op *op)
{
    if (op->kind == WORKLOAD_OP_PING)
        return wire_encode_tally(out, op);
    /* The script knows earn, redeem, balance, hold and capture, no EXPIRES:
     * main refuses other mixes against Redis. */
    assert(op->kind != WORKLOAD_OP_REVERSE && op->kind != WORKLOAD_OP_TRANSFER &&
           op->expires == 0);
    size_t len = wire_header(out, '*', 4 + wire_op_argc(op));
    len += wire_bulk_str(out + len, "EVALSHA");
    len += wire_bulk(out + len, sha, 40);
    len += wire_bulk_str(out + len, "0");
    len += wire_bulk_str(out + len, workload_kind_name(op->kind));
    return len + wire_op_args(out + len, op);
}

size_t wire_encode(char *out, int target, const char *sha, const workload_op *op)
{
    assert(op->kind < WORKLOAD_OP_COUNT);
    size_t len = target == WIRE_REDIS ? wire_encode_redis(out, sha, op)
                                      : wire_encode_tally(out, op);
    assert(len <= WIRE_COMMAND_BYTES_MAX);
    return len;
}

size_t wire_command(char *out, size_t cap, int argc, const char *const *argv)
{
    size_t need = 16;
    for (int i = 0; i < argc; i++)
        need += strlen(argv[i]) + 16;
    if (need > cap)
        return 0;
    size_t len = wire_header(out, '*', (uint64_t)argc);
    for (int i = 0; i < argc; i++)
        len += wire_bulk_str(out + len, argv[i]);
    return len;
}

/* ---- reply scanning ----------------------------------------------------- */

/* Finds the CRLF ending the line at buf[pos]; returns the index of '\r' or
 * -1 when the line is incomplete. */
static long wire_line_end(const char *buf, size_t len, size_t pos)
{
    const char *cr = memchr(buf + pos, '\r', len - pos);
    if (!cr || (size_t)(cr - buf) + 1 >= len)
        return -1;
    return cr - buf;
}

/* Parses the signed decimal of a header line buf[from, to); false if it is
 * not one. */
static bool wire_parse_int(const char *buf, size_t from, size_t to, int64_t *out)
{
    bool neg = from < to && buf[from] == '-';
    if (neg)
        from++;
    if (from >= to || to - from > 18)
        return false;
    int64_t v = 0;
    for (size_t i = from; i < to; i++) {
        if (buf[i] < '0' || buf[i] > '9')
            return false;
        v = v * 10 + (buf[i] - '0');
    }
    *out = neg ? -v : v;
    return true;
}

static void wire_classify(const char *buf, size_t from, size_t to, wire_reply *out)
{
    size_t n = to - from;
    if (n >= sizeof(out->error))
        n = sizeof(out->error) - 1;
    memcpy(out->error, buf + from, n);
    out->error[n] = '\0';
    out->refusal = workload_refusal_of(out->error);
    out->outcome = out->refusal != WORKLOAD_REFUSAL_NONE ? WIRE_REFUSED : WIRE_ERROR;
}

int wire_scan(const char *buf, size_t len, size_t *used, wire_reply *out)
{
    /* pending[d] counts the elements still expected at nesting depth d. */
    uint64_t pending[WIRE_DEPTH_MAX + 1];
    int depth = 0;
    pending[0] = 1;
    size_t pos = 0;
    out->outcome = WIRE_OK;
    out->refusal = WORKLOAD_REFUSAL_NONE;
    out->error[0] = '\0';
    while (depth >= 0) {
        if (pending[depth] == 0) {
            depth--;
            continue;
        }
        if (pos >= len)
            return WIRE_MORE;
        long cr = wire_line_end(buf, len, pos);
        if (cr < 0)
            return WIRE_MORE;
        char mark = buf[pos];
        size_t line_from = pos + 1;
        size_t line_to = (size_t)cr;
        pos = (size_t)cr + 2;
        pending[depth]--;
        int64_t n = 0;
        switch (mark) {
        case '-':
            if (depth == 0)
                wire_classify(buf, line_from, line_to, out);
            break;
        case '+': case ':': case '_': case ',': case '#': case '(':
            break;
        case '$': case '=': case '!':
            if (!wire_parse_int(buf, line_from, line_to, &n) || n < -1)
                return WIRE_EPROTO;
            if (n >= 0) {
                if (len - pos < (size_t)n + 2)
                    return WIRE_MORE;
                if (mark == '!' && depth == 0)
                    wire_classify(buf, pos, pos + (size_t)n, out);
                pos += (size_t)n + 2;
            }
            break;
        case '*': case '~': case '>': case '%': case '|':
            if (!wire_parse_int(buf, line_from, line_to, &n) || n < -1)
                return WIRE_EPROTO;
            if (n <= 0)
                break;
            if (depth == WIRE_DEPTH_MAX)
                return WIRE_EPROTO;
            if (mark == '|')
                pending[depth]++; /* an attribute precedes the real reply */
            pending[++depth] = (mark == '%' || mark == '|') ? 2 * (uint64_t)n : (uint64_t)n;
            break;
        default:
            return WIRE_EPROTO;
        }
    }
    *used = pos;
    return WIRE_REPLY;
}

/* ---- set-up replies: INFO text and CONFIG GET pairs --------------------- */

int wire_info_field(const char *reply, const char *key, char *out, size_t cap)
{
    size_t klen = strlen(key);
    for (const char *line = reply; line && *line;) {
        if (strncmp(line, key, klen) == 0 && line[klen] == ':') {
            const char *v = line + klen + 1;
            size_t n = strcspn(v, "\r\n");
            if (n >= cap)
                return -1;
            memcpy(out, v, n);
            out[n] = '\0';
            return 0;
        }
        line = strchr(line, '\n');
        if (line)
            line++;
    }
    return -1;
}

/* The bulk string at p (NUL-ended raw reply text): its bytes in *s, *len;
 * returns where the next element starts, NULL if p holds no whole bulk. */
static const char *wire_next_bulk(const char *p, const char **s, size_t *len)
{
    const char *eol = strstr(p, "\r\n");
    int64_t n;
    if (*p != '$' || !eol || !wire_parse_int(p, 1, (size_t)(eol - p), &n) || n < 0 ||
        strnlen(eol + 2, (size_t)n + 2) < (size_t)n + 2)
        return NULL;
    *s = eol + 2;
    *len = (size_t)n;
    return eol + 2 + n + 2;
}

int wire_config_value(const char *reply, const char *name, char *out, size_t cap)
{
    const char *eol = strstr(reply, "\r\n");
    int64_t count;
    if ((*reply != '*' && *reply != '%') || !eol ||
        !wire_parse_int(reply, 1, (size_t)(eol - reply), &count) || count < 0)
        return -1;
    uint64_t pairs = *reply == '%' ? (uint64_t)count : (uint64_t)count / 2;
    const char *p = eol + 2;
    for (uint64_t i = 0; i < pairs; i++) {
        const char *k, *v;
        size_t klen, vlen;
        p = wire_next_bulk(p, &k, &klen);
        if (p)
            p = wire_next_bulk(p, &v, &vlen);
        if (!p)
            return -1;
        if (klen == strlen(name) && strncasecmp(k, name, klen) == 0) {
            if (vlen >= cap)
                return -1;
            memcpy(out, v, vlen);
            out[vlen] = '\0';
            return 0;
        }
    }
    return -1;
}
