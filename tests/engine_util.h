/*
 * engine_util.h — small helpers for tests that drive the public engine API
 * (tally.h): temporary data directories and request builders.
 */
#ifndef TALLY_TESTS_ENGINE_UTIL_H
#define TALLY_TESTS_ENGINE_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "tally.h"

/* mkdtemp under /tmp; the path is written into buf (>= 64 bytes). */
void eu_tmpdir(char *buf, const char *tag);
/* mkdtemp under /dev/shm (tmpfs: flushes cost nothing), for tests whose
 * I/O seam models durability itself; /tmp if there is no /dev/shm. */
void eu_tmpdir_mem(char *buf, const char *tag);
/* rm -rf of a test directory. */
void eu_rmrf(const char *path);

/* Fill a request (tally_request_init first). */
void eu_write(tally_request *r, int op, uint64_t m, uint64_t a, int64_t points, const char *id);
void eu_ref(tally_request *r, int op, uint64_t m, const char *ref, const char *id);
void eu_read(tally_request *r, int op, uint64_t m, uint64_t a);
void eu_entry(tally_request *r, uint64_t m, const char *id);

/* One-call conveniences over tally_call; return res.status. */
int eu_earn(tally *t, uint64_t m, uint64_t a, int64_t points, const char *id, tally_entry *out);
int eu_redeem(tally *t, uint64_t m, uint64_t a, int64_t points, const char *id,
              tally_entry *out);
int eu_balance(tally *t, uint64_t m, uint64_t a, tally_balance *out);
/* ENTRY: 1 found (written to *out), 0 not found, < 0 error. */
int eu_find(tally *t, uint64_t m, const char *id, tally_entry *out);

/* Submits n requests with up to `window` in flight (tally_submit), each
 * filled by fill(ctx, i, req) on a request made ready with
 * tally_request_init, and waits for all.  Returns how many were answered
 * with an error; the first one's status and message go to *first_err and
 * msg (if not NULL).  For building large ledgers fast. */
uint64_t eu_pipeline(tally *t, uint64_t n, uint32_t window,
                     void (*fill)(void *ctx, uint64_t i, tally_request *req), void *ctx,
                     int *first_err, char *msg, size_t cap);

/* Damage, for tests that check it is found.  eu_flip_bit: one bit of the
 * byte at off (0x10).  eu_flip_value: the low bit of the first byte of
 * every copy of a value in the file, as an int64 and as a zigzag varint
 * (account totals); returns how many copies.  Both abort() when
 * the file cannot be read or written. */
void eu_flip_bit(const char *path, long off);
int eu_flip_value(const char *path, int64_t value);

/* Opens the closed directory dir read-only and checks that its state
 * equals a replay of its whole log (tally_verify_full): 0, or the error
 * with its words in msg. */
int eu_verify_offline(const char *dir, char *msg, size_t cap);

/* Opens with test defaults: small segments, a quiet log. */
int eu_open(const char *dir, uint32_t shards, tally **out);
/* The quiet log callback (counts warnings and errors). */
void eu_log(void *ctx, int level, const char *msg);
extern int eu_log_warnings;

#endif
