/*
 * cluster_admin_test.c — `tally cluster create|status` (build/tally,
 * engine/cluster_admin.c) against a private ZooKeeper: the map it
 * records, the output cluster_admin.h documents, and its refusals.
 */
#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cluster.h"
#include "tallyd_util.h"
#include "zk_util.h"

static zku srv;

static void up(void)
{
    zku_start(&srv);
}

static void down(void)
{
    zku_cleanup(&srv);
}

/* Runs build/tally with the arguments (stdout and stderr into out);
 * returns its exit status. */
static int tool(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int tool(char *out, size_t cap, const char *fmt, ...)
{
    char args[1024], cmd[1600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof(args), fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof(cmd), "'%s/tally' %s", getenv("TALLY_BUILD"), args);
    return td_run(cmd, out, cap);
}

#define NODES "a@127.0.0.1:7001,b@127.0.0.1:7002,c@127.0.0.1:7003@9003"

Test(cluster_admin, create_records_the_map_and_prints_its_status, .init = up, .fini = down)
{
    char out[8192];
    int rc = tool(out, sizeof(out), "cluster create %s/prod --nodes " NODES " --replicas 1",
                  srv.hosts);
    cr_assert_eq(rc, 0, "%s", out);
    char want[2048];
    snprintf(want, sizeof(want),
             "created /tally/prod in ZooKeeper at %s\n"
             "cluster prod: 3 nodes, 3 groups, 1 replicas per group, 16384 slots\n"
             "node a 127.0.0.1:7001 repl 17001 down\n"
             "node b 127.0.0.1:7002 repl 17002 down\n"
             "node c 127.0.0.1:7003 repl 9003 down\n"
             "group 0 slots 0-5460 (5461) epoch 0 leader none\n"
             "  member a follower in-sync seq - epoch - lag -\n"
             "  member b follower in-sync seq - epoch - lag -\n"
             "group 1 slots 5461-10922 (5462) epoch 0 leader none\n"
             "  member b follower in-sync seq - epoch - lag -\n"
             "  member c follower in-sync seq - epoch - lag -\n"
             "group 2 slots 10923-16383 (5461) epoch 0 leader none\n"
             "  member c follower in-sync seq - epoch - lag -\n"
             "  member a follower in-sync seq - epoch - lag -\n",
             srv.hosts);
    cr_assert_str_eq(out, want);
    zk *z;
    cr_assert_eq(zk_open(&(zk_options){.hosts = srv.hosts}, &z), 0);
    cr_assert_eq(zk_wait_connected(z, 30000), 0);
    static cluster_map m;
    cr_assert_eq(cluster_read(z, "prod", false, &m), 0);
    cr_assert(m.node_count == 3 && m.group_count == 3 && m.nodes[2].repl_port == 9003);
    zk_close(z);
    rc = tool(out, sizeof(out), "cluster create %s/prod --nodes " NODES, srv.hosts);
    cr_assert_eq(rc, 1);
    cr_assert_not_null(strstr(out, "cluster prod already exists"), "%s", out);
}

Test(cluster_admin, status_shows_leaders_epochs_and_lag, .init = up, .fini = down)
{
    char out[8192];
    cr_assert_eq(tool(out, sizeof(out), "cluster create %s/live --nodes a@127.0.0.1:7001,"
                                        "b@127.0.0.1:7002 --groups 1", srv.hosts),
                 0, "%s", out);
    cluster *a, *b;
    cluster_options o = {.zk_hosts = srv.hosts, .name = "live", .node_id = "a",
                         .session_timeout_ms = 4000};
    cr_assert_eq(cluster_open(&o, &a), 0);
    o.node_id = "b";
    cr_assert_eq(cluster_open(&o, &b), 0);
    cluster_position(a, 0, (cluster_pos){.log_epoch = 0, .seq = 0});
    cluster_position(b, 0, (cluster_pos){.log_epoch = 0, .seq = 0});
    uint64_t epoch = 0;
    for (int i = 0; i < 3000 && !cluster_lease(a, 0, &epoch); i++)
        usleep(10000);
    cr_assert_eq(epoch, 1);
    cluster_position(a, 0, (cluster_pos){.log_epoch = 1, .seq = 1500});
    cluster_position(b, 0, (cluster_pos){.log_epoch = 1, .seq = 1450});
    const char *want = "group 0 slots 0-16383 (16384) epoch 1 leader a\n"
                       "  member a leader in-sync seq 1500 epoch 1 lag 0\n"
                       "  member b follower in-sync seq 1450 epoch 1 lag 50\n";
    for (int i = 0; i < 300; i++) { /* positions are reported within a second */
        cr_assert_eq(tool(out, sizeof(out), "cluster status %s/live", srv.hosts), 0, "%s", out);
        if (strstr(out, want) != NULL)
            break;
        usleep(100000);
    }
    cr_assert_not_null(strstr(out, want), "%s", out);
    cr_assert_not_null(strstr(out, "node a 127.0.0.1:7001 repl 17001 live\n"), "%s", out);
    cluster_close(b);
    for (int i = 0; i < 300; i++) {
        tool(out, sizeof(out), "cluster status %s/live", srv.hosts);
        if (strstr(out, "node b 127.0.0.1:7002 repl 17002 down\n") != NULL)
            break;
        usleep(100000);
    }
    cr_assert_not_null(strstr(out, "node b 127.0.0.1:7002 repl 17002 down\n"), "%s", out);
    cluster_close(a);
}

Test(cluster_admin, mistakes_are_refused_with_a_reason, .init = up, .fini = down)
{
    char out[4096];
    cr_assert_eq(tool(out, sizeof(out), "cluster status %s/none", srv.hosts), 1);
    cr_assert_not_null(strstr(out, "no cluster none in ZooKeeper"), "%s", out);
    cr_assert_eq(tool(out, sizeof(out), "cluster create %s/x --nodes a@h:1,a@h:2", srv.hosts), 2);
    cr_assert_not_null(strstr(out, "two nodes have the same id"), "%s", out);
    cr_assert_eq(tool(out, sizeof(out), "cluster create %s/x --nodes a@h", srv.hosts), 2);
    cr_assert_not_null(strstr(out, "'a@h': a node is ID@HOST:PORT"), "%s", out);
    cr_assert_eq(tool(out, sizeof(out), "cluster create %s/x --nodes a@h:1 --replicas 1",
                      srv.hosts), 2);
    cr_assert_not_null(strstr(out, "--replicas is 0..4 and less than the number of nodes"),
                       "%s", out);
    cr_assert_eq(tool(out, sizeof(out), "cluster create %s/x --nodes a@h:1 --replicas x",
                      srv.hosts), 2);
    cr_assert_eq(tool(out, sizeof(out), "cluster create %s --nodes a@h:1", srv.hosts), 2);
    cr_assert_not_null(strstr(out, "is not ZK_HOSTS/NAME"), "%s", out);
    cr_assert_eq(tool(out, sizeof(out), "cluster status %s/x --nodes a@h:1", srv.hosts), 2);
    cr_assert_not_null(strstr(out, "unknown option --nodes"), "%s", out);
    cr_assert_eq(tool(out, sizeof(out), "cluster grow %s/x", srv.hosts), 2);
    cr_assert_eq(tool(out, sizeof(out), "cluster status %s/x", "127.0.0.1:1"), 1);
    cr_assert_not_null(strstr(out, "cannot reach ZooKeeper at 127.0.0.1:1"), "%s", out);
}
