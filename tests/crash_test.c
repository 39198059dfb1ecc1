/*
 * crash_test.c — kill -9 a real writer process at random moments, many
 * times; after each crash reopen the directory and check that every
 * acknowledged entry is there with the seq it was acknowledged with, that
 * idempotent retries give the original entry, and that the state equals
 * a fresh replay of the whole log (tally_verify_full).
 *
 * The writer is a forked child running the engine with 8 threads calling
 * tally_call (so batches carry several entries); it reports each
 * acknowledgement on a pipe as "id seq merchant\n" (one write(2) of less
 * than PIPE_BUF bytes, so lines never interleave).  Cycles: env
 * TALLY_CRASH_CYCLES (default 6; `make test-crash` runs 200).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "child_util.h"
#include "engine_util.h"

#define CRASH_THREADS 8
#define CRASH_SHARDS 2

typedef struct crash_ack {
    char id[32];
    uint64_t seq;
    uint64_t merchant;
} crash_ack;

typedef struct crash_writer {
    tally *t;
    int fd;
    int cycle;
    int thread;
} crash_writer;

static void *crash_writer_main(void *arg)
{
    crash_writer *w = arg;
    for (unsigned i = 0;; i++) {
        tally_request r;
        memset(&r, 0, sizeof(r));
        char id[32];
        snprintf(id, sizeof(id), "c%d-t%d-%u", w->cycle, w->thread, i);
        uint64_t m = 1 + (i * 7 + (unsigned)w->thread) % 5, a = 1 + i % 11;
        eu_write(&r, i % 5 == 4 ? TALLY_OP_REDEEM : TALLY_OP_EARN, m, a, 1 + i % 50, id);
        int rc = tally_call(w->t, &r);
        char line[200];
        int n;
        if (rc == 0 || rc == TALLY_EINSUFFICIENT)
            n = snprintf(line, sizeof(line), "%s %llu %llu\n", id,
                         rc == 0 ? (unsigned long long)r.res.entry.seq : 0ull,
                         (unsigned long long)m);
        else /* no write may fail before the kill: the parent counts these */
            n = snprintf(line, sizeof(line), "error %d %.150s\n", rc, r.res.message);
        if (write(w->fd, line, (size_t)n) != n)
            _exit(3);
        tally_result_free(&r.res);
    }
    return NULL;
}

/* The writer process (child_util.h): DIR FD CYCLE; killed by the test. */
int crash_child_main(int argc, char **argv)
{
    if (argc != 3)
        return 2;
    const char *dir = argv[0];
    int fd = atoi(argv[1]), cycle = atoi(argv[2]);
    tally *t;
    if (eu_open(dir, CRASH_SHARDS, &t) != 0)
        _exit(2);
    if (write(fd, "ready 0 0\n", 10) != 10)
        _exit(3);
    crash_writer ws[CRASH_THREADS];
    pthread_t th[CRASH_THREADS];
    for (int i = 0; i < CRASH_THREADS; i++) {
        ws[i] = (crash_writer){.t = t, .fd = fd, .cycle = cycle, .thread = i};
        pthread_create(&th[i], NULL, crash_writer_main, &ws[i]);
    }
    for (;;)
        pause();
}

/* Reads ack lines until the deadline (ms) or EOF; appends to acks. */
static void crash_collect(int fd, int deadline_ms, crash_ack **acks, size_t *n, size_t *cap,
                          char *buf, size_t *buf_len)
{
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        long el = (now.tv_sec - t0.tv_sec) * 1000 + (now.tv_nsec - t0.tv_nsec) / 1000000;
        if (deadline_ms >= 0 && el >= deadline_ms)
            return;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int pr = poll(&p, 1, deadline_ms < 0 ? 1000 : (int)(deadline_ms - el));
        if (pr <= 0)
            return;
        ssize_t got = read(fd, buf + *buf_len, 65536 - *buf_len);
        if (got <= 0)
            return;
        *buf_len += (size_t)got;
        char *line = buf, *nl;
        while ((nl = memchr(line, '\n', (size_t)(buf + *buf_len - line))) != NULL) {
            *nl = 0;
            crash_ack a = {0};
            unsigned long long seq, m;
            if (strncmp(line, "error ", 6) == 0)
                cr_assert_fail("a write failed before the kill: %s", line + 6);
            if (sscanf(line, "%31s %llu %llu", a.id, &seq, &m) == 3 &&
                strcmp(a.id, "ready") != 0) {
                a.seq = seq;
                a.merchant = m;
                if (*n == *cap) {
                    *cap = *cap ? *cap * 2 : 4096;
                    *acks = realloc(*acks, *cap * sizeof(**acks));
                }
                (*acks)[(*n)++] = a;
            }
            line = nl + 1;
        }
        *buf_len = (size_t)(buf + *buf_len - line);
        memmove(buf, line, *buf_len);
    }
}

Test(crash, kill_9_at_random_moments_loses_no_acknowledged_entry, .timeout = 600)
{
    const char *env = getenv("TALLY_CRASH_CYCLES");
    int cycles = env ? atoi(env) : 6;
    char dir[64];
    eu_tmpdir(dir, "crash");
    srand((unsigned)getpid());
    crash_ack *acks = NULL;
    size_t n = 0, cap = 0, checked_total = 0;
    char *buf = malloc(65536);
    for (int c = 0; c < cycles; c++) {
        int p[2];
        cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
        cr_assert_eq(fcntl(p[1], F_SETFD, 0), 0); /* the writer's end goes to the child */
        char fd_s[16], cycle_s[16];
        snprintf(fd_s, sizeof(fd_s), "%d", p[1]);
        snprintf(cycle_s, sizeof(cycle_s), "%d", c);
        pid_t pid = cu_spawn("crash", (const char *const[]){dir, fd_s, cycle_s, NULL});
        close(p[1]);
        size_t buf_len = 0, before = n;
        crash_collect(p[0], 20 + rand() % 400, &acks, &n, &cap, buf, &buf_len);
        kill(pid, SIGKILL);
        int status;
        waitpid(pid, &status, 0);
        cr_assert(WIFSIGNALED(status), "the writer died by our signal, not on its own");
        crash_collect(p[0], -1, &acks, &n, &cap, buf, &buf_len); /* drain to EOF */
        close(p[0]);

        tally *t;
        cr_assert_eq(eu_open(dir, CRASH_SHARDS, &t), 0, "cycle %d: reopen", c);
        for (size_t i = 0; i < n; i++) {
            /* Everything acknowledged in this cycle; a sample of older ones. */
            if (i < before && rand() % 16 != 0)
                continue;
            tally_entry e;
            int found = eu_find(t, acks[i].merchant, acks[i].id, &e);
            if (acks[i].seq == 0) {
                cr_assert_eq(found, 0, "a refusal is not an entry: %s", acks[i].id);
                continue;
            }
            cr_assert_eq(found, 1, "cycle %d: acknowledged %s lost", c, acks[i].id);
            cr_assert_eq(e.seq, acks[i].seq, "cycle %d: %s seq changed", c, acks[i].id);
            checked_total++;
        }
        /* An idempotent retry of the last acknowledged write answers the
         * original entry. */
        for (size_t i = n; i > before; i--) {
            crash_ack *a = &acks[i - 1];
            if (a->seq == 0)
                continue;
            tally_entry e;
            cr_assert_eq(eu_find(t, a->merchant, a->id, &e), 1);
            tally_request r;
            memset(&r, 0, sizeof(r));
            eu_write(&r, e.kind == TALLY_KIND_EARN ? TALLY_OP_EARN : TALLY_OP_REDEEM,
                     a->merchant, e.account, e.points < 0 ? -e.points : e.points, a->id);
            cr_assert_eq(tally_call(t, &r), 0);
            cr_assert(r.res.replayed);
            cr_assert_eq(r.res.entry.seq, a->seq);
            tally_result_free(&r.res);
            break;
        }
        tally_close(t);
        if (c == cycles - 1 || c % 3 == 0) {
            tally_options o = {.dir = dir, .read_only = true, .log = eu_log};
            cr_assert_eq(tally_open(&o, &t), 0);
            char msg[256];
            cr_assert_eq(tally_verify_full(t, msg, sizeof(msg)), 0, "cycle %d: %s", c, msg);
            tally_close(t);
        }
    }
    cr_assert_gt(checked_total, 0, "the writer acknowledged something");
    cr_log_info("crash: %d cycles, %zu acknowledgements, %zu checked", cycles, n,
                checked_total);
    free(buf);
    free(acks);
    eu_rmrf(dir);
}
