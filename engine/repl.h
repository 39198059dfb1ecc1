/*
 * repl.h — a node of a cluster (SPEC §8 "Cluster"): the shard groups it
 * serves, their replication between leader and replicas, and where a
 * command for a slot goes.
 *
 * One engine per group.  With ring placement a node is a member of 1 + R
 * groups (cluster_map.h), leading some and following others; each group
 * it serves is a tally engine of its own with one shard, in DIR/group-G.
 * One shard because a group's members elect a leader by comparing one
 * position — (epoch of the log's last record, seq) — and one log has one
 * seq; a node spreads its work over cores through its several groups
 * (`tally cluster create --groups` sets how many).  Engines of one node
 * share nothing but the process.
 *
 * Replication (repl_proto.h has the wire format).  Each replica connects
 * to its group's leader (the lease in ZooKeeper names it, the map gives
 * its REPL_PORT), proves the shared secret, and says where its log ends.
 * The leader finds where their logs part and streams its durable records
 * from there, byte for byte; the replica checks chain and epochs, appends
 * them with the same seqs, replays them into its state (the recovery
 * path) and acknowledges its durable seq.  A replica whose log holds a
 * suffix the leader lacks (a deposed leader's unacknowledged writes)
 * reopens its engine with the log cut after the common prefix; one the
 * leader's retained log no longer reaches gets the leader's newest
 * snapshot, then the log after it.
 *
 * Acknowledgements.  The leader's shard answers a request only once its
 * records are durable and (--ack replicated, the default) acknowledged by
 * every replica in the group's ack set, and only while cluster_lease()
 * holds (a third of the session timeout without ZooKeeper's answer stops
 * it, in both modes).  The ack set is the in-sync set ZooKeeper records,
 * minus the leader, plus a replica being added: a replica is added to it
 * before the fenced write that puts it in the in-sync set, and leaves it
 * only after the write that takes it out, so every in-sync member holds
 * every acknowledged write.  With --ack replicated a replica leaves the
 * in-sync set (disconnected or lagging for REPL_DROP_MS) only while
 * another one can still confirm; with --ack local, whenever it falls
 * behind.  The commit seq — what every in-sync member holds, or the
 * durable seq when the leader is the only one — caps every checkpoint,
 * on the leader and (sent along) on the replicas, so nothing a replica
 * may have to cut was ever checkpointed, and FOLLOW delivers no entry
 * past it (shard_feed_seq).
 */
#ifndef TALLY_REPL_H
#define TALLY_REPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cluster.h"
#include "tally.h"

typedef struct repl repl;

typedef struct repl_options {
    const char *dir;         /* the node's data directory: DIR/group-G each */
    const char *zk_hosts;    /* ZooKeeper connect string */
    const char *name;        /* the cluster */
    const char *node_id;
    uint32_t session_timeout_ms; /* 0: LIMIT_ZK_SESSION_MS_DEFAULT */
    bool ack_local;          /* --ack local */
    const uint8_t *secret;   /* the replication secret (copied) */
    size_t secret_len;
    const char *repl_bind;   /* address the replication port binds */
    const char *advertise;   /* "HOST:PORT" the map must give this node (NULL: any) */
    tally_options engine;    /* each group's engine: sync, segments, snapshots…
                              * (dir, shards and replica are set here) */
    tally_log_fn log;
    void *log_ctx;
} repl_options;

/* Joins the cluster (cluster_open), opens the engine of every group this
 * node is a member of (recovering each; o and its strings are copied,
 * but not those of o->engine, which must outlive the node), reports
 * their positions, listens on this node's replication port and starts
 * following the leaders.
 * Errors: cluster_open's, -EADDRNOTAVAIL (the map gives this node
 * another address than o->advertise: said in the log), -errno (the
 * port, a directory), an engine's. */
int repl_open(const repl_options *o, repl **out);
/* Leaves the cluster, stops replication, closes every engine (each
 * answers what it has).  NULL is ignored. */
void repl_close(repl *r);

/* Reads the replication secret: the file's bytes (trailing newlines
 * dropped), or with path NULL the cluster's ZooKeeper node
 * /tally/NAME/secret, made at random the first time.  0, -ENOENT,
 * -EINVAL (empty or over REPL_SECRET_BYTES_MAX), zk.h's errors. */
int repl_secret_load(const char *path, const char *zk_hosts, const char *name,
                     uint8_t *out, size_t cap, size_t *len);

/* ---- routing (the server's thread) ------------------------------------------ */

enum repl_route {
    REPL_ROUTE_LOCAL = 0, /* submit to the group (repl_submit) */
    REPL_ROUTE_MOVED,     /* -MOVED slot to *node */
    REPL_ROUTE_TRYAGAIN,  /* -TRYAGAIN why */
};

/* Where a command for `slot` goes: a write (or any command of a session
 * without READONLY) to the group's leader; with READONLY a read may be
 * served by a replica of the group here, as of its durable seq.  *group
 * and *node are written for LOCAL and MOVED; why (a static string) for
 * TRYAGAIN: the group has no leader, this node's leadership is not
 * usable yet or any more, or (--ack replicated) no replica can confirm
 * writes now. */
int repl_route(repl *r, uint16_t slot, bool write, bool readonly, uint32_t *group,
               uint32_t *node, const char **why);
/* Submits req to group g's engine (tally_submit); if the engine is being
 * reopened, answers TALLY_ETRYAGAIN at once. */
void repl_submit(repl *r, uint32_t g, tally_request *req);
/* Every engine of this node in turn (VERIFY and SNAPSHOT without a
 * merchant): the answer is the first failure, or the last success. */
void repl_submit_all(repl *r, tally_request *req);

/* The current map, held until released. */
const cluster_map *repl_map_acquire(repl *r);
void repl_map_release(repl *r, const cluster_map *m);
uint32_t repl_self(const repl *r);

/* ---- figures (INFO, /metrics) ---------------------------------------------- */

typedef struct repl_group_info {
    uint32_t group;
    int role;               /* enum repl_role */
    uint64_t epoch;         /* the lease's (a leader) or the leader's followed */
    uint64_t durable_seq;
    uint64_t durable_epoch;
    uint64_t replicated_seq; /* FOLLOW may deliver up to here */
    uint64_t commit_seq;
    uint64_t lag;           /* leader: records the slowest replica lacks */
    uint64_t chain;         /* checksum of the record at durable_seq (0: none) */
    uint32_t replicas;      /* leader: replicas streaming now */
    char leader[LIMIT_CLUSTER_NODE_ID_BYTES_MAX + 1]; /* "" none */
    bool open;              /* its engine is open */
} repl_group_info;

enum repl_role { REPL_NONE = 0, REPL_FOLLOWER, REPL_LEADER };
const char *repl_role_name(int role);

/* The groups this node serves, in group order, into out[0, cap): how many. */
uint32_t repl_groups(repl *r, repl_group_info *out, uint32_t cap);
/* Group g's engine's figures (tally_shard_stats of its one shard): 0, or
 * -ENOENT (not served here, or its engine is reopening). */
int repl_group_stats(repl *r, uint32_t g, tally_shard_stats *out);

#endif
