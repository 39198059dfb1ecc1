/*
 * wire.h — the benchmark's side of RESP: encoding one workload operation
 * as a command for tally or as an EVALSHA of the Redis Lua script, and a
 * reply scanner that finds where one whole reply ends (any RESP2 or RESP3
 * type, nested) and classifies it.
 *
 * The scanner keeps no state between calls: it is handed the unconsumed
 * bytes, which start at a reply's first byte, and either finds the whole
 * reply or asks for more.  Replies here are small (an entry is ~300
 * bytes), so rescanning an incomplete one after the next read is cheaper
 * than keeping a resumable parser.
 */
#ifndef TALLY_BENCH_WIRE_H
#define TALLY_BENCH_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "workload.h"

/* The longest command wire_encode writes (EVALSHA, 5 arguments, two ids;
 * EARN with EXPIRES). */
#define WIRE_COMMAND_BYTES_MAX 384
/* Nesting of aggregate replies accepted before calling it a protocol error. */
#define WIRE_DEPTH_MAX 16
/* Prefix of an error reply kept for the report. */
#define WIRE_ERROR_BYTES_MAX 96

enum wire_target { WIRE_TALLY = 0, WIRE_REDIS = 1 };

enum wire_status {
    WIRE_MORE = 0,   /* the reply is not complete yet */
    WIRE_REPLY = 1,  /* one whole reply found */
    WIRE_EPROTO = -1 /* not RESP */
};

/* What a reply meant for the benchmark. */
enum wire_outcome {
    WIRE_OK = 0,      /* an entry, a balance, PONG ... */
    WIRE_REFUSED = 1, /* -INSUFFICIENT or -NOTFOUND: a ledger refusal, expected
                         or not depending on the command (workload_expects) */
    WIRE_ERROR = 2,   /* any other error reply */
};

typedef struct wire_reply {
    int outcome; /* enum wire_outcome */
    int refusal; /* enum workload_refusal, for WIRE_REFUSED */
    char error[WIRE_ERROR_BYTES_MAX]; /* first bytes of an error reply */
} wire_reply;

/* Appends op as a command to out (room for WIRE_COMMAND_BYTES_MAX bytes
 * is the caller's duty) and returns the bytes written.  For WIRE_REDIS,
 * sha is the 40-hex SHA1 of the loaded script (wire_redis_script). */
size_t wire_encode(char *out, int target, const char *sha, const workload_op *op);

/* Looks for one whole reply at buf[0, len).  On WIRE_REPLY writes *used and
 * *out (error text only for WIRE_ERROR and WIRE_REFUSED). */
int wire_scan(const char *buf, size_t len, size_t *used, wire_reply *out);

/* Appends a command of argc NUL-ended arguments; returns bytes written or 0
 * if it would not fit in cap. */
size_t wire_command(char *out, size_t cap, int argc, const char *const *argv);

/* The value of "key:value" in INFO's text (the raw bulk reply will do)
 * into out[cap]; 0, or -1 when there is no such line or it does not fit. */
int wire_info_field(const char *reply, const char *key, char *out, size_t cap);

/* The value of parameter name (case-insensitive) in a raw CONFIG GET reply
 * (a flat array of name, value bulks, or a RESP3 map) into out[cap]; 0, or
 * -1 when absent, malformed or too long. */
int wire_config_value(const char *reply, const char *name, char *out, size_t cap);

/* The Lua script that implements the ledger operations for Redis. */
extern const char wire_redis_script[];

#endif
