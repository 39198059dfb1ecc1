/*
 * resp_test.c — the RESP parser (engine/resp.c): both request forms, every
 * limit and protocol error, resumption on partial input and moved
 * buffers; and the reply encoders' exact bytes in RESP2 and RESP3.
 *
 * Every parse runs on an exact-size heap copy of its input, so that under
 * SAN=1 a read past buf + len is an ASan error rather than luck.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "resp.h"

/* ---- helpers ------------------------------------------------------------ */

/* A string literal with its length, NULs included. */
#define S(lit) (lit), (sizeof(lit) - 1)

static resp_command cmd_g;

/* What one resp_parse() call said, copied out before its buffer is freed. */
typedef struct result {
    int rc;
    size_t used;
    uint32_t argc;
    uint32_t argl[LIMIT_ARGS_MAX];
    bool scratch;
    char args[2048]; /* arguments joined by '|', bytes outside 0x20..0x7e as \xHH */
    char error[128];
} result;

static void join_args(const resp_command *cmd, const char *buf, char *out, size_t cap)
{
    size_t o = 0;
    out[0] = '\0';
    for (uint32_t i = 0; i < cmd->argc; i++) {
        const unsigned char *a = (const unsigned char *)resp_arg(cmd, buf, i);
        if (i > 0 && o + 1 < cap)
            out[o++] = '|';
        for (uint32_t j = 0; j < cmd->argl[i] && o + 5 < cap; j++) {
            if (a[j] >= 0x20 && a[j] <= 0x7e && a[j] != '|' && a[j] != '\\')
                out[o++] = (char)a[j];
            else
                o += (size_t)snprintf(out + o, cap - o, "\\x%02x", a[j]);
        }
        out[o] = '\0';
    }
}

/* One resp_parse() call on an exact-size heap copy of s[0, n). */
static result parse_with(resp_parser *p, const char *s, size_t n)
{
    result r;
    memset(&r, 0, sizeof(r));
    char *buf = malloc(n ? n : 1);
    cr_assert_not_null(buf);
    if (n > 0)
        memcpy(buf, s, n);
    r.used = 12345;
    r.rc = resp_parse(p, buf, n, &cmd_g, &r.used);
    if (r.rc == RESP_COMMAND) {
        r.argc = cmd_g.argc;
        memcpy(r.argl, cmd_g.argl, sizeof(r.argl));
        r.scratch = cmd_g.argv_scratch;
        join_args(&cmd_g, buf, r.args, sizeof(r.args));
    }
    if (r.rc == RESP_EPROTO)
        snprintf(r.error, sizeof(r.error), "%s", p->error);
    free(buf);
    return r;
}

/* One call with a fresh parser. */
static result parse(const char *s, size_t n)
{
    resp_parser p;
    resp_parser_reset(&p);
    return parse_with(&p, s, n);
}

static void assert_command(result r, size_t used, const char *args)
{
    cr_assert_eq(r.rc, RESP_COMMAND, "rc %d (%s)", r.rc, r.error);
    cr_assert_eq(r.used, used, "used %zu, expected %zu", r.used, used);
    cr_assert_str_eq(r.args, args);
}

static void assert_eproto(result r, const char *error)
{
    cr_assert_eq(r.rc, RESP_EPROTO, "rc %d, expected a protocol error", r.rc);
    cr_assert_eq(r.used, 0);
    cr_assert_str_eq(r.error, error);
}

static void assert_more(result r)
{
    cr_assert_eq(r.rc, RESP_MORE, "rc %d (%s), expected RESP_MORE", r.rc, r.error);
    cr_assert_eq(r.used, 0);
}

/* Parses all of s, delivered in steps: first s[0, cuts[0]), then
 * s[0, cuts[1]), ... then all of it (each time the unconsumed bytes only).
 * Writes a transcript of every command, skip and the final outcome. */
static void transcript(const char *s, size_t n, const size_t *cuts, size_t ncuts, char *out,
                       size_t cap)
{
    resp_parser p;
    resp_parser_reset(&p);
    size_t start = 0, o = 0;
    out[0] = '\0';
    for (size_t c = 0; c <= ncuts; c++) {
        size_t avail = c < ncuts ? cuts[c] : n;
        if (avail < start)
            continue;
        for (;;) {
            result r = parse_with(&p, s + start, avail - start);
            if (r.rc == RESP_MORE && c < ncuts)
                break;
            o += (size_t)snprintf(out + o, cap - o, "[%d %zu %s%s]", r.rc, r.used, r.args,
                                  r.error);
            cr_assert_lt(o, cap);
            if (r.rc == RESP_MORE || r.rc == RESP_EPROTO)
                return;
            start += r.used;
        }
    }
}

/* Inputs for the split and trickle tests: every form and every error. */
static const struct {
    const char *s;
    size_t n;
} samples[] = {
    {S("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n")},
    {S("*1\r\n$4\r\nPING\r\nPING\r\n\r\n*0\r\n*-1\r\n*2\r\n$4\r\nECHO\r\n$0\r\n\r\n")},
    {S("SET k \"a b\\x41\\n\" 'it\\'s'\r\nGET k\n")},
    {S("*1\r\n$3\r\nfoo\rX")},
    {S("*1\r\n$3\r\nfooXY")},
    {S("*1\r\n:3\r\n")},
    {S("*1\r\n$99999999999\r\n")},
    {S("*2147483648\r\n")},
    {S("*1x\r\n")},
    {S("*-2\r\n")},
    {S("*1\r\n$-1\r\n")},
    {S("GET \"k\n")},
    {S("GET \"k\"x\r\n")},
    {S("*2\r\n$1\r\na\r\n$1\r\nb")},
    {S("PING\r\n*1\r\n$0\r\n\r\n   \r\n")},
};

/* ---- multibulk ---------------------------------------------------------- */

Test(resp, multibulk_command_gives_offsets_into_the_buffer)
{
    const char in[] = "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n";
    resp_parser p;
    resp_parser_reset(&p);
    size_t used = 0;
    cr_assert_eq(resp_parse(&p, in, sizeof(in) - 1, &cmd_g, &used), RESP_COMMAND);
    cr_assert_eq(used, sizeof(in) - 1);
    cr_assert_eq(cmd_g.argc, 3);
    cr_assert_not(cmd_g.argv_scratch);
    cr_assert_eq(cmd_g.argv_off[0], 8);
    cr_assert_eq(cmd_g.argl[0], 3);
    cr_assert_eq(cmd_g.argv_off[2], 24);
    cr_assert_eq(cmd_g.argl[2], 5);
    cr_assert_eq(resp_arg(&cmd_g, in, 2), in + 24);
    cr_assert_eq(memcmp(resp_arg(&cmd_g, in, 1), "k", 1), 0);
}

Test(resp, empty_bulk_is_an_empty_argument)
{
    result r = parse(S("*2\r\n$4\r\nECHO\r\n$0\r\n\r\n"));
    assert_command(r, 20, "ECHO|");
    cr_assert_eq(r.argl[1], 0);
}

Test(resp, bulk_payload_may_hold_crlf_and_nul)
{
    result r = parse(S("*1\r\n$6\r\na\r\n\0$*\r\n"));
    assert_command(r, 16, "a\\x0d\\x0a\\x00$*");
}

Test(resp, star_zero_is_skipped)
{
    result r = parse(S("*0\r\n*1\r\n"));
    cr_assert_eq(r.rc, RESP_SKIP);
    cr_assert_eq(r.used, 4);
}

Test(resp, star_minus_one_is_skipped)
{
    result r = parse(S("*-1\r\nPING\r\n"));
    cr_assert_eq(r.rc, RESP_SKIP);
    cr_assert_eq(r.used, 5);
}

Test(resp, incomplete_multibulk_asks_for_more_and_consumes_nothing)
{
    assert_more(parse(S("")));
    assert_more(parse(S("*")));
    assert_more(parse(S("*2\r")));
    assert_more(parse(S("*2\r\n$3\r\nGET\r\n")));
    assert_more(parse(S("*2\r\n$3\r\nGET\r\n$1\r\nk")));
    assert_more(parse(S("*2\r\n$3\r\nGET\r\n$1\r\nk\r")));
}

Test(resp, pipelined_commands_come_out_one_per_call_in_order)
{
    const char in[] = "*1\r\n$4\r\nPING\r\nECHO hi\r\n\r\n*0\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1";
    const size_t n = sizeof(in) - 1;
    resp_parser p;
    resp_parser_reset(&p);
    size_t off = 0;
    result r = parse_with(&p, in + off, n - off);
    assert_command(r, 14, "PING");
    off += r.used;
    r = parse_with(&p, in + off, n - off);
    assert_command(r, 9, "ECHO|hi");
    cr_assert(r.scratch);
    off += r.used;
    r = parse_with(&p, in + off, n - off);
    cr_assert_eq(r.rc, RESP_SKIP);
    cr_assert_eq(r.used, 2);
    off += r.used;
    r = parse_with(&p, in + off, n - off);
    cr_assert_eq(r.rc, RESP_SKIP);
    cr_assert_eq(r.used, 4);
    off += r.used;
    r = parse_with(&p, in + off, n - off);
    assert_command(r, 20, "GET|k");
    off += r.used;
    assert_more(parse_with(&p, in + off, n - off));
    cr_assert_eq(n - off, 2);
}

/* ---- resumption --------------------------------------------------------- */

Test(resp, a_split_at_every_byte_boundary_parses_as_whole)
{
    char whole[4096], split[4096];
    for (size_t i = 0; i < sizeof(samples) / sizeof(samples[0]); i++) {
        transcript(samples[i].s, samples[i].n, NULL, 0, whole, sizeof(whole));
        for (size_t k = 0; k <= samples[i].n; k++) {
            transcript(samples[i].s, samples[i].n, &k, 1, split, sizeof(split));
            cr_assert_str_eq(split, whole, "sample %zu split at %zu", i, k);
        }
    }
}

Test(resp, bytes_trickled_one_at_a_time_parse_as_whole)
{
    char whole[4096], trickled[4096];
    size_t cuts[256];
    for (size_t i = 0; i < sizeof(samples) / sizeof(samples[0]); i++) {
        cr_assert_lt(samples[i].n, 256);
        for (size_t k = 0; k < samples[i].n; k++)
            cuts[k] = k;
        transcript(samples[i].s, samples[i].n, NULL, 0, whole, sizeof(whole));
        transcript(samples[i].s, samples[i].n, cuts, samples[i].n, trickled, sizeof(trickled));
        cr_assert_str_eq(trickled, whole, "sample %zu", i);
    }
}

Test(resp, transcript_of_samples_is_as_expected)
{
    /* Pins the whole-buffer outcome the split tests compare against. */
    char t[4096];
    transcript(samples[1].s, samples[1].n, NULL, 0, t, sizeof(t));
    cr_assert_str_eq(t, "[1 14 PING][1 6 PING][2 2 ][2 4 ][2 5 ][1 20 ECHO|][0 0 ]");
    transcript(samples[2].s, samples[2].n, NULL, 0, t, sizeof(t));
    cr_assert_str_eq(t, "[1 27 SET|k|a bA\\x0a|it's][1 6 GET|k][0 0 ]");
}

Test(resp, buffer_moved_by_realloc_between_calls_still_parses)
{
    const char in[] = "*2\r\n$4\r\nECHO\r\n$5\r\nhello\r\n";
    const size_t n = sizeof(in) - 1;
    resp_parser p;
    resp_parser_reset(&p);
    size_t used = 99;
    char *a = malloc(16);
    memcpy(a, in, 16);
    cr_assert_eq(resp_parse(&p, a, 16, &cmd_g, &used), RESP_MORE);
    cr_assert_eq(used, 0);
    /* A new block at another address; the old one is scribbled and freed. */
    char *b = malloc(n);
    memcpy(b, a, 16);
    memset(a, '*', 16);
    free(a);
    memcpy(b + 16, in + 16, n - 16);
    cr_assert_eq(resp_parse(&p, b, n, &cmd_g, &used), RESP_COMMAND);
    cr_assert_eq(used, n);
    cr_assert_eq(memcmp(resp_arg(&cmd_g, b, 1), "hello", 5), 0);
    cr_assert_eq(resp_arg(&cmd_g, b, 0), b + 8);
    free(b);
}

Test(resp, buffer_compacted_by_memmove_after_a_command_still_parses)
{
    const char in[] = "PING\r\n*2\r\n$3\r\nGET\r\n$3\r\nabc\r\n";
    char buf[64];
    memset(buf, 0, sizeof(buf));
    memcpy(buf, in, 20); /* PING and part of GET */
    resp_parser p;
    resp_parser_reset(&p);
    size_t used = 0;
    cr_assert_eq(resp_parse(&p, buf, 20, &cmd_g, &used), RESP_COMMAND);
    cr_assert_eq(used, 6);
    cr_assert_eq(resp_parse(&p, buf + used, 20 - used, &cmd_g, &used), RESP_MORE);
    /* The server drops the consumed prefix, then more bytes arrive. */
    memmove(buf, buf + 6, 14);
    memcpy(buf + 14, in + 20, sizeof(in) - 1 - 20);
    size_t len = sizeof(in) - 1 - 6;
    cr_assert_eq(resp_parse(&p, buf, len, &cmd_g, &used), RESP_COMMAND);
    cr_assert_eq(used, len);
    cr_assert_eq(cmd_g.argc, 2);
    cr_assert_eq(memcmp(resp_arg(&cmd_g, buf, 1), "abc", 3), 0);
}

Test(resp, a_trickled_inline_line_is_scanned_once)
{
    /* p.pos is how far the parser has checked: it must reach the end of
     * what it was given, so the next call starts there (O(n) in all). */
    enum { N = 10000 };
    char *line = malloc(N + 1);
    memset(line, 'a', N);
    line[N] = '\n';
    resp_parser p;
    resp_parser_reset(&p);
    size_t used = 0;
    for (size_t k = 1; k <= N; k++) {
        cr_assert_eq(resp_parse(&p, line, k, &cmd_g, &used), RESP_MORE);
        cr_assert_eq(p.pos, k);
    }
    cr_assert_eq(resp_parse(&p, line, N + 1, &cmd_g, &used), RESP_COMMAND);
    cr_assert_eq(cmd_g.argl[0], N);
    free(line);
}

Test(resp, a_trickled_bulk_payload_is_not_scanned)
{
    char in[4200];
    int h = snprintf(in, sizeof(in), "*1\r\n$4096\r\n");
    memset(in + h, 'x', 4096);
    memcpy(in + h + 4096, "\r\n", 2);
    resp_parser p;
    resp_parser_reset(&p);
    size_t used = 0;
    for (size_t k = 0; k < (size_t)h + 4097; k++) {
        cr_assert_eq(resp_parse(&p, in, k, &cmd_g, &used), RESP_MORE);
        if (k >= (size_t)h)
            cr_assert_eq(p.pos, (uint32_t)h, "waits at the payload's start");
    }
    cr_assert_eq(resp_parse(&p, in, (size_t)h + 4098, &cmd_g, &used), RESP_COMMAND);
    cr_assert_eq(used, (size_t)h + 4098);
}

Test(resp, a_different_command_struct_on_each_call_still_gets_every_argument)
{
    /* The argument table is written when the command completes, so a
     * resp_command shared by many connections cannot be half-filled. */
    const char in[] = "*3\r\n$1\r\na\r\n$2\r\nbb\r\n$3\r\nccc\r\n";
    static resp_command c1, c2;
    resp_parser p;
    resp_parser_reset(&p);
    size_t used = 0;
    cr_assert_eq(resp_parse(&p, in, 20, &c1, &used), RESP_MORE);
    cr_assert_eq(resp_parse(&p, in, sizeof(in) - 1, &c2, &used), RESP_COMMAND);
    cr_assert_eq(c2.argc, 3);
    cr_assert_eq(c2.argl[0], 1);
    cr_assert_eq(c2.argl[1], 2);
    cr_assert_eq(memcmp(resp_arg(&c2, in, 2), "ccc", 3), 0);
}

/* ---- limits ------------------------------------------------------------- */

Test(resp, bulk_of_exactly_4096_bytes_is_accepted)
{
    char in[4200];
    int h = snprintf(in, sizeof(in), "*1\r\n$4096\r\n");
    memset(in + h, 'y', 4096);
    memcpy(in + h + 4096, "\r\n", 2);
    result r = parse(in, (size_t)h + 4098);
    cr_assert_eq(r.rc, RESP_COMMAND);
    cr_assert_eq(r.argl[0], 4096);
}

Test(resp, bulk_of_4097_bytes_is_refused_before_its_data)
{
    assert_eproto(parse(S("*1\r\n$4097\r\n")), "Protocol error: bulk length exceeds 4096 bytes");
    assert_eproto(parse(S("*1\r\n$4097")), "Protocol error: bulk length exceeds 4096 bytes");
}

Test(resp, huge_bulk_length_is_refused_at_once)
{
    assert_eproto(parse(S("*1\r\n$999999999999\r\n")),
                  "Protocol error: bulk length exceeds 4096 bytes");
    assert_eproto(parse(S("*1\r\n$99999")), "Protocol error: bulk length exceeds 4096 bytes");
    /* Far past int64: refused long before it could overflow. */
    assert_eproto(parse(S("*1\r\n$99999999999999999999999999999\r\n")),
                  "Protocol error: bulk length exceeds 4096 bytes");
}

Test(resp, huge_argc_is_refused_at_once)
{
    assert_eproto(parse(S("*2147483648\r\n")), "Protocol error: too many arguments (limit 32)");
    assert_eproto(parse(S("*214")), "Protocol error: too many arguments (limit 32)");
    assert_eproto(parse(S("*99999999999999999999999999\r\n")),
                  "Protocol error: too many arguments (limit 32)");
}

Test(resp, thirty_two_arguments_are_accepted)
{
    char in[512];
    size_t n = (size_t)snprintf(in, sizeof(in), "*32\r\n");
    for (int i = 0; i < 32; i++)
        n += (size_t)snprintf(in + n, sizeof(in) - n, "$1\r\n%c\r\n", 'a' + i % 26);
    result r = parse(in, n);
    cr_assert_eq(r.rc, RESP_COMMAND);
    cr_assert_eq(r.argc, 32);
    cr_assert_eq(r.used, n);
}

Test(resp, thirty_three_arguments_are_refused)
{
    assert_eproto(parse(S("*33\r\n")), "Protocol error: too many arguments (limit 32)");
}

Test(resp, inline_line_of_exactly_the_limit_is_accepted)
{
    char *in = malloc(LIMIT_INLINE_BYTES_MAX + 2);
    memset(in, 'a', LIMIT_INLINE_BYTES_MAX);
    memcpy(in + LIMIT_INLINE_BYTES_MAX, "\r\n", 2);
    result r = parse(in, LIMIT_INLINE_BYTES_MAX + 2);
    cr_assert_eq(r.rc, RESP_COMMAND);
    cr_assert_eq(r.argl[0], LIMIT_INLINE_BYTES_MAX);
    /* Its '\r' may arrive before its '\n'. */
    assert_more(parse(in, LIMIT_INLINE_BYTES_MAX + 1));
    in[LIMIT_INLINE_BYTES_MAX] = '\n';
    r = parse(in, LIMIT_INLINE_BYTES_MAX + 1);
    cr_assert_eq(r.rc, RESP_COMMAND);
    free(in);
}

Test(resp, inline_line_over_the_limit_is_refused)
{
    char *in = malloc(LIMIT_INLINE_BYTES_MAX + 2);
    memset(in, 'a', LIMIT_INLINE_BYTES_MAX + 1);
    in[LIMIT_INLINE_BYTES_MAX + 1] = '\n';
    assert_eproto(parse(in, LIMIT_INLINE_BYTES_MAX + 2), "Protocol error: too big inline request");
    free(in);
}

Test(resp, inline_line_over_the_limit_is_refused_before_its_newline)
{
    char *in = malloc(LIMIT_INLINE_BYTES_MAX + 2);
    memset(in, 'a', LIMIT_INLINE_BYTES_MAX + 2);
    assert_more(parse(in, LIMIT_INLINE_BYTES_MAX));
    assert_eproto(parse(in, LIMIT_INLINE_BYTES_MAX + 1), "Protocol error: too big inline request");
    in[LIMIT_INLINE_BYTES_MAX] = '\r';
    assert_eproto(parse(in, LIMIT_INLINE_BYTES_MAX + 2), "Protocol error: too big inline request");
    free(in);
}

Test(resp, inline_with_thirty_two_words_is_accepted_and_thirty_three_refused)
{
    char in[128];
    size_t n = 0;
    for (int i = 0; i < 32; i++)
        n += (size_t)snprintf(in + n, sizeof(in) - n, "w ");
    in[n++] = '\n';
    result r = parse(in, n);
    cr_assert_eq(r.rc, RESP_COMMAND);
    cr_assert_eq(r.argc, 32);
    memcpy(in + n - 1, "w\n", 2);
    assert_eproto(parse(in, n + 1), "Protocol error: too many arguments (limit 32)");
}

/* ---- multibulk errors --------------------------------------------------- */

Test(resp, malformed_argc_is_an_invalid_multibulk_length)
{
    static const struct {
        const char *s;
        size_t n;
    } bad[] = {
        {S("*x\r\n")},  {S("*1x\r\n")}, {S("*+1\r\n")}, {S("* 1\r\n")}, {S("*1 \r\n")},
        {S("*01\r\n")}, {S("*00\r\n")}, {S("*-2\r\n")}, {S("*-0\r\n")}, {S("*-10\r\n")},
        {S("*\r\n")},   {S("*-\r\n")},  {S("*1\rX")},   {S("*1\n")},    {S("*1\r\r")},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        result r = parse(bad[i].s, bad[i].n);
        cr_assert_eq(r.rc, RESP_EPROTO, "case %zu", i);
        cr_assert_str_eq(r.error, "Protocol error: invalid multibulk length", "case %zu", i);
    }
}

Test(resp, malformed_bulk_length_is_an_invalid_bulk_length)
{
    static const struct {
        const char *s;
        size_t n;
    } bad[] = {
        {S("*1\r\n$-1\r\n")}, {S("*1\r\n$-0\r\n")}, {S("*1\r\n$+3\r\n")}, {S("*1\r\n$ 3\r\n")},
        {S("*1\r\n$3 \r\n")}, {S("*1\r\n$03\r\n")}, {S("*1\r\n$\r\n")},   {S("*1\r\n$3x\r\n")},
        {S("*1\r\n$3\rx")},   {S("*1\r\n$3\n")},    {S("*1\r\n$0x")},     {S("*1\r\n$1e3\r\n")},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        result r = parse(bad[i].s, bad[i].n);
        cr_assert_eq(r.rc, RESP_EPROTO, "case %zu", i);
        cr_assert_str_eq(r.error, "Protocol error: invalid bulk length", "case %zu", i);
    }
}

Test(resp, missing_dollar_names_the_byte_found)
{
    assert_eproto(parse(S("*1\r\n:3\r\n")), "Protocol error: expected '$', got ':'");
    assert_eproto(parse(S("*2\r\n$1\r\na\r\nPING\r\n")), "Protocol error: expected '$', got 'P'");
}

Test(resp, missing_dollar_shows_an_unprintable_byte_in_hex)
{
    assert_eproto(parse(S("*1\r\n\0")), "Protocol error: expected '$', got '\\x00'");
    assert_eproto(parse(S("*1\r\n\r\n")), "Protocol error: expected '$', got '\\x0d'");
}

Test(resp, bulk_not_followed_by_exactly_crlf_is_refused)
{
    assert_eproto(parse(S("*1\r\n$3\r\nfooXY")), "Protocol error: bulk not terminated by CRLF");
    assert_eproto(parse(S("*1\r\n$3\r\nfoo\rX")), "Protocol error: bulk not terminated by CRLF");
    assert_eproto(parse(S("*1\r\n$3\r\nfoo\n\r")), "Protocol error: bulk not terminated by CRLF");
    assert_eproto(parse(S("*1\r\n$3\r\nfoo\n")), "Protocol error: bulk not terminated by CRLF");
    /* A payload longer than declared is caught at its first extra byte. */
    assert_eproto(parse(S("*1\r\n$3\r\nfoobar\r\n")), "Protocol error: bulk not terminated by CRLF");
}

Test(resp, protocol_error_is_sticky_until_reset)
{
    resp_parser p;
    resp_parser_reset(&p);
    assert_eproto(parse_with(&p, S("*1\r\n$x")), "Protocol error: invalid bulk length");
    assert_eproto(parse_with(&p, S("PING\r\n")), "Protocol error: invalid bulk length");
    resp_parser_reset(&p);
    assert_command(parse_with(&p, S("PING\r\n")), 6, "PING");
}

/* ---- inline ------------------------------------------------------------- */

Test(resp, inline_words_are_separated_by_spaces_and_tabs)
{
    result r = parse(S("  SET\tkey   value \t\r\n"));
    assert_command(r, 21, "SET|key|value");
    cr_assert(r.scratch);
}

Test(resp, inline_line_may_end_with_lf_alone)
{
    assert_command(parse(S("GET k\nGET j\n")), 6, "GET|k");
}

Test(resp, inline_cr_inside_the_line_separates_words)
{
    assert_command(parse(S("a\rb\r\n")), 5, "a|b");
}

Test(resp, inline_vertical_tab_is_skipped_between_words_but_not_inside_one)
{
    assert_command(parse(S("\va\vb c\n")), 7, "a\\x0bb|c");
}

Test(resp, inline_nul_is_an_ordinary_byte)
{
    assert_command(parse(S("a\0b\n")), 4, "a\\x00b");
}

Test(resp, blank_inline_line_is_skipped)
{
    static const struct {
        const char *s;
        size_t n;
    } blank[] = {{S("\r\n")}, {S("\n")}, {S("   \t \r\n")}, {S("\f\v \n")}};
    for (size_t i = 0; i < sizeof(blank) / sizeof(blank[0]); i++) {
        result r = parse(blank[i].s, blank[i].n);
        cr_assert_eq(r.rc, RESP_SKIP, "case %zu", i);
        cr_assert_eq(r.used, blank[i].n, "case %zu", i);
    }
}

Test(resp, incomplete_inline_line_asks_for_more)
{
    assert_more(parse(S("GET k")));
    assert_more(parse(S("GET k\r")));
    assert_more(parse(S("GET \"k")));
}

Test(resp, double_quotes_take_every_escape)
{
    result r = parse(S("SET k \"a\\nb\\r\\t\\b\\a\\\\\\\"\\x41\\x7e\\q\"\n"));
    assert_command(r, 35, "SET|k|a\\x0ab\\x0d\\x09\\x08\\x07\\x5c\"A~q");
}

Test(resp, backslash_x_without_two_hex_digits_is_a_plain_x)
{
    assert_command(parse(S("\"\\x4g\" \"\\x\"\n")), 12, "x4g|x");
}

Test(resp, single_quotes_take_only_the_escaped_quote)
{
    assert_command(parse(S("'it\\'s' 'a\\nb' 'x\"y'\n")), 21, "it's|a\\x5cnb|x\"y");
}

Test(resp, quoted_empty_string_is_an_empty_argument)
{
    result r = parse(S("ECHO \"\" ''\n"));
    assert_command(r, 11, "ECHO||");
    cr_assert_eq(r.argc, 3);
    cr_assert_eq(r.argl[1], 0);
    cr_assert_eq(r.argl[2], 0);
}

Test(resp, quotes_inside_a_word_quote_part_of_it)
{
    assert_command(parse(S("foo\"bar baz\" x\n")), 15, "foobar baz|x");
}

Test(resp, quoted_words_may_hold_spaces_and_be_adjacent_to_tabs)
{
    assert_command(parse(S("\"a b\"\t'c d'\r\n")), 13, "a b|c d");
}

Test(resp, unbalanced_quotes_are_refused)
{
    static const struct {
        const char *s;
        size_t n;
    } bad[] = {
        {S("GET \"k\n")},     {S("GET 'k\r\n")},   {S("GET \"k\\\"\n")}, {S("GET \"k\\\n")},
        {S("GET \"k\"x\n")},  {S("GET 'k'x\n")},   {S("GET \"k\"'j'\n")}, {S("\"\n")},
        {S("GET 'k\\'\n")},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        result r = parse(bad[i].s, bad[i].n);
        cr_assert_eq(r.rc, RESP_EPROTO, "case %zu", i);
        cr_assert_str_eq(r.error, "Protocol error: unbalanced quotes in request", "case %zu", i);
    }
}

Test(resp, closing_quote_at_end_of_line_is_balanced)
{
    assert_command(parse(S("GET \"k\"\r\n")), 9, "GET|k");
    assert_command(parse(S("GET 'k'\n")), 8, "GET|k");
}

/* ---- encoders ----------------------------------------------------------- */

static void assert_out(const resp_out *o, const char *s, size_t n)
{
    cr_assert_eq(o->len, n, "len %zu, expected %zu: %.*s", o->len, n, (int)o->len, o->data);
    cr_assert_eq(memcmp(o->data, s, n), 0, "got %.*s", (int)o->len, o->data);
    cr_assert_not(o->oom);
}

Test(resp, simple_string_is_plus_line)
{
    resp_out o = {0};
    resp_simple(&o, "OK");
    assert_out(&o, S("+OK\r\n"));
    resp_out_free(&o);
}

Test(resp, simple_string_keeps_one_line)
{
    resp_out o = {0};
    resp_simple(&o, "a\r\nb");
    assert_out(&o, S("+a  b\r\n"));
    resp_out_free(&o);
}

Test(resp, error_is_code_then_message)
{
    resp_out o = {0};
    resp_error(&o, "INSUFFICIENT", "available 5 < 10");
    resp_error(&o, "ERR", "");
    assert_out(&o, S("-INSUFFICIENT available 5 < 10\r\n-ERR\r\n"));
    resp_out_free(&o);
}

Test(resp, error_message_cr_and_lf_become_spaces)
{
    resp_out o = {0};
    resp_error(&o, "ERR", "bad\r\n+OK\r\nthing\n");
    assert_out(&o, S("-ERR bad  +OK  thing \r\n"));
    resp_out_free(&o);
}

Test(resp, formatted_error_is_formatted_and_kept_on_one_line)
{
    resp_out o = {0};
    resp_errorf(&o, "ERR", "unknown command '%s', with args beginning with: %d", "x\r\ny", 7);
    assert_out(&o, S("-ERR unknown command 'x  y', with args beginning with: 7\r\n"));
    resp_out_free(&o);
}

Test(resp, formatted_error_longer_than_the_first_allocation_is_whole)
{
    char big[1000];
    memset(big, 'm', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    resp_out o = {0};
    resp_errorf(&o, "ERR", "%s!", big);
    cr_assert_eq(o.len, 5 + 999 + 1 + 2);
    cr_assert_eq(memcmp(o.data, "-ERR mmm", 8), 0);
    cr_assert_eq(memcmp(o.data + o.len - 5, "mm!\r\n", 5), 0);
    resp_out_free(&o);
}

Test(resp, integers_are_colon_decimal)
{
    resp_out o = {0};
    resp_int(&o, 0);
    resp_int(&o, -42);
    resp_int(&o, INT64_MIN);
    resp_int(&o, INT64_MAX);
    assert_out(&o, S(":0\r\n:-42\r\n:-9223372036854775808\r\n:9223372036854775807\r\n"));
    resp_out_free(&o);
}

Test(resp, bulk_is_length_then_bytes)
{
    resp_out o = {0};
    resp_bulk(&o, "a\r\n\0b", 5);
    resp_bulk(&o, NULL, 0);
    resp_bulk_str(&o, "earn");
    assert_out(&o, S("$5\r\na\r\n\0b\r\n$0\r\n\r\n$4\r\nearn\r\n"));
    resp_out_free(&o);
}

Test(resp, null_is_underscore_in_resp3_and_minus_one_bulk_in_resp2)
{
    resp_out o = {0};
    resp_null(&o, 3);
    resp_null(&o, 2);
    assert_out(&o, S("_\r\n$-1\r\n"));
    resp_out_free(&o);
}

Test(resp, array_header_is_star_count)
{
    resp_out o = {0};
    resp_array(&o, 0);
    resp_array(&o, 12);
    assert_out(&o, S("*0\r\n*12\r\n"));
    resp_out_free(&o);
}

Test(resp, map_is_percent_in_resp3_and_flat_array_in_resp2)
{
    resp_out o3 = {0}, o2 = {0};
    for (int proto = 2; proto <= 3; proto++) {
        resp_out *o = proto == 3 ? &o3 : &o2;
        resp_map(o, 2, proto);
        resp_bulk_str(o, "available");
        resp_int(o, 10);
        resp_bulk_str(o, "held");
        resp_int(o, 0);
    }
    assert_out(&o3, S("%2\r\n$9\r\navailable\r\n:10\r\n$4\r\nheld\r\n:0\r\n"));
    assert_out(&o2, S("*4\r\n$9\r\navailable\r\n:10\r\n$4\r\nheld\r\n:0\r\n"));
    resp_out_free(&o3);
    resp_out_free(&o2);
}

Test(resp, raw_bytes_are_appended_as_given)
{
    resp_out o = {0};
    resp_raw(&o, "+PONG\r\n", 7);
    resp_raw(&o, NULL, 0);
    assert_out(&o, S("+PONG\r\n"));
    resp_out_free(&o);
}

Test(resp, output_buffer_grows_by_doubling_and_keeps_its_bytes)
{
    resp_out o = {0};
    size_t caps = 0, last_cap = 0;
    for (int i = 0; i < 100000; i++) {
        char c = (char)('a' + i % 26);
        resp_raw(&o, &c, 1);
        if (o.cap != last_cap) {
            cr_assert(last_cap == 0 || o.cap == 2 * last_cap, "cap %zu after %zu", o.cap,
                      last_cap);
            last_cap = o.cap;
            caps++;
        }
    }
    cr_assert_eq(o.len, 100000);
    cr_assert_geq(o.cap, o.len);
    cr_assert_leq(caps, 12, "about log2(100000/256) growths, got %zu", caps);
    for (int i = 0; i < 100000; i++)
        cr_assert_eq(o.data[i], (char)('a' + i % 26));
    resp_out_free(&o);
    cr_assert_null(o.data);
    cr_assert_eq(o.len, 0);
    cr_assert_eq(o.cap, 0);
}

Test(resp, consume_drops_the_sent_prefix)
{
    resp_out o = {0};
    resp_simple(&o, "OK");
    resp_int(&o, 5);
    resp_out_consume(&o, 3);
    assert_out(&o, S("\r\n:5\r\n"));
    resp_out_consume(&o, 0);
    resp_out_consume(&o, o.len);
    cr_assert_eq(o.len, 0);
    resp_simple(&o, "again");
    assert_out(&o, S("+again\r\n"));
    resp_out_free(&o);
}

Test(resp, buffer_that_ran_out_of_memory_takes_no_more_bytes)
{
    resp_out o = {0};
    resp_simple(&o, "OK");
    o.oom = true; /* as after a failed realloc */
    resp_int(&o, 1);
    resp_bulk_str(&o, "x");
    resp_errorf(&o, "ERR", "%d", 3);
    cr_assert_eq(o.len, 5);
    cr_assert(o.oom);
    resp_out_free(&o);
    cr_assert_not(o.oom);
}

Test(resp, free_of_an_empty_buffer_is_safe)
{
    resp_out o = {0};
    resp_out_free(&o);
    resp_out_free(&o);
    cr_assert_null(o.data);
}

Test(resp, encoded_array_of_bulks_parses_back_as_the_same_command)
{
    resp_out o = {0};
    resp_array(&o, 3);
    resp_bulk_str(&o, "EARN");
    resp_bulk(&o, "4\r\n2", 4);
    resp_bulk(&o, "", 0);
    result r = parse(o.data, o.len);
    assert_command(r, o.len, "EARN|4\\x0d\\x0a2|");
    resp_out_free(&o);
}
