/*
 * engine_util.h — small helpers for tests that drive the public engine API
 * (tally.h): temporary data directories and request builders.
 */
#ifndef TALLY_TESTS_ENGINE_UTIL_H
#define TALLY_TESTS_ENGINE_UTIL_H

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

/* Opens with test defaults: small segments, a quiet log. */
int eu_open(const char *dir, uint32_t shards, tally **out);
/* The quiet log callback (counts warnings and errors). */
void eu_log(void *ctx, int level, const char *msg);
extern int eu_log_warnings;

#endif
