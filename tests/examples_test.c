/*
 * examples_test.c — the client examples (examples/: redis-py, ioredis,
 * node-redis, hiredis) against a real tallyd.
 *
 * Each example's full loyalty flow must exit 0 and print what the server
 * holds afterwards.  Each example's retry must be safe: a proxy in front of
 * tallyd lets the first EARN of a given id through, waits for tallyd's
 * reply and closes the client's connection instead of passing the reply
 * on — the write is applied, the client never heard back.  The example
 * retries with the same id; exactly one entry exists afterwards and the
 * reply the example finally prints is that entry.
 *
 * Runtimes: `make test` installs them (Makefile, deps-examples: Debian's
 * python3-redis, node/npm, the npm packages pinned in
 * examples/node/package-lock.json; the hiredis example is built into
 * $TALLY_BUILD/examples/).  Where one cannot be installed (not root, no
 * network) its tests fail under CI=true, saying what is missing, and are
 * skipped otherwise.
 */
#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tallyd_util.h"

/* ---- the examples --------------------------------------------------------- */

typedef struct example {
    const char *name;
    const char *interp;  /* "python", "node", or NULL: a binary of $TALLY_BUILD */
    const char *program; /* under the repository, or under $TALLY_BUILD */
    const char *module;  /* the client library it imports, probed before it runs */
} example;

static const example REDIS_PY = {"redis-py", "python", "examples/python/loyalty.py", "redis"};
static const example IOREDIS = {"ioredis", "node", "examples/node/ioredis.mjs", "ioredis"};
static const example NODE_REDIS = {"node-redis", "node", "examples/node/node-redis.mjs", "redis"};
static const example HIREDIS = {"hiredis", NULL, "examples/loyalty-hiredis", NULL};

/* The Debian python3 (python3-redis installs for it), or python3 on PATH. */
static const char *python(void)
{
    return access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3";
}

static const char *build_dir(void)
{
    const char *b = getenv("TALLY_BUILD");
    cr_assert_not_null(b, "TALLY_BUILD must name the build directory (make test sets it)");
    return b;
}

/* Where ex's program is; the repository is $TALLY_BUILD's parent. */
static void program_path(const example *ex, char *out, size_t cap)
{
    snprintf(out, cap, ex->interp ? "%s/../%s" : "%s/%s", build_dir(), ex->program);
}

/* Skips (fails under CI=true) unless ex's runtime and library are there. */
static void require(const example *ex)
{
    char prog[512], cmd[1200];
    program_path(ex, prog, sizeof(prog));
    if (!ex->interp)
        snprintf(cmd, sizeof(cmd), "test -x '%s'", prog);
    else if (strcmp(ex->interp, "python") == 0)
        snprintf(cmd, sizeof(cmd), "%s -c 'import %s'", python(), ex->module);
    else /* node resolves packages from the program's folder */
        snprintf(cmd, sizeof(cmd), "cd \"$(dirname '%s')\" && node --input-type=module -e \"await import('%s')\"",
                 prog, ex->module);
    char quiet[sizeof(cmd) + 32];
    snprintf(quiet, sizeof(quiet), "( %s ) >/dev/null 2>&1", cmd);
    if (system(quiet) == 0)
        return;
    const char *ci = getenv("CI");
    if (ci && strcmp(ci, "true") == 0)
        cr_assert_fail("the %s example cannot run: `%s` failed. make test installs its runtime "
                       "(deps-examples); as root with the package registries reachable.",
                       ex->name, cmd);
    cr_skip_test("the %s example cannot run (`%s` failed): run make test as root to install it",
                 ex->name, cmd);
}

/* Runs ex with host and port (and extra options) and returns its exit
 * status (128 + signal if killed); *out gets stdout and stderr (free it). */
static int run(const example *ex, const td *t, uint16_t port, const char *const *extra, char **out)
{
    char prog[512], ports[8], log[128];
    program_path(ex, prog, sizeof(prog));
    snprintf(ports, sizeof(ports), "%u", port);
    snprintf(log, sizeof(log), "%s.example.out", t->dir);
    unlink(log);
    const char *argv[32];
    int n = 0;
    if (ex->interp)
        argv[n++] = strcmp(ex->interp, "python") == 0 ? python() : ex->interp;
    argv[n++] = prog;
    argv[n++] = "--host";
    argv[n++] = "127.0.0.1";
    argv[n++] = "--port";
    argv[n++] = ports;
    for (int i = 0; extra && extra[i] && n < 31; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;

    pid_t pid = td_exec(argv, log);
    int st = 0;
    pid_t got = 0;
    for (int ms = 0; (got = waitpid(pid, &st, WNOHANG)) == 0 && ms < 120000; ms += 20)
        usleep(20000);
    if (got == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
    }
    FILE *f = fopen(log, "r");
    cr_assert_not_null(f, "%s", log);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    rewind(f);
    *out = calloc(1, (size_t)size + 1);
    cr_assert_eq(fread(*out, 1, (size_t)size, f), (size_t)size);
    fclose(f);
    unlink(log);
    cr_assert(got != 0, "the %s example did not finish within 120 s:\n%s", ex->name, *out);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* The text after `prefix` at the start of a line of out, or NULL. */
static const char *line(const char *out, const char *prefix)
{
    size_t n = strlen(prefix);
    for (const char *p = out; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (strncmp(p, prefix, n) == 0)
            return p + n;
    return NULL;
}

/* ---- the proxy that loses a reply ------------------------------------------
 * One thread, a poll loop over the accepted clients, each paired with its
 * own connection to tallyd.  Commands and replies are cut into whole RESP
 * values so that the proxy knows which reply answers which command. */

enum { PROXY_PAIRS = 8, PROXY_BUF = 64 * 1024 };

typedef struct pair {
    int c, s;             /* client, tallyd; -1 when closed */
    size_t clen, slen;
    long sent, answered;  /* commands forwarded, replies received */
    long cut_at;          /* the command whose reply is dropped, -1 none */
    char cbuf[PROXY_BUF]; /* from the client, not yet forwarded */
    char sbuf[PROXY_BUF]; /* from tallyd, not yet forwarded */
} pair;

typedef struct proxy {
    uint16_t port, upstream;
    const char *cut_id;
    int lfd, wake[2];
    pthread_t thread;
    bool cut_pending;
    /* Read once the thread has ended (proxy_stop). */
    int accepted, cuts;
    char error[256];
    pair pairs[PROXY_PAIRS];
} proxy;

/* Bytes of one whole RESP2/RESP3 value at b, 0 if incomplete, -1 if it is
 * not RESP. */
static long resp_len(const char *b, size_t n)
{
    const char *eol = n ? memmem(b, n, "\r\n", 2) : NULL;
    if (!eol)
        return 0;
    size_t head = (size_t)(eol - b) + 2;
    long long v = strtoll(b + 1, NULL, 10);
    switch (b[0]) {
    case '+': case '-': case ':': case ',': case '#': case '(': case '_':
        return (long)head;
    case '$': case '!': case '=':
        if (v < 0)
            return (long)head;
        return n >= head + (size_t)v + 2 ? (long)(head + (size_t)v + 2) : 0;
    case '*': case '~': case '>': case '%': {
        if (v < 0)
            return (long)head;
        size_t off = head;
        for (long long i = 0; i < (b[0] == '%' ? 2 * v : v); i++) {
            long l = resp_len(b + off, n - off);
            if (l <= 0)
                return l;
            off += (size_t)l;
        }
        return (long)off;
    }
    default:
        return -1;
    }
}

/* True if the command at b (a whole array of bulk strings) is a write
 * whose id is `id`. */
static bool is_write_of(const char *b, size_t n, const char *id)
{
    static const struct { const char *name; int id_at; } writes[] = {
        {"EARN", 4}, {"REDEEM", 4}, {"HOLD", 4}, {"ADJUST", 4},
        {"CAPTURE", 3}, {"VOID", 3}, {"REVERSE", 3},
    };
    const char *arg[8];
    size_t len[8];
    int argc = 0;
    const char *p = (const char *)memchr(b, '\n', n) + 1; /* after *N\r\n */
    while (argc < 8 && p < b + n && *p == '$') {
        len[argc] = strtoul(p + 1, NULL, 10);
        arg[argc] = strchr(p, '\n') + 1;
        p = arg[argc] + len[argc] + 2;
        argc++;
    }
    for (size_t i = 0; argc > 0 && i < sizeof(writes) / sizeof(writes[0]); i++)
        if (len[0] == strlen(writes[i].name) && strncasecmp(arg[0], writes[i].name, len[0]) == 0)
            return writes[i].id_at < argc && len[writes[i].id_at] == strlen(id) &&
                   memcmp(arg[writes[i].id_at], id, len[writes[i].id_at]) == 0;
    return false;
}

static void pair_close(pair *pr)
{
    close(pr->c);
    close(pr->s);
    pr->c = pr->s = -1;
}

static bool send_all(int fd, const char *b, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, b, n, MSG_NOSIGNAL);
        if (w <= 0 && errno != EINTR)
            return false;
        if (w > 0) {
            b += w;
            n -= (size_t)w;
        }
    }
    return true;
}

/* Remembers the first error (the test reports it) and drops the pair. */
static void proxy_error(proxy *p, pair *pr, const char *what)
{
    if (!p->error[0])
        snprintf(p->error, sizeof(p->error), "%s", what);
    pair_close(pr);
}

/* Reads from fd into buf; false if the pair was closed. */
static bool pair_read(proxy *p, pair *pr, int fd, char *buf, size_t *len)
{
    if (*len == PROXY_BUF) {
        proxy_error(p, pr, "a RESP value larger than the proxy's buffer");
        return false;
    }
    ssize_t r = recv(fd, buf + *len, PROXY_BUF - *len, 0);
    if (r <= 0) {
        pair_close(pr);
        return false;
    }
    *len += (size_t)r;
    return true;
}

/* Reads what `from` sent and passes each whole value to `to`, as long as
 * `each` lets it through (false: hold it back, or the pair was closed). */
static void pump(proxy *p, pair *pr, int from, char *buf, size_t *len, int to,
                 bool (*each)(proxy *, pair *, const char *, size_t))
{
    if (!pair_read(p, pr, from, buf, len))
        return;
    for (;;) {
        long n = resp_len(buf, *len);
        if (n < 0) {
            proxy_error(p, pr, "a peer sent something that is not RESP");
            return;
        }
        if (n == 0 || !each(p, pr, buf, (size_t)n))
            return;
        if (!send_all(to, buf, (size_t)n)) {
            pair_close(pr);
            return;
        }
        memmove(buf, buf + n, *len - (size_t)n);
        *len -= (size_t)n;
    }
}

/* A command from the client. */
static bool command_passes(proxy *p, pair *pr, const char *v, size_t n)
{
    /* Once a command's reply is to be dropped, nothing more goes through. */
    if (pr->cut_at >= 0)
        return false;
    if (v[0] != '*') {
        proxy_error(p, pr, "the client sent something other than a RESP command");
        return false;
    }
    if (p->cut_pending && is_write_of(v, n, p->cut_id)) {
        p->cut_pending = false;
        pr->cut_at = pr->sent;
    }
    pr->sent++;
    return true;
}

/* A reply from tallyd. */
static bool reply_passes(proxy *p, pair *pr, const char *v, size_t n)
{
    (void)n;
    if (v[0] == '>') /* a push message answers no command */
        return true;
    if (pr->answered++ == pr->cut_at) {
        /* tallyd has applied the write and answered: the client never
         * hears of it. */
        p->cuts++;
        pair_close(pr);
        return false;
    }
    return true;
}

static void proxy_accept(proxy *p)
{
    int c = accept(p->lfd, NULL, NULL);
    if (c < 0)
        return;
    pair *pr = NULL;
    for (int i = 0; i < PROXY_PAIRS && !pr; i++)
        if (p->pairs[i].c < 0)
            pr = &p->pairs[i];
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(p->upstream),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (!pr || s < 0 || connect(s, (struct sockaddr *)&a, sizeof(a)) != 0) {
        snprintf(p->error, sizeof(p->error), "%s", pr ? "connect to tallyd failed" : "too many clients");
        close(c);
        close(s);
        return;
    }
    p->accepted++;
    pr->c = c;
    pr->s = s;
    pr->clen = pr->slen = 0;
    pr->sent = pr->answered = 0;
    pr->cut_at = -1;
}

static void *proxy_run(void *arg)
{
    proxy *p = arg;
    for (;;) {
        struct pollfd fds[2 + 2 * PROXY_PAIRS] = {{.fd = p->wake[0], .events = POLLIN},
                                                  {.fd = p->lfd, .events = POLLIN}};
        for (int i = 0; i < PROXY_PAIRS; i++) {
            pair *pr = &p->pairs[i];
            /* Closed pairs have fd -1, which poll ignores. */
            fds[2 + 2 * i] = (struct pollfd){.fd = pr->cut_at < 0 ? pr->c : -1, .events = POLLIN};
            fds[3 + 2 * i] = (struct pollfd){.fd = pr->s, .events = POLLIN};
        }
        if (poll(fds, 2 + 2 * PROXY_PAIRS, -1) < 0 && errno != EINTR)
            break;
        if (fds[0].revents)
            break;
        if (fds[1].revents)
            proxy_accept(p);
        for (int i = 0; i < PROXY_PAIRS; i++) {
            pair *pr = &p->pairs[i];
            if (fds[2 + 2 * i].revents && pr->c >= 0)
                pump(p, pr, pr->c, pr->cbuf, &pr->clen, pr->s, command_passes);
            if (fds[3 + 2 * i].revents && pr->s >= 0)
                pump(p, pr, pr->s, pr->sbuf, &pr->slen, pr->c, reply_passes);
        }
    }
    for (int i = 0; i < PROXY_PAIRS; i++)
        if (p->pairs[i].c >= 0)
            pair_close(&p->pairs[i]);
    return NULL;
}

/* A proxy to tallyd on 127.0.0.1:upstream that drops the reply to the first
 * write of id `cut_id` and closes that client's connection. */
static proxy *proxy_start(uint16_t upstream, const char *cut_id)
{
    proxy *p = calloc(1, sizeof(*p));
    cr_assert_not_null(p);
    p->upstream = upstream;
    p->cut_id = cut_id;
    p->cut_pending = true;
    for (int i = 0; i < PROXY_PAIRS; i++)
        p->pairs[i].c = p->pairs[i].s = -1;
    p->lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    cr_assert_eq(bind(p->lfd, (struct sockaddr *)&a, sizeof(a)), 0);
    cr_assert_eq(listen(p->lfd, 16), 0);
    cr_assert_eq(getsockname(p->lfd, (struct sockaddr *)&a, &len), 0);
    p->port = ntohs(a.sin_port);
    cr_assert_eq(pipe(p->wake), 0);
    cr_assert_eq(pthread_create(&p->thread, NULL, proxy_run, p), 0);
    return p;
}

/* Ends the proxy's thread; its counters are then final (free p after). */
static void proxy_stop(proxy *p)
{
    cr_assert_eq(write(p->wake[1], "x", 1), 1);
    pthread_join(p->thread, NULL);
    close(p->lfd);
    close(p->wake[0]);
    close(p->wake[1]);
}

/* ---- what the tests check --------------------------------------------------- */

static const char *const SHARDS[] = {"--shards", "1", NULL};

/* The full flow, with an auth token, directly against tallyd: exit 0, and
 * the balance and history it printed are the server's. */
static void flow_prints_the_servers_state(const example *ex)
{
    require(ex);
    td t;
    td_init(&t, "examples");
    td_write_auth(&t, "examples-token *\n");
    td_start(&t, SHARDS);
    char *out;
    int st = run(ex, &t, t.port, (const char *const[]){"--token", "examples-token", NULL}, &out);
    cr_assert_eq(st, 0, "the %s example exited %d:\n%s", ex->name, st, out);

    unsigned long long m, a;
    long long avail, held, pending;
    int count;
    const char *s = line(out, "merchant=");
    cr_assert(s && sscanf(s, "%llu account=%llu", &m, &a) == 2, "no merchant line:\n%s", out);
    s = line(out, "final balance: ");
    cr_assert(s && sscanf(s, "available=%lld held=%lld pending=%lld", &avail, &held, &pending) == 3,
              "no final balance:\n%s", out);
    s = line(out, "history: ");
    cr_assert(s && sscanf(s, "%d entries", &count) == 1, "no history count:\n%s", out);
    s = line(out, "insufficient: ");
    cr_assert(s && strncmp(s, "INSUFFICIENT ", 13) == 0,
              "the refused REDEEM's message is shown:\n%s", out);

    redisContext *c = td_connect(&t);
    freeReplyObject(td_cmd(c, "AUTH examples-token"));
    redisReply *b = td_cmd(c, "BALANCE %llu %llu", m, a);
    cr_assert_eq(td_int_field(b, "available"), avail, "printed available vs BALANCE:\n%s", out);
    cr_assert_eq(td_int_field(b, "held"), held, "printed held vs BALANCE:\n%s", out);
    cr_assert_eq(td_int_field(b, "pending"), pending, "printed pending vs BALANCE:\n%s", out);
    cr_assert_gt(avail, 0);

    /* The flow wrote three earns, a hold, its capture and a refund, and
     * the history it paged through is all of them. */
    redisReply *h = td_cmd(c, "HISTORY %llu %llu LIMIT 1000", m, a);
    cr_assert_eq(h->type, REDIS_REPLY_ARRAY);
    cr_assert_eq(h->elements, (size_t)count, "printed history count vs HISTORY:\n%s", out);
    const char *kinds = "reverse capture hold earn earn earn";
    char got[256] = "";
    for (size_t i = 0; i < h->elements; i++) {
        const redisReply *k = td_field(h->element[i], "kind");
        cr_assert_not_null(k);
        snprintf(got + strlen(got), sizeof(got) - strlen(got), "%s%s", i ? " " : "", k->str);
    }
    cr_assert_str_eq(got, kinds, "the entries the flow wrote, newest first");
    freeReplyObject(h);
    freeReplyObject(b);
    redisFree(c);
    free(out);
    td_stop(&t);
    td_cleanup(&t);
}

/* The example printed "reply: field=value ..." with exactly the fields and
 * values of entry e (values without spaces: no memo). */
static void assert_printed_entry(const char *out, const redisReply *e)
{
    const char *s = line(out, "reply: ");
    cr_assert_not_null(s, "no reply line:\n%s", out);
    char printed[1024];
    snprintf(printed, sizeof(printed), "%.*s", (int)strcspn(s, "\n"), s);
    char expect[1024] = "";
    for (size_t i = 0; i + 1 < e->elements; i += 2) {
        const redisReply *v = e->element[i + 1];
        size_t n = strlen(expect);
        if (v->type == REDIS_REPLY_INTEGER)
            snprintf(expect + n, sizeof(expect) - n, "%s%s=%lld", n ? " " : "", e->element[i]->str,
                     v->integer);
        else
            snprintf(expect + n, sizeof(expect) - n, "%s%s=%s", n ? " " : "", e->element[i]->str,
                     v->type == REDIS_REPLY_STRING ? v->str : "");
    }
    cr_assert_str_eq(printed, expect, "the client's final reply is the entry (ENTRY)");
}

/* One EARN through the proxy that loses its first reply: the example
 * retries with the same id; one entry exists, and the example's reply is
 * that entry. */
static void retry_after_a_lost_reply_writes_once(const example *ex)
{
    require(ex);
    td t;
    td_init(&t, "examples");
    td_start(&t, SHARDS);
    proxy *p = proxy_start(t.port, "till-9-retry");
    char *out;
    int st = run(ex, &t, p->port,
                 (const char *const[]){"--merchant", "4242", "--account", "77", "--earn-once",
                                       "till-9-retry", "--points", "275", NULL},
                 &out);
    proxy_stop(p);
    cr_assert_str_empty(p->error, "proxy: %s\n%s", p->error, out);
    cr_assert_eq(p->cuts, 1, "the proxy dropped tallyd's reply to the EARN once:\n%s", out);
    cr_assert_geq(p->accepted, 2, "the example connected again:\n%s", out);
    cr_assert_eq(st, 0, "the %s example exited %d:\n%s", ex->name, st, out);
    cr_assert_not_null(strstr(out, "with the same id"), "it said it retried:\n%s", out);

    redisContext *c = td_connect(&t);
    redisReply *e = td_cmd(c, "ENTRY 4242 till-9-retry");
    cr_assert_eq(e->type, REDIS_REPLY_ARRAY, "ENTRY finds the write");
    cr_assert_eq(td_int_field(e, "points"), 275);
    redisReply *h = td_cmd(c, "HISTORY 4242 77");
    cr_assert_eq(h->type, REDIS_REPLY_ARRAY);
    cr_assert_eq(h->elements, 1, "one entry in the account's history, not %zu", h->elements);
    cr_assert_str_eq(td_field(h->element[0], "id")->str, "till-9-retry");
    redisReply *b = td_cmd(c, "BALANCE 4242 77");
    cr_assert_eq(td_int_field(b, "available"), 275, "the points were credited once");
    assert_printed_entry(out, e);
    freeReplyObject(b);
    freeReplyObject(h);
    freeReplyObject(e);
    redisFree(c);
    free(out);
    free(p);
    td_stop(&t);
    td_cleanup(&t);
}

/* ---- per client ------------------------------------------------------------- */

Test(examples, redis_py_flow_exits_0_and_prints_the_servers_balance_and_history)
{
    flow_prints_the_servers_state(&REDIS_PY);
}

Test(examples, redis_py_retries_a_write_whose_reply_was_lost_and_it_is_applied_once)
{
    retry_after_a_lost_reply_writes_once(&REDIS_PY);
}

Test(examples, ioredis_flow_exits_0_and_prints_the_servers_balance_and_history)
{
    flow_prints_the_servers_state(&IOREDIS);
}

Test(examples, ioredis_retries_a_write_whose_reply_was_lost_and_it_is_applied_once)
{
    retry_after_a_lost_reply_writes_once(&IOREDIS);
}

Test(examples, node_redis_flow_exits_0_and_prints_the_servers_balance_and_history)
{
    flow_prints_the_servers_state(&NODE_REDIS);
}

Test(examples, node_redis_retries_a_write_whose_reply_was_lost_and_it_is_applied_once)
{
    retry_after_a_lost_reply_writes_once(&NODE_REDIS);
}

Test(examples, hiredis_flow_exits_0_and_prints_the_servers_balance_and_history)
{
    flow_prints_the_servers_state(&HIREDIS);
}

Test(examples, hiredis_retries_a_write_whose_reply_was_lost_and_it_is_applied_once)
{
    retry_after_a_lost_reply_writes_once(&HIREDIS);
}
