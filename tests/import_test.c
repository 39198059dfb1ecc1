/*
 * import_test.c — `tally import` (issue 14, SPEC §8) on directories real
 * tallyd processes wrote and read: the round trip dump → import → dump
 * with the same BALANCE, MERCHANT and LIABILITY everywhere, all or nothing
 * (an error on the last line, kill -9 in the middle, then a rerun or a
 * tallyd start), reruns that apply nothing twice, the merchant rules,
 * CSV with quoted memos, and backup/restore from a snapshot plus archived
 * segments.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "export.h"
#include "fault_util.h"
#include "tallyd_util.h"

static td src, dst;

/* The files imp_path named, removed by imp_fini whatever the test did. */
#define IMP_FILES_MAX 16
static char imp_files_made[IMP_FILES_MAX][256];
static int imp_files_count;

static void imp_fini(void)
{
    td_cleanup(&src);
    td_cleanup(&dst);
    for (int i = 0; i < imp_files_count; i++)
        unlink(imp_files_made[i]);
    imp_files_count = 0;
}

#define imp_tool fu_tally_toolf

/* A file beside the data directory, named after it (tests run in
 * parallel, in several checkouts at once). */
static void imp_path(const td *t, const char *name, char *out, size_t cap)
{
    snprintf(out, cap, "%s.%s", t->dir, name);
    for (int i = 0; i < imp_files_count; i++)
        if (strcmp(imp_files_made[i], out) == 0)
            return;
    cr_assert_lt(imp_files_count, IMP_FILES_MAX);
    snprintf(imp_files_made[imp_files_count++], sizeof(imp_files_made[0]), "%s", out);
}

static void imp_write(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f, "%s", path);
    fputs(text, f);
    fclose(f);
}

/* `tally dump --refusals` of a directory, read back as import items. */
typedef struct imp_dump {
    tally_import_item *items;
    size_t n;
} imp_dump;

static void imp_dump_of(const td *t, const char *file, imp_dump *d)
{
    char out[4096];
    cr_assert_eq(imp_tool(out, sizeof(out), "dump '%s' --refusals > '%s'", t->dir, file), 0,
                 "dump: %s", out);
    FILE *f = fopen(file, "r");
    cr_assert_not_null(f);
    size_t cap = 0;
    char *line = NULL;
    size_t lcap = 0;
    ssize_t len;
    d->items = NULL;
    d->n = 0;
    while ((len = getline(&line, &lcap, f)) > 0) {
        if (d->n == cap) {
            cap = cap ? cap * 2 : 1024;
            d->items = realloc(d->items, cap * sizeof(*d->items));
        }
        char err[256];
        cr_assert_eq(export_parse_json(line, (size_t)len, &d->items[d->n], err, sizeof(err)), 0,
                     "%s: %s", err, line);
        d->n++;
    }
    free(line);
    fclose(f);
}

static const tally_import_item *imp_find(const imp_dump *d, const tally_entry *e)
{
    for (size_t j = 0; j < d->n; j++) {
        const tally_entry *x = &d->items[j].e;
        if (x->merchant == e->merchant && x->id_len == e->id_len &&
            memcmp(x->id, e->id, e->id_len) == 0)
            return &d->items[j];
    }
    return NULL;
}

/* Every entry of a in b, field for field except seq, and marked imported. */
static void imp_same_entries(const imp_dump *a, const imp_dump *b)
{
    cr_assert_eq(a->n, b->n, "%zu entries before, %zu after", a->n, b->n);
    for (size_t i = 0; i < a->n; i++) {
        const tally_entry *x = &a->items[i].e;
        const tally_import_item *yi = imp_find(b, x);
        cr_assert_not_null(yi, "%.*s of merchant %llu is imported", (int)x->id_len, x->id,
                           (unsigned long long)x->merchant);
        const tally_entry *y = &yi->e;
        cr_assert(y->imported, "%.*s is marked imported", (int)y->id_len, y->id);
        cr_assert(x->kind == y->kind && x->account == y->account && x->account2 == y->account2 &&
                      x->points == y->points && x->amount == y->amount &&
                      x->balance == y->balance && x->held == y->held &&
                      x->pending == y->pending && x->ts_ms == y->ts_ms &&
                      x->expires == y->expires && x->available_at == y->available_at &&
                      x->timeout_s == y->timeout_s && x->req_points == y->req_points &&
                      x->req_flags == y->req_flags && x->ref_len == y->ref_len &&
                      memcmp(x->ref, y->ref, x->ref_len) == 0 && x->memo_len == y->memo_len &&
                      memcmp(x->memo, y->memo, x->memo_len) == 0 &&
                      a->items[i].refused == yi->refused,
                  "%.*s differs after the round trip", (int)x->id_len, x->id);
    }
}

static void imp_free(imp_dump *d)
{
    free(d->items);
    d->items = NULL;
    d->n = 0;
}

/* The same reply from both servers, and not an error.  cmd is split into
 * arguments at spaces (as hiredis splits a format without %). */
static void imp_same_reply(redisContext *a, redisContext *b, const char *cmd)
{
    redisReply *x = redisCommand(a, cmd), *y = redisCommand(b, cmd);
    cr_assert(x && y, "%s: a reply from both servers", cmd);
    cr_assert_neq(x->type, REDIS_REPLY_ERROR, "%s: %s", cmd, x->str);
    char bx[8192], by[8192];
    size_t nx = fu_reply_bytes(x, bx, sizeof(bx) - 1), ny = fu_reply_bytes(y, by, sizeof(by) - 1);
    cr_assert(nx < sizeof(bx) && ny < sizeof(by), "%s: a reply of %zu/%zu bytes", cmd, nx, ny);
    bx[nx] = by[ny] = 0;
    cr_assert_str_eq(bx, by, "%s: source %s, imported %s", cmd, bx, by);
    freeReplyObject(x);
    freeReplyObject(y);
}

static redisReply *imp_ok(redisContext *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    cr_assert_not_null(r, "%s", fmt);
    return r;
}

/* ---- the round trip -------------------------------------------------------------- */

/* Every kind of write over several merchants: expiring and pending lots,
 * holds captured, voided, timed out and left open, reversals, negative
 * adjusts, transfers (ALL too), refusals, memos of every sort. */
static void imp_workload(redisContext *c)
{
    long now = (long)time(NULL);
    for (int m = 11; m <= 13; m++) {
        for (int a = 1; a <= 3; a++) {
            freeReplyObject(imp_ok(c, "EARN %d %d 1000 e-%d-%d MEMO %s", m, a, m, a,
                                   "café ☕ \"q\" \\ tab\tnew\nline"));
            freeReplyObject(imp_ok(c, "EARN %d %d 300 soon-%d-%d EXPIRES %ld", m, a, m, a,
                                   now + 2));
            freeReplyObject(imp_ok(c, "EARN %d %d 150 pend-%d-%d AVAILABLE_AT %ld EXPIRES %ld", m,
                                   a, m, a, now + 1, now + 500000000));
            freeReplyObject(imp_ok(c, "EARN %d %d 40 later-%d-%d AVAILABLE_AT %ld", m, a, m, a,
                                   now + 300000000));
            freeReplyObject(imp_ok(c, "EARN %d %d 7 bin-%d-%d MEMO %b", m, a, m, a,
                                   "\xff\xfe\x00\x01", (size_t)4));
            freeReplyObject(imp_ok(c, "REDEEM %d %d 100 r-%d-%d", m, a, m, a));
            freeReplyObject(imp_ok(c, "REDEEM %d %d 999999 big-%d-%d", m, a, m, a));
            freeReplyObject(imp_ok(c, "HOLD %d %d 100 h1-%d-%d", m, a, m, a));
            freeReplyObject(imp_ok(c, "CAPTURE %d h1-%d-%d c1-%d-%d POINTS 60", m, m, a, m, a));
            freeReplyObject(imp_ok(c, "HOLD %d %d 50 h2-%d-%d TIMEOUT 1", m, a, m, a));
            freeReplyObject(imp_ok(c, "HOLD %d %d 70 h3-%d-%d", m, a, m, a));
            freeReplyObject(imp_ok(c, "VOID %d h3-%d-%d v3-%d-%d", m, m, a, m, a));
            freeReplyObject(imp_ok(c, "HOLD %d %d 20 open-%d-%d TIMEOUT 100000", m, a, m, a));
            freeReplyObject(imp_ok(c, "REVERSE %d r-%d-%d rv-%d-%d POINTS 100", m, m, a, m, a));
            freeReplyObject(imp_ok(c, "REVERSE %d c1-%d-%d rvc-%d-%d", m, m, a, m, a));
            freeReplyObject(imp_ok(c, "ADJUST %d %d -30 adj-%d-%d", m, a, m, a));
            freeReplyObject(imp_ok(c, "ADJUST %d %d 25 adj2-%d-%d EXPIRES %ld", m, a, m, a,
                                   now + 600000000));
            freeReplyObject(imp_ok(c, "TRANSFER %d %d %d 80 t-%d-%d", m, a, a + 10, m, a));
        }
        /* Card replacement: every available and pending lot moves. */
        freeReplyObject(imp_ok(c, "EARN %d 50 500 card-%d AVAILABLE_AT %ld", m, m, now + 200000));
        freeReplyObject(imp_ok(c, "EARN %d 50 70 card2-%d", m, m));
        freeReplyObject(imp_ok(c, "TRANSFER %d 50 51 ALL all-%d", m, m));
        freeReplyObject(imp_ok(c, "TRANSFER %d 51 51 5 self-%d", m, m)); /* refused */
    }
    sleep(3); /* expiries, maturities and the timed-out holds come due */
    for (int m = 11; m <= 13; m++)
        for (int a = 1; a <= 3; a++) {
            freeReplyObject(imp_ok(c, "EARN %d %d 10 late-%d-%d", m, a, m, a));
            freeReplyObject(imp_ok(c, "TRANSFER %d %d %d 5 t2-%d-%d", m, a + 10, a, m, a));
        }
    for (int i = 1; i <= 300; i++)
        freeReplyObject(imp_ok(c, "EARN 14 %d %d bulk-%d MEMO m%d", i % 7 + 1, i % 50 + 1, i, i));
}

/* BALANCE of every account, MERCHANT and LIABILITY of every merchant. */
static void imp_same_reads(const td *a, const td *b)
{
    redisContext *x = td_connect(a), *y = td_connect(b);
    char cmd[128];
    for (int m = 11; m <= 14; m++) {
        snprintf(cmd, sizeof(cmd), "MERCHANT %d", m);
        imp_same_reply(x, y, cmd);
        snprintf(cmd, sizeof(cmd), "LIABILITY %d", m);
        imp_same_reply(x, y, cmd);
        for (int acct = 1; acct <= 60; acct++) {
            snprintf(cmd, sizeof(cmd), "BALANCE %d %d", m, acct);
            imp_same_reply(x, y, cmd);
        }
    }
    redisFree(x);
    redisFree(y);
}

Test(import, a_dump_imported_into_an_empty_directory_dumps_and_reads_the_same, .timeout = 240,
     .fini = imp_fini)
{
    td_init(&src, "imps");
    td_init(&dst, "impd");
    td_start(&src, (const char *const[]){"--shards", "2", NULL});
    redisContext *c = td_connect(&src);
    imp_workload(c);
    redisFree(c);
    td_stop(&src);
    char file[256], back[256], out[8192];
    imp_path(&src, "import-src.dump", file, sizeof(file));
    imp_path(&dst, "import-dst.dump", back, sizeof(back));
    imp_dump d1, d2;
    imp_dump_of(&src, file, &d1);
    cr_assert_gt(d1.n, 500);
    /* Into another shard count: every merchant moves to another shard. */
    cr_assert_eq(imp_tool(out, sizeof(out), "import '%s' '%s' --shards 3", dst.dir, file), 0,
                 "%s", out);
    cr_assert_not_null(strstr(out, "applied"), "%s", out);
    imp_dump_of(&dst, back, &d2);
    imp_same_entries(&d1, &d2);
    cr_assert_eq(imp_tool(out, sizeof(out), "verify '%s'", dst.dir), 0, "%s", out);
    /* The same reads on both. */
    td_start(&src, NULL);
    td_start(&dst, NULL);
    imp_same_reads(&src, &dst);
    redisContext *y = td_connect(&dst);
    /* ENTRY says imported; a client's retry of an imported write replays
     * it; the open hold can be captured; new writes go on. */
    redisReply *r = td_cmd(y, "ENTRY 11 e-11-1");
    cr_assert_eq(td_int_field(r, "imported"), 1);
    freeReplyObject(r);
    r = td_cmd(y, "REDEEM 11 1 100 r-11-1");
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY, "%s", r->type == REDIS_REPLY_ERROR ? r->str : "");
    cr_assert_eq(td_int_field(r, "imported"), 1, "the retry answers the imported entry");
    freeReplyObject(r);
    r = td_cmd(y, "REDEEM 11 1 999999 big-11-1");
    cr_assert(fu_is_error(r, "INSUFFICIENT"), "a remembered refusal stays one");
    freeReplyObject(r);
    r = td_cmd(y, "REDEEM 11 1 101 r-11-1");
    cr_assert(fu_is_error(r, "CONFLICT"), "another request under an imported id");
    freeReplyObject(r);
    r = td_cmd(y, "CAPTURE 11 open-11-1 cap-open-11-1");
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY, "%s", r->type == REDIS_REPLY_ERROR ? r->str : "");
    cr_assert_eq(td_int_field(r, "imported"), 0);
    freeReplyObject(r);
    r = td_cmd(y, "VERIFY");
    cr_assert_eq(r->type, REDIS_REPLY_STATUS, "%s", r->str);
    freeReplyObject(r);
    redisFree(y);
    td_stop(&src);
    td_stop(&dst);
    imp_free(&d1);
    imp_free(&d2);
    unlink(file);
    unlink(back);
}

/* ---- all or nothing --------------------------------------------------------------- */

/* The files of a directory (not the state's, whose LMDB lock file and
 * pages change with any open), sorted, as one string. */
static void imp_files(const td *t, char *out, size_t cap)
{
    char cmd[512];
    snprintf(cmd, sizeof(cmd),
             "cd '%s' && find . -type f ! -path '*/state/*' ! -name LOCK -printf '%%p %%s\\n' "
             "| sort",
             t->dir);
    td_run(cmd, out, cap);
}

static const char imp_base_lines[] =
    "{\"id\":\"x1\",\"kind\":\"earn\",\"merchant\":\"31\",\"account\":\"1\",\"points\":50,"
    "\"ts\":1600000000000}\n"
    "{\"id\":\"x2\",\"kind\":\"earn\",\"merchant\":\"32\",\"account\":\"1\",\"points\":70,"
    "\"ts\":1600000000001}\n"
    "{\"id\":\"x3\",\"kind\":\"redeem\",\"merchant\":\"31\",\"account\":\"1\",\"amount\":20,"
    "\"balance\":30,\"ts\":1600000000002}\n";

/* A directory with live data of merchant 900 and an import of 31 and 32. */
static void imp_live_dir(void)
{
    td_init(&dst, "impa");
    td_start(&dst, (const char *const[]){"--shards", "2", NULL});
    redisContext *c = td_connect(&dst);
    for (int i = 0; i < 20; i++)
        freeReplyObject(imp_ok(c, "EARN 900 %d 5 live-%d", i % 3 + 1, i));
    redisFree(c);
    td_stop(&dst);
    char file[256], out[4096];
    imp_path(&dst, "base.jsonl", file, sizeof(file));
    imp_write(file, imp_base_lines);
    cr_assert_eq(imp_tool(out, sizeof(out), "import '%s' '%s'", dst.dir, file), 0, "%s", out);
    unlink(file);
}

static void imp_expect_refused(const char *lines, const char *why, const char *line_no)
{
    char before[16384], after[16384], file[256], out[4096], d1[256], d2[256];
    imp_files(&dst, before, sizeof(before));
    imp_path(&dst, "bad.jsonl", file, sizeof(file));
    imp_path(&dst, "before.dump", d1, sizeof(d1));
    imp_path(&dst, "after.dump", d2, sizeof(d2));
    imp_dump a, b;
    imp_dump_of(&dst, d1, &a);
    imp_write(file, lines);
    cr_assert_eq(imp_tool(out, sizeof(out), "import '%s' '%s'", dst.dir, file), 1, "%s", out);
    cr_assert_not_null(strstr(out, why), "says %s: %s", why, out);
    cr_assert_not_null(strstr(out, line_no), "names %s: %s", line_no, out);
    cr_assert_not_null(strstr(out, "nothing was imported"), "%s", out);
    imp_files(&dst, after, sizeof(after));
    cr_assert_str_eq(before, after, "the files are as they were");
    imp_dump_of(&dst, d2, &b);
    cr_assert_eq(a.n, b.n);
    for (size_t i = 0; i < a.n; i++)
        cr_assert(a.items[i].e.seq == b.items[i].e.seq &&
                      a.items[i].e.id_len == b.items[i].e.id_len &&
                      memcmp(a.items[i].e.id, b.items[i].e.id, a.items[i].e.id_len) == 0,
                  "the entries are as they were");
    imp_free(&a);
    imp_free(&b);
    unlink(file);
    unlink(d1);
    unlink(d2);
}

/* 2,000 good lines, then the one given. */
static char *imp_good_then(const char *last)
{
    size_t cap = 2000 * 160 + strlen(last) + 1, n = 0;
    char *text = malloc(cap);
    for (int i = 0; i < 2000; i++)
        n += (size_t)snprintf(text + n, cap - n,
                              "{\"id\":\"g%d\",\"kind\":\"earn\",\"merchant\":\"%d\",\"account\":"
                              "\"%d\",\"points\":%d,\"ts\":%lld}\n",
                              i, 40 + i % 5, i % 9 + 1, i % 90 + 1, 1600000001000LL + i);
    snprintf(text + n, cap - n, "%s", last);
    return text;
}

Test(import, an_error_on_the_last_line_leaves_the_directory_as_it_was, .timeout = 120,
     .fini = imp_fini)
{
    imp_live_dir();
    static const struct {
        const char *last, *why;
    } bad[] = {
        {"{\"id\":\"bad\",\"kind\":\"earn\",\"merchant\":\"41\",\"account\":\"1\"",
         "must follow \"account\""},
        {"{\"id\":\"bad\",\"kind\":\"earn\",\"merchant\":\"41\",\"account\":\"1\",\"pionts\":5,"
         "\"ts\":1700000000000}\n",
         "unknown field \"pionts\""},
        {"{\"id\":\"bad\",\"kind\":\"gift\",\"merchant\":\"41\",\"account\":\"1\",\"points\":5,"
         "\"ts\":1700000000000}\n",
         "unknown kind"},
        {"{\"id\":\"bad\",\"kind\":\"earn\",\"merchant\":\"41\",\"account\":\"1\",\"points\":1.5,"
         "\"ts\":1700000000000}\n",
         "not a 64-bit integer"},
        {"{\"id\":\"bad\",\"kind\":\"redeem\",\"merchant\":\"41\",\"account\":\"1\",\"amount\":"
         "999999,\"ts\":1700000000000}\n",
         "not enough available points"},
        {"{\"id\":\"bad\",\"kind\":\"earn\",\"merchant\":\"41\",\"account\":\"1\",\"points\":5,"
         "\"balance\":6,\"ts\":1700000000000}\n",
         "balance after it is"},
        {"{\"id\":\"x1\",\"kind\":\"earn\",\"merchant\":\"31\",\"account\":\"1\",\"points\":51,"
         "\"ts\":1600000000000}\n",
         "different request"},
        {"{\"id\":\"bad\",\"kind\":\"earn\",\"merchant\":\"900\",\"account\":\"1\",\"points\":5,"
         "\"ts\":4000000000000}\n",
         "has live entries since"},
        {"{\"id\":\"bad\",\"kind\":\"earn\",\"merchant\":\"31\",\"account\":\"1\",\"points\":5,"
         "\"ts\":1500000000000}\n",
         "not in time order"},
        {"{\"id\":\"~exp:g1\",\"kind\":\"expire\",\"merchant\":\"41\",\"account\":\"2\",\"ref\":"
         "\"nope\",\"ts\":1700000000000}\n",
         "names no lot"},
    };
    for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
        char *text = imp_good_then(bad[k].last);
        imp_expect_refused(text, bad[k].why, "line 2001");
        free(text);
    }
    /* And it still serves what it had. */
    td_start(&dst, NULL);
    redisContext *c = td_connect(&dst);
    redisReply *r = td_cmd(c, "BALANCE 31 1");
    cr_assert_eq(td_int_field(r, "available"), 30);
    freeReplyObject(r);
    r = td_cmd(c, "BALANCE 40 1");
    cr_assert_eq(td_int_field(r, "available"), 0, "nothing of the failed imports");
    freeReplyObject(r);
    redisFree(c);
    td_stop(&dst);
}

Test(import, a_rerun_applies_nothing_twice_and_a_running_tallyd_keeps_its_directory,
     .timeout = 120, .fini = imp_fini)
{
    imp_live_dir();
    char file[256], out[4096];
    imp_path(&dst, "base.jsonl", file, sizeof(file));
    imp_write(file, imp_base_lines);
    cr_assert_eq(imp_tool(out, sizeof(out), "import '%s' '%s'", dst.dir, file), 0, "%s", out);
    cr_assert_not_null(strstr(out, "0 applied, 3 already there"), "%s", out);
    /* Lines older than merchant 900's live ones are fine; one more line
     * for 31 after the imported ones too. */
    imp_write(file, "{\"id\":\"old\",\"kind\":\"earn\",\"merchant\":\"900\",\"account\":\"9\","
                    "\"points\":5,\"ts\":1000000000000}\n"
                    "{\"id\":\"x4\",\"kind\":\"earn\",\"merchant\":\"31\",\"account\":\"1\","
                    "\"points\":5,\"balance\":35,\"ts\":1600000000003}\n");
    cr_assert_eq(imp_tool(out, sizeof(out), "import '%s' '%s'", dst.dir, file), 0, "%s", out);
    cr_assert_not_null(strstr(out, "2 applied"), "%s", out);
    td_start(&dst, NULL);
    cr_assert_eq(imp_tool(out, sizeof(out), "import '%s' '%s'", dst.dir, file), 1);
    cr_assert_not_null(strstr(out, "in use by a running tallyd"), "%s", out);
    redisContext *c = td_connect(&dst);
    redisReply *r = td_cmd(c, "BALANCE 31 1");
    cr_assert_eq(td_int_field(r, "available"), 35);
    freeReplyObject(r);
    r = td_cmd(c, "MERCHANT 31");
    cr_assert_eq(td_int_field(r, "entries"), 3);
    freeReplyObject(r);
    redisFree(c);
    td_stop(&dst);
    unlink(file);
}

/* ---- kill -9 ---------------------------------------------------------------------- */

#define IMP_BIG_LINES 400000

/* Earns over 5,000 accounts of 7 merchants, no balances given. */
static void imp_big_file(const char *path, int64_t *sum)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    memset(sum, 0, 7 * 5000 * sizeof(*sum));
    for (int i = 0; i < IMP_BIG_LINES; i++) {
        int m = i % 7, a = i % 5000, p = i % 100 + 1;
        fprintf(f,
                "{\"id\":\"k%d\",\"kind\":\"earn\",\"merchant\":\"%d\",\"account\":\"%d\","
                "\"points\":%d,\"ts\":%lld,\"memo\":\"line %d\"}\n",
                i, m + 1, a + 1, p, 1600000000000LL + i, i);
        sum[m * 5000 + a] += p;
    }
    fclose(f);
}

static int64_t imp_sums[7 * 5000];

static void imp_check_sums(void)
{
    td_start(&dst, NULL);
    redisContext *c = td_connect(&dst);
    for (int k = 0; k < 7 * 5000; k += 97) {
        redisReply *r = td_cmd(c, "BALANCE %d %d", k / 5000 + 1, k % 5000 + 1);
        cr_assert_eq(td_int_field(r, "available"), imp_sums[k], "merchant %d account %d",
                     k / 5000 + 1, k % 5000 + 1);
        freeReplyObject(r);
    }
    redisReply *r = td_cmd(c, "BALANCE 900 1");
    cr_assert_eq(td_int_field(r, "available"), 35, "the live data before the import");
    freeReplyObject(r);
    redisFree(c);
    td_stop(&dst);
}

Test(import, kill_9_during_an_import_leaves_nothing_and_a_rerun_imports_it_all, .timeout = 600,
     .fini = imp_fini)
{
    td_init(&dst, "impk");
    td_start(&dst, (const char *const[]){"--shards", "2", NULL});
    redisContext *c = td_connect(&dst);
    for (int i = 0; i < 7; i++)
        freeReplyObject(imp_ok(c, "EARN 900 1 5 live-%d", i));
    redisFree(c);
    td_stop(&dst);
    char file[256], marker[160], out[8192];
    imp_path(&dst, "big.jsonl", file, sizeof(file));
    snprintf(marker, sizeof(marker), "%s/IMPORT", dst.dir);
    imp_big_file(file, imp_sums);
    char before[16384], after[16384];
    imp_files(&dst, before, sizeof(before));
    /* Killed at several points: while applying, while committing.  Each
     * time the directory is as before, whether tallyd or a rerun opens it
     * next. */
    int killed = 0;
    for (int k = 0; k < 6; k++) {
        char log[256];
        imp_path(&dst, "import.log", log, sizeof(log));
        char tool[512];
        snprintf(tool, sizeof(tool), "%s/tally", getenv("TALLY_BUILD"));
        pid_t pid = fu_spawn((const char *const[]){tool, "import", dst.dir, file, NULL}, log);
        /* Once it has begun (DIR/IMPORT written), a little later each time. */
        for (int w = 0; w < 2000 && access(marker, F_OK) != 0; w++)
            usleep(5000);
        usleep((useconds_t)(20000 + 90000 * k));
        kill(pid, SIGKILL);
        int st;
        waitpid(pid, &st, 0);
        if (!WIFSIGNALED(st) || access(marker, F_OK) != 0)
            break; /* it finished first: later kills would too */
        killed++;
        /* Offline tools refuse to read it, and say how to go on. */
        cr_assert_eq(imp_tool(out, sizeof(out), "dump '%s'", dst.dir), 1);
        cr_assert_not_null(strstr(out, "import that never committed"), "%s", out);
        if (k % 2 == 0) {
            /* tallyd undoes it. */
            td_start(&dst, NULL);
            redisContext *y = td_connect(&dst);
            redisReply *r = td_cmd(y, "MERCHANT 1");
            cr_assert_eq(td_int_field(r, "entries"), 0, "nothing of the killed import");
            freeReplyObject(r);
            redisFree(y);
            td_stop(&dst);
            cr_assert_eq(access(marker, F_OK), -1);
            imp_files(&dst, after, sizeof(after));
            cr_assert_str_eq(before, after, "the files are as they were");
        }
    }
    cr_assert_geq(killed, 2, "the import was killed in the middle at least twice");
    /* The rerun (or the run that finished before its kill) imported it
     * all, once. */
    cr_assert_eq(imp_tool(out, sizeof(out), "import '%s' '%s'", dst.dir, file), 0, "%s", out);
    char want[64];
    snprintf(want, sizeof(want), "imported %d lines: ", IMP_BIG_LINES);
    cr_assert_not_null(strstr(out, want), "%s", out);
    imp_check_sums();
    /* And once more: nothing twice. */
    cr_assert_eq(imp_tool(out, sizeof(out), "import '%s' '%s'", dst.dir, file), 0, "%s", out);
    snprintf(want, sizeof(want), "0 applied, %d already there", IMP_BIG_LINES);
    cr_assert_not_null(strstr(out, want), "%s", out);
    imp_check_sums();
    cr_assert_eq(imp_tool(out, sizeof(out), "verify '%s'", dst.dir), 0, "%s", out);
    unlink(file);
}

/* A log flush that fails in the middle (strace makes the third fdatasync
 * of a shard's flusher thread fail with EIO): the import stops with a
 * clear error, leaves the directory as it was, and a rerun imports it all. */
Test(import, a_failed_log_flush_stops_the_import_and_leaves_the_directory_as_it_was,
     .timeout = 300, .fini = imp_fini)
{
    cr_assert_eq(fu_sh("command -v strace >/dev/null"), 0, "strace is installed (DEPS_TEST)");
    td_init(&dst, "impf");
    /* Segments the whole import fits in: its flushes all go to segment 1. */
    td_start(&dst, (const char *const[]){"--shards", "2", "--segment-kib", "65536", NULL});
    redisContext *c = td_connect(&dst);
    for (int i = 0; i < 7; i++)
        freeReplyObject(imp_ok(c, "EARN 900 1 5 live-%d", i));
    redisFree(c);
    td_stop(&dst);
    char file[256], log[256], out[8192], seg0[256], seg1[256], tool[512];
    imp_path(&dst, "big.jsonl", file, sizeof(file));
    imp_path(&dst, "import.log", log, sizeof(log));
    imp_big_file(file, imp_sums);
    char before[16384], after[16384];
    imp_files(&dst, before, sizeof(before));
    snprintf(seg0, sizeof(seg0), "%s/shard-000/log-0000000001.seg", dst.dir);
    snprintf(seg1, sizeof(seg1), "%s/shard-001/log-0000000001.seg", dst.dir);
    snprintf(tool, sizeof(tool), "%s/tally", getenv("TALLY_BUILD"));
    pid_t pid = fu_spawn((const char *const[]){"strace", "-f", "-qq", "-o", "/dev/null",
                                               "--seccomp-bpf", "-P", seg0, "-P", seg1, "-e",
                                               "trace=fdatasync", "-e",
                                               "inject=fdatasync:error=EIO:when=3", tool,
                                               "import", dst.dir, file, NULL},
                         log);
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    size_t len;
    char *said = fu_read_file(log, &len);
    cr_assert_not_null(said, "%s", log);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 1, "the import did not fail: %s", said);
    cr_assert_not_null(strstr(said, "Input/output error"), "%s", said);
    cr_assert_not_null(strstr(said, "nothing was imported"), "%s", said);
    free(said);
    imp_files(&dst, after, sizeof(after));
    cr_assert_str_eq(before, after, "the files are as they were");
    cr_assert_eq(imp_tool(out, sizeof(out), "import '%s' '%s'", dst.dir, file), 0, "%s", out);
    char want[64];
    snprintf(want, sizeof(want), "imported %d lines: ", IMP_BIG_LINES);
    cr_assert_not_null(strstr(out, want), "%s", out);
    imp_check_sums();
    cr_assert_eq(imp_tool(out, sizeof(out), "verify '%s'", dst.dir), 0, "%s", out);
    unlink(file);
}

/* ---- CSV --------------------------------------------------------------------------- */

Test(import, csv_with_a_header_and_quoted_memos_arrives_byte_for_byte, .timeout = 60,
     .fini = imp_fini)
{
    td_init(&dst, "impc");
    char file[256], back[256], out[4096];
    imp_path(&dst, "in.csv", file, sizeof(file));
    imp_path(&dst, "back.dump", back, sizeof(back));
    /* Columns in any order; commas, quotes, newlines and UTF-8 inside
     * quoted memos; an empty cell is no value. */
    imp_write(file, "\xef\xbb\xbfmemo,id,kind,merchant,account,points,amount,ts,expires,ref\r\n"
                    "\"a, b\",c1,earn,7,1,100,,1600000000000,,\r\n"
                    "\"she said \"\"hi\"\"\",c2,earn,7,1,50,,1600000000001,4102444800,\r\n"
                    "\"line one\nline two\",c3,redeem,7,1,,30,1600000000002,,\r\n"
                    "naïve ☕,c4,hold,7,1,,20,1600000000003,,\r\n"
                    ",c5,capture,7,1,,,1600000000004,,c4\r\n");
    cr_assert_eq(imp_tool(out, sizeof(out), "import '%s' '%s'", dst.dir, file), 0, "%s", out);
    imp_dump d;
    imp_dump_of(&dst, back, &d);
    cr_assert_eq(d.n, 5);
    static const char *const memos[] = {"a, b", "she said \"hi\"", "line one\nline two",
                                        "naïve ☕", ""};
    for (int i = 0; i < 5; i++) {
        tally_entry e = {.merchant = 7, .id_len = 2};
        snprintf(e.id, sizeof(e.id), "c%d", i + 1);
        const tally_import_item *it = imp_find(&d, &e);
        cr_assert_not_null(it);
        cr_assert_eq(it->e.memo_len, strlen(memos[i]));
        cr_assert_eq(memcmp(it->e.memo, memos[i], it->e.memo_len), 0, "memo of c%d", i + 1);
    }
    td_start(&dst, NULL);
    redisContext *c = td_connect(&dst);
    redisReply *r = td_cmd(c, "BALANCE 7 1");
    cr_assert_eq(td_int_field(r, "available"), 100 + 50 - 30 - 20);
    freeReplyObject(r);
    redisFree(c);
    td_stop(&dst);
    imp_free(&d);
    /* A CSV's errors name their line too. */
    imp_write(file, "id,kind,merchant,account,points,ts,colour\nx,earn,1,1,5,1,red\n");
    cr_assert_eq(imp_tool(out, sizeof(out), "import '%s' '%s'", dst.dir, file), 1);
    cr_assert_not_null(strstr(out, "line 1: header: unknown column \"colour\""), "%s", out);
    imp_write(file, "id,kind,merchant,account,points,ts,memo\nx,earn,1,1,5,1,\"open\n");
    cr_assert_eq(imp_tool(out, sizeof(out), "import '%s' '%s'", dst.dir, file), 1);
    cr_assert_not_null(strstr(out, "line 2: a quoted cell is not closed"), "%s", out);
    unlink(file);
    unlink(back);
}

/* ---- backup and restore ---------------------------------------------------------- */

Test(import, a_snapshot_plus_archived_segments_restore_into_a_new_directory, .timeout = 180,
     .fini = imp_fini)
{
    td_init(&src, "impb");
    td_init(&dst, "impr");
    char arch[160], cmd[2048], out[8192];
    imp_path(&src, "archive", arch, sizeof(arch));
    td_start(&src, (const char *const[]){"--shards", "2", "--segment-kib", "64", "--retention",
                                         "archive", "--archive-dir", arch, NULL});
    redisContext *c = td_connect(&src);
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < 1500; i++)
            freeReplyObject(imp_ok(c, "EARN %d %d %d b%d-%d MEMO padding-padding-padding-%d",
                                   i % 5 + 1, i % 40 + 1, i % 30 + 1, round, i, i));
        freeReplyObject(imp_ok(c, "REDEEM 1 1 3 rb-%d", round));
        redisReply *r = td_cmd(c, "SNAPSHOT");
        cr_assert_eq(r->type, REDIS_REPLY_STATUS, "%s", r->str);
        freeReplyObject(r);
    }
    for (int i = 0; i < 200; i++) /* after the last snapshot */
        freeReplyObject(imp_ok(c, "EARN 2 2 1 tail-%d", i));
    redisFree(c);
    td_stop(&src);
    /* Retention moved segments away: the directory alone lacks the start. */
    snprintf(cmd, sizeof(cmd), "ls '%s'/shard-000/*.seg | wc -l", arch);
    td_run(cmd, out, sizeof(out));
    cr_assert_gt(atoi(out), 0, "segments were archived");
    /* The backup: MANIFEST, each shard's newest snapshot, its archived and
     * its live segments.  The restore: all of them in a new directory (no
     * state: it is rebuilt from the snapshot and the log after it). */
    snprintf(cmd, sizeof(cmd),
             "set -e; cd '%s'; cp MANIFEST '%s/'; for s in shard-*; do "
             "mkdir -p '%s'/$s/snapshots; cp '%s'/$s/*.seg '%s'/$s/ 2>/dev/null || true; "
             "cp $s/*.seg '%s'/$s/; n=$(ls $s/snapshots/*.meta | sort | tail -1); "
             "b=${n%%.meta}; cp -r $b.mdb $b.ids $b.meta '%s'/$s/snapshots/; done",
             src.dir, dst.dir, dst.dir, arch, dst.dir, dst.dir, dst.dir);
    cr_assert_eq(td_run(cmd, out, sizeof(out)), 0, "%s", out);
    td_start(&dst, NULL);
    td_start(&src, NULL);
    imp_same_reads(&src, &dst);
    char cmd2[64];
    redisContext *x = td_connect(&src), *y = td_connect(&dst);
    for (int m = 1; m <= 5; m++) {
        snprintf(cmd2, sizeof(cmd2), "MERCHANT %d", m);
        imp_same_reply(x, y, cmd2);
        snprintf(cmd2, sizeof(cmd2), "BALANCE %d 2", m);
        imp_same_reply(x, y, cmd2);
    }
    redisFree(x);
    redisFree(y);
    td_stop(&src);
    td_stop(&dst);
    /* The restored directory has the whole log: its dump is the source's
     * with the archived segments put back, seq for seq. */
    snprintf(cmd, sizeof(cmd), "set -e; cd '%s'; for s in shard-*; do cp '%s'/$s/*.seg $s/; done",
             src.dir, arch);
    cr_assert_eq(td_run(cmd, out, sizeof(out)), 0, "%s", out);
    char f1[256], f2[256];
    imp_path(&src, "full-src.dump", f1, sizeof(f1));
    imp_path(&dst, "full-dst.dump", f2, sizeof(f2));
    snprintf(cmd, sizeof(cmd), "%s/tally dump '%s' --refusals > '%s' && %s/tally dump '%s' "
                               "--refusals > '%s' && cmp '%s' '%s' && wc -l < '%s'",
             getenv("TALLY_BUILD"), src.dir, f1, getenv("TALLY_BUILD"), dst.dir, f2, f1, f2, f1);
    cr_assert_eq(td_run(cmd, out, sizeof(out)), 0, "the dumps are identical: %s", out);
    cr_assert_geq(atoi(out), 3 * 1501 + 200, "%s", out);
    cr_assert_eq(imp_tool(out, sizeof(out), "verify '%s'", dst.dir), 0, "%s", out);
    unlink(f1);
    unlink(f2);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", arch);
    td_run(cmd, out, sizeof(out));
}
