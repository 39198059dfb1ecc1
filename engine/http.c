/*
 * http.c — one HTTP/1.1 request head at a time, and response heads
 * (http.h).
 *
 * The head is judged line by line once its end (an empty line) is in the
 * buffer; until then only its size is checked, so a head that never ends
 * costs at most LIMIT_HTTP_HEAD_BYTES_MAX bytes before it is refused.
 */
#include <assert.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "http.h"
#include "limits.h"

/* ---- characters ------------------------------------------------------------ */

/* RFC 9110 §5.6.2 tchar: what method and header names are made of. */
static bool http_tchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return true;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* Field values: visible bytes, space, tab and obs-text (RFC 9110 §5.5). */
static bool http_value_char(unsigned char c) { return c == '\t' || (c >= 0x20 && c != 0x7f); }

/* The length of the token (tchars) at p[0, n). */
static size_t http_token(const char *p, size_t n)
{
    size_t i = 0;
    while (i < n && http_tchar((unsigned char)p[i]))
        i++;
    return i;
}

/* Equal ignoring ASCII case, as header names and tokens compare. */
static bool http_word_is(const char *p, size_t n, const char *word)
{
    return n == strlen(word) && strncasecmp(p, word, n) == 0;
}

/* ---- lines ------------------------------------------------------------------- */

/* The line at buf[*at, len): its bytes without the line end in *line,
 * *n; *at moves past the end.  False if no line end is there yet. */
static bool http_line(const char *buf, size_t len, size_t *at, const char **line, size_t *n)
{
    const char *nl = memchr(buf + *at, '\n', len - *at);
    if (!nl)
        return false;
    *line = buf + *at;
    *n = (size_t)(nl - *line);
    if (*n > 0 && (*line)[*n - 1] == '\r')
        (*n)--;
    *at = (size_t)(nl - buf) + 1;
    return true;
}

static int http_bad(http_request *out, int status)
{
    out->status = status;
    return HTTP_BAD;
}

/* METHOD SP target SP HTTP/1.x */
static int http_request_line(const char *p, size_t n, http_request *out)
{
    size_t i = http_token(p, n);
    if (i == 0 || i > 16 || i >= n || p[i] != ' ')
        return http_bad(out, 400);
    out->method = p;
    out->method_len = i++;
    size_t target = i;
    while (i < n && p[i] > 0x20 && p[i] < 0x7f)
        i++;
    if (i == target || i >= n || p[i] != ' ' || p[target] != '/')
        return http_bad(out, 400);
    const char *query = memchr(p + target, '?', i - target);
    out->path = p + target;
    out->path_len = (size_t)((query ? query : p + i) - out->path);
    const char *v = p + i + 1;
    size_t vn = n - i - 1;
    if (vn != 8 || memcmp(v, "HTTP/", 5) != 0 || v[6] != '.' || v[5] < '0' || v[5] > '9' ||
        v[7] < '0' || v[7] > '9')
        return http_bad(out, 400);
    if (v[5] != '1' || (v[7] != '0' && v[7] != '1'))
        return http_bad(out, 505);
    out->keep_alive = v[7] == '1';
    return HTTP_DONE;
}

/* The headers tallyd looks at: Connection, Authorization, the body's. */
static int http_header(const char *name, size_t name_len, const char *v, size_t vn,
                       http_request *out)
{
    if (http_word_is(name, name_len, "connection")) {
        /* A comma-separated list of tokens. */
        for (size_t i = 0; i < vn;) {
            while (i < vn && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
                i++;
            size_t start = i;
            while (i < vn && v[i] != ',' && v[i] != ' ' && v[i] != '\t')
                i++;
            if (http_word_is(v + start, i - start, "close"))
                out->keep_alive = false;
            else if (http_word_is(v + start, i - start, "keep-alive"))
                out->keep_alive = true;
        }
    } else if (http_word_is(name, name_len, "authorization")) {
        if (vn > 7 && strncasecmp(v, "bearer ", 7) == 0) {
            out->bearer = v + 7;
            out->bearer_len = vn - 7;
            while (out->bearer_len > 0 && out->bearer[0] == ' ') {
                out->bearer++;
                out->bearer_len--;
            }
        }
    } else if (http_word_is(name, name_len, "content-length")) {
        if (vn == 0 || vn > 19)
            return http_bad(out, 400);
        for (size_t i = 0; i < vn; i++) {
            if (v[i] < '0' || v[i] > '9')
                return http_bad(out, 400);
            if (v[i] != '0')
                out->has_body = true;
        }
    } else if (http_word_is(name, name_len, "transfer-encoding")) {
        out->has_body = true;
    }
    return HTTP_DONE;
}

/* name ":" OWS value OWS */
static int http_header_line(const char *p, size_t n, http_request *out)
{
    size_t i = http_token(p, n);
    if (i == 0 || i >= n || p[i] != ':')
        return http_bad(out, 400); /* also obs-fold: a line that starts with a blank */
    size_t name_len = i++;
    for (size_t k = i; k < n; k++)
        if (!http_value_char((unsigned char)p[k]))
            return http_bad(out, 400);
    while (i < n && (p[i] == ' ' || p[i] == '\t'))
        i++;
    size_t end = n;
    while (end > i && (p[end - 1] == ' ' || p[end - 1] == '\t'))
        end--;
    return http_header(p, name_len, p + i, end - i, out);
}

/* ---- parsing ------------------------------------------------------------------ */

int http_parse(const char *buf, size_t len, http_request *out)
{
    assert(buf != NULL || len == 0);
    memset(out, 0, sizeof(*out));
    size_t at = 0;
    const char *line;
    size_t n;
    /* Empty lines before a request line are skipped (RFC 9112 §2.2). */
    do {
        if (!http_line(buf, len, &at, &line, &n))
            return len >= LIMIT_HTTP_HEAD_BYTES_MAX ? http_bad(out, 431) : HTTP_MORE;
    } while (n == 0);
    size_t request_line_at = (size_t)(line - buf);
    /* The whole head first: nothing is judged before its end arrived. */
    size_t end = at;
    for (;;) {
        const char *h;
        size_t hn;
        if (!http_line(buf, len, &end, &h, &hn))
            return len >= LIMIT_HTTP_HEAD_BYTES_MAX ? http_bad(out, 431) : HTTP_MORE;
        if (hn == 0)
            break;
    }
    if (end > LIMIT_HTTP_HEAD_BYTES_MAX)
        return http_bad(out, 431);
    if (http_request_line(buf + request_line_at, n, out) != HTTP_DONE)
        return HTTP_BAD;
    while (at < end) {
        bool got = http_line(buf, end, &at, &line, &n);
        assert(got);
        if (n == 0)
            break;
        if (http_header_line(line, n, out) != HTTP_DONE)
            return HTTP_BAD;
    }
    assert(at == end);
    out->head_bytes = end;
    return HTTP_DONE;
}

bool http_method_is(const http_request *r, const char *method)
{
    return r->method_len == strlen(method) && memcmp(r->method, method, r->method_len) == 0;
}

/* ---- responses ------------------------------------------------------------------ */

const char *http_reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 431: return "Request Header Fields Too Large";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Error";
    }
}

size_t http_head(char *buf, size_t cap, int status, const char *content_type,
                 size_t content_length, bool keep_alive, const char *extra)
{
    int n = snprintf(buf, cap, "HTTP/1.1 %d %s\r\n%s%s%sContent-Length: %zu\r\n%s%s\r\n",
                     status, http_reason(status), content_type ? "Content-Type: " : "",
                     content_type ? content_type : "", content_type ? "\r\n" : "",
                     content_length, keep_alive ? "" : "Connection: close\r\n", extra);
    return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}
