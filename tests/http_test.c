/*
 * http_test.c — the request-head parser of the metrics endpoint
 * (engine/http.c): what it takes, what it refuses with which status, and
 * that it waits for a whole head without judging a part of one.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "http.h"
#include "limits.h"

static int parse(const char *text, http_request *r) { return http_parse(text, strlen(text), r); }

Test(http, a_scrape_is_parsed_with_its_path_token_and_keep_alive)
{
    const char *req = "GET /metrics?name[]=x HTTP/1.1\r\nHost: a:9\r\n"
                      "Authorization: Bearer  tok-1 \r\nAccept: */*\r\n\r\nGET /next";
    http_request r;
    cr_assert_eq(parse(req, &r), HTTP_DONE);
    cr_assert(http_method_is(&r, "GET"));
    cr_assert_eq(r.path_len, 8);
    cr_assert_eq(memcmp(r.path, "/metrics", 8), 0, "the query is not part of the path");
    cr_assert_eq(r.bearer_len, 5);
    cr_assert_eq(memcmp(r.bearer, "tok-1", 5), 0);
    cr_assert(r.keep_alive);
    cr_assert(!r.has_body);
    cr_assert_eq(r.head_bytes, strlen(req) - strlen("GET /next"), "the next request is left");
}

Test(http, connection_headers_and_bodies_are_noticed)
{
    http_request r;
    cr_assert_eq(parse("GET /m HTTP/1.1\nConnection: Keep-Alive, CLOSE\n\n", &r), HTTP_DONE,
                 "bare LF line ends");
    cr_assert(!r.keep_alive);
    cr_assert_eq(parse("GET /m HTTP/1.0\r\n\r\n", &r), HTTP_DONE);
    cr_assert(!r.keep_alive, "HTTP/1.0 closes by default");
    cr_assert_eq(parse("GET /m HTTP/1.0\r\nconnection: keep-alive\r\n\r\n", &r), HTTP_DONE);
    cr_assert(r.keep_alive);
    cr_assert_eq(parse("POST /m HTTP/1.1\r\nContent-Length: 12\r\n\r\n", &r), HTTP_DONE);
    cr_assert(r.has_body);
    cr_assert_eq(parse("GET /m HTTP/1.1\r\nContent-Length: 000\r\n\r\n", &r), HTTP_DONE);
    cr_assert(!r.has_body);
    cr_assert_eq(parse("GET /m HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", &r), HTTP_DONE);
    cr_assert(r.has_body);
    cr_assert_eq(parse("\r\n\r\nGET /m HTTP/1.1\r\n\r\n", &r), HTTP_DONE,
                 "empty lines before the request line are skipped");
}

Test(http, a_partial_head_waits_and_every_prefix_of_a_good_one_is_more)
{
    const char *req = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    http_request r;
    for (size_t n = 0; n < strlen(req); n++)
        cr_assert_eq(http_parse(req, n, &r), HTTP_MORE, "%zu bytes", n);
    cr_assert_eq(http_parse(req, strlen(req), &r), HTTP_DONE);
    /* A bad request line is not judged before its head ends either. */
    cr_assert_eq(parse("BAD\r\n", &r), HTTP_MORE);
}

Test(http, malformed_heads_are_refused_with_their_status)
{
    static const struct {
        const char *text;
        size_t len; /* the literal's: one holds a NUL */
        int status;
    } cases[] = {
#define HTTP_CASE(text, status) {text, sizeof(text) - 1, status}
        HTTP_CASE("GET\r\n\r\n", 400),
        HTTP_CASE("GET /m\r\n\r\n", 400),
        HTTP_CASE("GET  /m HTTP/1.1\r\n\r\n", 400),
        HTTP_CASE("GET m HTTP/1.1\r\n\r\n", 400),
        HTTP_CASE("GET /m HTTP/1.1 \r\n\r\n", 400),
        HTTP_CASE("G\x01T /m HTTP/1.1\r\n\r\n", 400),
        HTTP_CASE("GET /m\x7f HTTP/1.1\r\n\r\n", 400),
        HTTP_CASE("GET /m HTTP/1.x\r\n\r\n", 400),
        HTTP_CASE("GET /m http/1.1\r\n\r\n", 400),
        HTTP_CASE("GET /m HTTP/2.0\r\n\r\n", 505),
        HTTP_CASE("GET /m HTTP/1.2\r\n\r\n", 505),
        HTTP_CASE("GET /m HTTP/1.1\r\nNoColon\r\n\r\n", 400),
        HTTP_CASE("GET /m HTTP/1.1\r\n: empty name\r\n\r\n", 400),
        HTTP_CASE("GET /m HTTP/1.1\r\nBad Name: x\r\n\r\n", 400),
        HTTP_CASE("GET /m HTTP/1.1\r\nA: b\r\n continued\r\n\r\n", 400),
        HTTP_CASE("GET /m HTTP/1.1\r\nA: b\0z\r\n\r\n", 400),
        HTTP_CASE("GET /m HTTP/1.1\r\nContent-Length: 1x\r\n\r\n", 400),
        HTTP_CASE("GET /m HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),
    };
#undef HTTP_CASE
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        http_request r;
        cr_assert_eq(http_parse(cases[i].text, cases[i].len, &r), HTTP_BAD, "case %zu", i);
        cr_assert_eq(r.status, cases[i].status, "case %zu", i);
    }
}

Test(http, a_head_over_the_limit_is_refused_whether_or_not_it_ended)
{
    static char buf[LIMIT_HTTP_HEAD_BYTES_MAX + 64];
    memset(buf, 'a', sizeof(buf));
    memcpy(buf, "GET /m HTTP/1.1\r\nX: ", 20);
    http_request r;
    cr_assert_eq(http_parse(buf, LIMIT_HTTP_HEAD_BYTES_MAX - 1, &r), HTTP_MORE);
    cr_assert_eq(http_parse(buf, LIMIT_HTTP_HEAD_BYTES_MAX, &r), HTTP_BAD, "no end in sight");
    cr_assert_eq(r.status, 431);
    memcpy(buf + LIMIT_HTTP_HEAD_BYTES_MAX, "\r\n\r\n", 4);
    cr_assert_eq(http_parse(buf, LIMIT_HTTP_HEAD_BYTES_MAX + 4, &r), HTTP_BAD, "ended too late");
    cr_assert_eq(r.status, 431);
}

Test(http, response_heads_say_length_type_and_connection)
{
    char head[256];
    size_t n = http_head(head, sizeof(head), 404, "text/plain", 14, true, "");
    cr_assert_eq(n, strlen(head));
    cr_assert_str_eq(head, "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
                           "Content-Length: 14\r\n\r\n");
    n = http_head(head, sizeof(head), 405, NULL, 0, false, "Allow: GET, HEAD\r\n");
    cr_assert_str_eq(head, "HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n"
                           "Connection: close\r\nAllow: GET, HEAD\r\n\r\n");
    cr_assert_eq(http_head(head, 16, 200, NULL, 0, true, ""), 0, "too small: nothing");
}
