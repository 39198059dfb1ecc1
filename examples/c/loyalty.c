/*
 * loyalty.c — the loyalty flow against tallyd with hiredis.
 *
 *   loyalty-hiredis [--host H] [--port N] [--token T]
 *   loyalty-hiredis --earn-once ID [--points N] [--merchant M] [--account A]
 *
 * Host, port and token default to $TALLY_HOST, $TALLY_PORT, $TALLY_TOKEN
 * (else 127.0.0.1, 7379, none).  Each run uses a fresh random merchant and
 * account unless told.  --earn-once sends one EARN (retried on a dropped
 * connection) and prints the reply.  Exits non-zero on anything unexpected.
 * Built by `make test` into build/examples/ (cc … -lhiredis).
 */
#include <getopt.h>
#include <hiredis/hiredis.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

static const char *token;

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("unexpected: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

/* Connects (or reconnects c) and authenticates when a token is given. */
static redisContext *connect_to(redisContext *c, const char *host, int port)
{
    struct timeval tv = {.tv_sec = 10};
    if (!c)
        c = redisConnectWithTimeout(host, port, tv);
    else if (redisReconnect(c) != REDIS_OK)
        return c;
    if (!c || c->err)
        return c;
    redisSetTimeout(c, tv);
    if (token) {
        redisReply *r = redisCommand(c, "AUTH %s", token);
        if (r && r->type == REDIS_REPLY_ERROR)
            die("AUTH: %s", r->str);
        freeReplyObject(r);
    }
    return c;
}

/*
 * Sends a command; after a dropped connection, reconnects and sends it again
 * as it was.  A write whose connection dropped may or may not have been
 * applied; tally remembers every write by its id, and the same id with the
 * same arguments replays the original reply without applying anything
 * twice.  Error replies are answers: they are returned, not retried.
 */
static redisReply *call(redisContext *c, const char *fmt, ...)
{
    for (int attempt = 1;; attempt++) {
        va_list ap;
        va_start(ap, fmt);
        redisReply *r = c->err ? NULL : redisvCommand(c, fmt, ap);
        va_end(ap);
        if (r)
            return r;
        if (attempt == 5)
            die("%.*s: %s", (int)strcspn(fmt, " "), fmt, c->errstr);
        printf("  connection lost during %.*s (%s); retrying with the same id\n",
               (int)strcspn(fmt, " "), fmt, c->errstr);
        fflush(stdout);
        usleep(100000u * (unsigned)attempt);
        connect_to(c, NULL, 0);
    }
}

/* An entry's or a balance's field by name: the reply is a flat
 * [field, value, ...] array in RESP2 (hiredis ≥ 1.0 reads a RESP3 map into
 * the same layout). */
static const redisReply *field(const redisReply *r, const char *name)
{
    for (size_t i = 0; i + 1 < r->elements; i += 2)
        if (r->element[i]->type == REDIS_REPLY_STRING && strcmp(r->element[i]->str, name) == 0)
            return r->element[i + 1];
    die("reply has no field %s", name);
    return NULL;
}

static long long num(const redisReply *r, const char *name)
{
    const redisReply *f = field(r, name);
    if (f->type != REDIS_REPLY_INTEGER)
        die("field %s is not an integer", name);
    return f->integer;
}

/* A write's reply: the entry, or exit on an error or anything else. */
static redisReply *entry(redisReply *r)
{
    if (r->type == REDIS_REPLY_ERROR)
        die("%s", r->str);
    int map = r->type == REDIS_REPLY_ARRAY;
#ifdef REDIS_REPLY_MAP
    map |= r->type == REDIS_REPLY_MAP;
#endif
    if (!map)
        die("reply of type %d is not an entry", r->type);
    return r;
}

static void show(const char *what, redisReply *e)
{
    printf("%-8s %-20s points %+6lld  available %5lld  held %4lld  seq %lld\n", what,
           field(e, "id")->str, num(e, "points"), num(e, "balance"), num(e, "held"),
           num(e, "seq"));
    freeReplyObject(e);
}

/* Pages through the account's entries, newest first, `limit` at a time;
 * returns how many there are and their points' sum in *total. */
static int history(redisContext *c, unsigned long long m, unsigned long long a, int limit,
                   long long *total)
{
    int count = 0;
    long long before = 0; /* 0: the newest page */
    *total = 0;
    for (int page = 1;; page++) {
        redisReply *r = before ? call(c, "HISTORY %llu %llu BEFORE %lld LIMIT %d", m, a, before, limit)
                               : call(c, "HISTORY %llu %llu LIMIT %d", m, a, limit);
        if (r->type != REDIS_REPLY_ARRAY)
            die("HISTORY: %s", r->type == REDIS_REPLY_ERROR ? r->str : "not an array");
        printf("history page %d: %s", page, r->elements ? "" : "(empty: the end)");
        for (size_t i = 0; i < r->elements; i++) {
            const redisReply *e = r->element[i];
            before = num(e, "seq");
            *total += num(e, "points");
            printf("%sseq %lld %s %+lld", i ? ", " : "", before, field(e, "kind")->str,
                   num(e, "points"));
        }
        printf("\n");
        count += (int)r->elements;
        int last = r->elements < (size_t)limit;
        freeReplyObject(r);
        if (last)
            return count;
    }
}

static void flow(redisContext *c, unsigned long long m, unsigned long long a)
{
    long long year = (long long)time(NULL) + 365 * 86400;

    /* Three purchases earn points at the till; they expire in a year. */
    const int bought[] = {500, 120, 80};
    for (int n = 1; n <= 3; n++) {
        char memo[32];
        snprintf(memo, sizeof(memo), "till 3, order %d", n);
        show("earn", entry(call(c, "EARN %llu %llu %d order-%d EXPIRES %lld MEMO %s", m, a,
                                bought[n - 1], n, year, memo)));
    }

    /* Checkout: hold 300 points for the basket, capture the 250 it came to
     * (the other 50 go back to the member). */
    show("hold", entry(call(c, "HOLD %llu %llu 300 basket-7 TIMEOUT 300 MEMO %s", m, a, "basket 7")));
    show("capture", entry(call(c, "CAPTURE %llu basket-7 basket-7-paid POINTS 250", m)));

    /* An item worth 100 points comes back: refund them to the original lots. */
    show("refund", entry(call(c, "REVERSE %llu basket-7-paid basket-7-return-1 POINTS 100", m)));

    /* A redemption larger than the balance is refused; the flow goes on. */
    redisReply *r = call(c, "REDEEM %llu %llu 1000000 gift-card-1", m, a);
    if (r->type != REDIS_REPLY_ERROR || strncmp(r->str, "INSUFFICIENT", 12) != 0)
        die("a REDEEM larger than the balance was answered %s",
            r->type == REDIS_REPLY_ERROR ? r->str : "with an entry");
    printf("insufficient: %s\n", r->str);
    freeReplyObject(r);

    redisReply *b = entry(call(c, "BALANCE %llu %llu", m, a));
    long long total;
    int count = history(c, m, a, 2, &total);
    printf("history: %d entries, points add up to %lld\n", count, total);
    if (total != num(b, "available"))
        die("history adds up to %lld, available is %lld", total, num(b, "available"));
    printf("final balance: available=%lld held=%lld pending=%lld\n", num(b, "available"),
           num(b, "held"), num(b, "pending"));
    freeReplyObject(b);
}

/* Random below 2^48, like the other examples (JavaScript numbers). */
static unsigned long long random_id(void)
{
    unsigned long long v = 0;
    if (getrandom(&v, sizeof(v), 0) != sizeof(v))
        die("getrandom failed");
    return 1 + (v >> 16);
}

int main(int argc, char **argv)
{
    const char *host = getenv("TALLY_HOST") ? getenv("TALLY_HOST") : "127.0.0.1";
    int port = getenv("TALLY_PORT") ? atoi(getenv("TALLY_PORT")) : 7379;
    unsigned long long m = random_id(), a = random_id();
    const char *earn_once = NULL;
    long long points = 250;
    token = getenv("TALLY_TOKEN");

    static const struct option opts[] = {
        {"host", required_argument, 0, 'h'},     {"port", required_argument, 0, 'p'},
        {"token", required_argument, 0, 't'},    {"merchant", required_argument, 0, 'm'},
        {"account", required_argument, 0, 'a'},  {"earn-once", required_argument, 0, 'e'},
        {"points", required_argument, 0, 'n'},   {0, 0, 0, 0},
    };
    for (int o; (o = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
        switch (o) {
        case 'h': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 't': token = optarg; break;
        case 'm': m = strtoull(optarg, NULL, 10); break;
        case 'a': a = strtoull(optarg, NULL, 10); break;
        case 'e': earn_once = optarg; break;
        case 'n': points = strtoll(optarg, NULL, 10); break;
        default: return 2;
        }
    }

    redisContext *c = connect_to(NULL, host, port);
    if (!c || c->err)
        die("connect to %s:%d: %s", host, port, c ? c->errstr : "out of memory");
    printf("merchant=%llu account=%llu\n", m, a);
    if (earn_once) {
        redisReply *e = entry(call(c, "EARN %llu %llu %lld %s", m, a, points, earn_once));
        printf("reply:");
        for (size_t i = 0; i + 1 < e->elements; i += 2) {
            const redisReply *v = e->element[i + 1];
            if (v->type == REDIS_REPLY_INTEGER)
                printf(" %s=%lld", e->element[i]->str, v->integer);
            else
                printf(" %s=%s", e->element[i]->str, v->type == REDIS_REPLY_STRING ? v->str : "");
        }
        printf("\n");
        freeReplyObject(e);
    } else {
        flow(c, m, a);
    }
    redisFree(c);
    return 0;
}
