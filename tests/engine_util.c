/*
 * engine_util.c — helpers for engine-level tests (see engine_util.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_util.h"

int eu_log_warnings;

void eu_tmpdir(char *buf, const char *tag)
{
    snprintf(buf, 64, "/tmp/tally-%s-XXXXXX", tag);
    if (!mkdtemp(buf))
        abort();
}

void eu_tmpdir_mem(char *buf, const char *tag)
{
    snprintf(buf, 64, "/dev/shm/tally-%s-XXXXXX", tag);
    if (!mkdtemp(buf))
        eu_tmpdir(buf, tag);
}

void eu_rmrf(const char *path)
{
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", path);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", path);
}

static void eu_copy(char *dst, uint8_t *len, const char *src)
{
    size_t n = strlen(src);
    memcpy(dst, src, n);
    *len = (uint8_t)n;
}

void eu_write(tally_request *r, int op, uint64_t m, uint64_t a, int64_t points, const char *id)
{
    memset(r, 0, sizeof(*r)); /* callers pass fresh stack requests */
    r->op = (uint8_t)op;
    r->merchant = m;
    r->account = a;
    r->points = points;
    eu_copy(r->id, &r->id_len, id);
}

void eu_ref(tally_request *r, int op, uint64_t m, const char *ref, const char *id)
{
    memset(r, 0, sizeof(*r)); /* callers pass fresh stack requests */
    r->op = (uint8_t)op;
    r->merchant = m;
    eu_copy(r->ref, &r->ref_len, ref);
    eu_copy(r->id, &r->id_len, id);
}

void eu_read(tally_request *r, int op, uint64_t m, uint64_t a)
{
    memset(r, 0, sizeof(*r)); /* callers pass fresh stack requests */
    r->op = (uint8_t)op;
    r->merchant = m;
    r->account = a;
}

void eu_entry(tally_request *r, uint64_t m, const char *id)
{
    memset(r, 0, sizeof(*r)); /* callers pass fresh stack requests */
    r->op = TALLY_OP_ENTRY;
    r->merchant = m;
    eu_copy(r->ref, &r->ref_len, id);
}

static int eu_write_call(tally *t, int op, uint64_t m, uint64_t a, int64_t points,
                         const char *id, tally_entry *out)
{
    tally_request r;
    memset(&r, 0, sizeof(r));
    eu_write(&r, op, m, a, points, id);
    int rc = tally_call(t, &r);
    if (rc == 0 && out)
        *out = r.res.entry;
    tally_result_free(&r.res);
    return rc;
}

int eu_earn(tally *t, uint64_t m, uint64_t a, int64_t points, const char *id, tally_entry *out)
{
    return eu_write_call(t, TALLY_OP_EARN, m, a, points, id, out);
}

int eu_redeem(tally *t, uint64_t m, uint64_t a, int64_t points, const char *id,
              tally_entry *out)
{
    return eu_write_call(t, TALLY_OP_REDEEM, m, a, points, id, out);
}

int eu_balance(tally *t, uint64_t m, uint64_t a, tally_balance *out)
{
    tally_request r;
    memset(&r, 0, sizeof(r));
    eu_read(&r, TALLY_OP_BALANCE, m, a);
    int rc = tally_call(t, &r);
    if (rc == 0)
        *out = r.res.balance;
    tally_result_free(&r.res);
    return rc;
}

int eu_find(tally *t, uint64_t m, const char *id, tally_entry *out)
{
    tally_request r;
    memset(&r, 0, sizeof(r));
    eu_entry(&r, m, id);
    int rc = tally_call(t, &r);
    if (rc == 0 && r.res.found && out)
        *out = r.res.entry;
    int found = r.res.found;
    tally_result_free(&r.res);
    return rc < 0 ? rc : found;
}

void eu_log(void *ctx, int level, const char *msg)
{
    (void)ctx;
    (void)msg;
    if (level > 0)
        __atomic_fetch_add(&eu_log_warnings, 1, __ATOMIC_RELAXED);
    if (getenv("TALLY_TEST_VERBOSE"))
        fprintf(stderr, "[%d] %s\n", level, msg);
}

int eu_open(const char *dir, uint32_t shards, tally **out)
{
    tally_options o = {.dir = dir, .shards = shards, .segment_bytes = 1u << 20,
                       .state_map_bytes = 1ull << 30, .log = eu_log};
    return tally_open(&o, out);
}
