/*
 * resp.c — the RESP request parser and reply encoders (interface in
 * resp.h).
 *
 * The parser reads header lines ("*<argc>\r\n", "$<len>\r\n") one byte at
 * a time through a small state machine, and bulk payloads by length
 * without looking at them.  Every decision — accept, refuse, wait — is
 * taken at the first byte that settles it, so:
 *   - a declared length is refused as soon as its digits pass the limit,
 *     before its CRLF or any of its data arrive (a header can never grow
 *     past "$4096\r\n": there is no header to buffer without bound);
 *   - the same bytes give the same outcome whether they arrive in one read
 *     or one byte per read (the fuzzer checks this);
 *   - each byte is examined once: the parser keeps the offset it reached
 *     (p->pos) and resumes there, so trickled input costs O(n).
 * Numbers follow Redis's string2ll: optional '-', digits, no leading
 * zeros, no '+', no spaces.  Of negative counts only "*-1" exists (a null
 * array: skipped); a bulk length is never negative.
 *
 * Inline commands are scanned for their '\n' (resuming where the last scan
 * stopped) and split only once the whole line is there, into
 * cmd->scratch.  Splitting follows Redis's sdssplitargs: blanks are the C
 * isspace() set; an unquoted word ends at space, tab, CR or LF; a quote
 * inside a word opens a quoted part of that word; a closing quote must be
 * followed by a blank or the end of the line.  Unlike sdssplitargs (which
 * sees a C string) a NUL byte is an ordinary byte of a word.
 *
 * The command's argument table is written only when a command completes:
 * the offsets of a multibulk's arguments are recovered then by walking its
 * already validated headers (a few bytes per argument), so the caller may
 * pass a different resp_command on every call, e.g. one per thread shared
 * by many connections.
 */
#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "resp.h"

/* ---- constants ---------------------------------------------------------- */

/* Parser states.  Header-line states serve both the count line and the
 * bulk length lines; which one is being read is told by p->argc, which is
 * 0 until the count is known. */
enum {
    RESP_ST_START = 0,  /* the first byte decides the form */
    RESP_ST_INLINE,     /* looking for the inline line's '\n' */
    RESP_ST_NUM_FIRST,  /* a length's first byte: '-' (count only) or a digit */
    RESP_ST_NUM_MINUS,  /* after '-': only "-1" is a length */
    RESP_ST_NUM_DIGITS, /* after a nonzero digit: digits or '\r' */
    RESP_ST_NUM_END,    /* after "0" or "-1": only '\r' */
    RESP_ST_NUM_LF,     /* after '\r': only '\n' */
    RESP_ST_DOLLAR,     /* the '$' of the next bulk */
    RESP_ST_BULK,       /* bulk_len payload bytes, then "\r\n" */
    RESP_ST_ERROR,      /* sticky after RESP_EPROTO */
};

/* A step of the state machine made progress and parsing goes on (never
 * returned to the caller). */
#define RESP_STEP 100

/* First allocation of a reply buffer; then it doubles. */
#define RESP_OUT_BYTES_MIN 256

/* The longest value a length line may declare, so digits can be checked
 * one at a time without overflow. */
static_assert(LIMIT_ARGS_MAX >= 1 && LIMIT_ARGS_MAX < INT32_MAX / 10, "argc fits the digit check");
static_assert(LIMIT_BULK_BYTES_MAX < INT32_MAX / 10, "bulk length fits the digit check");
/* An inline line unescapes into scratch: output never exceeds input. */
static_assert(sizeof(((resp_command *)0)->scratch) == LIMIT_INLINE_BYTES_MAX,
              "scratch holds the longest inline line");
/* Offsets are uint32_t: the largest command must fit. */
static_assert((uint64_t)LIMIT_ARGS_MAX * (LIMIT_BULK_BYTES_MAX + 16) + 16 < UINT32_MAX,
              "a whole multibulk command is addressable by uint32_t offsets");

/* ---- parser: errors ----------------------------------------------------- */

static int resp_fail(resp_parser *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Records a protocol error; the parser stays failed until reset. */
static int resp_fail(resp_parser *p, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->error, sizeof(p->error), fmt, ap);
    va_end(ap);
    p->state = RESP_ST_ERROR;
    assert(strncmp(p->error, "Protocol error: ", 16) == 0);
    return RESP_EPROTO;
}

static int resp_fail_length(resp_parser *p)
{
    if (p->argc == 0)
        return resp_fail(p, "Protocol error: invalid multibulk length");
    return resp_fail(p, "Protocol error: invalid bulk length");
}

static int resp_fail_too_many(resp_parser *p)
{
    return resp_fail(p, "Protocol error: too many arguments (limit %d)", LIMIT_ARGS_MAX);
}

/* Redis names the byte it found instead of '$'; a byte that would not
 * print (or would break the reply line) is shown as \xHH. */
static int resp_fail_dollar(resp_parser *p, unsigned char c)
{
    if (c >= 0x20 && c <= 0x7e)
        return resp_fail(p, "Protocol error: expected '$', got '%c'", c);
    return resp_fail(p, "Protocol error: expected '$', got '\\x%02x'", c);
}

/* ---- parser: multibulk -------------------------------------------------- */

/* A complete length line: the count (argc still 0) or a bulk length. */
static int resp_length_done(resp_parser *p)
{
    if (p->argc != 0) {
        assert(p->bulk_len >= 0 && p->bulk_len <= LIMIT_BULK_BYTES_MAX);
        p->state = RESP_ST_BULK;
        return RESP_STEP;
    }
    /* "*0" and "*-1" carry no command: consumed like a blank line. */
    if (p->bulk_len <= 0)
        return RESP_SKIP;
    assert(p->bulk_len <= LIMIT_ARGS_MAX);
    p->argc = (uint32_t)p->bulk_len;
    p->argi = 0;
    p->state = RESP_ST_DOLLAR;
    return RESP_STEP;
}

/* One more digit of a length; refused the moment it passes its limit. */
static int resp_length_digit(resp_parser *p, unsigned char c)
{
    assert(c >= '0' && c <= '9');
    assert(p->bulk_len >= 0);
    p->bulk_len = p->bulk_len * 10 + (c - '0');
    if (p->argc == 0 && p->bulk_len > LIMIT_ARGS_MAX)
        return resp_fail_too_many(p);
    if (p->argc != 0 && p->bulk_len > LIMIT_BULK_BYTES_MAX)
        return resp_fail(p, "Protocol error: bulk length exceeds %d bytes",
                         LIMIT_BULK_BYTES_MAX);
    return RESP_STEP;
}

/* Consumes header byte c (at p->pos).  Returns RESP_STEP, RESP_SKIP or
 * RESP_EPROTO. */
static int resp_header_byte(resp_parser *p, unsigned char c)
{
    int rc = RESP_STEP;
    switch (p->state) {
    case RESP_ST_DOLLAR:
        if (c != '$')
            return resp_fail_dollar(p, c);
        p->bulk_len = 0;
        p->state = RESP_ST_NUM_FIRST;
        break;
    case RESP_ST_NUM_FIRST:
        p->bulk_len = 0;
        if (c == '-' && p->argc == 0)
            p->state = RESP_ST_NUM_MINUS;
        else if (c == '0')
            p->state = RESP_ST_NUM_END;
        else if (c >= '1' && c <= '9') {
            p->state = RESP_ST_NUM_DIGITS;
            rc = resp_length_digit(p, c);
        } else
            return resp_fail_length(p);
        break;
    case RESP_ST_NUM_MINUS:
        if (c != '1')
            return resp_fail_length(p);
        p->bulk_len = -1;
        p->state = RESP_ST_NUM_END;
        break;
    case RESP_ST_NUM_DIGITS:
        if (c >= '0' && c <= '9')
            rc = resp_length_digit(p, c);
        else if (c == '\r')
            p->state = RESP_ST_NUM_LF;
        else
            return resp_fail_length(p);
        break;
    case RESP_ST_NUM_END:
        if (c != '\r')
            return resp_fail_length(p);
        p->state = RESP_ST_NUM_LF;
        break;
    case RESP_ST_NUM_LF:
        if (c != '\n')
            return resp_fail_length(p);
        rc = resp_length_done(p);
        break;
    default:
        assert(0 && "not a header state");
        return resp_fail(p, "Protocol error: parser state");
    }
    if (rc != RESP_EPROTO)
        p->pos++;
    return rc;
}

/* Waits for the current bulk's payload and checks its "\r\n".  The
 * payload itself is not looked at.  Returns RESP_STEP, RESP_MORE,
 * RESP_COMMAND (last argument) or RESP_EPROTO. */
static int resp_bulk_step(resp_parser *p, size_t len)
{
    assert(p->state == RESP_ST_BULK);
    assert(p->bulk_len >= 0 && p->bulk_len <= LIMIT_BULK_BYTES_MAX);
    size_t end = (size_t)p->pos + (size_t)p->bulk_len;
    if (len < end + 2)
        return RESP_MORE;
    p->pos = (uint32_t)(end + 2);
    p->argi++;
    assert(p->argi <= p->argc);
    if (p->argi == p->argc)
        return RESP_COMMAND;
    p->state = RESP_ST_DOLLAR;
    return RESP_STEP;
}

/* The CRLF after a payload, checked byte by byte as it arrives so a wrong
 * byte is refused at once. */
static int resp_bulk_crlf(resp_parser *p, const char *buf, size_t len)
{
    size_t end = (size_t)p->pos + (size_t)p->bulk_len;
    if (len > end && buf[end] != '\r')
        return resp_fail(p, "Protocol error: bulk not terminated by CRLF");
    if (len > end + 1 && buf[end + 1] != '\n')
        return resp_fail(p, "Protocol error: bulk not terminated by CRLF");
    return resp_bulk_step(p, len);
}

/* Fills cmd from a complete, validated multibulk of argc arguments that
 * used `used` bytes of buf: walks the headers again (a few bytes per
 * argument, never the payloads). */
static void resp_fill_multibulk(const char *buf, size_t used, uint32_t argc, resp_command *cmd)
{
    assert(argc >= 1 && argc <= LIMIT_ARGS_MAX);
    size_t off = 1;
    while (buf[off] != '\n')
        off++;
    off++;
    for (uint32_t i = 0; i < argc; i++) {
        assert(buf[off] == '$');
        uint32_t n = 0;
        for (off++; buf[off] != '\r'; off++)
            n = n * 10 + (uint32_t)(buf[off] - '0');
        off += 2;
        assert(n <= LIMIT_BULK_BYTES_MAX);
        cmd->argv_off[i] = (uint32_t)off;
        cmd->argl[i] = n;
        off += (size_t)n + 2;
    }
    assert(off == used);
    cmd->argc = argc;
    cmd->argv_scratch = false;
}

static int resp_parse_multibulk(resp_parser *p, const char *buf, size_t len)
{
    for (;;) {
        int rc;
        if (p->state == RESP_ST_BULK)
            rc = resp_bulk_crlf(p, buf, len);
        else if (p->pos < len)
            rc = resp_header_byte(p, (unsigned char)buf[p->pos]);
        else
            return RESP_MORE;
        if (rc != RESP_STEP)
            return rc;
    }
}

/* ---- parser: inline ----------------------------------------------------- */

/* Redis skips isspace() between words. */
static bool resp_is_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

/* ... but ends an unquoted word only at these. */
static bool resp_ends_word(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static int resp_hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* The byte a backslash escape stands for inside double quotes; an unknown
 * escape stands for the escaped byte itself (\q is q), as in Redis. */
static char resp_unescape(char c)
{
    switch (c) {
    case 'n': return '\n';
    case 'r': return '\r';
    case 't': return '\t';
    case 'b': return '\b';
    case 'a': return '\a';
    default: return c;
    }
}

/* Copies one word of s[*ip, n) — the first byte not blank — to out at
 * *op, unquoting and unescaping.  Every input byte yields at most one
 * output byte, so *op never passes *ip.  Returns 0, or -1 for unbalanced
 * quotes (a quote left open, or a closing quote followed by a non-blank). */
static int resp_inline_word(const char *s, size_t n, size_t *ip, char *out, size_t *op)
{
    size_t i = *ip, o = *op;
    char quote = 0;
    assert(i < n && !resp_is_blank(s[i]));
    while (i < n) {
        char c = s[i];
        if (quote == '"' && c == '\\' && i + 3 < n && s[i + 1] == 'x' &&
            resp_hex_value(s[i + 2]) >= 0 && resp_hex_value(s[i + 3]) >= 0) {
            out[o++] = (char)(resp_hex_value(s[i + 2]) * 16 + resp_hex_value(s[i + 3]));
            i += 4;
        } else if (quote == '"' && c == '\\' && i + 1 < n) {
            out[o++] = resp_unescape(s[i + 1]);
            i += 2;
        } else if (quote == '\'' && c == '\\' && i + 1 < n && s[i + 1] == '\'') {
            out[o++] = '\'';
            i += 2;
        } else if (quote != 0 && c == quote) {
            i++;
            if (i < n && !resp_is_blank(s[i]))
                return -1;
            quote = 0;
            break;
        } else if (quote == 0 && resp_ends_word(c)) {
            break;
        } else if (quote == 0 && (c == '"' || c == '\'')) {
            quote = c;
            i++;
        } else {
            out[o++] = c;
            i++;
        }
        assert(o <= i);
    }
    if (quote != 0)
        return -1;
    *ip = i;
    *op = o;
    return 0;
}

/* Splits the content of a complete inline line (without its line end)
 * into cmd->scratch.  Returns RESP_COMMAND, RESP_SKIP (no words) or
 * RESP_EPROTO. */
static int resp_split_inline(resp_parser *p, const char *line, size_t n, resp_command *cmd)
{
    assert(n <= sizeof(cmd->scratch));
    size_t i = 0, o = 0;
    uint32_t argc = 0;
    for (;;) {
        while (i < n && resp_is_blank(line[i]))
            i++;
        if (i == n)
            break;
        if (argc == LIMIT_ARGS_MAX)
            return resp_fail_too_many(p);
        size_t start = o;
        if (resp_inline_word(line, n, &i, cmd->scratch, &o) < 0)
            return resp_fail(p, "Protocol error: unbalanced quotes in request");
        assert(o <= sizeof(cmd->scratch));
        cmd->argv_off[argc] = (uint32_t)start;
        cmd->argl[argc] = (uint32_t)(o - start);
        argc++;
    }
    cmd->argc = argc;
    cmd->argv_scratch = true;
    return argc == 0 ? RESP_SKIP : RESP_COMMAND;
}

/* Finds the line end, resuming the scan at p->pos.  A line whose content
 * (without "\r\n") is already known to exceed LIMIT_INLINE_BYTES_MAX is
 * refused at once, without waiting for its newline. */
static int resp_parse_inline(resp_parser *p, const char *buf, size_t len, resp_command *cmd,
                             size_t *used)
{
    size_t window = len < LIMIT_INLINE_BYTES_MAX + 2 ? len : LIMIT_INLINE_BYTES_MAX + 2;
    assert(window >= 1 && p->pos <= window);
    const char *nl = memchr(buf + p->pos, '\n', window - p->pos);
    if (nl == NULL) {
        p->pos = (uint32_t)window;
        /* The content is at least this long: only a final '\r' may still
         * turn out to be part of the line end. */
        size_t content_min = buf[window - 1] == '\r' ? window - 1 : window;
        if (content_min > LIMIT_INLINE_BYTES_MAX)
            return resp_fail(p, "Protocol error: too big inline request");
        return RESP_MORE;
    }
    size_t line = (size_t)(nl - buf);
    size_t content = line > 0 && buf[line - 1] == '\r' ? line - 1 : line;
    p->pos = (uint32_t)line;
    if (content > LIMIT_INLINE_BYTES_MAX)
        return resp_fail(p, "Protocol error: too big inline request");
    int rc = resp_split_inline(p, buf, content, cmd);
    if (rc != RESP_EPROTO)
        *used = line + 1;
    return rc;
}

/* ---- parser: public ----------------------------------------------------- */

void resp_parser_reset(resp_parser *p)
{
    assert(p != NULL);
    memset(p, 0, sizeof(*p));
    assert(p->state == RESP_ST_START);
}

int resp_parse(resp_parser *p, const char *buf, size_t len, resp_command *cmd, size_t *consumed)
{
    assert(p != NULL && cmd != NULL && consumed != NULL);
    assert(buf != NULL || len == 0);
    *consumed = 0;
    if (p->state == RESP_ST_ERROR)
        return RESP_EPROTO;
    /* The bytes already checked are still at buf[0, pos): the caller
     * only ever adds bytes to an unfinished command. */
    assert(p->pos <= len);
    if (p->state == RESP_ST_START) {
        if (len == 0)
            return RESP_MORE;
        p->state = buf[0] == '*' ? RESP_ST_NUM_FIRST : RESP_ST_INLINE;
        p->pos = buf[0] == '*' ? 1 : 0;
    }
    int rc;
    size_t used = 0;
    if (p->state == RESP_ST_INLINE) {
        rc = resp_parse_inline(p, buf, len, cmd, &used);
    } else {
        rc = resp_parse_multibulk(p, buf, len);
        used = p->pos;
        if (rc == RESP_COMMAND)
            resp_fill_multibulk(buf, used, p->argc, cmd);
    }
    if (rc == RESP_COMMAND || rc == RESP_SKIP) {
        assert(used >= 1 && used <= len);
        *consumed = used;
        resp_parser_reset(p);
    }
    assert(rc == RESP_MORE || rc == RESP_COMMAND || rc == RESP_SKIP || rc == RESP_EPROTO);
    return rc;
}

/* ---- encoding: the buffer ----------------------------------------------- */

/* Appends n bytes of room and returns it, or NULL once an allocation has
 * failed (then nothing more is ever appended: the buffer holds a prefix of
 * the replies and the client must be dropped). */
static char *resp_out_grow(resp_out *o, size_t n)
{
    assert(o != NULL);
    assert(o->len <= o->cap);
    assert(n > 0);
    if (o->oom)
        return NULL;
    if (n > SIZE_MAX / 4 - o->len) {
        o->oom = true;
        return NULL;
    }
    size_t need = o->len + n;
    if (need > o->cap) {
        size_t cap = o->cap ? o->cap : RESP_OUT_BYTES_MIN;
        while (cap < need)
            cap *= 2;
        char *data = realloc(o->data, cap);
        if (data == NULL) {
            o->oom = true;
            return NULL;
        }
        o->data = data;
        o->cap = cap;
    }
    char *w = o->data + o->len;
    o->len = need;
    return w;
}

static void resp_out_put(resp_out *o, const void *s, size_t n)
{
    if (n == 0)
        return;
    char *w = resp_out_grow(o, n);
    if (w != NULL)
        memcpy(w, s, n);
}

/* Appends s with CR and LF replaced by spaces: a simple string or error
 * is one line, whatever a message quotes. */
static void resp_out_put_line(resp_out *o, const char *s, size_t n)
{
    if (n == 0)
        return;
    char *w = resp_out_grow(o, n);
    if (w == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        w[i] = s[i] == '\r' || s[i] == '\n' ? ' ' : s[i];
}

/* <type><v>\r\n for the headers of integers, bulks, arrays and maps. */
static void resp_out_header(resp_out *o, char type, int64_t v)
{
    /* Written backwards from the end: no printf for the ~40 headers of
     * every entry reply. */
    char line[32];
    char *end = line + sizeof(line), *p = end;
    *--p = '\n';
    *--p = '\r';
    uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        *--p = '-';
    *--p = type;
    assert(end - p > 3);
    resp_out_put(o, p, (size_t)(end - p));
}

static void resp_out_crlf(resp_out *o)
{
    resp_out_put(o, "\r\n", 2);
}

/* ---- encoding: public --------------------------------------------------- */

void resp_out_free(resp_out *o)
{
    assert(o != NULL);
    free(o->data);
    memset(o, 0, sizeof(*o));
}

void resp_out_consume(resp_out *o, size_t n)
{
    assert(o != NULL);
    assert(n <= o->len);
    if (n == 0)
        return;
    memmove(o->data, o->data + n, o->len - n);
    o->len -= n;
}

void resp_simple(resp_out *o, const char *s)
{
    assert(s != NULL);
    resp_out_put(o, "+", 1);
    resp_out_put_line(o, s, strlen(s));
    resp_out_crlf(o);
}

/* "-CODE" then " message" when there is one. */
static void resp_error_code(resp_out *o, const char *code)
{
    assert(code != NULL && code[0] != '\0' && code[0] != '-');
    assert(strpbrk(code, " \r\n") == NULL);
    resp_out_put(o, "-", 1);
    resp_out_put(o, code, strlen(code));
}

void resp_error(resp_out *o, const char *code, const char *message)
{
    resp_error_code(o, code);
    if (message != NULL && message[0] != '\0') {
        resp_out_put(o, " ", 1);
        resp_out_put_line(o, message, strlen(message));
    }
    resp_out_crlf(o);
}

void resp_errorf(resp_out *o, const char *code, const char *fmt, ...)
{
    va_list ap, ap2;
    va_start(ap, fmt);
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    resp_error_code(o, code);
    if (n > 0) {
        resp_out_put(o, " ", 1);
        /* Formatted straight into the buffer: room for vsnprintf's NUL,
         * which is then given back. */
        char *w = resp_out_grow(o, (size_t)n + 1);
        if (w != NULL) {
            vsnprintf(w, (size_t)n + 1, fmt, ap2);
            o->len--;
            for (int i = 0; i < n; i++)
                if (w[i] == '\r' || w[i] == '\n')
                    w[i] = ' ';
        }
    }
    va_end(ap2);
    resp_out_crlf(o);
}

void resp_int(resp_out *o, int64_t v)
{
    resp_out_header(o, ':', v);
}

void resp_bulk(resp_out *o, const void *s, size_t len)
{
    assert(s != NULL || len == 0);
    assert(len <= INT64_MAX);
    resp_out_header(o, '$', (int64_t)len);
    resp_out_put(o, s, len);
    resp_out_crlf(o);
}

void resp_bulk_str(resp_out *o, const char *s)
{
    assert(s != NULL);
    resp_bulk(o, s, strlen(s));
}

void resp_null(resp_out *o, int proto)
{
    assert(proto == 2 || proto == 3);
    if (proto == 3)
        resp_out_put(o, "_\r\n", 3);
    else
        resp_out_put(o, "$-1\r\n", 5);
}

void resp_array(resp_out *o, size_t n)
{
    assert(n <= INT64_MAX);
    resp_out_header(o, '*', (int64_t)n);
}

void resp_map(resp_out *o, size_t pairs, int proto)
{
    assert(proto == 2 || proto == 3);
    assert(pairs <= INT64_MAX / 2);
    if (proto == 3)
        resp_out_header(o, '%', (int64_t)pairs);
    else
        resp_out_header(o, '*', (int64_t)pairs * 2);
}

void resp_raw(resp_out *o, const void *s, size_t len)
{
    assert(s != NULL || len == 0);
    resp_out_put(o, s, len);
}
