/*
 * cluster.h — the cluster's coordination, kept in ZooKeeper (SPEC §8
 * "Cluster"): the map of nodes, shard groups and slots; which nodes are
 * alive; each group's leader lease and epoch; its in-sync set; and each
 * member's durable position.  No consensus of tally's own: every decision
 * is a ZooKeeper transaction, fenced by node versions.
 *
 * ZooKeeper layout.  Everything lives under /tally/NAME; the text formats
 * are cluster_map.h's.  "Ephemeral" nodes vanish when the session that
 * made them ends, which is how ZooKeeper tells who is alive.
 *
 *   path                      kind        written by                     format
 *   /tally/NAME               persistent  tally cluster create           meta
 *   /tally/NAME/slots         persistent  create                         slots
 *   /tally/NAME/nodes/ID      persistent  create                         node
 *   /tally/NAME/live/ID       ephemeral   node ID, when it joins         node
 *   /tally/NAME/groups/G      persistent  create (G = 0..groups-1)       group
 *   /tally/NAME/groups/G/epoch   persistent  create (0); each election  epoch
 *                                            (+1, version-checked)
 *   /tally/NAME/groups/G/lease   ephemeral   the election's winner       lease
 *   /tally/NAME/groups/G/insync  persistent  create (every member); the  insync
 *                                            leader (fenced, below)
 *   /tally/NAME/groups/G/pos/ID  persistent  member ID, at most once a   pos
 *                                            second when it changed
 *   /tally/NAME/groups/G/votes/ID ephemeral  member ID, in an election   vote
 *
 * A cluster is created by one multi-operation transaction: it exists whole
 * or not at all.  The epoch node's ZooKeeper version equals its value (it
 * starts at 0 and only elections set it, one step each), and it fences
 * every leader's write: a write checks that the epoch node still has the
 * version its leader's election gave it, so a deposed leader (paused,
 * partitioned, or restarted with a new session) can change nothing.
 *
 * Election (one group; every member runs it when the group has no lease).
 *   - Voters are the members that are both in the in-sync set and alive
 *     (their live node exists).  A member that is not in sync never votes
 *     and never wins, whatever its seq: a follower that restarted behind
 *     cannot win on seq alone.
 *   - The round is the epoch counter E.  Each voter writes its vote "E
 *     LOG_EPOCH SEQ" (its durable position: the epoch of its log's last
 *     record and its durable seq) once it knows its position
 *     (cluster_position).
 *   - When every voter has voted in round E, the winner is the voter with
 *     the greatest (LOG_EPOCH, SEQ), compared as a pair, epoch first; ties
 *     go to the member listed first in the group (its preferred leader).
 *     Every voter computes the same winner from the same votes.
 *   - The winner takes the lease in one transaction: check the in-sync
 *     set's version, set the epoch node from E to E+1 with a version
 *     check, create the ephemeral lease "ID E+1".  Two nodes can never
 *     hold epoch E+1, and no epoch is ever allocated without a leader.
 *   - A live voter that does not vote holds the election up: it may hold
 *     records that were acknowledged.  (A node that cannot serve a group
 *     should leave: cluster_close.)  The leader must keep in the in-sync
 *     set only members that hold every write it acknowledged (the set
 *     shrinks before an acknowledgement a member lacks); then the winner
 *     holds every acknowledged write as long as one in-sync member lives.
 *   - After voting, a member's position must not move until a leader is
 *     elected (it applies nothing from the old leader).
 *
 * Leases.  A leader may acknowledge writes only while cluster_lease()
 * says so: it holds the lease and has heard from ZooKeeper within a third
 * of the session timeout (zk.h explains why that is safe).  Its session
 * expiring, its lease node disappearing or changing hands, and resigning
 * end the lease (a CLUSTER_EVENT_DEPOSED, except for resigning).  A lease
 * of the node's id held by an older session of the node (a restart
 * within the session timeout) is left to expire: the election follows.
 *
 * Threads.  cluster_open starts one thread that owns the reading of the
 * map, the votes and the position reports; watch events wake it.  The
 * functions below may be called from any thread.
 */
#ifndef TALLY_CLUSTER_H
#define TALLY_CLUSTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cluster_map.h"
#include "zk.h"

/* ---- the map in ZooKeeper (one-shot: the admin tool, tests) --------------- */

/* Splits "ZK_HOSTS/NAME" at its last '/' into the ZooKeeper connect string
 * (which may hold a chroot) and the cluster name.  0 or -EINVAL (empty
 * part, too long, a bad name). */
int cluster_parse_target(const char *arg, char *hosts, size_t hosts_cap, char *name,
                         size_t name_cap);

/* Writes a planned map (cluster_map_plan) under /tally/NAME in one
 * transaction.  0, -EEXIST (a cluster of that name exists), or zk.h's
 * errors. */
int cluster_create(zk *z, const cluster_map *plan);

/* Reads the whole map of cluster `name` into *out, with live nodes,
 * leases, epochs, in-sync sets, positions and votes.  With watch, a
 * change of anything but the positions fires the zk handle's watch.
 * 0, -ENOENT (no such cluster), -EPROTO (another format version),
 * -EINVAL (a node's text is malformed), or zk.h's errors. */
int cluster_read(zk *z, const char *name, bool watch, cluster_map *out);

/* ---- a member's handle ---------------------------------------------------- */

typedef struct cluster cluster;

enum cluster_event_kind {
    CLUSTER_EVENT_MAP = 1, /* a new map is current (map) */
    CLUSTER_EVENT_LEADER,  /* this node won group's lease with epoch */
    CLUSTER_EVENT_DEPOSED, /* this node lost group's lease of epoch */
};

typedef struct cluster_event {
    int kind;                /* enum cluster_event_kind */
    uint32_t group;
    uint64_t epoch;
    const cluster_map *map;  /* CLUSTER_EVENT_MAP: valid during the call */
} cluster_event;

/* Called on the cluster's thread, in order; it must not block for long,
 * and must not call cluster_close. */
typedef void cluster_event_fn(void *ctx, const cluster_event *ev);

typedef struct cluster_options {
    const char *zk_hosts;        /* "host:port,...[/chroot]" */
    const char *name;            /* the cluster */
    const char *node_id;         /* this node: one of the cluster's nodes */
    uint32_t session_timeout_ms; /* 0 = LIMIT_ZK_SESSION_MS_DEFAULT */
    uint32_t connect_timeout_ms; /* for cluster_open; 0 = the session timeout */
    cluster_event_fn *event;     /* may be NULL */
    void *event_ctx;
    zk_log_fn *log;              /* elections, session changes; may be NULL */
    void *log_ctx;
} cluster_options;

/* Joins cluster o->name as o->node_id: connects to ZooKeeper (waiting up
 * to connect_timeout_ms), reads the map, registers the node as alive and
 * starts the cluster's thread.  The node votes in a group's elections
 * once cluster_position() gave its position there.  0, -EINVAL (bad
 * options), -ETIMEDOUT (no ZooKeeper answered), -ENOENT (no such
 * cluster), -ESRCH (node_id is not one of its nodes), or as cluster_read. */
int cluster_open(const cluster_options *o, cluster **out);

/* Leaves: stops the thread and closes the session, which drops the live
 * node, any lease and votes at once.  NULL is ignored. */
void cluster_close(cluster *c);

/* This node's index in the map's nodes. */
uint32_t cluster_self(const cluster *c);

/* The current map, held until released (it never changes meanwhile).
 * Cheap (a mutex and a count), any thread. */
const cluster_map *cluster_map_acquire(cluster *c);
void cluster_map_release(cluster *c, const cluster_map *m);

/* Records this node's durable position in group g (the epoch of its log's
 * last record and its durable seq): reported to ZooKeeper within
 * LIMIT_CLUSTER_POS_REPORT_MS, and used for votes.  The first call for a
 * group makes the node a voter there.  Cheap; any thread.  -EINVAL if
 * this node is not a member of g. */
int cluster_position(cluster *c, uint32_t g, cluster_pos pos);

/* Whether this node leads group g now: it holds the lease, and ZooKeeper
 * answered within a third of the session timeout.  The lease's epoch goes
 * to *epoch when true.  Cheap (atomic loads, a clock read); any thread. */
bool cluster_lease(cluster *c, uint32_t g, uint64_t *epoch);

/* The leader of group g records its in-sync set (bit j: the group's
 * member j; the leader's own bit too).  Fenced: applied only if this
 * node's election is still the newest and its lease exists.  Blocks on
 * ZooKeeper.  0, -EPERM (not the leader), -EINVAL (bits beyond the
 * members), -ESTALE (deposed meanwhile), or zk.h's errors. */
int cluster_insync_set(cluster *c, uint32_t g, uint32_t insync);

/* The leader of group g gives up its lease and leaves the in-sync set, so
 * that the others elect a new leader without it (it stays a member and
 * comes back in sync through the new leader).  The lease ends at once for
 * cluster_lease.  Blocks on ZooKeeper.  0, -EPERM (not the leader),
 * -EBUSY (no other member is in sync: nobody could take over), -ESTALE,
 * or zk.h's errors. */
int cluster_resign(cluster *c, uint32_t g);

#endif
