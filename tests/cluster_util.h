/*
 * cluster_util.h — a real cluster for the tests: a private ZooKeeper
 * (zk_util.h), a map made by `tally cluster create`, and tallyd processes
 * on loopback ports, each in a temporary directory; the load of
 * tests/clients/cluster_load.py (redis-py RedisCluster) against them; and
 * the checks every failover test makes.  Everything is killed if the
 * test process dies, and removed by cu_cleanup.
 */
#ifndef TALLY_TESTS_CLUSTER_UTIL_H
#define TALLY_TESTS_CLUSTER_UTIL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "zk_util.h"

#define CU_NODES_MAX 3
#define CU_GROUPS_MAX 3

typedef struct cu_node {
    char id[8];
    uint16_t port, repl_port;
    char dir[64];
    char log[96];
    pid_t pid;    /* 0: not running */
    bool stopped; /* SIGSTOPped */
} cu_node;

typedef struct cu {
    zku zk;
    char name[32];
    uint32_t n;
    cu_node nodes[CU_NODES_MAX];
    const char *extra[24]; /* tallyd options every node gets */
    char load_dir[96];
    char load_log[128];
    pid_t load_pid;
} cu;

/* One group's state as a node reports it (INFO replication). */
typedef struct cu_group {
    bool present;
    char role[16];
    char leader[16];
    uint64_t epoch, durable_seq, chain;
    uint32_t replicas; /* a leader: replicas streaming */
} cu_group;

/* Starts ZooKeeper, creates cluster `name` of n nodes with 1 replica per
 * group (ring: n groups), starts every node with `extra` options (NULL-
 * terminated, kept) and waits until every group has a leader with a
 * replica streaming. */
void cu_start(cu *c, const char *name, uint32_t n, const char *const *extra);
void cu_node_start(cu *c, uint32_t i);
/* kill -9 and reap. */
void cu_node_kill(cu *c, uint32_t i);
void cu_node_stop(cu *c, uint32_t i);     /* SIGTERM, waits for exit 0 */
void cu_node_pause(cu *c, uint32_t i);    /* SIGSTOP */
void cu_node_resume(cu *c, uint32_t i);   /* SIGCONT */
/* Everything stopped and removed. */
void cu_cleanup(cu *c);

/* Group g as node i reports it; false if i does not answer. */
bool cu_group_at(cu *c, uint32_t i, uint32_t g, cu_group *out);
/* The node that leads group g (its own INFO says so and its lease
 * holds), or -1. */
int cu_leader(cu *c, uint32_t g);
/* Waits until every group has a leader with every member running
 * holding the same log (durable seq and chain value equal) and the
 * leader streaming to them.  Asserts it within timeout_ms. */
void cu_wait_converged(cu *c, int timeout_ms);

/* The load: points-v1 through RedisCluster into c->load_dir (acked-G.txt
 * per group: "unix_ms merchant id seq"). */
void cu_load_start(cu *c);
void cu_load_stop(cu *c);
/* The last acknowledged write of group g at or after since_ms (unix ms),
 * waiting up to timeout_ms for one: its time, or 0. */
uint64_t cu_first_ack_after(cu *c, uint32_t g, uint64_t since_ms, int timeout_ms);
/* Acknowledged writes so far. */
uint64_t cu_acked(cu *c);
/* Every acknowledged write is there with its seq (asserted). */
void cu_check_acked(cu *c);
/* Every replica's balances equal its leader's (asserted; the load is
 * stopped). */
void cu_check_balances(cu *c);
/* VERIFY answers OK on every running node. */
void cu_verify_all(cu *c);
/* After the nodes stopped: `tally verify` of every group directory of
 * every node (the state equals the replay of its log). */
void cu_verify_offline(cu *c);

uint64_t cu_unix_ms(void);
uint64_t cu_mono_ms(void);
/* An env var as an integer, or def. */
long cu_env(const char *name, long def);

#endif
