/*
 * upgrade_test.c — a data directory written by release 1 (log format 1,
 * state format 2: tests/fixtures/release1.tar.gz, made by that release's
 * binaries) opened by this one: upgraded in place keeping every seq, id,
 * entry and remembered refusal (issue 11), also with a torn tail, across
 * a crash in the middle, and refused with advice when its log's start is
 * gone.  The check is release 1's own `tally dump --refusals` of the
 * fixture against this release's dump of the upgraded directory, field by
 * field.  And a directory of release 2.0 (state format 3, accounts stored
 * as their structs: tests/fixtures/release2.tar.gz), whose state is
 * re-encoded in place, balances and entries unchanged.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "export.h"
#include "state.h"
#include "fault_util.h"
#include "record.h"
#include "tallyd_util.h"

/* ---- the fixture ---------------------------------------------------------- */

static td up_td;

/* A fresh copy of a fixture's directory (release1, release2) in up_td.dir. */
static void up_extract_from(const char *release)
{
    td_init(&up_td, "upg");
    char cmd[1024], out[4096];
    snprintf(cmd, sizeof(cmd),
             "set -e; tmp=$(mktemp -d); tar xzf '%s/tests/fixtures/%s.tar.gz' -C $tmp; "
             "cp -a $tmp/rel%c/. '%s/'; rm -rf $tmp",
             td_source_dir(), release, release[strlen(release) - 1], up_td.dir);
    cr_assert_eq(td_run(cmd, out, sizeof(out)), 0, "%s", out);
}

static void up_extract(void) { up_extract_from("release1"); }

static void up_cleanup(void) { td_cleanup(&up_td); }

/* `tally dump --refusals` of the directory, one line per array slot. */
static char **up_dump(const char *file, size_t *n)
{
    char cmd[512], path[256];
    snprintf(path, sizeof(path), "%s.upgrade.dump", up_td.dir);
    if (!file) {
        char out[4096];
        snprintf(cmd, sizeof(cmd), "%s/tally dump '%s' --refusals > '%s'", getenv("TALLY_BUILD"),
                 up_td.dir, path);
        cr_assert_eq(td_run(cmd, out, sizeof(out)), 0, "tally dump: %s", out);
        file = path;
    }
    FILE *f = fopen(file, "r");
    cr_assert_not_null(f, "%s", file);
    char **lines = NULL, buf[8192];
    size_t cap = 0;
    *n = 0;
    while (fgets(buf, sizeof(buf), f)) {
        if (*n == cap) {
            cap = cap ? cap * 2 : 1024;
            lines = realloc(lines, cap * sizeof(*lines));
        }
        lines[(*n)++] = strdup(buf);
    }
    fclose(f);
    if (file == path)
        unlink(path);
    return lines;
}

static void up_free(char **lines, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(lines[i]);
    free(lines);
}

/* A dump line read as `tally import` reads it (release 1's lines too:
 * their memo escapes are bytes). */
static void up_parse(const char *line, tally_import_item *it)
{
    char err[256];
    int rc = export_parse_json(line, strlen(line), it, err, sizeof(err));
    cr_assert_eq(rc, 0, "%s: %s", err, line);
}

/* Every field release 1 printed, equal in this release's dump (matched by
 * merchant and id: this release writes every shard at once, in time
 * order; lines whose id ends in "after-upgrade" are writes made since,
 * and release 2.0's open hold is voided by the sweep once its year is over).
 * With `skip_seq`, release 1's last line (shard 1's last record,
 * the dump's last shard) is that seq and expected gone. */
static void up_compare(char **old, size_t n_old, char **now, size_t n_now, uint64_t skip_seq)
{
    tally_import_item *items = calloc(n_now ? n_now : 1, sizeof(*items));
    size_t after = 0, matched = 0;
    for (size_t j = 0; j < n_now; j++) {
        up_parse(now[j], &items[j]);
        const tally_entry *e = &items[j].e;
        after += (e->id_len >= 13 && memcmp(e->id + e->id_len - 13, "after-upgrade", 13) == 0) ||
                 (e->id_len == 12 && memcmp(e->id, "~void:open-1", 12) == 0);
    }
    for (size_t i = 0; i < n_old; i++) {
        tally_import_item o;
        up_parse(old[i], &o);
        if (skip_seq && i == n_old - 1) {
            cr_assert_eq(o.e.seq, skip_seq, "the torn record is the last");
            continue;
        }
        size_t j = 0;
        while (j < n_now && !(items[j].e.merchant == o.e.merchant &&
                              items[j].e.id_len == o.e.id_len &&
                              memcmp(items[j].e.id, o.e.id, o.e.id_len) == 0))
            j++;
        cr_assert_lt(j, n_now, "release 1's %s is in this release's dump", old[i]);
        const tally_entry *a = &o.e, *b = &items[j].e;
        cr_assert(a->seq == b->seq && a->kind == b->kind && a->account == b->account &&
                      a->points == b->points && a->balance == b->balance && a->held == b->held &&
                      a->ts_ms == b->ts_ms && a->expires == b->expires &&
                      a->ref_len == b->ref_len && memcmp(a->ref, b->ref, a->ref_len) == 0 &&
                      a->memo_len == b->memo_len && memcmp(a->memo, b->memo, a->memo_len) == 0 &&
                      o.refused == items[j].refused,
                  "release 1 %s now %s", old[i], now[j]);
        matched++;
    }
    cr_assert_eq(matched + after, n_now, "this release's dump has %zu lines, %zu matched", n_now,
                 matched);
    free(items);
}

static char **up_release1(size_t *n)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/release1.dump", up_td.dir);
    char **lines = up_dump(path, n);
    unlink(path); /* not part of the data directory */
    return lines;
}

static void up_verify_ok(void)
{
    char cmd[512], out[8192];
    snprintf(cmd, sizeof(cmd), "%s/tally verify '%s' 2>&1", getenv("TALLY_BUILD"), up_td.dir);
    cr_assert_eq(td_run(cmd, out, sizeof(out)), 0, "tally verify: %s", out);
}

/* ---- tests -------------------------------------------------------------------- */

Test(upgrade, a_release_1_directory_is_upgraded_in_place_keeping_every_entry, .timeout = 120,
     .fini = up_cleanup)
{
    up_extract();
    size_t n_old;
    char **old = up_release1(&n_old);
    cr_assert_gt(n_old, 1000);
    /* The offline tools say what to do, and change nothing. */
    char cmd[512], out[4096];
    snprintf(cmd, sizeof(cmd), "%s/tally verify '%s' 2>&1", getenv("TALLY_BUILD"), up_td.dir);
    cr_assert_neq(td_run(cmd, out, sizeof(out)), 0);
    cr_assert_not_null(strstr(out, "release-1 data: start tallyd once"), "%s", out);
    td_start(&up_td, NULL);
    redisContext *c = td_connect(&up_td);
    redisReply *r = td_cmd(c, "VERIFY");
    cr_assert_eq(r->type, REDIS_REPLY_STATUS, "%s", r->str);
    freeReplyObject(r);
    /* Retries of release-1 writes replay them; refusals stay refused. */
    r = td_cmd(c, "REDEEM 11 1 999999 r-11-1-big");
    cr_assert_eq(r->type, REDIS_REPLY_ERROR);
    cr_assert(strncmp(r->str, "INSUFFICIENT", 12) == 0, "%s", r->str);
    freeReplyObject(r);
    r = td_cmd(c, "EARN 14 2 2 bulk-1 MEMO m1");
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
    cr_assert(td_field(r, "seq") && td_int_field(r, "seq") > 0);
    freeReplyObject(r);
    /* And release 2 goes on from there. */
    r = td_cmd(c, "EARN 11 1 5 after-upgrade");
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
    freeReplyObject(r);
    redisFree(c);
    td_stop(&up_td);
    size_t n_now;
    char **now = up_dump(NULL, &n_now);
    cr_assert_eq(n_now, n_old + 1, "one new entry after the upgrade");
    up_compare(old, n_old, now, n_now, 0);
    up_verify_ok();
    char kept[128];
    snprintf(kept, sizeof(kept), "%s/shard-000.release1/log-0000000001.seg", up_td.dir);
    cr_assert_eq(access(kept, F_OK), 0, "the release-1 shard is kept aside");
    up_free(old, n_old);
    up_free(now, n_now);
}

/* The last record of shard 1's only segment: its offset and seq. */
static void up_last_record(size_t *off_out, size_t *len_out, uint64_t *seq_out)
{
    char seg[160];
    snprintf(seg, sizeof(seg), "%s/shard-001/log-0000000001.seg", up_td.dir);
    size_t size = 0;
    uint8_t *m = (uint8_t *)fu_read_file(seg, &size);
    cr_assert_not_null(m);
    size_t off = 64, last = 0, last_len = 0;
    uint64_t seq = 0;
    for (;;) {
        record r;
        size_t len;
        uint64_t sum;
        if (record_decode_v1(m + off, size - off, &r, &len, &sum) != RECORD_OK)
            break;
        last = off;
        last_len = len;
        seq = r.seq;
        off += len;
    }
    free(m);
    cr_assert_gt(seq, 0);
    *off_out = last;
    *len_out = last_len;
    *seq_out = seq;
}

Test(upgrade, a_torn_tail_of_release_1_is_left_out_and_reported, .timeout = 120,
     .fini = up_cleanup)
{
    up_extract();
    size_t n_old;
    char **old = up_release1(&n_old);
    size_t off, len;
    uint64_t seq;
    up_last_record(&off, &len, &seq);
    /* The second half of the last record never landed. */
    char seg[160];
    snprintf(seg, sizeof(seg), "%s/shard-001/log-0000000001.seg", up_td.dir);
    int fd = open(seg, O_WRONLY);
    cr_assert(fd >= 0);
    char zeros[512] = {0};
    cr_assert_eq(pwrite(fd, zeros, len / 2, (off_t)(off + len / 2)), (ssize_t)(len / 2));
    close(fd);
    td_start(&up_td, NULL);
    td_stop(&up_td);
    cr_assert_gt(fu_log_count(&up_td, (const char *const[]){"upgrade", "torn tail", NULL}), 0,
                 "the torn tail is reported");
    size_t n_now;
    char **now = up_dump(NULL, &n_now);
    cr_assert_eq(n_now, n_old - 1);
    up_compare(old, n_old, now, n_now, seq);
    up_verify_ok();
    up_free(old, n_old);
    up_free(now, n_now);
}

Test(upgrade, a_crash_during_the_upgrade_is_begun_again_or_finished_at_the_next_start,
     .timeout = 180, .fini = up_cleanup)
{
    up_extract();
    size_t n_old;
    char **old = up_release1(&n_old);
    char cmd[1024], out[4096];
    /* Killed while converting: a half-made shard-000.upgrade. */
    snprintf(cmd, sizeof(cmd), "mkdir -p '%s/shard-000.upgrade/state' && "
                               "echo junk > '%s/shard-000.upgrade/log-0000000001.seg'",
             up_td.dir, up_td.dir);
    cr_assert_eq(td_run(cmd, out, sizeof(out)), 0, "%s", out);
    td_start(&up_td, NULL);
    td_stop(&up_td);
    size_t n_now;
    char **now = up_dump(NULL, &n_now);
    up_compare(old, n_old, now, n_now, 0);
    up_free(now, n_now);
    /* Killed between the conversion's end and the renames: the complete
     * new shard is waiting (UPGRADED), the old one is still in place.  And
     * killed between the two renames: the old one moved aside, no shard. */
    for (int at = 0; at < 2; at++) {
        snprintf(cmd, sizeof(cmd),
                 "set -e; cd '%s'; mv shard-000 shard-000.upgrade; touch shard-000.upgrade/UPGRADED; "
                 "%s",
                 up_td.dir, at == 0 ? "mv shard-000.release1 shard-000" : "true");
        cr_assert_eq(td_run(cmd, out, sizeof(out)), 0, "%s", out);
        td_start(&up_td, NULL);
        td_stop(&up_td);
        now = up_dump(NULL, &n_now);
        up_compare(old, n_old, now, n_now, 0);
        up_free(now, n_now);
    }
    up_verify_ok();
    up_free(old, n_old);
}

Test(upgrade, release_1_data_without_the_start_of_its_log_is_refused_with_what_to_do,
     .timeout = 60, .fini = up_cleanup)
{
    up_extract();
    size_t n_old;
    char **old = up_release1(&n_old);
    up_free(old, n_old);
    char seg[160];
    snprintf(seg, sizeof(seg), "%s/shard-000/log-0000000001.seg", up_td.dir);
    cr_assert_eq(unlink(seg), 0);
    int status = td_start_expect_exit(&up_td, NULL);
    cr_assert_neq(status, 0, "tallyd refuses to start");
    cr_assert_neq(status, -1);
    cr_assert_gt(fu_log_count(&up_td, (const char *const[]){"retention dropped its start",
                                                             "tally import", NULL}),
                 0, "it says why and what to do");
    snprintf(seg, sizeof(seg), "%s/shard-000/log-0000000002.seg", up_td.dir);
    cr_assert_eq(access(seg, F_OK), 0, "nothing was touched");
}

/* The "format" meta row of shard i's state. */
static uint64_t up_state_format(int i)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/shard-%03d/state/data.mdb", up_td.dir, i);
    uint64_t format = 0;
    size_t len = 0;
    cr_assert_eq(state_file_meta(path, "format", &format, sizeof(format), &len), 0, "%s", path);
    cr_assert_eq(len, sizeof(format));
    return format;
}

/* Whether the fixture's open hold (TIMEOUT a year, from the time in
 * release2.now) is still open: after that the sweep voids it. */
static bool up_hold_open(void)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/release2.now", up_td.dir);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "%s", path);
    long long made = 0;
    cr_assert_eq(fscanf(f, "%lld", &made), 1);
    fclose(f);
    return (long long)time(NULL) < made + 365LL * 86400 - 3600;
}

/* Each line of release2.balances ("BALANCE m a" then BALANCE's reply)
 * asked again of the running tallyd: the same reply (15 2's once its
 * hold's year is over: voided, held 0). */
static void up_balances_equal(redisContext *c)
{
    char path[256], line[1024];
    snprintf(path, sizeof(path), "%s/release2.balances", up_td.dir);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "%s", path);
    int n = 0;
    while (fgets(line, sizeof(line), f)) {
        unsigned long long m, a;
        int at = 0;
        cr_assert_eq(sscanf(line, "BALANCE %llu %llu %n", &m, &a, &at), 2, "%s", line);
        char want[1024] = "", *p = want;
        redisReply *r = td_cmd(c, "BALANCE %llu %llu", m, a);
        cr_assert_eq(r->type, REDIS_REPLY_ARRAY, "BALANCE %llu %llu", m, a);
        for (size_t i = 0; i < r->elements; i++) {
            const redisReply *e = r->element[i];
            if (e->type == REDIS_REPLY_INTEGER)
                p += sprintf(p, "%lld ", e->integer);
            else
                p += sprintf(p, "%s ", e->str);
        }
        freeReplyObject(r);
        line[strcspn(line, "\n")] = 0;
        if (m == 15 && a == 2 && !up_hold_open())
            cr_assert_not_null(strstr(want, " held 0 "), "%s", want);
        else
            cr_assert_str_eq(want, line + at, "BALANCE %llu %llu", m, a);
        n++;
    }
    fclose(f);
    cr_assert_eq(n, 35);
}

Test(upgrade, a_release_2_0_state_is_re_encoded_in_place_keeping_every_balance, .timeout = 120,
     .fini = up_cleanup)
{
    up_extract_from("release2");
    char path[256];
    snprintf(path, sizeof(path), "%s/release2.dump", up_td.dir);
    size_t n_old;
    char **old = up_dump(path, &n_old);
    unlink(path);
    cr_assert_gt(n_old, 1300);
    cr_assert_eq(up_state_format(0), 3);
    cr_assert_eq(up_state_format(1), 3);
    /* Offline tools read it as it is (re-encoded in memory), checking
     * state == replay from its format-3 snapshot, and change nothing. */
    up_verify_ok();
    cr_assert_eq(up_state_format(0), 3);
    size_t n_now;
    char **now = up_dump(NULL, &n_now);
    cr_assert_eq(n_now, n_old);
    up_compare(old, n_old, now, n_now, 0);
    up_free(now, n_now);
    /* tallyd re-encodes it at start and says so. */
    td_start(&up_td, NULL);
    cr_assert_eq(fu_log_count(&up_td, (const char *const[]){"state format 3 upgraded", NULL}), 2);
    redisContext *c = td_connect(&up_td);
    up_balances_equal(c);
    redisReply *r = td_cmd(c, "VERIFY");
    cr_assert_eq(r->type, REDIS_REPLY_STATUS, "%s", r->str);
    freeReplyObject(r);
    /* The account whose 200 lots are in chunks: a redemption across many of
     * them, refunded back to them. */
    r = td_cmd(c, "REDEEM 15 1 900 after-upgrade");
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY, "%s", r->type == REDIS_REPLY_ERROR ? r->str : "");
    freeReplyObject(r);
    r = td_cmd(c, "REVERSE 15 after-upgrade refund-after-upgrade");
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY, "%s", r->type == REDIS_REPLY_ERROR ? r->str : "");
    freeReplyObject(r);
    r = td_cmd(c, "BALANCE 15 1");
    cr_assert_eq(td_int_field(r, "available"), 988);
    freeReplyObject(r);
    /* An open hold of release 2.0 is still captured against. */
    bool hold_open = up_hold_open();
    if (hold_open) {
        r = td_cmd(c, "CAPTURE 15 open-1 capture-after-upgrade");
        cr_assert_eq(r->type, REDIS_REPLY_ARRAY, "%s",
                     r->type == REDIS_REPLY_ERROR ? r->str : "");
        freeReplyObject(r);
    }
    redisFree(c);
    td_kill9(&up_td);
    cr_assert_eq(up_state_format(0), 4);
    cr_assert_eq(up_state_format(1), 4);
    td_start(&up_td, NULL);
    cr_assert_eq(fu_log_count(&up_td, (const char *const[]){"state format 3 upgraded", NULL}), 2,
                 "once");
    c = td_connect(&up_td);
    r = td_cmd(c, "BALANCE 15 2");
    cr_assert_eq(td_int_field(r, "held"), 0, "captured (or voided when its year is over)");
    cr_assert_eq(td_int_field(r, "available"), hold_open ? 380 : 500);
    cr_assert_eq(td_int_field(r, "pending"), 100);
    freeReplyObject(r);
    r = td_cmd(c, "VERIFY");
    cr_assert_eq(r->type, REDIS_REPLY_STATUS, "%s", r->str);
    freeReplyObject(r);
    redisFree(c);
    td_stop(&up_td);
    now = up_dump(NULL, &n_now);
    size_t voided = hold_open ? 0 : 1; /* the sweep's ~void: entry */
    cr_assert_eq(n_now, n_old + 2 + hold_open + voided, "the writes after the upgrade");
    up_compare(old, n_old, now, n_now, 0);
    up_verify_ok();
    up_free(old, n_old);
    up_free(now, n_now);
}
