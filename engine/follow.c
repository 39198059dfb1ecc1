/*
 * follow.c — `tally follow` (follow.h): FOLLOW in a loop over hiredis
 * (the only module that includes hiredis.h), each batch printed as JSON
 * lines, flushed, then its cursor saved.
 */
#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "export.h"
#include "follow.h"
#include "tally.h"

/* Each FOLLOW waits this long for new entries before asking again (the
 * cursor then moves on even for a quiet merchant, and is saved). */
#define FOLLOW_BLOCK_MS 5000
/* A reply later than this (beyond BLOCK) means the connection is dead. */
#define FOLLOW_REPLY_MS 30000
#define FOLLOW_RETRY_MS_MAX 5000

const char follow_usage[] =
    "       tally follow HOST:PORT [--merchant M] [--cursor FILE] [--auth-file FILE]\n"
    "                    [--count N] [--once]   the feed as JSON lines (TALLY_AUTH: token)\n";

typedef struct follow_args {
    char host[256];
    uint16_t port;
    uint64_t merchant;       /* 0: FOLLOW * */
    const char *cursor_file; /* NULL: from the start, nothing kept */
    char token[256];         /* "" none */
    uint32_t count;
    bool once;
} follow_args;

typedef struct follow_run {
    const follow_args *a;
    FILE *out, *err;
    redisContext *c;
    char cursor[TALLY_CURSOR_BYTES_MAX + 1];
    uint32_t retry_ms;
} follow_run;

/* ---- arguments ---------------------------------------------------------- */

static int follow_usage_error(FILE *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int follow_usage_error(FILE *err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("tally: follow: ", err);
    vfprintf(err, fmt, ap);
    va_end(ap);
    fputs(" (tally --help shows the usage)\n", err);
    return 2;
}

/* HOST:PORT, or [IPV6]:PORT. */
static int follow_address(follow_args *a, const char *s, FILE *err)
{
    const char *colon = strrchr(s, ':');
    uint64_t port = 0;
    if (!colon || config_parse_u64(colon + 1, strlen(colon + 1), &port) != 0 || port < 1 ||
        port > 65535)
        return follow_usage_error(err, "'%s' is not HOST:PORT", s);
    size_t n = (size_t)(colon - s);
    if (n >= 2 && s[0] == '[' && s[n - 1] == ']') {
        s++;
        n -= 2;
    }
    if (n == 0 || n >= sizeof(a->host))
        return follow_usage_error(err, "'%s' is not HOST:PORT", s);
    memcpy(a->host, s, n);
    a->host[n] = 0;
    a->port = (uint16_t)port;
    return 0;
}

/* The token: the first word of the first line that is not a comment. */
static int follow_token_file(follow_args *a, const char *path, FILE *err)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(err, "tally: follow: cannot read %s: %s\n", path, strerror(errno));
        return 1;
    }
    char line[1024];
    a->token[0] = 0;
    while (!a->token[0] && fgets(line, sizeof(line), f)) {
        size_t i = strspn(line, " \t"), n = strcspn(line + i, " \t\r\n#");
        if (n > 0 && n < sizeof(a->token)) {
            memcpy(a->token, line + i, n);
            a->token[n] = 0;
        }
    }
    fclose(f);
    if (!a->token[0]) {
        fprintf(err, "tally: follow: %s holds no token\n", path);
        return 1;
    }
    return 0;
}

static int follow_parse(follow_args *a, int argc, char **argv, FILE *err)
{
    *a = (follow_args){.count = LIMIT_FOLLOW_MAX};
    const char *env = getenv("TALLY_AUTH");
    if (env && strlen(env) < sizeof(a->token))
        snprintf(a->token, sizeof(a->token), "%s", env);
    bool addr = false;
    for (int i = 0; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        uint64_t n = 0;
        int rc = 0;
        if (strcmp(o, "--once") == 0) {
            a->once = true;
            continue;
        }
        if (o[0] != '-') {
            if (addr)
                return follow_usage_error(err, "unexpected argument '%s'", o);
            addr = true;
            rc = follow_address(a, o, err);
            if (rc != 0)
                return rc;
            continue;
        }
        bool known = strcmp(o, "--merchant") == 0 || strcmp(o, "--cursor") == 0 ||
                     strcmp(o, "--auth-file") == 0 || strcmp(o, "--count") == 0;
        if (!known)
            return follow_usage_error(err, "unknown option %s", o);
        if (!v)
            return follow_usage_error(err, "%s needs a value", o);
        i++;
        if (strcmp(o, "--merchant") == 0) {
            if (config_parse_u64(v, strlen(v), &a->merchant) != 0 || a->merchant == 0)
                return follow_usage_error(err, "--merchant must be 1..18446744073709551615, "
                                               "got '%s'", v);
        } else if (strcmp(o, "--count") == 0) {
            if (config_parse_u64(v, strlen(v), &n) != 0 || n < 1 || n > LIMIT_FOLLOW_MAX)
                return follow_usage_error(err, "--count must be 1..%d, got '%s'",
                                          LIMIT_FOLLOW_MAX, v);
            a->count = (uint32_t)n;
        } else if (strcmp(o, "--cursor") == 0) {
            a->cursor_file = v;
        } else if ((rc = follow_token_file(a, v, err)) != 0) {
            return rc;
        }
    }
    if (!addr)
        return follow_usage_error(err, "follow needs the server's HOST:PORT");
    return 0;
}

/* ---- the cursor file ----------------------------------------------------- */

/* The saved cursor, or "0" when there is no file yet. */
static int follow_load(follow_run *r)
{
    snprintf(r->cursor, sizeof(r->cursor), "0");
    if (!r->a->cursor_file)
        return 0;
    FILE *f = fopen(r->a->cursor_file, "r");
    if (!f && errno == ENOENT)
        return 0;
    if (!f) {
        fprintf(r->err, "tally: follow: cannot read %s: %s\n", r->a->cursor_file,
                strerror(errno));
        return 1;
    }
    size_t n = fread(r->cursor, 1, sizeof(r->cursor) - 1, f);
    fclose(f);
    r->cursor[n] = 0;
    r->cursor[strcspn(r->cursor, " \t\r\n")] = 0;
    if (!r->cursor[0]) {
        fprintf(r->err, "tally: follow: %s holds no cursor\n", r->a->cursor_file);
        return 1;
    }
    return 0;
}

static int follow_write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -errno;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Replaces the cursor file: a crash leaves the old cursor or the new
 * one, never a mix, and a saved one survives a power cut. */
static int follow_save(follow_run *r)
{
    const char *path = r->a->cursor_file;
    if (!path)
        return 0;
    char tmp[4200], dir[4200], text[sizeof(r->cursor) + 1];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash)
        *(slash == dir ? slash + 1 : slash) = 0;
    else
        snprintf(dir, sizeof(dir), ".");
    int n = snprintf(text, sizeof(text), "%s\n", r->cursor);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int rc = fd < 0 ? -errno : follow_write_all(fd, text, (size_t)n);
    if (rc == 0 && fsync(fd) != 0)
        rc = -errno;
    if (fd >= 0)
        close(fd);
    if (rc == 0 && rename(tmp, path) != 0)
        rc = -errno;
    int dfd = rc == 0 ? open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    if (rc == 0 && (dfd < 0 || fsync(dfd) != 0))
        rc = -errno;
    if (dfd >= 0)
        close(dfd);
    if (rc < 0)
        fprintf(r->err, "tally: follow: saving the cursor in %s: %s\n", path, strerror(-rc));
    return rc;
}

/* ---- one entry of a reply ---------------------------------------------------- */

static uint64_t follow_u64(const redisReply *v)
{
    if (v->type == REDIS_REPLY_INTEGER)
        return (uint64_t)v->integer;
    uint64_t n = 0;
    if (v->type == REDIS_REPLY_STRING)
        config_parse_u64(v->str, v->len, &n);
    return n;
}

static void follow_bytes(const redisReply *v, char *dst, uint8_t *len, size_t cap)
{
    size_t n = v->type == REDIS_REPLY_STRING ? v->len : 0;
    if (n > cap)
        n = cap;
    memcpy(dst, v->str, n);
    *len = (uint8_t)n;
}

static int follow_kind(const redisReply *v)
{
    for (int k = 1; k < TALLY_KIND_COUNT && v->type == REDIS_REPLY_STRING; k++)
        if (strcmp(v->str, tally_kind_name(k)) == 0)
            return k;
    return TALLY_KIND_NONE;
}

/* An entry's field/value array (as ENTRY answers it in RESP2). */
static void follow_entry(const redisReply *r, tally_entry *e)
{
    memset(e, 0, sizeof(*e));
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i + 1 < r->elements; i += 2) {
        const redisReply *k = r->element[i], *v = r->element[i + 1];
        const char *f = k->type == REDIS_REPLY_STRING ? k->str : "";
        if (strcmp(f, "id") == 0)
            follow_bytes(v, e->id, &e->id_len, sizeof(e->id));
        else if (strcmp(f, "kind") == 0)
            e->kind = (uint8_t)follow_kind(v);
        else if (strcmp(f, "merchant") == 0)
            e->merchant = follow_u64(v);
        else if (strcmp(f, "account") == 0)
            e->account = follow_u64(v);
        else if (strcmp(f, "points") == 0)
            e->points = (int64_t)follow_u64(v);
        else if (strcmp(f, "amount") == 0)
            e->amount = (int64_t)follow_u64(v);
        else if (strcmp(f, "balance") == 0)
            e->balance = (int64_t)follow_u64(v);
        else if (strcmp(f, "held") == 0)
            e->held = (int64_t)follow_u64(v);
        else if (strcmp(f, "pending") == 0)
            e->pending = (int64_t)follow_u64(v);
        else if (strcmp(f, "ts") == 0)
            e->ts_ms = follow_u64(v);
        else if (strcmp(f, "seq") == 0)
            e->seq = follow_u64(v);
        else if (strcmp(f, "ref") == 0)
            follow_bytes(v, e->ref, &e->ref_len, sizeof(e->ref));
        else if (strcmp(f, "expires") == 0)
            e->expires = follow_u64(v);
        else if (strcmp(f, "memo") == 0)
            follow_bytes(v, e->memo, &e->memo_len, sizeof(e->memo));
        else if (strcmp(f, "imported") == 0)
            e->imported = follow_u64(v) != 0;
    }
}

/* ---- the loop ------------------------------------------------------------------ */

static void follow_pause(follow_run *r)
{
    r->retry_ms = r->retry_ms ? r->retry_ms * 2 : 100;
    if (r->retry_ms > FOLLOW_RETRY_MS_MAX)
        r->retry_ms = FOLLOW_RETRY_MS_MAX;
    struct timespec ts = {.tv_sec = r->retry_ms / 1000,
                          .tv_nsec = (long)(r->retry_ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static void follow_drop(follow_run *r, const char *why)
{
    fprintf(r->err, "tally: follow: %s:%u: %s; reconnecting\n", r->a->host, r->a->port, why);
    redisFree(r->c);
    r->c = NULL;
}

/* Connected (and authenticated): 0; 1 a refused token; -1 try again. */
static int follow_connect(follow_run *r)
{
    struct timeval tv = {.tv_sec = 5};
    r->c = redisConnectWithTimeout(r->a->host, r->a->port, tv);
    if (!r->c || r->c->err) {
        if (r->c)
            follow_drop(r, r->c->errstr);
        return -1;
    }
    struct timeval reply = {.tv_sec = (FOLLOW_BLOCK_MS + FOLLOW_REPLY_MS) / 1000};
    redisSetTimeout(r->c, reply);
    if (!r->a->token[0])
        return 0;
    redisReply *rep = redisCommand(r->c, "AUTH %s", r->a->token);
    if (!rep) {
        follow_drop(r, r->c->errstr);
        return -1;
    }
    int rc = rep->type == REDIS_REPLY_ERROR ? 1 : 0;
    if (rc)
        fprintf(r->err, "tally: follow: AUTH: %s\n", rep->str);
    freeReplyObject(rep);
    return rc;
}

/* Errors a retry cannot mend: the token, the cursor, the arguments. */
static bool follow_fatal(const char *msg)
{
    static const char *const words[] = {"NOAUTH", "NOPERM", "WRONGPASS", "INVALID",
                                        "ERR cursor", "ERR invalid", "ERR the cursor",
                                        "ERR unknown command", "ERR value"};
    for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++)
        if (strncmp(msg, words[i], strlen(words[i])) == 0)
            return true;
    return false;
}

/* Prints a reply's entries, flushes, saves its cursor: 0; 1 an output
 * error; *empty: it had no entry. */
static int follow_batch(follow_run *r, const redisReply *rep, bool *empty, bool *moved)
{
    const redisReply *list = rep->element[1];
    char line[EXPORT_LINE_BYTES_MAX];
    for (size_t i = 0; i < list->elements; i++) {
        tally_entry e;
        follow_entry(list->element[i], &e);
        size_t n = export_json_entry(line, sizeof(line), &e);
        fwrite(line, 1, n, r->out);
    }
    if (fflush(r->out) != 0 || ferror(r->out)) {
        fprintf(r->err, "tally: follow: writing the output: %s\n", strerror(errno));
        return 1;
    }
    *empty = list->elements == 0;
    *moved = strcmp(r->cursor, rep->element[0]->str) != 0;
    if (rep->element[0]->len >= sizeof(r->cursor)) {
        fprintf(r->err, "tally: follow: the server answered a cursor too long to keep\n");
        return 1;
    }
    snprintf(r->cursor, sizeof(r->cursor), "%s", rep->element[0]->str);
    return *moved && follow_save(r) < 0 ? 1 : 0;
}

static redisReply *follow_ask(follow_run *r)
{
    char who[24];
    if (r->a->merchant)
        snprintf(who, sizeof(who), "%llu", (unsigned long long)r->a->merchant);
    else
        snprintf(who, sizeof(who), "*");
    if (r->a->once)
        return redisCommand(r->c, "FOLLOW %s AFTER %s COUNT %u", who, r->cursor, r->a->count);
    return redisCommand(r->c, "FOLLOW %s AFTER %s COUNT %u BLOCK %u", who, r->cursor,
                        r->a->count, FOLLOW_BLOCK_MS);
}

static int follow_loop(follow_run *r)
{
    for (;;) {
        if (!r->c) {
            int rc = follow_connect(r);
            if (rc > 0)
                return 1;
            if (rc < 0) {
                follow_pause(r);
                continue;
            }
        }
        redisReply *rep = follow_ask(r);
        if (!rep) {
            follow_drop(r, r->c->errstr);
            follow_pause(r);
            continue;
        }
        if (rep->type == REDIS_REPLY_ERROR) {
            fprintf(r->err, "tally: follow: FOLLOW: %s\n", rep->str);
            bool fatal = follow_fatal(rep->str);
            freeReplyObject(rep);
            if (fatal)
                return 1;
            follow_drop(r, "the server refused for now");
            follow_pause(r);
            continue;
        }
        bool ok = rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
                  rep->element[0]->type == REDIS_REPLY_STRING &&
                  rep->element[1]->type == REDIS_REPLY_ARRAY;
        bool empty = false, moved = false;
        int rc = ok ? follow_batch(r, rep, &empty, &moved) : 0;
        freeReplyObject(rep);
        if (!ok) {
            follow_drop(r, "not a FOLLOW reply");
            follow_pause(r);
            continue;
        }
        r->retry_ms = 0;
        if (rc != 0)
            return rc;
        if (r->a->once && empty && !moved)
            return 0;
    }
}

int follow_main(int argc, char **argv, FILE *out, FILE *err)
{
    follow_args a;
    int rc = follow_parse(&a, argc, argv, err);
    if (rc != 0)
        return rc;
    follow_run r = {.a = &a, .out = out, .err = err};
    /* A batch (at most LIMIT_FOLLOW_MAX lines of at most
     * EXPORT_LINE_BYTES_MAX) leaves in one write at its fflush: stdio's
     * default buffer would write a line in two pieces whenever it crossed
     * 4 KiB, and a reader of a growing file, or a kill -9 between the
     * pieces, would see half a line.  (Pages of the buffer a batch never
     * reaches are never touched.) */
    static char outbuf[LIMIT_FOLLOW_MAX * EXPORT_LINE_BYTES_MAX];
    setvbuf(out, outbuf, _IOFBF, sizeof(outbuf));
    rc = follow_load(&r);
    if (rc == 0)
        rc = follow_loop(&r);
    redisFree(r.c);
    return rc;
}
