/*
 * tools_test.c — the offline tool, build/tally (tools/tally.c), on data
 * directories a real tallyd wrote: dump, stats, snapshot, verify, their
 * command line, and their refusal of a directory a running tallyd holds.
 */
#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fault_util.h"

static td srv;

static void up(void)
{
    td_init(&srv, "tool");
    td_start(&srv, (const char *const[]){"--shards", "2", NULL});
}

static void down(void)
{
    td_cleanup(&srv);
}

#define tool fu_tally_toolf

/* A few writes on both shards, one remembered refusal; then stops. */
static void fill_and_stop(void)
{
    redisContext *c = td_connect(&srv);
    const char *cmds[] = {
        "EARN 18446744073709551615 18446744073709551614 5 big-1",
        "EARN 18446744073709551614 18446744073709551615 6 big-2",
        "EARN 42 1 100 e1", "REDEEM 42 1 30 r1", "REDEEM 42 1 1000 refused-1",
        "EARN 7 1 10 e2",   "HOLD 7 1 5 h1",
    };
    for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
        freeReplyObject(td_cmd(c, cmds[i]));
    redisFree(c);
    td_stop(&srv);
}

Test(tools, help_goes_to_stdout_and_exits_0)
{
    char out[4096], cmd[600];
    snprintf(cmd, sizeof(cmd), "%s/tally --help 2>/dev/null", getenv("TALLY_BUILD"));
    cr_assert_eq(td_run(cmd, out, sizeof(out)), 0);
    cr_assert(strncmp(out, "usage: tally verify DIR\n", 24) == 0, "on stdout: %s", out);
    snprintf(cmd, sizeof(cmd), "%s/tally dump --help 2>/dev/null", getenv("TALLY_BUILD"));
    cr_assert_eq(td_run(cmd, out, sizeof(out)), 0);
    cr_assert_not_null(strstr(out, "tally dump DIR"), "%s", out);
}

Test(tools, bad_arguments_say_what_is_wrong, .init = up, .fini = down)
{
    td_stop(&srv);
    char out[4096];
    cr_assert_eq(tool(out, sizeof(out), "snapshot %s --retention bogus", srv.dir), 2);
    cr_assert_not_null(strstr(out, "--retention must be keep, delete or archive, got 'bogus'"),
                       "%s", out);
    cr_assert_eq(tool(out, sizeof(out), "snapshot %s --retention archive", srv.dir), 2);
    cr_assert_not_null(strstr(out, "--retention archive needs --archive-dir"), "%s", out);
    cr_assert_eq(tool(out, sizeof(out), "dump %s --merchant -1", srv.dir), 2);
    cr_assert_not_null(strstr(out, "--merchant must be 1..18446744073709551615, got '-1'"), "%s",
                       out);
    cr_assert_eq(tool(out, sizeof(out), "dump %s --bogus", srv.dir), 2);
    cr_assert_not_null(strstr(out, "unknown option --bogus"), "%s", out);
    cr_assert_eq(tool(out, sizeof(out), "stats %s --refusals", srv.dir), 2);
    cr_assert_not_null(strstr(out, "unknown option --refusals"), "%s", out);
    cr_assert_eq(tool(out, sizeof(out), "dump"), 2);
    cr_assert_not_null(strstr(out, "dump needs a data directory"), "%s", out);
    cr_assert_eq(tool(out, sizeof(out), "frob %s", srv.dir), 2);
    cr_assert_not_null(strstr(out, "unknown command 'frob'"), "%s", out);
}

Test(tools, dump_writes_64_bit_ids_as_strings_that_jq_keeps_exact, .init = up, .fini = down)
{
    fill_and_stop();
    char out[8192], cmd[1200];
    snprintf(cmd, sizeof(cmd),
             "%s/tally dump %s 2>/dev/null | jq -r 'select(.id|startswith(\"big\")) | "
             ".merchant + \" \" + .account' | sort",
             getenv("TALLY_BUILD"), srv.dir);
    cr_assert_eq(td_run(cmd, out, sizeof(out)), 0, "%s", out);
    cr_assert_str_eq(out, "18446744073709551614 18446744073709551615\n"
                          "18446744073709551615 18446744073709551614\n",
                     "jq kept both ids exact and apart");
    /* Options before or after DIR, and refusals only when asked. */
    char before[8192], after[8192];
    cr_assert_eq(tool(before, sizeof(before), "dump --merchant 42 %s", srv.dir), 0, "%s", before);
    cr_assert_eq(tool(after, sizeof(after), "dump %s --merchant 0042", srv.dir), 0, "%s", after);
    cr_assert_str_eq(before, after);
    cr_assert_not_null(strstr(before, "\"id\":\"e1\",\"kind\":\"earn\",\"merchant\":\"42\","
                                      "\"account\":\"1\",\"points\":100,"), "%s", before);
    cr_assert_null(strstr(before, "refused-1"), "%s", before);
    cr_assert_null(strstr(before, "\"merchant\":\"7\""), "only merchant 42: %s", before);
    cr_assert_eq(tool(out, sizeof(out), "dump --refusals --merchant 42 %s", srv.dir), 0);
    cr_assert_not_null(strstr(out, "\"id\":\"refused-1\",\"kind\":\"redeem\",\"merchant\":\"42\""
                                   ",\"account\":\"1\",\"refused\":\"INSUFFICIENT\""), "%s", out);
}

/* The line of `tally stats` output that starts with prefix. */
static const char *stats_line(const char *out, const char *prefix)
{
    const char *p = out;
    while (p && strncmp(p, prefix, strlen(prefix)) != 0) {
        p = strchr(p, '\n');
        p = p ? p + 1 : NULL;
    }
    cr_assert_not_null(p, "no line '%s' in: %s", prefix, out);
    return p;
}

Test(tools, stats_shows_per_shard_figures_and_snapshot_takes_one, .init = up, .fini = down)
{
    /* Where each shard stands, as the server says it. */
    redisContext *c = td_connect(&srv);
    for (int i = 0; i < 20; i++)
        freeReplyObject(td_cmd(c, "EARN %d 1 10 st-%d", 1 + i, i));
    freeReplyObject(td_cmd(c, "REDEEM 1 1 500 st-refused"));
    redisReply *info = td_cmd(c, "INFO shards");
    unsigned long long seq[2] = {0, 0};
    for (int s = 0; s < 2; s++) {
        char key[32];
        snprintf(key, sizeof(key), "shard%d:status=ok,seq=", s);
        const char *p = strstr(info->str, key);
        cr_assert_not_null(p, "%s", info->str);
        seq[s] = strtoull(p + strlen(key), NULL, 10);
    }
    cr_assert(seq[0] > 0 && seq[1] > 0, "both shards were written: %s", info->str);
    cr_assert_eq(seq[0] + seq[1], 21);
    freeReplyObject(info);
    redisFree(c);
    td_stop(&srv);

    char out[8192], want[128];
    cr_assert_eq(tool(out, sizeof(out), "stats %s", srv.dir), 0, "%s", out);
    cr_assert_not_null(strstr(out, "shards: 2\n"), "%s", out);
    for (int s = 0; s < 2; s++) {
        snprintf(want, sizeof(want), "shard %d: seq %llu, checkpoint seq %llu, log from seq 1, "
                 "snapshot seq 0 (0 bytes), disk bytes ", s, seq[s], seq[s]);
        const char *line = stats_line(out, want);
        cr_assert_not_null(strstr(line, ", status ok\n  entries earn "), "%s", out);
    }
    cr_assert_not_null(strstr(out, "total: entries earn 20 redeem 0 "), "%s", out);
    cr_assert_not_null(strstr(out, "; refusals remembered 1\n"), "%s", out);

    cr_assert_eq(tool(out, sizeof(out), "snapshot %s", srv.dir), 0, "%s", out);
    for (int s = 0; s < 2; s++) {
        snprintf(want, sizeof(want), "shard %d: snapshot at seq %llu, ", s, seq[s]);
        stats_line(out, want);
    }
    cr_assert_eq(tool(out, sizeof(out), "stats %s", srv.dir), 0, "%s", out);
    for (int s = 0; s < 2; s++) {
        snprintf(want, sizeof(want), "shard %d: seq %llu, checkpoint seq %llu, log from seq 1, "
                 "snapshot seq %llu (", s, seq[s], seq[s], seq[s]);
        stats_line(out, want);
    }
    cr_assert_eq(tool(out, sizeof(out), "verify %s", srv.dir), 0, "%s", out);
    cr_assert_not_null(strstr(out, "ok: 2 shards, 21 records"), "%s", out);
}

Test(tools, every_tool_refuses_a_directory_a_running_tallyd_holds, .init = up, .fini = down)
{
    const char *cmds[] = {"verify", "dump", "stats", "snapshot"};
    for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
        char out[4096];
        int rc = tool(out, sizeof(out), "%s %s", cmds[i], srv.dir);
        cr_assert_eq(rc, 1, "tally %s on a held directory: %s", cmds[i], out);
        cr_assert_not_null(strstr(out, "in use by a running tallyd"), "%s: %s", cmds[i], out);
    }
    redisContext *c = td_connect(&srv);
    redisReply *r = td_cmd(c, "PING");
    cr_assert_str_eq(r->str, "PONG", "the server is unharmed");
    freeReplyObject(r);
    redisFree(c);
    td_stop(&srv);
}
