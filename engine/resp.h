/*
 * resp.h — the Redis serialization protocol (RESP2 and RESP3): an
 * incremental request parser that never trusts a declared length, and the
 * reply encoders.  Knows nothing about tally's commands.
 *
 * Parsing.  A client's unparsed bytes live in a buffer owned by the
 * caller.  resp_parse() looks at buf[0, len) — which always starts at the
 * first byte of the command being parsed — and either completes one
 * command, asks for more bytes, or reports a protocol error.  It keeps its
 * position in the parser state, so bytes already checked are not scanned
 * again when more arrive (a command trickled one byte at a time costs
 * O(n), not O(n^2)).  Between calls the caller may move the buffer
 * (realloc, or memmove of the consumed prefix) as long as the unconsumed
 * bytes keep their order and stay at buf[0]: the parser stores offsets
 * relative to buf, never pointers.
 *
 * Two request forms, as Redis accepts them:
 *   multibulk  *<argc>\r\n then argc times $<len>\r\n<len bytes>\r\n
 *   inline     one line of words separated by spaces/tabs, ended by \n or
 *              \r\n; "double quoted" words with \n \r \t \b \a \\ \" \xHH
 *              escapes and 'single quoted' words with \' (as redis-cli and
 *              telnet users expect); an empty line is skipped.
 *
 * Limits (limits.h), each checked before anything is allocated or
 * awaited: argc 1..LIMIT_ARGS_MAX, each bulk 0..LIMIT_BULK_BYTES_MAX,
 * an inline line up to LIMIT_INLINE_BYTES_MAX.  A bulk's trailing CRLF
 * must be exactly "\r\n" (stricter than Redis).  "*0\r\n" and "*-1\r\n"
 * are skipped like an empty inline line.
 *
 * Encoding.  Replies are appended to a resp_out buffer that grows by
 * doubling (malloc'd, freed by resp_out_free).  Maps are RESP3 '%' maps
 * when proto is 3 and flat field/value arrays (as HGETALL) when proto is
 * 2; null is '_' in RESP3 and "$-1" in RESP2.
 */
#ifndef TALLY_RESP_H
#define TALLY_RESP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "limits.h"

/* ---- parsing ------------------------------------------------------------ */

enum {
    RESP_MORE = 0,      /* need more bytes; nothing consumed */
    RESP_COMMAND = 1,   /* one command complete in *cmd */
    RESP_SKIP = 2,      /* an empty command (blank line, *0): consumed, no cmd */
    RESP_EPROTO = -1,   /* protocol error: reply resp_parser.error, close */
};

/* One parsed command: argument i is argv_off[i] .. + argl[i] bytes of the
 * buffer passed to the resp_parse() call that returned RESP_COMMAND (valid
 * until the caller consumes those bytes).  Inline arguments are unescaped
 * in place into scratch[] instead: then argv_scratch is true and offsets
 * index scratch. */
typedef struct resp_command {
    uint32_t argc;
    uint32_t argv_off[LIMIT_ARGS_MAX];
    uint32_t argl[LIMIT_ARGS_MAX];
    bool argv_scratch;
    char scratch[LIMIT_INLINE_BYTES_MAX];
} resp_command;

/* Resumable parser state for one connection.  Zero-initialise (or call
 * resp_parser_reset) before the first command. */
typedef struct resp_parser {
    int state;          /* private */
    uint32_t argc;      /* private: declared argc of the multibulk */
    uint32_t argi;      /* private: arguments complete so far */
    uint32_t pos;       /* private: bytes of this command checked so far */
    int64_t bulk_len;   /* private: declared length of the current bulk */
    char error[128];    /* after RESP_EPROTO: "Protocol error: ..." */
} resp_parser;

void resp_parser_reset(resp_parser *p);

/* Parses at most one command from buf[0, len).  On RESP_COMMAND and
 * RESP_SKIP writes *consumed (bytes of buf the command used); on
 * RESP_MORE and RESP_EPROTO consumed is 0.  After RESP_COMMAND/RESP_SKIP
 * the parser is ready for the next command at buf + *consumed.  After
 * RESP_EPROTO it stays in error (every later call returns RESP_EPROTO).
 * Never reads beyond buf + len; never allocates. */
int resp_parse(resp_parser *p, const char *buf, size_t len, resp_command *cmd, size_t *consumed);

/* Pointer to argument i of a command parsed from buf. */
static inline const char *resp_arg(const resp_command *cmd, const char *buf, uint32_t i)
{
    return (cmd->argv_scratch ? cmd->scratch : buf) + cmd->argv_off[i];
}

/* ---- encoding ----------------------------------------------------------- */

typedef struct resp_out {
    char *data;
    size_t len;
    size_t cap;
    bool oom; /* an allocation failed: the buffer holds a prefix; drop the client */
} resp_out;

void resp_out_free(resp_out *o);
/* Drops the first n bytes (sent). */
void resp_out_consume(resp_out *o, size_t n);

void resp_simple(resp_out *o, const char *s);                    /* +s */
/* -CODE message (code without '-', e.g. "ERR", "INSUFFICIENT").  CR and
 * LF in message are replaced by spaces so the reply stays one line. */
void resp_error(resp_out *o, const char *code, const char *message);
void resp_errorf(resp_out *o, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void resp_int(resp_out *o, int64_t v);                           /* :v */
void resp_bulk(resp_out *o, const void *s, size_t len);          /* $len s */
void resp_bulk_str(resp_out *o, const char *s);
void resp_null(resp_out *o, int proto);                          /* _ or $-1 */
void resp_array(resp_out *o, size_t n);                          /* *n */
void resp_map(resp_out *o, size_t pairs, int proto);             /* %n or *2n */
/* Raw bytes, already encoded (for pre-built replies). */
void resp_raw(resp_out *o, const void *s, size_t len);

#endif
