/*
 * http.h — just enough HTTP/1.1 for tallyd's scrape endpoint (GET
 * /metrics): a parser of one request's head that checks every line and
 * limit before trusting it, and response heads.  Knows nothing of sockets
 * or of what is served.
 *
 * A request is its head only: tallyd takes no bodies.  A request that
 * announces one (Content-Length above 0, any Transfer-Encoding) is parsed
 * as usual with has_body set, so the caller can answer it and close
 * rather than read the body as the next request.
 *
 * Refused (HTTP_BAD, with the status to answer): a head over
 * LIMIT_HTTP_HEAD_BYTES_MAX (431), a malformed request line or header
 * line, a control byte, obsolete line folding, a target that is not a
 * path (400), a version other than HTTP/1.0 and HTTP/1.1 (505).  Line
 * ends may be CRLF or a bare LF (RFC 9112 §2.2).
 */
#ifndef TALLY_HTTP_H
#define TALLY_HTTP_H

#include <stdbool.h>
#include <stddef.h>

enum {
    HTTP_MORE = 0, /* the head is not complete yet: read more */
    HTTP_DONE = 1, /* one request's head parsed into *out */
    HTTP_BAD = -1, /* refused: answer out->status and close */
};

typedef struct http_request {
    int status;              /* HTTP_BAD: what to answer (400, 431, 505) */
    size_t head_bytes;       /* HTTP_DONE: bytes of buf the head took */
    const char *method;      /* into buf, method_len bytes ("GET") */
    size_t method_len;
    const char *path;        /* into buf: the target without its query */
    size_t path_len;
    const char *bearer;      /* into buf: Authorization: Bearer's token, or NULL */
    size_t bearer_len;
    bool keep_alive;         /* HTTP/1.1 without Connection: close, or 1.0 with keep-alive */
    bool has_body;
} http_request;

/* Parses the head of the request at buf[0, len).  Never reads beyond
 * buf + len, never allocates; the pointers in *out point into buf. */
int http_parse(const char *buf, size_t len, http_request *out);

/* True if the request's method is `method` (exact, as HTTP's are). */
bool http_method_is(const http_request *r, const char *method);

/* Writes a response head into buf (cap bytes): the status line, Content-Type
 * (if not NULL), Content-Length, Connection: close unless keep_alive, the
 * `extra` header lines (each ending in \r\n; "" for none), then the blank
 * line.  Returns its length, or 0 if it does not fit. */
size_t http_head(char *buf, size_t cap, int status, const char *content_type,
                 size_t content_length, bool keep_alive, const char *extra);

/* The reason phrase of a status ("Not Found"). */
const char *http_reason(int status);

#endif
