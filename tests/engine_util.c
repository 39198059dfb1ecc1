/*
 * engine_util.c — helpers for engine-level tests (see engine_util.h).
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bytes.h"
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

/* ---- pipelined requests ---------------------------------------------------- */

typedef struct eu_pipe {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    tally_request **free; /* requests not in flight */
    uint32_t free_count;
    uint64_t errors;
    int first_err;
    char msg[160];
} eu_pipe;

static void eu_pipe_done(tally_request *r)
{
    eu_pipe *p = r->user;
    pthread_mutex_lock(&p->lock);
    if (r->res.status != 0 && p->errors++ == 0) {
        p->first_err = r->res.status;
        snprintf(p->msg, sizeof(p->msg), "%s", r->res.message);
    }
    p->free[p->free_count++] = r;
    pthread_cond_signal(&p->cond);
    pthread_mutex_unlock(&p->lock);
}

uint64_t eu_pipeline(tally *t, uint64_t n, uint32_t window,
                     void (*fill)(void *ctx, uint64_t i, tally_request *req), void *ctx,
                     int *first_err, char *msg, size_t cap)
{
    eu_pipe p = {.free_count = window};
    pthread_mutex_init(&p.lock, NULL);
    pthread_cond_init(&p.cond, NULL);
    tally_request *reqs = calloc(window, sizeof(*reqs));
    p.free = calloc(window, sizeof(*p.free));
    if (!reqs || !p.free)
        abort();
    for (uint32_t k = 0; k < window; k++)
        p.free[k] = &reqs[k];
    for (uint64_t i = 0; i < n; i++) {
        pthread_mutex_lock(&p.lock);
        while (p.free_count == 0)
            pthread_cond_wait(&p.cond, &p.lock);
        tally_request *r = p.free[--p.free_count];
        pthread_mutex_unlock(&p.lock);
        tally_request_init(r);
        fill(ctx, i, r);
        r->done = eu_pipe_done;
        r->user = &p;
        tally_submit(t, r);
    }
    pthread_mutex_lock(&p.lock);
    while (p.free_count < window)
        pthread_cond_wait(&p.cond, &p.lock);
    pthread_mutex_unlock(&p.lock);
    for (uint32_t k = 0; k < window; k++)
        tally_result_free(&reqs[k].res);
    free(reqs);
    free(p.free);
    pthread_mutex_destroy(&p.lock);
    pthread_cond_destroy(&p.cond);
    if (first_err)
        *first_err = p.first_err;
    if (msg)
        snprintf(msg, cap, "%s", p.msg);
    return p.errors;
}

/* ---- damage ------------------------------------------------------------------ */

void eu_flip_bit(const char *path, long off)
{
    int fd = open(path, O_RDWR);
    unsigned char c;
    if (fd < 0 || pread(fd, &c, 1, off) != 1)
        abort();
    c ^= 0x10;
    if (pwrite(fd, &c, 1, off) != 1)
        abort();
    close(fd);
}

int eu_flip_value(const char *path, int64_t value)
{
    int fd = open(path, O_RDWR);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0)
        abort();
    /* data.mdb is as large as LMDB's map, with holes (MDB_WRITEMAP): its
     * pages in use end at the first. */
    off_t hole = lseek(fd, 0, SEEK_HOLE);
    if (hole >= 0 && hole < st.st_size)
        st.st_size = hole;
    uint8_t *buf = malloc((size_t)st.st_size);
    if (!buf || pread(fd, buf, (size_t)st.st_size, 0) != st.st_size)
        abort();
    /* As an int64 (merchant totals), and as account values store their
     * totals: a zigzag varint. */
    uint8_t enc[2][BYTES_VARINT_MAX];
    size_t enc_len[2] = {8, bytes_put_varint(enc[1], bytes_zigzag(value))};
    memcpy(enc[0], &value, 8);
    int hits = 0;
    for (int k = 0; k < 2; k++)
        for (off_t o = 0; o + (off_t)enc_len[k] <= st.st_size; o++)
            if (memcmp(buf + o, enc[k], enc_len[k]) == 0) {
                buf[o] ^= 0x01;
                if (pwrite(fd, buf + o, 1, o) != 1)
                    abort();
                hits++;
            }
    fsync(fd);
    close(fd);
    free(buf);
    return hits;
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

int eu_verify_offline(const char *dir, char *msg, size_t cap)
{
    tally_options ro = {.dir = dir, .read_only = true, .log = eu_log};
    tally *t;
    int rc = tally_open(&ro, &t);
    if (rc < 0) {
        snprintf(msg, cap, "read-only open: %s", tally_strerror(rc));
        return rc;
    }
    rc = tally_verify_full(t, msg, cap);
    tally_close(t);
    return rc;
}

int eu_open(const char *dir, uint32_t shards, tally **out)
{
    tally_options o = {.dir = dir, .shards = shards, .segment_bytes = 1u << 20,
                       .state_map_bytes = 1ull << 30, .log = eu_log};
    return tally_open(&o, out);
}
