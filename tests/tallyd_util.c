/*
 * tallyd_util.c — a real tallyd for integration tests (tallyd_util.h).
 */
#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "engine_util.h"
#include "tallyd_util.h"

/* ---- process -------------------------------------------------------------- */

static uint64_t td_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint16_t td_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    socklen_t len = sizeof(a);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

void td_init(td *t, const char *tag)
{
    memset(t, 0, sizeof(*t));
    eu_tmpdir(t->dir, tag);
    snprintf(t->log, sizeof(t->log), "%s.log", t->dir);
}

void td_write_auth(td *t, const char *text)
{
    snprintf(t->auth, sizeof(t->auth), "%s.auth", t->dir);
    FILE *f = fopen(t->auth, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
}

pid_t td_exec(const char *const *argv, const char *log)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(99);
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 2);
            dup2(fd, 1);
        }
        /* Under ASan, freed memory waits in a quarantine (256 MB by
         * default) that would drown the memory-bound tests. */
        setenv("ASAN_OPTIONS", "quarantine_size_mb=8", 0);
        execvp(argv[0], (char *const *)argv);
        _exit(98);
    }
    return pid;
}

static pid_t td_spawn(td *t, const char *const *extra)
{
    const char *build = getenv("TALLY_BUILD");
    cr_assert_not_null(build, "TALLY_BUILD must name the build directory (make test sets it)");
    char bin[512], port[16];
    snprintf(bin, sizeof(bin), "%s/tallyd", build);
    snprintf(port, sizeof(port), "%u", t->port);
    const char *argv[64] = {bin, "--dir", t->dir, "--port", port};
    int argc = 5;
    if (!extra || !extra[0] || strcmp(extra[0], "--bind") != 0) {
        argv[argc++] = "--bind";
        argv[argc++] = "127.0.0.1";
    }
    bool sized = false;
    for (int i = 0; extra && extra[i]; i++)
        sized |= strcmp(extra[i], "--segment-kib") == 0;
    if (!sized) {
        /* New segments are zero-filled: 64 MiB per shard per test would
         * only cost time. */
        argv[argc++] = "--segment-kib";
        argv[argc++] = "4096";
    }
    for (int i = 0; extra && extra[i] && argc < 62; i++)
        argv[argc++] = extra[i];
    argv[argc] = NULL;
    return td_exec(argv, t->log);
}

/* Waits until the server answers a PING: 0, or the exit status if it
 * died first.  Accepting a connection is not enough: tallyd listens before
 * it opens (and recovers) the data directory, so a connection can wait in
 * the backlog of a server that then exits (shards mismatch, locked dir). */
static int td_wait_up(td *t, pid_t pid, int timeout_ms)
{
    uint64_t end = td_ms() + (uint64_t)timeout_ms;
    int fd = -1;
    while (td_ms() < end) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            if (fd >= 0)
                close(fd);
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
        if (fd < 0) {
            fd = socket(AF_INET, SOCK_STREAM, 0);
            struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(t->port),
                                    .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
            if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
                send(fd, "PING\r\n", 6, MSG_NOSIGNAL) != 6) {
                close(fd);
                fd = -1;
                usleep(20000);
                continue;
            }
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 50) <= 0)
            continue;
        char got;
        ssize_t r = recv(fd, &got, 1, 0);
        close(fd);
        fd = -1;
        /* +PONG, or -NOAUTH on an authenticated server: either way it is
         * serving. */
        if (r == 1)
            return 0;
        usleep(20000);
    }
    if (fd >= 0)
        close(fd);
    return -1;
}

static void td_dump_log(const td *t)
{
    FILE *f = fopen(t->log, "r");
    if (!f)
        return;
    char line[512];
    while (fgets(line, sizeof(line), f))
        cr_log_error("tallyd: %s", line);
    fclose(f);
}

/* extra, then the auth file's option if the test wrote one. */
static void td_args_with_auth(const td *t, const char *const *extra, const char **out)
{
    int n = 0;
    for (int i = 0; extra && extra[i] && n < 60; i++)
        out[n++] = extra[i];
    if (t->auth[0]) {
        out[n++] = "--auth-file";
        out[n++] = t->auth;
    }
    out[n] = NULL;
}

/* One start on t->port: true if it serves; else it is gone again. */
static bool td_start_once(td *t, const char *const *with_auth)
{
    t->pid = td_spawn(t, with_auth);
    int rc = td_wait_up(t, t->pid, 60000);
    if (rc == 0)
        return true;
    if (rc < 0) {
        kill(t->pid, SIGKILL);
        waitpid(t->pid, NULL, 0);
    }
    t->pid = 0;
    return false;
}

void td_start(td *t, const char *const *extra)
{
    const char *with_auth[64];
    td_args_with_auth(t, extra, with_auth);
    /* The port may be taken between td_free_port and the bind: another. */
    for (int attempt = 0; attempt < 5; attempt++) {
        t->port = td_free_port();
        if (td_start_once(t, with_auth))
            return;
    }
    td_dump_log(t);
    cr_assert_fail("tallyd did not start (log %s)", t->log);
}

void td_restart(td *t, const char *const *extra)
{
    cr_assert(t->port != 0 && t->pid <= 0, "td_restart: started before and stopped since");
    const char *with_auth[64];
    td_args_with_auth(t, extra, with_auth);
    if (td_start_once(t, with_auth))
        return;
    td_dump_log(t);
    cr_assert_fail("tallyd did not start again on port %u (log %s)", t->port, t->log);
}

int td_start_expect_exit(td *t, const char *const *extra)
{
    t->port = td_free_port();
    pid_t pid = td_spawn(t, extra);
    int rc = td_wait_up(t, pid, 20000);
    if (rc == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return -1;
    }
    return rc;
}

void td_stop(td *t)
{
    if (t->pid <= 0)
        return;
    kill(t->pid, SIGTERM);
    int st = 0;
    uint64_t end = td_ms() + 60000;
    pid_t got = 0;
    while ((got = waitpid(t->pid, &st, WNOHANG)) == 0 && td_ms() < end)
        usleep(10000);
    if (got == 0) {
        kill(t->pid, SIGKILL);
        waitpid(t->pid, &st, 0);
        t->pid = 0;
        td_dump_log(t);
        cr_assert_fail("tallyd did not stop within 60 s of SIGTERM");
    }
    t->pid = 0;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        td_dump_log(t);
    cr_assert(WIFEXITED(st), "tallyd died by signal %d", WIFSIGNALED(st) ? WTERMSIG(st) : 0);
    cr_assert_eq(WEXITSTATUS(st), 0, "tallyd exit status");
}

void td_kill9(td *t)
{
    if (t->pid <= 0)
        return;
    kill(t->pid, SIGKILL);
    waitpid(t->pid, NULL, 0);
    t->pid = 0;
}

void td_cleanup(td *t)
{
    if (t->pid > 0)
        td_kill9(t);
    eu_rmrf(t->dir);
    unlink(t->log);
    if (t->auth[0])
        unlink(t->auth);
}

/* ---- environment ---------------------------------------------------------- */

void td_cannot_run(const char *fmt, ...)
{
    char why[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    const char *ci = getenv("CI");
    if (ci && strcmp(ci, "true") == 0)
        cr_assert_fail("cannot run under CI=true: %s", why);
    cr_skip_test("%s", why);
    abort(); /* cr_skip_test ends the test */
}

const char *td_source_dir(void)
{
    static char dir[512];
    const char *build = getenv("TALLY_BUILD");
    cr_assert_not_null(build, "TALLY_BUILD must name the build directory (make test sets it)");
    snprintf(dir, sizeof(dir), "%s", build);
    char *slash = strrchr(dir, '/');
    cr_assert_not_null(slash, "TALLY_BUILD must be an absolute path: %s", build);
    *slash = 0;
    return dir;
}

int td_run(const char *cmd, char *out, size_t cap)
{
    char full[4200];
    /* The newline ends a trailing shell comment in cmd. */
    snprintf(full, sizeof(full), "( %s\n) 2>&1", cmd);
    FILE *p = popen(full, "r");
    cr_assert_not_null(p, "popen %s", cmd);
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = 0;
    while (n == cap - 1 && fread(full, 1, sizeof(full), p) > 0)
        ; /* drain what does not fit */
    int st = pclose(p);
    cr_assert(st != -1);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* ---- hiredis -------------------------------------------------------------- */

redisContext *td_connect(const td *t)
{
    struct timeval tv = {.tv_sec = 30};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", t->port, tv);
    cr_assert(c && !c->err, "connect: %s", c ? c->errstr : "no memory");
    redisSetTimeout(c, tv);
    return c;
}

redisReply *td_cmd(redisContext *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    cr_assert_not_null(r, "no reply to '%s': %s", fmt, c->errstr);
    return r;
}

const redisReply *td_field(const redisReply *r, const char *name)
{
    if (!r || r->type != REDIS_REPLY_ARRAY)
        return NULL;
    for (size_t i = 0; i + 1 < r->elements; i += 2)
        if (r->element[i]->type == REDIS_REPLY_STRING && strcmp(r->element[i]->str, name) == 0)
            return r->element[i + 1];
    return NULL;
}

void td_replies_ok(redisContext *c, int n)
{
    for (int i = 0; i < n; i++) {
        redisReply *r;
        cr_assert_eq(redisGetReply(c, (void **)&r), REDIS_OK, "reply %d: %s", i, c->errstr);
        cr_assert_eq(r->type, REDIS_REPLY_ARRAY, "reply %d is not an entry: %s", i,
                     r->type == REDIS_REPLY_ERROR ? r->str : "");
        freeReplyObject(r);
    }
}

long long td_int_field(const redisReply *r, const char *name)
{
    const redisReply *f = td_field(r, name);
    cr_assert_not_null(f, "reply has no field %s", name);
    cr_assert_eq(f->type, REDIS_REPLY_INTEGER, "field %s is not an integer", name);
    return f->integer;
}

/* ---- raw sockets ---------------------------------------------------------- */

int td_raw(const td *t)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(t->port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0, "connect: %s",
                 strerror(errno));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

void td_send(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        cr_assert(w > 0, "send: %s", strerror(errno));
        p += w;
        n -= (size_t)w;
    }
}

void td_sends(int fd, const char *s) { td_send(fd, s, strlen(s)); }

size_t td_recv(int fd, char *buf, size_t need, int timeout_ms)
{
    size_t got = 0;
    uint64_t end = td_ms() + (uint64_t)timeout_ms;
    while (got < need) {
        uint64_t now = td_ms();
        if (now >= end)
            break;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, (int)(end - now)) <= 0)
            break;
        ssize_t n = recv(fd, buf + got, need - got, 0);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    return got;
}

size_t td_recv_until(int fd, char *buf, size_t cap, const char *suffix, int timeout_ms)
{
    size_t got = 0, sl = strlen(suffix);
    uint64_t end = td_ms() + (uint64_t)timeout_ms;
    while (got + 1 < cap) {
        if (got >= sl && memcmp(buf + got - sl, suffix, sl) == 0)
            break;
        uint64_t now = td_ms();
        if (now >= end)
            break;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, (int)(end - now)) <= 0)
            break;
        ssize_t n = recv(fd, buf + got, 1, 0);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    buf[got] = 0;
    return got;
}

int td_closed(int fd, int timeout_ms)
{
    char b[4096];
    uint64_t end = td_ms() + (uint64_t)timeout_ms;
    for (;;) {
        uint64_t now = td_ms();
        if (now >= end)
            return 0;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, (int)(end - now)) <= 0)
            return 0;
        ssize_t n = recv(fd, b, sizeof(b), 0);
        if (n == 0 || (n < 0 && errno == ECONNRESET))
            return 1;
        if (n < 0)
            return 0;
    }
}

long td_status_kib(const td *t, const char *field)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)t->pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    long kib = -1;
    size_t n = strlen(field);
    while (fgets(line, sizeof(line), f))
        if (strncmp(line, field, n) == 0 && line[n] == ':' &&
            sscanf(line + n + 1, "%ld kB", &kib) == 1)
            break;
    fclose(f);
    return kib;
}

long td_rss_kib(const td *t) { return td_status_kib(t, "VmRSS"); }
