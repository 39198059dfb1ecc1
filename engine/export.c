/*
 * export.c — entries as text and back (export.h): JSON lines, CSV.
 *
 * Both readers turn a line into (field, bytes) pairs — JSON strings
 * decoded, numbers and literals as written, CSV cells unquoted — and one
 * setter parses the bytes by the field's type, so JSON and CSV accept the
 * same values and say the same things about bad ones.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "export.h"

/* ---- fields ------------------------------------------------------------------ */

enum {
    F_SEQ, F_ID, F_KIND, F_MERCHANT, F_ACCOUNT, F_ACCOUNT2, F_POINTS, F_AMOUNT, F_BALANCE,
    F_HELD, F_PENDING, F_TS, F_REF, F_EXPIRES, F_MEMO, F_MEMO_B64, F_AVAILABLE_AT, F_TIMEOUT,
    F_ARG_POINTS, F_GIVEN, F_IMPORTED, F_REFUSED, F_COUNT,
};

/* Each field's name, and its length, from one list. */
#define EXPORT_FIELDS(X)                                                                  \
    X(F_SEQ, "seq") X(F_ID, "id") X(F_KIND, "kind") X(F_MERCHANT, "merchant")              \
    X(F_ACCOUNT, "account") X(F_ACCOUNT2, "account2") X(F_POINTS, "points")                \
    X(F_AMOUNT, "amount") X(F_BALANCE, "balance") X(F_HELD, "held") X(F_PENDING, "pending") \
    X(F_TS, "ts") X(F_REF, "ref") X(F_EXPIRES, "expires") X(F_MEMO, "memo")                \
    X(F_MEMO_B64, "memo_b64") X(F_AVAILABLE_AT, "available_at") X(F_TIMEOUT, "timeout")    \
    X(F_ARG_POINTS, "arg_points") X(F_GIVEN, "given") X(F_IMPORTED, "imported")            \
    X(F_REFUSED, "refused")
#define EXPORT_NAME(f, s) [f] = s,
#define EXPORT_NAME_LEN(f, s) [f] = sizeof(s) - 1,
static const char *const export_names[F_COUNT] = {EXPORT_FIELDS(EXPORT_NAME)};
static const uint8_t export_name_lens[F_COUNT] = {EXPORT_FIELDS(EXPORT_NAME_LEN)};
#undef EXPORT_NAME
#undef EXPORT_NAME_LEN

/* The request options `given` names, in TALLY_REQ_* bit order. */
static const struct {
    const char *name;
    uint32_t flag;
} export_given[] = {
    {"POINTS", TALLY_REQ_POINTS},   {"EXPIRES", TALLY_REQ_EXPIRES},
    {"AVAILABLE_AT", TALLY_REQ_AVAILABLE_AT}, {"TIMEOUT", TALLY_REQ_TIMEOUT},
    {"MEMO", TALLY_REQ_MEMO},       {"ALL", TALLY_REQ_ALL},
};
#define EXPORT_GIVEN_COUNT (sizeof(export_given) / sizeof(export_given[0]))

static const int export_refusals[] = {TALLY_EINSUFFICIENT, TALLY_ENOTFOUND, TALLY_EINVALID};

static int export_fail(char *err, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int export_fail(char *err, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, cap, fmt, ap);
    va_end(ap);
    return TALLY_ESYNTAX;
}

static int export_field(const char *name, size_t len)
{
    for (int f = 0; f < F_COUNT; f++)
        if (export_names[f][0] == name[0] && export_name_lens[f] == len &&
            memcmp(export_names[f], name, len) == 0)
            return f;
    return -1;
}

/* The field export_write puts after each (-1: none likely): a line in the
 * dump's own order names each field where the parser guesses it, so its
 * name is compared in place instead of decoded and looked up. */
static const int8_t export_next[F_COUNT] = {
    [F_SEQ] = F_ID,           [F_ID] = F_KIND,           [F_KIND] = F_MERCHANT,
    [F_MERCHANT] = F_ACCOUNT, [F_ACCOUNT] = F_POINTS,    [F_ACCOUNT2] = F_POINTS,
    [F_REFUSED] = F_TS,       [F_POINTS] = F_AMOUNT,     [F_AMOUNT] = F_BALANCE,
    [F_BALANCE] = F_HELD,     [F_HELD] = F_PENDING,      [F_PENDING] = F_TS,
    [F_TS] = F_REF,           [F_REF] = F_EXPIRES,       [F_EXPIRES] = F_MEMO,
    [F_MEMO] = F_ARG_POINTS,  [F_MEMO_B64] = F_ARG_POINTS, [F_ARG_POINTS] = F_GIVEN,
    [F_AVAILABLE_AT] = F_GIVEN, [F_TIMEOUT] = F_GIVEN,   [F_GIVEN] = F_IMPORTED,
    [F_IMPORTED] = -1,
};

/* ---- writing ---------------------------------------------------------------- */

typedef struct export_out {
    char *p;
    size_t len, cap;
} export_out;

static void export_put(export_out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void export_put(export_out *o, const char *fmt, ...)
{
    if (o->len >= o->cap)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(o->p + o->len, o->cap - o->len, fmt, ap);
    va_end(ap);
    o->len += n > 0 ? (size_t)n : 0;
}

/* The length of the valid UTF-8 sequence at s (1..4), or 0. */
static size_t export_utf8_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t len = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3
                                : (c & 0xf8) == 0xf0 ? 4 : 0;
    if (len == 0 || len > n)
        return 0;
    uint32_t cp = len == 1 ? c : len == 2 ? c & 0x1f : len == 3 ? c & 0x0f : c & 0x07;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    static const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

static bool export_utf8(const char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        size_t k = export_utf8_len((const unsigned char *)s + i, n - i);
        if (k == 0)
            return false;
        i += k;
    }
    return true;
}

/* A JSON string of UTF-8 bytes: quotes, backslashes and control
 * characters escaped, everything else as it is. */
static void export_string(export_out *o, const char *s, size_t n)
{
    export_put(o, "\"");
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            export_put(o, "\\%c", c);
        else if (c == '\n')
            export_put(o, "\\n");
        else if (c == '\t')
            export_put(o, "\\t");
        else if (c < 0x20 || c == 0x7f)
            export_put(o, "\\u%04x", c);
        else if (o->len + 1 < o->cap)
            o->p[o->len++] = (char)c;
    }
    export_put(o, "\"");
}

static const char export_b64[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static void export_base64(export_out *o, const unsigned char *s, size_t n)
{
    export_put(o, "\"");
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16 | (i + 1 < n ? (uint32_t)s[i + 1] << 8 : 0) |
                     (i + 2 < n ? s[i + 2] : 0);
        export_put(o, "%c%c%c%c", export_b64[v >> 18], export_b64[v >> 12 & 63],
                   i + 1 < n ? export_b64[v >> 6 & 63] : '=', i + 2 < n ? export_b64[v & 63] : '=');
    }
    export_put(o, "\"");
}

/* One line; `request`: the request's fields are known (a dump), else
 * they are left out (a feed carries the entry only). */
static size_t export_write(char *out, size_t cap, const tally_entry *e, bool refusal, int status,
                          bool request)
{
    export_out o = {.p = out, .cap = cap};
    export_put(&o, "{\"seq\":%" PRIu64 ",\"id\":", e->seq);
    export_string(&o, e->id, e->id_len);
    /* 64-bit ids are strings: jq and JavaScript hold JSON numbers as
     * doubles, exact only up to 2^53, and would merge distinct ids. */
    export_put(&o, ",\"kind\":\"%s\",\"merchant\":\"%" PRIu64 "\",\"account\":\"%" PRIu64 "\"",
               tally_kind_name(e->kind), e->merchant, e->account);
    if (e->account2)
        export_put(&o, ",\"account2\":\"%" PRIu64 "\"", e->account2);
    if (refusal)
        export_put(&o, ",\"refused\":\"%s\"", tally_error_code(status));
    else
        export_put(&o,
                   ",\"points\":%" PRId64 ",\"amount\":%" PRId64 ",\"balance\":%" PRId64
                   ",\"held\":%" PRId64 ",\"pending\":%" PRId64,
                   e->points, e->amount, e->balance, e->held, e->pending);
    export_put(&o, ",\"ts\":%" PRIu64 ",\"ref\":", e->ts_ms);
    export_string(&o, e->ref, e->ref_len);
    export_put(&o, ",\"expires\":%" PRIu64, e->expires);
    if (export_utf8(e->memo, e->memo_len)) {
        export_put(&o, ",\"memo\":");
        export_string(&o, e->memo, e->memo_len);
    } else {
        export_put(&o, ",\"memo_b64\":");
        export_base64(&o, (const unsigned char *)e->memo, e->memo_len);
    }
    /* The request as given, so that an import is the same request (a
     * retry of it later replays the entry instead of a -CONFLICT):
     * arg_points on every line says the request is here (given, when
     * absent, is no option). */
    if (request)
        export_put(&o, ",\"arg_points\":%" PRId64, e->req_points);
    if (e->available_at)
        export_put(&o, ",\"available_at\":%" PRIu64, e->available_at);
    if (e->timeout_s)
        export_put(&o, ",\"timeout\":%" PRIu64, e->timeout_s);
    if (e->req_flags) {
        export_put(&o, ",\"given\":[");
        bool first = true;
        for (size_t i = 0; i < EXPORT_GIVEN_COUNT; i++)
            if (e->req_flags & export_given[i].flag) {
                export_put(&o, "%s\"%s\"", first ? "" : ",", export_given[i].name);
                first = false;
            }
        export_put(&o, "]");
    }
    if (e->imported)
        export_put(&o, ",\"imported\":true");
    export_put(&o, "}\n");
    return o.len < cap ? o.len : cap - 1;
}

size_t export_json(char *out, size_t cap, const tally_entry *e, bool refusal, int status)
{
    return export_write(out, cap, e, refusal, status, true);
}

size_t export_json_entry(char *out, size_t cap, const tally_entry *e)
{
    return export_write(out, cap, e, false, 0, false);
}

/* ---- values ------------------------------------------------------------------ */

/* What a line said, before it is checked as a whole. */
typedef struct export_line {
    uint32_t seen; /* 1 << F_* */
    bool v1_memo;  /* memo escapes are release 1's bytes (see export_finish) */
    char memo_raw[EXPORT_LINE_BYTES_MAX];
    size_t memo_raw_len;
} export_line;

static int export_u64(const char *s, size_t n, uint64_t *out)
{
    if (n == 0 || n > 20)
        return -1;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        unsigned d = (unsigned)(s[i] - '0');
        /* 19 digits always fit; only a 20th can overflow (no division per
         * digit: this runs for every number of every line imported). */
        if (i < 19)
            v = v * 10 + d;
        else if (__builtin_mul_overflow(v, 10u, &v) || __builtin_add_overflow(v, d, &v))
            return -1;
    }
    *out = v;
    return 0;
}

static int export_i64(const char *s, size_t n, int64_t *out)
{
    bool neg = n > 0 && s[0] == '-';
    uint64_t v;
    if (export_u64(s + neg, n - neg, &v) < 0 || v > (uint64_t)INT64_MAX)
        return -1;
    *out = neg ? -(int64_t)v : (int64_t)v;
    return 0;
}

static int export_b64_value(char c)
{
    const char *p = c ? strchr(export_b64, c) : NULL;
    return p ? (int)(p - export_b64) : -1;
}

static int export_unbase64(const char *s, size_t n, char *out, size_t cap, size_t *len)
{
    if (n % 4)
        return -1;
    size_t k = 0;
    for (size_t i = 0; i < n; i += 4) {
        int v[4];
        for (int j = 0; j < 4; j++)
            v[j] = s[i + j] == '=' && i + 4 == n && j >= 2 ? 0 : export_b64_value(s[i + j]);
        if (v[0] < 0 || v[1] < 0 || v[2] < 0 || v[3] < 0)
            return -1;
        uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 |
                     (uint32_t)v[3];
        int bytes = i + 4 == n ? (s[i + 2] == '=' ? 1 : s[i + 3] == '=' ? 2 : 3) : 3;
        if (k + (size_t)bytes > cap)
            return -1;
        out[k++] = (char)(w >> 16);
        if (bytes > 1)
            out[k++] = (char)(w >> 8);
        if (bytes > 2)
            out[k++] = (char)w;
    }
    *len = k;
    return 0;
}

static int export_text(const char *what, const char *s, size_t n, char *dst, uint8_t *dst_len,
                       size_t cap, char *err, size_t ecap)
{
    if (n > cap)
        return export_fail(err, ecap, "%s is longer than %zu bytes", what, cap);
    memcpy(dst, s, n);
    *dst_len = (uint8_t)n;
    return 0;
}

static int export_given_parse(const char *s, size_t n, uint32_t *flags, char *err, size_t cap)
{
    *flags = 0;
    size_t i = 0;
    while (i < n) {
        while (i < n && (s[i] == ' ' || s[i] == '|' || s[i] == ','))
            i++;
        size_t b = i;
        while (i < n && s[i] != ' ' && s[i] != '|' && s[i] != ',')
            i++;
        if (i == b)
            break;
        size_t g = 0;
        while (g < EXPORT_GIVEN_COUNT &&
               !(strlen(export_given[g].name) == i - b &&
                 strncasecmp(export_given[g].name, s + b, i - b) == 0))
            g++;
        if (g == EXPORT_GIVEN_COUNT)
            return export_fail(err, cap,
                               "given: unknown option \"%.*s\" (EXPIRES, AVAILABLE_AT, TIMEOUT, "
                               "POINTS, MEMO, ALL)",
                               (int)(i - b), s + b);
        *flags |= export_given[g].flag;
    }
    return 0;
}

/* Sets field f of it from its text. */
static int export_set(tally_import_item *it, export_line *ln, int f, const char *s, size_t n,
                      char *err, size_t cap)
{
    tally_entry *e = &it->e;
    if (ln->seen & (1u << f))
        return export_fail(err, cap, "%s is given twice", export_names[f]);
    ln->seen |= 1u << f;
    uint64_t u = 0;
    int64_t v = 0;
    int bad = 0;
    switch (f) {
    case F_ID:
        return export_text("id", s, n, e->id, &e->id_len, LIMIT_ENGINE_ID_BYTES_MAX, err, cap);
    case F_REF:
        return export_text("ref", s, n, e->ref, &e->ref_len, LIMIT_ENGINE_ID_BYTES_MAX, err, cap);
    case F_MEMO:
        return export_text("memo", s, n, e->memo, &e->memo_len, LIMIT_MEMO_BYTES_MAX, err, cap);
    case F_MEMO_B64: {
        size_t len;
        if (export_unbase64(s, n, e->memo, LIMIT_MEMO_BYTES_MAX, &len) < 0)
            return export_fail(err, cap, "memo_b64 is not base64 of at most %d bytes",
                               LIMIT_MEMO_BYTES_MAX);
        e->memo_len = (uint8_t)len;
        return 0;
    }
    case F_KIND:
        for (int k = TALLY_KIND_NONE + 1; k < TALLY_KIND_COUNT; k++)
            if (strlen(tally_kind_name(k)) == n && strncasecmp(tally_kind_name(k), s, n) == 0) {
                e->kind = (uint8_t)k;
                return 0;
            }
        return export_fail(err, cap, "unknown kind \"%.*s\"", (int)(n > 40 ? 40 : n), s);
    case F_REFUSED:
        for (size_t i = 0; i < sizeof(export_refusals) / sizeof(export_refusals[0]); i++) {
            const char *code = tally_error_code(export_refusals[i]);
            if (strlen(code) == n && strncasecmp(code, s, n) == 0) {
                it->refused = export_refusals[i];
                return 0;
            }
        }
        return export_fail(err, cap, "refused must be INSUFFICIENT, NOTFOUND or INVALID");
    case F_GIVEN:
        it->have |= TALLY_HAVE_GIVEN;
        return export_given_parse(s, n, &e->req_flags, err, cap);
    case F_IMPORTED:
        if ((n == 4 && memcmp(s, "true", 4) == 0) || (n == 1 && s[0] == '1'))
            e->imported = true;
        else if (!((n == 5 && memcmp(s, "false", 5) == 0) || (n == 1 && s[0] == '0') || n == 0))
            return export_fail(err, cap, "imported must be true or false");
        return 0;
    case F_SEQ: case F_MERCHANT: case F_ACCOUNT: case F_ACCOUNT2: case F_TS: case F_EXPIRES:
    case F_AVAILABLE_AT: case F_TIMEOUT:
        bad = export_u64(s, n, &u);
        break;
    default:
        bad = export_i64(s, n, &v);
        break;
    }
    if (bad)
        return export_fail(err, cap, "%s: \"%.*s\" is not %s integer", export_names[f],
                           (int)(n > 40 ? 40 : n), s,
                           f == F_POINTS || f == F_AMOUNT || f == F_BALANCE || f == F_HELD ||
                                   f == F_PENDING || f == F_ARG_POINTS
                               ? "a 64-bit"
                               : "an unsigned 64-bit");
    switch (f) {
    case F_SEQ: e->seq = u; it->have |= TALLY_HAVE_SEQ; break;
    case F_MERCHANT: e->merchant = u; break;
    case F_ACCOUNT: e->account = u; break;
    case F_ACCOUNT2: e->account2 = u; break;
    case F_TS: e->ts_ms = u; break;
    case F_EXPIRES: e->expires = u; break;
    case F_AVAILABLE_AT: e->available_at = u; break;
    case F_TIMEOUT: e->timeout_s = u; break;
    case F_POINTS: e->points = v; it->have |= TALLY_HAVE_POINTS; break;
    case F_AMOUNT: e->amount = v; it->have |= TALLY_HAVE_AMOUNT; break;
    case F_BALANCE: e->balance = v; it->have |= TALLY_HAVE_BALANCE; break;
    case F_HELD: e->held = v; it->have |= TALLY_HAVE_HELD; break;
    case F_PENDING: e->pending = v; it->have |= TALLY_HAVE_PENDING; break;
    case F_ARG_POINTS: e->req_points = v; it->have |= TALLY_HAVE_ARG_POINTS; break;
    default: break;
    }
    return 0;
}

/* After the last field: what every line needs, and release 1's memos. */
static int export_finish(tally_import_item *it, export_line *ln, char *err, size_t cap)
{
    static const int need[] = {F_ID, F_KIND, F_MERCHANT, F_ACCOUNT, F_TS};
    for (size_t i = 0; i < sizeof(need) / sizeof(need[0]); i++)
        if (!(ln->seen & (1u << need[i])))
            return export_fail(err, cap, "%s is missing", export_names[need[i]]);
    if ((ln->seen & (1u << F_MEMO)) && (ln->seen & (1u << F_MEMO_B64)))
        return export_fail(err, cap, "memo and memo_b64 are both given");
    if (it->refused && (it->have & (TALLY_HAVE_POINTS | TALLY_HAVE_BALANCE)))
        return export_fail(err, cap, "a refused line has no outcome (points, balance)");
    tally_entry *e = &it->e;
    if (ln->v1_memo && !(it->have & (TALLY_HAVE_AMOUNT | TALLY_HAVE_ARG_POINTS))) {
        /* Release 1's dump wrote every memo byte outside printable ASCII
         * as \u00XX: its lines (a seq, no amount, no arg_points) get those
         * bytes back. */
        size_t k = 0;
        const char *s = ln->memo_raw;
        for (size_t i = 0; i < ln->memo_raw_len; i++) {
            if (k == LIMIT_MEMO_BYTES_MAX)
                return export_fail(err, cap, "memo is longer than %d bytes", LIMIT_MEMO_BYTES_MAX);
            if (s[i] == '\\' && i + 6 <= ln->memo_raw_len && s[i + 1] == 'u') {
                unsigned x;
                if (sscanf(s + i + 2, "%4x", &x) != 1 || x > 0xff)
                    return export_fail(err, cap, "memo: release 1 escapes are \\u00XX");
                e->memo[k++] = (char)x;
                i += 5;
            } else if (s[i] == '\\' && i + 1 < ln->memo_raw_len) {
                i++;
                e->memo[k++] = s[i];
            } else {
                e->memo[k++] = s[i];
            }
        }
        e->memo_len = (uint8_t)k;
    } else if ((ln->seen & (1u << F_MEMO)) && !export_utf8(e->memo, e->memo_len)) {
        return export_fail(err, cap, "memo is not UTF-8 (give other bytes as memo_b64)");
    }
    return 0;
}

/* An empty item: its fixed fields zeroed, its strings empty (their bytes
 * are read by length only, so their ~500 bytes are not cleared per line). */
static void export_item_clear(tally_import_item *it)
{
    memset(it, 0, offsetof(tally_import_item, e.id));
    it->refused = 0;
    it->have = 0;
    it->line = 0;
}

/* ---- JSON ---------------------------------------------------------------------- */

typedef struct export_json_in {
    const char *s;
    size_t n, i;
} export_json_in;

static void export_ws(export_json_in *in)
{
    while (in->i < in->n &&
           (in->s[in->i] == ' ' || in->s[in->i] == '\t' || in->s[in->i] == '\r' ||
            in->s[in->i] == '\n'))
        in->i++;
}

static size_t export_put_utf8(char *out, uint32_t cp)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | cp >> 6);
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | cp >> 12);
        out[1] = (char)(0x80 | (cp >> 6 & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | cp >> 18);
    out[1] = (char)(0x80 | (cp >> 12 & 0x3f));
    out[2] = (char)(0x80 | (cp >> 6 & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

static int export_hex4(const char *s, uint32_t *out)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0)
            return -1;
        v = v << 4 | (uint32_t)d;
    }
    *out = v;
    return 0;
}

/* 1 for a byte that stands for itself inside a JSON string: not a quote,
 * a backslash or a control character. */
#define EXPORT_ONES16 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1
static const uint8_t export_plain[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x00: control */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x10: control */
    1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x22: '"' */
    EXPORT_ONES16, EXPORT_ONES16,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, /* 0x5c: '\\' */
    EXPORT_ONES16, EXPORT_ONES16, EXPORT_ONES16, EXPORT_ONES16, EXPORT_ONES16,
    EXPORT_ONES16, EXPORT_ONES16, EXPORT_ONES16, EXPORT_ONES16, EXPORT_ONES16,
};
#undef EXPORT_ONES16

/* A JSON string at in->i (after its quote) decoded into out; *raw and
 * *raw_len: its text as written. */
static int export_json_string(export_json_in *in, char *out, size_t cap, size_t *len,
                              const char **raw, size_t *raw_len, char *err, size_t ecap)
{
    size_t k = 0;
    *raw = in->s + in->i;
    while (in->i < in->n) {
        /* A run of plain bytes at once: up to the input's end or out's. */
        size_t run = 0, most = in->n - in->i < cap - k ? in->n - in->i : cap - k;
        const unsigned char *b = (const unsigned char *)in->s + in->i;
        while (run < most && export_plain[b[run]])
            run++;
        memcpy(out + k, in->s + in->i, run);
        k += run;
        in->i += run;
        if (in->i >= in->n)
            break;
        unsigned char c = (unsigned char)in->s[in->i++];
        if (c == '"') {
            *raw_len = (size_t)(in->s + in->i - 1 - *raw);
            *len = k;
            return 0;
        }
        if (c < 0x20)
            return export_fail(err, ecap, "a control character inside a string (escape it)");
        if (k + 4 > cap)
            return export_fail(err, ecap, "a string is too long");
        if (c != '\\') {
            out[k++] = (char)c;
            continue;
        }
        if (in->i >= in->n)
            break;
        char x = in->s[in->i++];
        static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
        const char *p = strchr(from, x);
        if (x && p) {
            out[k++] = to[p - from];
            continue;
        }
        uint32_t cp, lo;
        if (x != 'u' || in->i + 4 > in->n || export_hex4(in->s + in->i, &cp) < 0)
            return export_fail(err, ecap, "a bad escape inside a string");
        in->i += 4;
        if (cp >= 0xd800 && cp <= 0xdbff) {
            if (in->i + 6 > in->n || in->s[in->i] != '\\' || in->s[in->i + 1] != 'u' ||
                export_hex4(in->s + in->i + 2, &lo) < 0 || lo < 0xdc00 || lo > 0xdfff)
                return export_fail(err, ecap, "a lone surrogate escape inside a string");
            in->i += 6;
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        } else if (cp >= 0xdc00 && cp <= 0xdfff) {
            return export_fail(err, ecap, "a lone surrogate escape inside a string");
        }
        k += export_put_utf8(out + k, cp);
    }
    return export_fail(err, ecap, "a string is not closed");
}

int export_parse_json(const char *line, size_t len, tally_import_item *it, char *err, size_t cap)
{
    export_item_clear(it);
    static __thread export_line ln;
    ln.seen = 0;
    ln.v1_memo = false;
    ln.memo_raw_len = 0;
    export_json_in in = {.s = line, .n = len};
    char key[64], val[EXPORT_LINE_BYTES_MAX];
    export_ws(&in);
    if (in.i >= in.n || line[in.i++] != '{')
        return export_fail(err, cap, "not a JSON object");
    export_ws(&in);
    if (in.i < in.n && line[in.i] == '}') {
        in.i++;
    } else {
        int guess = F_SEQ;
        for (;;) {
            size_t klen, vlen = 0, raw_len;
            const char *raw;
            export_ws(&in);
            if (in.i >= in.n || line[in.i++] != '"')
                return export_fail(err, cap, "a field name must be a string");
            int rc, f = -1;
            size_t gl = guess >= 0 ? export_name_lens[guess] : 0;
            if (guess >= 0 && in.n - in.i > gl && line[in.i + gl] == '"' &&
                memcmp(line + in.i, export_names[guess], gl) == 0) {
                /* The name, as written, with nothing escaped. */
                f = guess;
                in.i += gl + 1;
            } else {
                rc = export_json_string(&in, key, sizeof(key), &klen, &raw, &raw_len, err, cap);
                if (rc < 0)
                    return rc;
                f = export_field(key, klen);
                if (f < 0)
                    return export_fail(err, cap, "unknown field \"%.*s\"", (int)klen, key);
            }
            guess = export_next[f];
            export_ws(&in);
            if (in.i >= in.n || line[in.i++] != ':')
                return export_fail(err, cap, "a ':' must follow \"%s\"", export_names[f]);
            export_ws(&in);
            if (in.i >= in.n)
                return export_fail(err, cap, "the line ends inside the object");
            bool null = false;
            char c = line[in.i];
            if (c == '"') {
                in.i++;
                rc = export_json_string(&in, val, sizeof(val), &vlen, &raw, &raw_len, err, cap);
                if (rc < 0)
                    return rc;
                if (f == F_MEMO) {
                    if (raw_len > sizeof(ln.memo_raw))
                        return export_fail(err, cap, "memo is too long");
                    memcpy(ln.memo_raw, raw, raw_len);
                    ln.memo_raw_len = raw_len;
                }
            } else if (c == '[') {
                /* given: an array of strings, read as a list */
                in.i++;
                for (;;) {
                    export_ws(&in);
                    if (in.i < in.n && line[in.i] == ']') {
                        in.i++;
                        break;
                    }
                    if (in.i >= in.n || line[in.i++] != '"')
                        return export_fail(err, cap, "%s: an array of strings",
                                           export_names[f]);
                    size_t ilen;
                    if (vlen + 2 >= sizeof(val))
                        return export_fail(err, cap, "%s is too long", export_names[f]);
                    rc = export_json_string(&in, val + vlen, sizeof(val) - vlen - 1, &ilen, &raw,
                                            &raw_len, err, cap);
                    if (rc < 0)
                        return rc;
                    vlen += ilen;
                    val[vlen++] = ' ';
                    export_ws(&in);
                    if (in.i < in.n && line[in.i] == ',')
                        in.i++;
                }
            } else {
                size_t b = in.i;
                while (in.i < in.n && line[in.i] != ',' && line[in.i] != '}' &&
                       line[in.i] != ' ' && line[in.i] != '\t')
                    in.i++;
                vlen = in.i - b;
                if (vlen > 64)
                    return export_fail(err, cap, "%s: a value too long", export_names[f]);
                memcpy(val, line + b, vlen);
                null = vlen == 4 && memcmp(val, "null", 4) == 0;
                if (!null && f != F_IMPORTED && vlen > 0 && val[0] != '-' &&
                    (val[0] < '0' || val[0] > '9'))
                    return export_fail(err, cap, "%s: \"%.*s\" is not a JSON value",
                                       export_names[f], (int)vlen, val);
            }
            if (!null && (f == F_GIVEN || c != '[')) {
                rc = export_set(it, &ln, f, val, vlen, err, cap);
                if (rc < 0)
                    return rc;
            } else if (c == '[') {
                return export_fail(err, cap, "%s is not an array", export_names[f]);
            }
            export_ws(&in);
            if (in.i < in.n && line[in.i] == ',') {
                in.i++;
                continue;
            }
            if (in.i < in.n && line[in.i] == '}') {
                in.i++;
                break;
            }
            return export_fail(err, cap, "a ',' or '}' must follow \"%s\"", export_names[f]);
        }
    }
    export_ws(&in);
    if (in.i != in.n)
        return export_fail(err, cap, "text after the object");
    ln.v1_memo = (it->have & TALLY_HAVE_SEQ) && ln.memo_raw_len > 0 &&
                 memchr(ln.memo_raw, '\\', ln.memo_raw_len) != NULL;
    return export_finish(it, &ln, err, cap);
}

/* ---- CSV ------------------------------------------------------------------------- */

int export_csv_header(const char *line, size_t len, export_csv *csv, char *err, size_t cap)
{
    memset(csv, 0, sizeof(*csv));
    uint32_t seen = 0;
    size_t i = 0;
    if (len >= 3 && memcmp(line, "\xef\xbb\xbf", 3) == 0)
        i = 3; /* a byte order mark, as spreadsheets write */
    while (len > i && (line[len - 1] == '\r' || line[len - 1] == '\n'))
        len--;
    for (;;) {
        size_t b = i;
        while (i < len && line[i] != ',')
            i++;
        size_t e = i;
        while (b < e && line[b] == ' ')
            b++;
        while (e > b && line[e - 1] == ' ')
            e--;
        if (e > b + 1 && line[b] == '"' && line[e - 1] == '"') {
            b++;
            e--;
        }
        int f = export_field(line + b, e - b);
        if (f < 0)
            return export_fail(err, cap, "header: unknown column \"%.*s\"", (int)(e - b),
                               line + b);
        if (seen & (1u << f))
            return export_fail(err, cap, "header: column %s is named twice", export_names[f]);
        if (csv->columns == EXPORT_CSV_COLUMNS_MAX)
            return export_fail(err, cap, "header: too many columns");
        seen |= 1u << f;
        csv->field[csv->columns++] = f;
        if (i >= len)
            break;
        i++;
    }
    static const int need[] = {F_ID, F_KIND, F_MERCHANT, F_ACCOUNT, F_TS};
    for (size_t k = 0; k < sizeof(need) / sizeof(need[0]); k++)
        if (!(seen & (1u << need[k])))
            return export_fail(err, cap, "header: column %s is missing", export_names[need[k]]);
    return 0;
}

bool export_csv_open_quote(const char *text, size_t len)
{
    bool open = false;
    for (size_t i = 0; i < len; i++)
        if (text[i] == '"')
            open = !open; /* "" inside quotes toggles twice */
    return open;
}

int export_parse_csv(const export_csv *csv, const char *row, size_t len, tally_import_item *it,
                     char *err, size_t cap)
{
    export_item_clear(it);
    static __thread export_line ln;
    ln.seen = 0;
    ln.v1_memo = false;
    ln.memo_raw_len = 0;
    while (len > 0 && (row[len - 1] == '\n' || row[len - 1] == '\r'))
        len--;
    char val[EXPORT_LINE_BYTES_MAX];
    size_t i = 0;
    for (uint32_t col = 0;; col++) {
        if (col >= csv->columns)
            return export_fail(err, cap, "more cells than the header has columns (%u)",
                               csv->columns);
        size_t k = 0;
        if (i < len && row[i] == '"') {
            i++;
            for (;;) {
                if (i >= len)
                    return export_fail(err, cap, "a quoted cell is not closed");
                if (row[i] == '"') {
                    if (i + 1 < len && row[i + 1] == '"') {
                        val[k++] = '"';
                        i += 2;
                        continue;
                    }
                    i++;
                    break;
                }
                if (k + 1 >= sizeof(val))
                    return export_fail(err, cap, "a cell is too long");
                val[k++] = row[i++];
            }
            if (i < len && row[i] != ',')
                return export_fail(err, cap, "text after a quoted cell");
        } else {
            while (i < len && row[i] != ',') {
                if (row[i] == '"')
                    return export_fail(err, cap, "a quote inside an unquoted cell");
                if (k + 1 >= sizeof(val))
                    return export_fail(err, cap, "a cell is too long");
                val[k++] = row[i++];
            }
        }
        int f = csv->field[col];
        /* An empty cell is a field not given (a memo is never needed). */
        if (k > 0) {
            int rc = export_set(it, &ln, f, val, k, err, cap);
            if (rc < 0)
                return rc;
        }
        if (i >= len) {
            if (col + 1 < csv->columns)
                return export_fail(err, cap, "%u cells, the header has %u columns", col + 1,
                                   csv->columns);
            break;
        }
        i++; /* the comma */
    }
    return export_finish(it, &ln, err, cap);
}
