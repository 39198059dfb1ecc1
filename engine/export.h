/*
 * export.h — the text form of entries: one JSON object per line (what
 * `tally dump` and `tally follow` print, what `tally import` reads) and
 * CSV with a header naming the same fields (import).
 *
 * A line's fields (JSON; CSV columns of the same names):
 *
 *   seq            the entry's seq in its shard's log (not imported: an
 *                  import gives new seqs)
 *   id kind        the entry's id and kind (earn, redeem, ... available)
 *   merchant       64-bit ids are JSON strings: jq and JavaScript hold
 *   account        numbers as doubles, exact only up to 2^53
 *   account2       TRANSFER: the other account
 *   points amount balance held pending    as in ENTRY
 *   ts             unix milliseconds
 *   ref expires    as in ENTRY (expires unix s, 0 never)
 *   memo           the memo when it is UTF-8 (JSON escapes as JSON has
 *                  them); else memo_b64, its bytes in base64
 *   available_at timeout arg_points given   the request as it was given
 *                  (EARN AVAILABLE_AT, HOLD TIMEOUT, the points argument
 *                  of CAPTURE/REVERSE/TRANSFER, and which options: a list
 *                  of EXPIRES, AVAILABLE_AT, TIMEOUT, POINTS, MEMO, ALL) —
 *                  written when not empty, so a replay is the same request
 *   imported       true for entries loaded by `tally import`
 *   refused        a remembered refusal: its error code (INSUFFICIENT,
 *                  NOTFOUND, INVALID); such lines have no outcome fields
 *
 * Lines of release 1's dump (no amount, pending or request fields) read
 * too: what they lack is left for the import to work out.
 */
#ifndef TALLY_EXPORT_H
#define TALLY_EXPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tally.h"

/* The longest line export_json writes (and the parsers take per record). */
#define EXPORT_LINE_BYTES_MAX 4096

/* Writes e (or a remembered refusal with `status`) as one JSON line with
 * its newline into out (cap >= EXPORT_LINE_BYTES_MAX): its length. */
size_t export_json(char *out, size_t cap, const tally_entry *e, bool refusal, int status);
/* An entry as a feed delivers it (FOLLOW carries what ENTRY shows, not
 * the request's fields): the same line without arg_points, given,
 * available_at and timeout — which an import then works out, as for
 * release 1's lines. */
size_t export_json_entry(char *out, size_t cap, const tally_entry *e);

/* Reads one JSON line into *it (zeroed first).  0, or TALLY_ESYNTAX with
 * what is wrong in err. */
int export_parse_json(const char *line, size_t len, tally_import_item *it, char *err, size_t cap);

/* CSV: the header line names the columns (any order, unknown ones are an
 * error); rows follow RFC 4180 (quoted fields, "" for a quote, commas and
 * newlines inside quotes). */
#define EXPORT_CSV_COLUMNS_MAX 32
typedef struct export_csv {
    int field[EXPORT_CSV_COLUMNS_MAX]; /* column -> field number */
    uint32_t columns;
} export_csv;

int export_csv_header(const char *line, size_t len, export_csv *csv, char *err, size_t cap);
/* Whether a row's text so far ends inside a quoted field (read another
 * line and join them with the newline). */
bool export_csv_open_quote(const char *text, size_t len);
int export_parse_csv(const export_csv *csv, const char *row, size_t len, tally_import_item *it,
                     char *err, size_t cap);

#endif
