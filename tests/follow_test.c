/*
 * follow_test.c — FOLLOW (SPEC §8) against a real tallyd: paging with
 * the cursor, engine-written and imported entries in the feed, refusals
 * not; a quiet merchant's cursor moving on with bounded work; BLOCK's
 * wake-up and timeout; only durable entries (a disk that fails under the
 * server); a thousand waiting followers while writes go on; FOLLOW *
 * across shards; a cursor before the retained log; bad input.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fault_util.h"
#include "tallyd_util.h"

static td srv;

static void down(void) { td_cleanup(&srv); }

static uint64_t ft_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- a FOLLOW reply ---------------------------------------------------------- */

typedef struct feed_reply {
    redisReply *r;    /* owned */
    char cursor[4096];
    size_t count;     /* entries */
} feed_reply;

static const redisReply *fr_entry(const feed_reply *f, size_t i)
{
    return f->r->element[1]->element[i];
}

static unsigned long long fr_seq(const feed_reply *f, size_t i)
{
    return (unsigned long long)td_int_field(fr_entry(f, i), "seq");
}

static const char *fr_str(const feed_reply *f, size_t i, const char *field)
{
    const redisReply *v = td_field(fr_entry(f, i), field);
    cr_assert(v && v->type == REDIS_REPLY_STRING, "entry field %s", field);
    return v->str;
}

/* Checks the shape [cursor, [entries...]] and takes it apart. */
static void fr_take(feed_reply *f, redisReply *r)
{
    cr_assert_not_null(r);
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY, "FOLLOW answered type %d: %s", r->type,
                 r->type == REDIS_REPLY_ERROR ? r->str : "");
    cr_assert_eq(r->elements, 2);
    cr_assert_eq(r->element[0]->type, REDIS_REPLY_STRING);
    cr_assert_eq(r->element[1]->type, REDIS_REPLY_ARRAY);
    f->r = r;
    snprintf(f->cursor, sizeof(f->cursor), "%s", r->element[0]->str);
    f->count = r->element[1]->elements;
}

static void fr_follow(feed_reply *f, redisContext *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    cr_assert_not_null(r, "no reply to '%s': %s", fmt, c->errstr);
    fr_take(f, r);
}

static void fr_free(feed_reply *f)
{
    freeReplyObject(f->r);
    f->r = NULL;
}

/* An error reply starting with `prefix`. */
static void expect_error(redisContext *c, const char *prefix, const char *cmd)
{
    char words[4200];
    snprintf(words, sizeof(words), "%s", cmd);
    const char *argv[16];
    int argc = 0;
    for (char *save = NULL, *w = strtok_r(words, " ", &save); w && argc < 16;
         w = strtok_r(NULL, " ", &save))
        argv[argc++] = w;
    redisReply *r = redisCommandArgv(c, argc, argv, NULL);
    cr_assert_not_null(r, "no reply to '%s'", cmd);
    cr_assert_eq(r->type, REDIS_REPLY_ERROR, "'%s' should fail with %s", cmd, prefix);
    cr_assert(strncmp(r->str, prefix, strlen(prefix)) == 0, "'%s': %s (wanted %s)", cmd, r->str,
              prefix);
    freeReplyObject(r);
}

/* A write that must succeed: its seq. */
static unsigned long long write_ok(redisContext *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    cr_assert_not_null(r);
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY, "'%s': %s", fmt,
                 r->type == REDIS_REPLY_ERROR ? r->str : "not an entry");
    unsigned long long seq = (unsigned long long)td_int_field(r, "seq");
    freeReplyObject(r);
    return seq;
}

/* Sends a command without waiting for its reply. */
static void send_only(redisContext *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cr_assert_eq(redisvAppendCommand(c, fmt, ap), REDIS_OK);
    va_end(ap);
    int done = 0;
    while (!done)
        cr_assert_eq(redisBufferWrite(c, &done), REDIS_OK, "send: %s", c->errstr);
}

/* A line "key:value" of INFO's text, as a number. */
static long long info_field(redisContext *c, const char *section, const char *key)
{
    redisReply *r = td_cmd(c, "INFO %s", section);
    cr_assert_eq(r->type, REDIS_REPLY_STRING);
    char pat[96];
    snprintf(pat, sizeof(pat), "%s%s", key, strcmp(section, "shards") == 0 ? "=" : ":");
    const char *p = strstr(r->str, pat);
    cr_assert_not_null(p, "INFO %s has no %s", section, key);
    long long v = atoll(p + strlen(pat));
    freeReplyObject(r);
    return v;
}

/* ---- paging, kinds of entries ------------------------------------------------ */

Test(follow, pages_a_merchants_entries_oldest_first_and_skips_refusals_and_others,
     .fini = down, .timeout = 60)
{
    td_init(&srv, "follow");
    const char *const args[] = {"--shards", "2", NULL};
    td_start(&srv, args);
    redisContext *c = td_connect(&srv);
    unsigned long long seq[5];
    for (int i = 0; i < 5; i++) {
        seq[i] = write_ok(c, "EARN 7 %d 10 e%d", 1 + i % 2, i);
        write_ok(c, "EARN 8 1 10 other%d", i); /* another merchant, maybe the same shard */
        if (i == 3) {
            redisReply *r = td_cmd(c, "REDEEM 7 9 500 refused-1");
            cr_assert_eq(r->type, REDIS_REPLY_ERROR); /* remembered, not an entry */
            freeReplyObject(r);
        }
    }
    feed_reply f;
    fr_follow(&f, c, "FOLLOW 7 COUNT 2");
    cr_assert_eq(f.count, 2);
    cr_assert_str_eq(fr_str(&f, 0, "id"), "e0");
    cr_assert_str_eq(fr_str(&f, 1, "id"), "e1");
    cr_assert_eq(fr_seq(&f, 1), seq[1]);
    cr_assert_eq(strtoull(f.cursor, NULL, 10), seq[1], "the cursor is the last entry's seq");
    char cur[4096];
    snprintf(cur, sizeof(cur), "%s", f.cursor);
    fr_free(&f);
    fr_follow(&f, c, "FOLLOW 7 AFTER %s COUNT 2", cur);
    cr_assert_eq(f.count, 2);
    cr_assert_str_eq(fr_str(&f, 0, "id"), "e2");
    cr_assert_str_eq(fr_str(&f, 1, "id"), "e3");
    snprintf(cur, sizeof(cur), "%s", f.cursor);
    fr_free(&f);
    /* The default COUNT takes the rest; the refusal is not an entry. */
    fr_follow(&f, c, "FOLLOW 0007 AFTER %s", cur);
    cr_assert_eq(f.count, 1);
    cr_assert_str_eq(fr_str(&f, 0, "id"), "e4");
    cr_assert_eq(td_int_field(fr_entry(&f, 0), "merchant"), 7);
    cr_assert_eq(td_int_field(fr_entry(&f, 0), "imported"), 0);
    unsigned long long end = strtoull(f.cursor, NULL, 10);
    cr_assert_geq(end, seq[4], "the cursor moves past what was looked at");
    fr_free(&f);
    /* Nothing after the end: the cursor stays. */
    fr_follow(&f, c, "FOLLOW 7 AFTER %llu", end);
    cr_assert_eq(f.count, 0);
    cr_assert_geq(strtoull(f.cursor, NULL, 10), end);
    fr_free(&f);

    /* An engine-written entry: the hold's timeout voids it. */
    write_ok(c, "HOLD 7 1 5 h1 TIMEOUT 1");
    fr_follow(&f, c, "FOLLOW 7 AFTER %llu BLOCK 10000", end);
    cr_assert_eq(f.count, 1);
    cr_assert_str_eq(fr_str(&f, 0, "id"), "h1");
    snprintf(cur, sizeof(cur), "%s", f.cursor);
    fr_free(&f);
    fr_follow(&f, c, "FOLLOW 7 AFTER %s BLOCK 10000", cur);
    cr_assert_eq(f.count, 1, "the engine's void of the timed-out hold arrives");
    cr_assert_str_eq(fr_str(&f, 0, "id"), "~void:h1");
    cr_assert_str_eq(fr_str(&f, 0, "kind"), "void");
    fr_free(&f);
    redisFree(c);
    td_stop(&srv);
}

Test(follow, imported_entries_are_in_the_feed_marked_imported, .fini = down, .timeout = 60)
{
    td_init(&srv, "follow-imp");
    char file[128], cmd[512], out[2048];
    snprintf(file, sizeof(file), "%s.jsonl", srv.dir);
    FILE *fp = fopen(file, "w");
    cr_assert_not_null(fp);
    fprintf(fp, "{\"id\":\"old-1\",\"kind\":\"earn\",\"merchant\":\"9\",\"account\":\"1\","
                "\"points\":40,\"ts\":1600000000000}\n"
                "{\"id\":\"old-2\",\"kind\":\"redeem\",\"merchant\":\"9\",\"account\":\"1\","
                "\"points\":-15,\"ts\":1600000001000}\n");
    fclose(fp);
    snprintf(cmd, sizeof(cmd), "'%s/tally' import '%s' '%s' --shards 2", getenv("TALLY_BUILD"),
             srv.dir, file);
    int rc = td_run(cmd, out, sizeof(out));
    unlink(file);
    cr_assert_eq(rc, 0, "import: %s", out);
    td_start(&srv, NULL);
    redisContext *c = td_connect(&srv);
    write_ok(c, "EARN 9 1 5 live-1");
    feed_reply f;
    fr_follow(&f, c, "FOLLOW 9");
    cr_assert_eq(f.count, 3);
    cr_assert_str_eq(fr_str(&f, 0, "id"), "old-1");
    cr_assert_eq(td_int_field(fr_entry(&f, 0), "imported"), 1);
    cr_assert_str_eq(fr_str(&f, 1, "id"), "old-2");
    cr_assert_eq(td_int_field(fr_entry(&f, 1), "imported"), 1);
    cr_assert_str_eq(fr_str(&f, 2, "id"), "live-1");
    cr_assert_eq(td_int_field(fr_entry(&f, 2), "imported"), 0);
    fr_free(&f);
    redisFree(c);
    td_stop(&srv);
}

/* ---- bounded work --------------------------------------------------------------- */

Test(follow, a_quiet_merchants_cursor_moves_past_a_busy_shard_with_bounded_work,
     .fini = down, .timeout = 120)
{
    td_init(&srv, "follow-quiet");
    const char *const args[] = {"--shards", "1", NULL};
    td_start(&srv, args);
    redisContext *c = td_connect(&srv);
    unsigned long long quiet = write_ok(c, "EARN 5 1 10 q1");
    /* A busy merchant on the same (only) shard: more records than one
     * FOLLOW may look at. */
    enum { BUSY = 40000 };
    for (int i = 0; i < BUSY; i++)
        cr_assert_eq(redisAppendCommand(c, "EARN 6 %d 1 b%d", 1 + i % 100, i), REDIS_OK);
    unsigned long long last = 0;
    for (int i = 0; i < BUSY; i++) {
        redisReply *r;
        cr_assert_eq(redisGetReply(c, (void **)&r), REDIS_OK);
        cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
        last = (unsigned long long)td_int_field(r, "seq");
        freeReplyObject(r);
    }
    unsigned long long cur = quiet;
    int calls = 0;
    while (cur < last) {
        feed_reply f;
        fr_follow(&f, c, "FOLLOW 5 AFTER %llu", cur);
        cr_assert_eq(f.count, 0, "the quiet merchant has nothing new");
        unsigned long long next = strtoull(f.cursor, NULL, 10);
        cr_assert_gt(next, cur, "the cursor moves on although nothing matched");
        cr_assert_leq(next - cur, 16384, "one call looks at a bounded number of records");
        cur = next;
        calls++;
        fr_free(&f);
        cr_assert_lt(calls, 10);
    }
    cr_assert_eq(cur, last);
    cr_assert_geq(calls, 2, "the busy stretch took more than one call: the budget held");
    /* And the next entry of the quiet merchant arrives from there. */
    unsigned long long q2 = write_ok(c, "EARN 5 1 10 q2");
    feed_reply f;
    fr_follow(&f, c, "FOLLOW 5 AFTER %llu", cur);
    cr_assert_eq(f.count, 1);
    cr_assert_eq(fr_seq(&f, 0), q2);
    fr_free(&f);
    redisFree(c);
    td_stop(&srv);
}

/* ---- BLOCK ------------------------------------------------------------------------ */

Test(follow, block_wakes_on_its_merchants_entry_and_times_out_with_the_cursor, .fini = down,
     .timeout = 60)
{
    td_init(&srv, "follow-block");
    const char *const args[] = {"--shards", "1", NULL};
    td_start(&srv, args);
    redisContext *w = td_connect(&srv), *f1 = td_connect(&srv);
    unsigned long long base = write_ok(w, "EARN 11 1 10 x0");

    /* Timeout: the reply waits the whole BLOCK, then [cursor, []]. */
    uint64_t t0 = ft_ms();
    feed_reply f;
    fr_follow(&f, f1, "FOLLOW 11 AFTER %llu BLOCK 300", base);
    cr_assert_geq(ft_ms() - t0, 300, "BLOCK 300 answered early");
    cr_assert_eq(f.count, 0);
    cr_assert_eq(strtoull(f.cursor, NULL, 10), base);
    fr_free(&f);

    /* Another merchant's entries do not answer it. */
    t0 = ft_ms();
    send_only(f1, "FOLLOW 11 AFTER %llu BLOCK 600", base);
    unsigned long long other = 0;
    for (int i = 0; i < 5; i++)
        other = write_ok(w, "EARN 12 1 1 y%d", i);
    redisReply *r;
    cr_assert_eq(redisGetReply(f1, (void **)&r), REDIS_OK);
    fr_take(&f, r);
    cr_assert_geq(ft_ms() - t0, 600, "woken by another merchant's entries");
    cr_assert_eq(f.count, 0);
    cr_assert_eq(strtoull(f.cursor, NULL, 10), other,
                 "the timeout's cursor is past what the feed looked at for it");
    fr_free(&f);

    /* Wake-up: BLOCK 0 waits for good, until its merchant's entry. */
    send_only(f1, "FOLLOW 11 AFTER %llu BLOCK 0", other);
    usleep(100000);
    t0 = ft_ms();
    unsigned long long seq = write_ok(w, "EARN 11 1 10 x1");
    cr_assert_eq(redisGetReply(f1, (void **)&r), REDIS_OK);
    uint64_t waited = ft_ms() - t0;
    fr_take(&f, r);
    cr_assert_eq(f.count, 1);
    cr_assert_eq(fr_seq(&f, 0), seq);
    cr_assert_str_eq(fr_str(&f, 0, "id"), "x1");
    fr_free(&f);
    cr_log_info("follow: write to delivery through BLOCK 0: %llu ms", (unsigned long long)waited);

    /* A client that leaves while it waits costs nothing after. */
    redisContext *f2 = td_connect(&srv);
    send_only(f2, "FOLLOW 11 AFTER %llu BLOCK 0", seq);
    usleep(100000);
    redisFree(f2);
    usleep(100000);
    cr_assert_eq(info_field(w, "clients", "connected_clients"), 2);
    cr_assert_eq(info_field(w, "clients", "requests_in_flight"), 0);
    redisFree(w);
    redisFree(f1);
    td_stop(&srv);
}

/* ---- only durable ------------------------------------------------------------------ */

Test(follow, delivers_only_durable_entries_when_the_disk_fails, .fini = fu_cleanup,
     .timeout = 120)
{
    fu_require_root();
    static fu_fs fs;
    static td t;
    fu_fs_ext4(&fs, "follow", 256, 0);
    char dir[128], log[128];
    snprintf(dir, sizeof(dir), "%s/data", fs.mnt);
    snprintf(log, sizeof(log), "%s/tallyd.log", fs.base);
    fu_td_at(&t, dir, log);
    const char *const args[] = {"--shards", "1", NULL};
    td_start(&t, args);
    redisContext *w = td_connect(&t), *fl = td_connect(&t);
    unsigned long long acked = 0;
    for (int i = 0; i < 20; i++)
        acked = write_ok(w, "EARN 21 1 10 d%d", i);
    /* A follower waits at the durable end while the disk goes. */
    send_only(fl, "FOLLOW 21 AFTER %llu BLOCK 2000", acked);
    fu_fs_shutdown(&fs);
    int failed = 0;
    for (int i = 0; i < 20; i++) {
        redisReply *r = td_cmd(w, "EARN 21 1 10 lost%d", i);
        if (r->type == REDIS_REPLY_ERROR)
            failed++;
        else
            acked = (unsigned long long)td_int_field(r, "seq");
        freeReplyObject(r);
    }
    cr_assert_gt(failed, 0, "the writes after the shutdown failed");
    redisReply *r;
    cr_assert_eq(redisGetReply(fl, (void **)&r), REDIS_OK);
    feed_reply f;
    fr_take(&f, r);
    for (size_t i = 0; i < f.count; i++)
        cr_assert_leq(fr_seq(&f, i), acked, "a FOLLOW delivered an entry never acknowledged");
    fr_free(&f);
    /* Everything in the feed is exactly what was acknowledged. */
    fr_follow(&f, w, "FOLLOW 21 COUNT 1000");
    size_t n = f.count;
    cr_assert_geq(n, 20);
    for (size_t i = 0; i < n; i++) {
        cr_assert_leq(fr_seq(&f, i), acked);
        const char *id = fr_str(&f, i, "id");
        redisReply *e = td_cmd(w, "ENTRY 21 %s", id);
        cr_assert_eq(e->type, REDIS_REPLY_ARRAY, "the feed's %s is not an entry", id);
        freeReplyObject(e);
    }
    fr_free(&f);
    redisFree(w);
    redisFree(fl);
    td_kill9(&t);
}

/* ---- many followers ---------------------------------------------------------------- */

Test(follow, a_thousand_waiting_followers_do_not_hold_back_writes, .fini = down,
     .timeout = 300)
{
    enum { FOLLOWERS = 1000, ROUNDS = 3, BASE = 1000 };
    struct rlimit rl = {.rlim_cur = 8192, .rlim_max = 8192};
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
        td_cannot_run("cannot raise the open-files limit to 8192: %s", strerror(errno));
    td_init(&srv, "follow-many");
    const char *const args[] = {"--shards", "2", NULL};
    td_start(&srv, args);
    redisContext *w = td_connect(&srv);
    redisContext **fl = calloc(FOLLOWERS, sizeof(*fl));
    for (int i = 0; i < FOLLOWERS; i++) {
        fl[i] = td_connect(&srv);
        send_only(fl[i], "FOLLOW %d AFTER 0 COUNT 1000 BLOCK 0", BASE + i);
    }
    /* Let them all be parked before the writes begin. */
    for (int k = 0; k < 100 && info_field(w, "clients", "requests_in_flight") < FOLLOWERS; k++)
        usleep(50000);
    cr_assert_eq(info_field(w, "clients", "requests_in_flight"), FOLLOWERS);
    long long batches0 = info_field(w, "commit", "batches");
    uint64_t t0 = ft_ms();
    for (int k = 0; k < ROUNDS; k++)
        for (int i = 0; i < FOLLOWERS; i++)
            cr_assert_eq(redisAppendCommand(w, "EARN %d 1 1 w%d-%d", BASE + i, k, i), REDIS_OK);
    td_replies_ok(w, ROUNDS * FOLLOWERS);
    uint64_t write_ms = ft_ms() - t0;
    /* Every follower wakes with its own merchant's entries only, and from
     * its cursor gets exactly its ROUNDS entries. */
    for (int i = 0; i < FOLLOWERS; i++) {
        redisReply *r;
        cr_assert_eq(redisGetReply(fl[i], (void **)&r), REDIS_OK, "follower %d: %s", i,
                     fl[i]->errstr);
        feed_reply f;
        fr_take(&f, r);
        cr_assert_geq(f.count, 1);
        for (size_t e = 0; e < f.count; e++)
            cr_assert_eq(td_int_field(fr_entry(&f, e), "merchant"), BASE + i);
        size_t got = f.count;
        char cur[4096];
        snprintf(cur, sizeof(cur), "%s", f.cursor);
        fr_free(&f);
        fr_follow(&f, fl[i], "FOLLOW %d AFTER %s COUNT 1000", BASE + i, cur);
        cr_assert_eq(got + f.count, ROUNDS, "follower %d: %zu + %zu entries", i, got, f.count);
        fr_free(&f);
        redisFree(fl[i]);
    }
    free(fl);
    long long batches = info_field(w, "commit", "batches") - batches0;
    cr_assert_gt(batches, 0);
    cr_assert_leq(batches, ROUNDS * FOLLOWERS, "one flush per write at most");
    cr_assert_gt(info_field(w, "commit", "batch_records_max"), 1, "writes still share flushes");
    cr_assert_eq(info_field(w, "clients", "requests_in_flight"), 0);
    cr_log_info("follow: %d writes in %llu ms with %d followers waiting, %lld batches",
                ROUNDS * FOLLOWERS, (unsigned long long)write_ms, FOLLOWERS, batches);
    redisFree(w);
    td_stop(&srv);
}

/* ---- FOLLOW * ------------------------------------------------------------------------ */

Test(follow, follow_star_pages_every_merchant_across_shards_for_admins_only, .fini = down,
     .timeout = 60)
{
    td_init(&srv, "follow-star");
    td_write_auth(&srv, "shop-3 3\nroot *\n");
    const char *const args[] = {"--shards", "4", NULL};
    td_start(&srv, args);
    redisContext *c = td_connect(&srv);
    freeReplyObject(td_cmd(c, "AUTH shop-3"));
    expect_error(c, "NOPERM", "FOLLOW *");
    expect_error(c, "NOPERM", "FOLLOW 4");
    feed_reply f;
    fr_follow(&f, c, "FOLLOW 3");
    fr_free(&f);
    freeReplyObject(td_cmd(c, "AUTH root"));
    enum { MERCHANTS = 40, EACH = 2 };
    for (int k = 0; k < EACH; k++)
        for (int m = 1; m <= MERCHANTS; m++)
            write_ok(c, "EARN %d 1 10 s%d-%d", m, m, k);
    bool seen[MERCHANTS + 1][EACH] = {{false}};
    unsigned long long last_seq[MERCHANTS + 1] = {0};
    char cur[4096] = "0";
    size_t total = 0;
    int pages = 0;
    for (;;) {
        fr_follow(&f, c, "FOLLOW * AFTER %s COUNT 7", cur);
        snprintf(cur, sizeof(cur), "%s", f.cursor);
        pages++;
        if (f.count == 0) {
            fr_free(&f);
            break;
        }
        for (size_t i = 0; i < f.count; i++) {
            int m = (int)td_int_field(fr_entry(&f, i), "merchant"), k = 0, mm = 0;
            cr_assert(sscanf(fr_str(&f, i, "id"), "s%d-%d", &mm, &k) == 2 && mm == m);
            cr_assert(!seen[m][k], "entry s%d-%d delivered twice", m, k);
            seen[m][k] = true;
            cr_assert_gt(fr_seq(&f, i), last_seq[m], "a merchant's entries in seq order");
            last_seq[m] = fr_seq(&f, i);
            total++;
        }
        fr_free(&f);
        cr_assert_lt(pages, 100);
    }
    cr_assert_eq(total, MERCHANTS * EACH);
    /* A waiting FOLLOW * wakes on any merchant's entry. */
    send_only(c, "FOLLOW * AFTER %s BLOCK 10000", cur);
    redisContext *w = td_connect(&srv);
    freeReplyObject(td_cmd(w, "AUTH root"));
    write_ok(w, "EARN 17 1 1 late");
    redisReply *r;
    cr_assert_eq(redisGetReply(c, (void **)&r), REDIS_OK);
    fr_take(&f, r);
    cr_assert_eq(f.count, 1);
    cr_assert_str_eq(fr_str(&f, 0, "id"), "late");
    /* A damaged cursor is refused, not followed from somewhere else. */
    char bad[4200];
    snprintf(bad, sizeof(bad), "FOLLOW * AFTER %s", f.cursor);
    size_t at = strlen(bad) - 3;
    bad[at] = bad[at] == 'A' ? 'B' : 'A';
    expect_error(c, "ERR invalid FOLLOW * cursor", bad);
    fr_free(&f);
    redisFree(w);
    redisFree(c);
    td_stop(&srv);
}

/* ---- retention, bad input ------------------------------------------------------------- */

Test(follow, a_cursor_before_the_retained_log_is_an_error_naming_its_first_seq, .fini = down,
     .timeout = 120)
{
    td_init(&srv, "follow-ret");
    const char *const args[] = {"--shards", "1", "--segment-kib", "64", "--retention", "delete",
                                NULL};
    td_start(&srv, args);
    redisContext *c = td_connect(&srv);
    for (int i = 0; i < 3000; i++)
        cr_assert_eq(redisAppendCommand(c, "EARN 31 %d 1 r%d", 1 + i % 50, i), REDIS_OK);
    td_replies_ok(c, 3000);
    redisReply *r = td_cmd(c, "SNAPSHOT");
    cr_assert_eq(r->type, REDIS_REPLY_STATUS, "%s", r->str);
    freeReplyObject(r);
    long long first = info_field(c, "shards", "log_first_seq");
    cr_assert_gt(first, 1, "retention dropped the oldest segments");
    char want[96];
    snprintf(want, sizeof(want), "ERR cursor 0 is before the retained log, which starts at seq %lld",
             first);
    expect_error(c, want, "FOLLOW 31");
    expect_error(c, "ERR cursor 5 is before the retained log", "FOLLOW 31 AFTER 5");
    feed_reply f;
    fr_follow(&f, c, "FOLLOW 31 AFTER %lld COUNT 3", first - 1);
    cr_assert_eq(f.count, 3);
    cr_assert_eq(fr_seq(&f, 0), (unsigned long long)first);
    fr_free(&f);
    redisFree(c);
    td_stop(&srv);
}

Test(follow, bad_input_gets_clear_errors, .fini = down, .timeout = 60)
{
    td_init(&srv, "follow-bad");
    td_start(&srv, NULL);
    redisContext *c = td_connect(&srv);
    write_ok(c, "EARN 1 1 10 a");
    static const struct {
        const char *cmd, *error;
    } cases[] = {
        {"FOLLOW", "ERR wrong number of arguments for 'follow' command"},
        {"FOLLOW 0", "INVALID merchant must be 1..18446744073709551615"},
        {"FOLLOW -1", "INVALID merchant must be"},
        {"FOLLOW x", "ERR value is not an integer or out of range"},
        {"FOLLOW 1 COUNT 0", "INVALID COUNT must be 1..1000"},
        {"FOLLOW 1 COUNT 1001", "INVALID COUNT must be 1..1000"},
        {"FOLLOW 1 COUNT -5", "INVALID COUNT must be 1..1000"},
        {"FOLLOW 1 COUNT 99999999999999999999", "ERR value is not an integer or out of range"},
        {"FOLLOW 1 BLOCK -1", "INVALID BLOCK must be 0..31622400000 (milliseconds)"},
        {"FOLLOW 1 BLOCK 31622400001", "INVALID BLOCK must be 0..31622400000"},
        {"FOLLOW 1 BLOCK 1e3", "ERR value is not an integer or out of range"},
        {"FOLLOW 1 AFTER abc", "ERR value is not an integer or out of range"},
        {"FOLLOW 1 AFTER -1", "INVALID AFTER must be 0..18446744073709551615 (a seq)"},
        {"FOLLOW 1 AFTER 18446744073709551616", "ERR value is not an integer or out of range"},
        {"FOLLOW 1 AFTER 18446744073709551615", "ERR cursor 18446744073709551615 is past the end "
                                                "of the log (seq 1)"},
        {"FOLLOW 1 AFTER 2", "ERR cursor 2 is past the end of the log (seq 1)"},
        {"FOLLOW 1 LIMIT 5", "ERR syntax error"},
        {"FOLLOW 1 COUNT", "ERR syntax error"},
        {"FOLLOW 1 COUNT 1 COUNT 2", "ERR syntax error"},
        {"FOLLOW * AFTER 5", "ERR invalid FOLLOW * cursor"},
        {"FOLLOW * AFTER AAAAAAAAAAAA", "ERR invalid FOLLOW * cursor"},
        {"FOLLOW * AFTER !!", "ERR invalid FOLLOW * cursor"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        expect_error(c, cases[i].error, cases[i].cmd);
    /* A cursor of a server with another shard count. */
    feed_reply f;
    fr_follow(&f, c, "FOLLOW * COUNT 1");
    char cur[4096];
    snprintf(cur, sizeof(cur), "%s", f.cursor);
    fr_free(&f);
    td_stop(&srv);
    td_cleanup(&srv);
    td_init(&srv, "follow-bad2");
    const char *const args[] = {"--shards", "3", NULL};
    td_start(&srv, args);
    redisFree(c);
    c = td_connect(&srv);
    long long shards = info_field(c, "server", "shards");
    if (shards != 3)
        cr_assert_fail("the server has %lld shards", shards);
    redisReply *r = td_cmd(c, "FOLLOW * AFTER %s", cur);
    cr_assert_eq(r->type, REDIS_REPLY_ERROR);
    cr_assert(strstr(r->str, "shards, this server has 3") != NULL, "%s", r->str);
    freeReplyObject(r);
    redisFree(c);
    td_stop(&srv);
}

/* ---- tally follow: a mirror ---------------------------------------------------------- */

/* The mirror a loader keeps from `tally follow`'s lines: entries by seq
 * (one merchant's seqs are unique), duplicates (at least once) allowed
 * but only as the same entry again. */
#define MIRROR_MAX 4096
typedef struct mirror {
    char id[MIRROR_MAX][40];
    long long balance[MIRROR_MAX];
    int account[MIRROR_MAX];
    bool have[MIRROR_MAX];
    size_t unique, lines, dups;
} mirror;

/* Applies every line of the follower's output (the loader).  The file
 * grows while it is read: a last line without its newline is not written
 * yet, and is read at the next pass. */
static void mirror_load(mirror *m, const char *path)
{
    memset(m, 0, sizeof(*m));
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    char line[4096];
    unsigned long long last = 0;
    while (fgets(line, sizeof(line), f)) {
        unsigned long long seq = 0;
        char id[40] = "";
        int account = 0;
        long long balance = 0;
        const char *p = strstr(line, "\"balance\":"), *a = strstr(line, "\"account\":\"");
        if (line[strlen(line) - 1] != '\n') {
            cr_assert(feof(f), "a torn line: %s", line);
            break;
        }
        cr_assert(sscanf(line, "{\"seq\":%llu,\"id\":\"%39[^\"]\"", &seq, id) == 2 && p && a,
                  "not a dump line: %s", line);
        balance = atoll(p + 10);
        account = atoi(a + 11);
        cr_assert_lt(seq, MIRROR_MAX);
        m->lines++;
        if (m->have[seq]) {
            cr_assert_str_eq(m->id[seq], id, "seq %llu came back as another entry", seq);
            cr_assert_leq(seq, last, "a repeat is a replay of what was delivered");
            m->dups++;
            continue;
        }
        cr_assert_gt(seq, last, "entries arrive in seq order (new ones after %llu)", last);
        last = seq;
        m->have[seq] = true;
        snprintf(m->id[seq], sizeof(m->id[seq]), "%s", id);
        m->balance[seq] = balance;
        m->account[seq] = account;
        m->unique++;
    }
    fclose(f);
}

/* Waits (bounded) until the mirror holds `want` entries. */
static void mirror_wait(mirror *m, const char *path, size_t want)
{
    for (int i = 0; i < 600; i++) {
        mirror_load(m, path);
        if (m->unique >= want)
            return;
        usleep(50000);
    }
    cr_assert_fail("the mirror holds %zu entries of %zu", m->unique, want);
}

static pid_t follower_start(const td *t, const char *dir)
{
    char cmd[1024];
    snprintf(cmd, sizeof(cmd),
             "exec '%s/tally' follow 127.0.0.1:%u --merchant 77 --cursor %s/cursor "
             "--auth-file %s/token --count 50 >> %s/mirror.jsonl 2>> %s/follow.err",
             getenv("TALLY_BUILD"), t->port, dir, dir, dir, dir);
    const char *const argv[] = {"sh", "-c", cmd, NULL};
    char log[160];
    snprintf(log, sizeof(log), "%s/sh.log", dir);
    return td_exec(argv, log);
}

static void follower_kill9(pid_t pid)
{
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

/* n writes to merchant 77 (and as many to 78, same shards or not); the
 * number acknowledged for 77. */
static size_t mirror_writes(redisContext *c, int from, int n)
{
    for (int i = from; i < from + n; i++) {
        cr_assert_eq(redisAppendCommand(c, "EARN 77 %d 10 m%d", 1 + i % 7, i), REDIS_OK);
        cr_assert_eq(redisAppendCommand(c, "REDEEM 77 %d 25 r%d", 1 + i % 7, i), REDIS_OK);
        cr_assert_eq(redisAppendCommand(c, "EARN 78 1 1 o%d", i), REDIS_OK);
    }
    size_t acked = 0;
    for (int i = 0; i < 3 * n; i++) {
        redisReply *r;
        cr_assert_eq(redisGetReply(c, (void **)&r), REDIS_OK);
        if (i % 3 != 2 && r->type == REDIS_REPLY_ARRAY)
            acked++; /* a refused REDEEM is no entry */
        freeReplyObject(r);
    }
    return acked;
}

Test(follow, tally_follow_keeps_a_mirror_equal_through_restarts_and_kill_9, .fini = down,
     .timeout = 300)
{
    td_init(&srv, "follow-mirror");
    td_write_auth(&srv, "mirror-tok 77\nroot *\n");
    char dir[128];
    snprintf(dir, sizeof(dir), "%s.mirror", srv.dir);
    cr_assert_eq(mkdir(dir, 0755), 0);
    char path[200];
    snprintf(path, sizeof(path), "%s/token", dir);
    FILE *tf = fopen(path, "w");
    fputs("# the follower's token\nmirror-tok 77\n", tf);
    fclose(tf);
    char mpath[200];
    snprintf(mpath, sizeof(mpath), "%s/mirror.jsonl", dir);
    const char *const args[] = {"--shards", "2", "--segment-kib", "256", NULL};
    td_start(&srv, args);
    redisContext *c = td_connect(&srv);
    freeReplyObject(td_cmd(c, "AUTH root"));
    size_t acked = mirror_writes(c, 0, 100);
    pid_t fp = follower_start(&srv, dir);
    mirror m;
    mirror_wait(&m, mpath, acked);

    /* kill -9 of the follower while writes go on, then it resumes. */
    acked += mirror_writes(c, 100, 50);
    follower_kill9(fp);
    acked += mirror_writes(c, 150, 50);
    fp = follower_start(&srv, dir);
    mirror_wait(&m, mpath, acked);

    /* The server stops and comes back on the same port: the follower
     * reconnects by itself. */
    redisFree(c);
    td_stop(&srv);
    td_restart(&srv, args);
    c = td_connect(&srv);
    freeReplyObject(td_cmd(c, "AUTH root"));
    acked += mirror_writes(c, 200, 50);
    mirror_wait(&m, mpath, acked);

    /* kill -9 of the server, and of the follower again. */
    acked += mirror_writes(c, 250, 50);
    redisFree(c);
    td_kill9(&srv);
    follower_kill9(fp);
    td_restart(&srv, args);
    fp = follower_start(&srv, dir);
    c = td_connect(&srv);
    freeReplyObject(td_cmd(c, "AUTH root"));
    acked += mirror_writes(c, 300, 50);
    mirror_wait(&m, mpath, acked);
    follower_kill9(fp);

    /* The mirror equals the source: every entry, once, by seq. */
    cr_assert_eq(m.unique, acked, "the mirror has %zu entries, the source %zu", m.unique, acked);
    char cur[4096] = "0";
    size_t checked = 0;
    for (;;) {
        feed_reply f;
        fr_follow(&f, c, "FOLLOW 77 AFTER %s COUNT 1000", cur);
        snprintf(cur, sizeof(cur), "%s", f.cursor);
        for (size_t i = 0; i < f.count; i++) {
            unsigned long long seq = fr_seq(&f, i);
            cr_assert(seq < MIRROR_MAX && m.have[seq], "seq %llu is not in the mirror", seq);
            cr_assert_str_eq(m.id[seq], fr_str(&f, i, "id"));
            cr_assert_eq(m.balance[seq], td_int_field(fr_entry(&f, i), "balance"));
            checked++;
        }
        size_t n = f.count;
        fr_free(&f);
        if (n == 0)
            break;
    }
    cr_assert_eq(checked, acked);
    /* The last balance of each account in the mirror is its BALANCE. */
    for (int a = 1; a <= 7; a++) {
        long long last = -1;
        for (size_t s = 0; s < MIRROR_MAX; s++)
            if (m.have[s] && m.account[s] == a)
                last = m.balance[s];
        redisReply *b = td_cmd(c, "BALANCE 77 %d", a);
        cr_assert_eq(td_int_field(b, "available"), last, "account %d", a);
        freeReplyObject(b);
    }
    cr_log_info("follow: mirror of %zu entries from %zu lines (%zu delivered again)", m.unique,
                m.lines, m.dups);
    redisFree(c);
    td_stop(&srv);
    char rm[300];
    snprintf(rm, sizeof(rm), "rm -rf '%s'", dir);
    cr_assert_eq(system(rm), 0);
}
