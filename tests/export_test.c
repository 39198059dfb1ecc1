/*
 * export_test.c — the dump-line parser that `tally import` reads every line
 * through (export_parse_json): values, bounds of 64-bit numbers, JSON
 * string escapes, and what it refuses, each with its message.
 */
#include <criterion/criterion.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "export.h"
#include "tally.h"

static int parse(const char *line, tally_import_item *it, char *err, size_t cap)
{
    err[0] = 0;
    return export_parse_json(line, strlen(line), it, err, cap);
}

static void expect_refused(const char *line, const char *words)
{
    tally_import_item it;
    char err[256];
    int rc = parse(line, &it, err, sizeof(err));
    cr_assert_eq(rc, TALLY_ESYNTAX, "accepted: %s", line);
    cr_assert(strstr(err, words), "for %s: \"%s\" does not say \"%s\"", line, err, words);
}

Test(export, a_dump_line_parses_into_its_fields)
{
    tally_import_item it;
    char err[256];
    const char *line =
        "{\"seq\":7,\"id\":\"order-1\",\"kind\":\"earn\",\"merchant\":\"25\",\"account\":"
        "\"18446744073709551615\",\"points\":439,\"amount\":439,\"balance\":-12,\"held\":0,"
        "\"pending\":0,\"ts\":1796077615505,\"ref\":\"r\\\"1\",\"expires\":1819751215,"
        "\"memo\":\"caf\\u00e9 \\ud83d\\ude00 \\\\ \\n\",\"arg_points\":439}\n";
    cr_assert_eq(parse(line, &it, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(it.e.seq, 7);
    cr_assert(it.have & TALLY_HAVE_SEQ);
    cr_assert_eq(it.e.id_len, 7);
    cr_assert_eq(memcmp(it.e.id, "order-1", 7), 0);
    cr_assert_eq(it.e.kind, TALLY_KIND_EARN);
    cr_assert_eq(it.e.merchant, 25);
    cr_assert_eq(it.e.account, UINT64_MAX);
    cr_assert_eq(it.e.points, 439);
    cr_assert_eq(it.e.balance, -12);
    cr_assert_eq(it.e.ts_ms, 1796077615505ull);
    cr_assert_eq(it.e.expires, 1819751215ull);
    cr_assert_eq(it.e.ref_len, 3);
    cr_assert_eq(memcmp(it.e.ref, "r\"1", 3), 0);
    /* é is two UTF-8 bytes, the surrogate pair one 4-byte character. */
    const char memo[] = "caf\xc3\xa9 \xf0\x9f\x98\x80 \\ \n";
    cr_assert_eq(it.e.memo_len, sizeof(memo) - 1);
    cr_assert_eq(memcmp(it.e.memo, memo, sizeof(memo) - 1), 0);
}

Test(export, numbers_beyond_64_bits_are_refused_by_name)
{
    expect_refused("{\"id\":\"a\",\"kind\":\"earn\",\"merchant\":\"18446744073709551616\","
                   "\"account\":\"1\",\"ts\":1}",
                   "merchant: \"18446744073709551616\" is not an unsigned 64-bit integer");
    expect_refused("{\"id\":\"a\",\"kind\":\"earn\",\"merchant\":\"1\",\"account\":"
                   "\"99999999999999999999\",\"ts\":1}",
                   "account: \"99999999999999999999\" is not an unsigned 64-bit");
    expect_refused("{\"id\":\"a\",\"kind\":\"earn\",\"merchant\":\"1\",\"account\":"
                   "\"184467440737095516150\",\"ts\":1}",
                   "is not an unsigned 64-bit");
    expect_refused("{\"id\":\"a\",\"kind\":\"earn\",\"merchant\":\"1\",\"account\":\"1\","
                   "\"ts\":1,\"points\":9223372036854775808}",
                   "points: \"9223372036854775808\" is not a 64-bit integer");
    expect_refused("{\"id\":\"a\",\"kind\":\"earn\",\"merchant\":\"1\",\"account\":\"1x\","
                   "\"ts\":1}",
                   "account: \"1x\" is not an unsigned 64-bit");
    /* The largest of each still reads. */
    tally_import_item it;
    char err[256];
    cr_assert_eq(parse("{\"id\":\"a\",\"kind\":\"earn\",\"merchant\":\"1\",\"account\":\"1\","
                       "\"ts\":18446744073709551615,\"points\":-9223372036854775807}",
                       &it, err, sizeof(err)),
                 0, "%s", err);
    cr_assert_eq(it.e.ts_ms, UINT64_MAX);
    cr_assert_eq(it.e.points, -INT64_MAX);
}

Test(export, broken_strings_and_unknown_fields_are_refused_with_what_is_wrong)
{
    expect_refused("{\"id\":\"a\",\"kind\":\"earn\",\"merchant\":\"1\",\"account\":\"1\","
                   "\"ts\":1,\"memo\":\"no end}",
                   "a string is not closed");
    expect_refused("{\"id\":\"a\tb\",\"kind\":\"earn\",\"merchant\":\"1\",\"account\":\"1\","
                   "\"ts\":1}",
                   "a control character inside a string");
    expect_refused("{\"id\":\"a\\x\",\"kind\":\"earn\",\"merchant\":\"1\",\"account\":\"1\","
                   "\"ts\":1}",
                   "a bad escape inside a string");
    expect_refused("{\"id\":\"a\\ud800\",\"kind\":\"earn\",\"merchant\":\"1\",\"account\":"
                   "\"1\",\"ts\":1}",
                   "a lone surrogate escape");
    expect_refused("{\"id\":\"a\",\"kind\":\"earn\",\"merchant\":\"1\",\"account\":\"1\","
                   "\"ts\":1,\"colour\":\"red\"}",
                   "unknown field \"colour\"");
    expect_refused("{\"id\":\"a\",\"kind\":\"earn\",\"merchant\":\"1\",\"account\":\"1\","
                   "\"ts\":1,\"ts\":2}",
                   "ts is given twice");
    expect_refused("{\"id\":\"a\",\"kind\":\"earn\",\"merchant\":\"1\",\"ts\":1}",
                   "account is missing");
    /* A key that only starts like a field's name is not that field. */
    expect_refused("{\"id\":\"a\",\"kind\":\"earn\",\"merchant\":\"1\",\"account\":\"1\","
                   "\"ts\":1,\"memos\":\"x\"}",
                   "unknown field \"memos\"");
    /* A string longer than its field, and one longer than the parser's
     * bound for any value. */
    static const struct {
        size_t len;
        const char *words;
    } longs[] = {{200, "id is longer than 128 bytes"},
                 {EXPORT_LINE_BYTES_MAX + 10, "a string is too long"}};
    for (size_t k = 0; k < sizeof(longs) / sizeof(longs[0]); k++) {
        char line[EXPORT_LINE_BYTES_MAX + 256];
        int n = snprintf(line, sizeof(line), "{\"id\":\"");
        memset(line + n, 'x', longs[k].len);
        snprintf(line + n + longs[k].len, sizeof(line) - (size_t)n - longs[k].len,
                 "\",\"kind\":\"earn\",\"merchant\":\"1\",\"account\":\"1\",\"ts\":1}");
        expect_refused(line, longs[k].words);
    }
}

/* The parser guesses each field from the one before in the dump's own
 * order; any other order, or a name written with escapes, reads the same. */
Test(export, fields_in_any_order_or_with_escaped_names_read_the_same)
{
    const char *lines[] = {
        "{\"seq\":3,\"id\":\"x\",\"kind\":\"hold\",\"merchant\":\"2\",\"account\":\"5\","
        "\"points\":-4,\"amount\":4,\"balance\":6,\"held\":4,\"pending\":0,\"ts\":99,"
        "\"ref\":\"\",\"expires\":0,\"memo\":\"m\",\"arg_points\":0,\"timeout\":60,"
        "\"given\":[\"TIMEOUT\"]}",
        "{\"timeout\":60,\"memo\":\"m\",\"ts\":99,\"pending\":0,\"held\":4,\"balance\":6,"
        "\"amount\":4,\"points\":-4,\"account\":\"5\",\"merchant\":\"2\",\"kind\":\"hold\","
        "\"id\":\"x\",\"seq\":3,\"given\":[\"TIMEOUT\"],\"expires\":0,\"ref\":\"\","
        "\"arg_points\":0}",
        "{\"s\\u0065q\":3,\"\\u0069d\":\"x\",\"kind\":\"hold\",\"merchant\":\"2\",\"account\":"
        "\"5\",\"points\":-4,\"amount\":4,\"balance\":6,\"held\":4,\"pending\":0,\"ts\":99,"
        "\"ref\":\"\",\"expires\":0,\"memo\":\"m\",\"arg_points\":0,\"timeout\":60,"
        "\"given\":[\"TIMEOUT\"]}",
    };
    tally_import_item first;
    for (size_t k = 0; k < sizeof(lines) / sizeof(lines[0]); k++) {
        tally_import_item it;
        char err[256];
        cr_assert_eq(parse(lines[k], &it, err, sizeof(err)), 0, "line %zu: %s", k, err);
        cr_assert_eq(it.e.seq, 3);
        cr_assert_eq(it.e.kind, TALLY_KIND_HOLD);
        cr_assert_eq(it.e.points, -4);
        cr_assert_eq(it.e.held, 4);
        cr_assert_eq(it.e.timeout_s, 60);
        cr_assert_eq(it.e.req_flags, TALLY_REQ_TIMEOUT);
        cr_assert_eq(it.e.id_len, 1);
        cr_assert_eq(it.e.id[0], 'x');
        if (k == 0) {
            first = it;
            continue;
        }
        cr_assert_eq(memcmp(&it, &first, offsetof(tally_import_item, e.id)), 0, "line %zu", k);
        cr_assert_eq(it.have, first.have, "line %zu", k);
    }
    /* A name given twice is still refused wherever it is. */
    expect_refused("{\"seq\":1,\"seq\":2,\"id\":\"a\",\"kind\":\"earn\",\"merchant\":\"1\","
                   "\"account\":\"1\",\"ts\":1}",
                   "seq is given twice");
}
