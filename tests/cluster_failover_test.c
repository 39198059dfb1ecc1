/*
 * cluster_failover_test.c — a 3-node cluster (1 replica per group, three
 * groups in a ring) of real tallyd processes on loopback, a private
 * ZooKeeper, and redis-py's RedisCluster driving points-v1, while nodes
 * are killed, paused past their session timeout, and ZooKeeper itself is
 * restarted.  After each: every write acknowledged under --ack
 * replicated is there with the same seq, every group's members hold the
 * same log (durable seq and chain value), every replica's balances are
 * its leader's, VERIFY answers OK everywhere, and `tally verify` finds
 * each group's state equal to the replay of its log.
 *
 * No timing is asserted (the machine is shared); the time from a kill to
 * the first write acknowledged on the group again is reported, and
 * TALLY_CLUSTER_REPORT=FILE appends the figures there.
 * TALLY_CLUSTER_KILLS sets how many leaders the kill loop kills (3 in a
 * plain `make test`; the 20 and more with `make test-cluster`).
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cluster_util.h"
#include "tallyd_util.h"

#define CF_KILLS_DEFAULT 3
#define CF_KILLS_MAX 200

static cu c;

static void cf_fini(void) { cu_cleanup(&c); }

static void cf_report(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void cf_report(const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    cr_log_info("%s", line);
    fprintf(stderr, "cluster: %s\n", line);
    const char *path = getenv("TALLY_CLUSTER_REPORT");
    FILE *f = path && *path ? fopen(path, "a") : NULL;
    if (f) {
        fprintf(f, "%s\n", line);
        fclose(f);
    }
}

static int cf_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Every group took a write after `since` (the load goes on everywhere). */
static void cf_wait_writes(uint64_t since)
{
    for (uint32_t g = 0; g < c.n; g++)
        cr_assert_neq(cu_first_ack_after(&c, g, since, 120000), 0,
                      "group %u acknowledged nothing for 120 s", g);
}

/* The checks after the load stopped: acknowledged writes, logs, balances,
 * VERIFY, and offline verification after a clean stop. */
static void cf_final_checks(bool acked_kept)
{
    cu_load_stop(&c);
    cu_wait_converged(&c, 120000);
    if (acked_kept)
        cu_check_acked(&c);
    cu_check_balances(&c);
    cu_verify_all(&c);
    for (uint32_t i = 0; i < c.n; i++)
        cu_node_stop(&c, i);
    cu_verify_offline(&c);
}

Test(cluster_failover, a_leader_killed_again_and_again_under_load_loses_no_acknowledged_write,
     .fini = cf_fini, .timeout = 3600)
{
    cu_start(&c, "kills", 3, NULL);
    cu_load_start(&c);
    long kills = cu_env("TALLY_CLUSTER_KILLS", CF_KILLS_DEFAULT);
    cr_assert(kills >= 1 && kills <= CF_KILLS_MAX);
    uint64_t took[CF_KILLS_MAX];
    for (long k = 0; k < kills; k++) {
        uint32_t g = (uint32_t)(k % c.n);
        int l = cu_leader(&c, g);
        cr_assert_geq(l, 0, "group %u has no leader before kill %ld", g, k);
        uint64_t t0 = cu_unix_ms();
        cu_node_kill(&c, (uint32_t)l);
        /* A supervisor brings it back at once: with one replica per group
         * and --ack replicated, the new leader acknowledges only once a
         * replica confirms again. */
        cu_node_start(&c, (uint32_t)l);
        /* A reply already on its way when the kill landed is not the new
         * leader's: only writes acknowledged 200 ms after it count. */
        uint64_t t1 = cu_first_ack_after(&c, g, t0 + 200, 120000);
        cr_assert_neq(t1, 0, "group %u acknowledged no write within 120 s of kill %ld", g, k);
        took[k] = t1 - t0;
        cf_report("kill %ld: node %s, leader of group %u: first write acknowledged again "
                  "after %llu ms",
                  k + 1, c.nodes[l].id, g, (unsigned long long)took[k]);
        cf_wait_writes(t1);
    }
    uint64_t acked = cu_acked(&c);
    cf_final_checks(true);
    qsort(took, (size_t)kills, sizeof(took[0]), cf_cmp);
    cf_report("kill -9 of a leader, %ld times, %llu writes acknowledged: from the kill to the "
              "first write acknowledged on the group again p50 %llu ms, max %llu ms",
              kills, (unsigned long long)acked, (unsigned long long)took[kills / 2],
              (unsigned long long)took[kills - 1]);
}

/* SIGSTOP the leader of group 1 past its session timeout, let the group
 * elect another, SIGCONT it: it must acknowledge nothing after it lost its
 * lease, drop what it never replicated and follow the new leader. */
static void cf_paused_leader(const char *ack)
{
    const char *extra[] = {"--ack", ack, NULL};
    cu_start(&c, "paused", 3, extra);
    cu_load_start(&c);
    uint32_t g = 1;
    int l = cu_leader(&c, g);
    cr_assert_geq(l, 0);
    uint64_t t0 = cu_unix_ms(), m0 = cu_mono_ms();
    cu_node_pause(&c, (uint32_t)l);
    int now = -1;
    while ((now = cu_leader(&c, g)) < 0 && cu_mono_ms() - m0 < 120000)
        usleep(100000);
    cr_assert(now >= 0 && now != l, "no other node leads group %u while %s is paused", g,
              c.nodes[l].id);
    uint64_t elected = cu_unix_ms() - t0, t1 = 0;
    if (strcmp(ack, "local") == 0) {
        /* The new leader acknowledges on its own flush: while the old one
         * still sleeps. */
        t1 = cu_first_ack_after(&c, g, t0 + 200, 120000);
        cr_assert_neq(t1, 0, "group %u acknowledged nothing within 120 s of the pause", g);
        cu_node_resume(&c, (uint32_t)l);
    } else {
        /* One replica per group: the new leader acknowledges once its
         * replica — the old leader, woken — confirms again. */
        cu_node_resume(&c, (uint32_t)l);
        t1 = cu_first_ack_after(&c, g, t0 + 200, 120000);
        cr_assert_neq(t1, 0, "group %u acknowledged nothing within 120 s of the pause", g);
    }
    cf_report("--ack %s: leader %s of group %u paused: %s leads it after %llu ms, the first write "
              "acknowledged again after %llu ms",
              ack, c.nodes[l].id, g, c.nodes[now].id, (unsigned long long)elected,
              (unsigned long long)(t1 - t0));
    cf_wait_writes(cu_unix_ms());
    cf_final_checks(strcmp(ack, "replicated") == 0);
}

Test(cluster_failover, a_leader_paused_past_its_session_under_ack_replicated_rejoins_as_a_replica,
     .fini = cf_fini, .timeout = 900)
{
    cf_paused_leader("replicated");
}

Test(cluster_failover, a_leader_paused_past_its_session_under_ack_local_rejoins_as_a_replica,
     .fini = cf_fini, .timeout = 900)
{
    cf_paused_leader("local");
}

/* The node that replicates group g: of its two members in the ring (g and
 * g + 1), the one that does not lead it (it leads another group). */
static uint32_t cf_replica_of(uint32_t g)
{
    int l = cu_leader(&c, g);
    uint32_t a = g, b = (g + 1) % c.n;
    cr_assert(l == (int)a || l == (int)b, "group %u's leader is one of its members", g);
    return l == (int)a ? b : a;
}

Test(cluster_failover, a_replica_killed_and_restarted_catches_up_and_loses_nothing,
     .fini = cf_fini, .timeout = 900)
{
    cu_start(&c, "replica", 3, NULL);
    cu_load_start(&c);
    uint32_t g = 2, r = cf_replica_of(g);
    cu_node_kill(&c, r);
    usleep(1000000);
    cu_node_start(&c, r);
    cf_wait_writes(cu_unix_ms());
    cf_final_checks(true);
}

Test(cluster_failover, zookeeper_restarted_under_load_pauses_writes_and_loses_nothing,
     .fini = cf_fini, .timeout = 900)
{
    cu_start(&c, "zk", 3, NULL);
    cu_load_start(&c);
    uint64_t before = cu_acked(&c);
    zku_stop(&c.zk);
    /* Past the session timeout (3 s): every lease ends with ZooKeeper. */
    usleep(5000000);
    zku_restart(&c.zk);
    cf_wait_writes(cu_unix_ms());
    cf_report("ZooKeeper down 5 s under load: %llu writes acknowledged before, %llu after",
              (unsigned long long)before, (unsigned long long)cu_acked(&c));
    cf_final_checks(true);
}

Test(cluster_failover, a_replica_the_leaders_retained_log_no_longer_reaches_starts_from_a_snapshot,
     .fini = cf_fini, .timeout = 900)
{
    const char *extra[] = {"--ack", "local", "--snapshot-every", "500", "--retention", "delete",
                           NULL};
    cu_start(&c, "boot", 3, extra);
    cu_load_start(&c);
    uint32_t g = 2, r = cf_replica_of(g);
    int l = cu_leader(&c, g);
    cu_node_kill(&c, r);
    /* Until retention dropped the leader's first segment: what the replica
     * needs next is gone from the leader's log. */
    char first[160];
    snprintf(first, sizeof(first), "%s/group-%u/shard-000/log-0000000001.seg", c.nodes[l].dir, g);
    uint64_t end = cu_mono_ms() + 300000;
    while (access(first, F_OK) == 0 && cu_mono_ms() < end)
        usleep(200000);
    cr_assert_neq(access(first, F_OK), 0, "retention never dropped %s", first);
    cu_node_start(&c, r);
    cf_wait_writes(cu_unix_ms());
    cf_final_checks(false);
    char cmdline[300], out[4096];
    snprintf(cmdline, sizeof(cmdline), "grep -c \"group %u: bootstrapped from the leader's "
                                       "snapshot seq [0-9]*: ok\" %s",
             g, c.nodes[r].log);
    cr_assert_eq(td_run(cmdline, out, sizeof(out)), 0, "node %s took no snapshot: %s",
                 c.nodes[r].id, out);
}
