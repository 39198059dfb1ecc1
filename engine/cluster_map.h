/*
 * cluster_map.h — the cluster's map as a plain value (no ZooKeeper here):
 * its nodes, its shard groups and the owner of each of the 16384 slots;
 * Redis Cluster's key slot; where a new cluster puts its groups; and the
 * text each ZooKeeper node of the cluster holds, encoded and decoded in
 * pairs.  cluster.h keeps the map in ZooKeeper (the layout of the nodes
 * is there); cluster_reply.h answers CLUSTER SLOTS/SHARDS/NODES from it.
 *
 * Slots.  A command's slot is CRC16(key) mod 16384 where key is its first
 * key (for tally the merchant, in canonical decimal), with Redis's hash
 * tag rule: if the key holds a '{' followed later by a '}' with at least
 * one byte between them, only the bytes between the first '{' and the
 * first '}' after it are hashed.  CRC16 is CRC-16/XMODEM (polynomial
 * 0x1021, initial value 0, no reflection, no final xor), as Redis Cluster
 * specifies, so a client's slot and the server's always agree.
 *
 * Placement (cluster_map_plan).  Nodes are numbered in the order given.
 * With G groups and R replicas, member j (0..R) of group g is node
 *     (g + j * step) mod N,   step = 1 when G = N, step = G when G(R+1) = N
 * (no other G is accepted): G = N (the default) makes a ring in which
 * every node is the first member of one group and a follower in R others
 * (three nodes can run three groups); G(R+1) = N splits the nodes into
 * disjoint groups, as redis-cli --cluster create does.  A group's first
 * member is its preferred leader (it wins ties).  Group g owns the slots
 * round(g * 16384 / G) .. round((g+1) * 16384 / G) - 1, which for three
 * groups gives Redis's 0-5460, 5461-10922, 10923-16383.
 *
 * Text formats.  Each ZooKeeper node holds one line, or (the slot map) a
 * few lines, of fields separated by single spaces and ended by '\n';
 * numbers are unsigned decimal, ids and names are 1..40 (ids) or 1..64
 * (names) bytes of [A-Za-z0-9_.-].  Decoders refuse anything else with
 * -EINVAL (a field missing or extra, a number out of range, an unknown
 * node) and write their output only on success.  cluster.h's table says
 * which node holds which format.
 *
 *   format   fields                                 example
 *   meta     "tally-cluster" VERSION "replicas" R   tally-cluster 1 replicas 1 groups 3
 *            "groups" G "nodes" ID... (in the       nodes a b c
 *            order of the map: it never changes)
 *   slots    one line per range: START "-" END      0-5460 0
 *            " " GROUP; ranges in order, covering   5461-10922 1
 *            0..16383 exactly                       10923-16383 2
 *   node     HOST PORT REPL_PORT                    127.0.0.1 7001 17001
 *   group    MEMBER_ID... (1 + R ids, in order)     a b
 *   epoch    EPOCH                                  4
 *   lease    NODE_ID EPOCH                          b 4
 *   insync   WRITER_EPOCH MEMBER_ID... (0+ ids)     4 a b
 *   pos      LOG_EPOCH SEQ UNIX_MS                  4 1200 1767225600000
 *   vote     ROUND LOG_EPOCH SEQ                    3 3 1187
 */
#ifndef TALLY_CLUSTER_MAP_H
#define TALLY_CLUSTER_MAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "limits.h"

/* The version in the meta node; a cluster written by another version is
 * refused (-EPROTO) rather than misread. */
#define CLUSTER_MAP_FORMAT 1

/* Redis Cluster's default distance from a node's port to its bus port:
 * tally's replication port when a node spec names none. */
#define CLUSTER_REPL_PORT_OFFSET 10000

typedef struct cluster_node {
    char id[LIMIT_CLUSTER_NODE_ID_BYTES_MAX + 1];
    char host[LIMIT_CLUSTER_HOST_BYTES_MAX + 1]; /* advertised to clients */
    uint16_t port;      /* clients' port */
    uint16_t repl_port; /* replication port, same host */
    bool live;          /* a session of the node holds its live node */
} cluster_node;

/* A member's durable position: the epoch of the last record in its log and
 * its durable seq. */
typedef struct cluster_pos {
    uint64_t log_epoch;
    uint64_t seq;
} cluster_pos;

typedef struct cluster_group {
    uint32_t member_count;
    uint16_t members[LIMIT_CLUSTER_MEMBERS_MAX]; /* node indexes; [0] preferred leader */
    /* The lease: whether one exists, whose it is (-1: a node id the map
     * does not know), its epoch and the session that holds it. */
    bool leased;
    int32_t leader;
    uint64_t leader_epoch;
    int64_t leader_session;
    /* The epoch counter (the newest epoch allocated) and its ZooKeeper
     * version, which elections check and bump together. */
    uint64_t epoch;
    int32_t epoch_version;
    /* The in-sync set (bit j: members[j]), the epoch of the leader that
     * wrote it (0: written at creation) and its ZooKeeper version. */
    uint32_t insync;
    uint64_t insync_epoch;
    int32_t insync_version;
    /* Each member's reported position and when (unix ms, 0: never). */
    cluster_pos pos[LIMIT_CLUSTER_MEMBERS_MAX];
    uint64_t pos_unix_ms[LIMIT_CLUSTER_MEMBERS_MAX];
    /* Each member's vote in an election: present, its round (the epoch
     * counter it saw), its position then. */
    bool voted[LIMIT_CLUSTER_MEMBERS_MAX];
    uint64_t vote_round[LIMIT_CLUSTER_MEMBERS_MAX];
    cluster_pos vote[LIMIT_CLUSTER_MEMBERS_MAX];
} cluster_group;

typedef struct cluster_map {
    char name[LIMIT_CLUSTER_NAME_BYTES_MAX + 1];
    uint32_t replicas;
    uint32_t node_count;
    uint32_t group_count;
    cluster_node nodes[LIMIT_CLUSTER_NODES_MAX];
    cluster_group groups[LIMIT_CLUSTER_GROUPS_MAX];
    uint16_t slot_group[LIMIT_CLUSTER_SLOTS];
} cluster_map;

/* ---- slots ---------------------------------------------------------------- */

/* CRC-16/XMODEM of buf[0, len). */
uint16_t cluster_crc16(const void *buf, size_t len);

/* The slot of a key, 0..16383, with the hash tag rule above. */
uint16_t cluster_keyslot(const void *key, size_t len);

/* The slot ranges group g owns, in order, as [start, end] pairs into
 * ranges[0, cap); returns how many there are (which may exceed cap: only
 * cap were written). */
uint32_t cluster_slot_ranges(const cluster_map *m, uint32_t g, uint16_t (*ranges)[2],
                             uint32_t cap);

/* ---- lookups -------------------------------------------------------------- */

/* Whether s[0, len) is a valid node id (max_bytes
 * LIMIT_CLUSTER_NODE_ID_BYTES_MAX) or cluster name
 * (LIMIT_CLUSTER_NAME_BYTES_MAX): 1..max_bytes of [A-Za-z0-9_.-], not "."
 * or "..". */
bool cluster_name_ok(const char *s, size_t len, size_t max_bytes);

/* The index of node id in m->nodes, or -1. */
int cluster_node_index(const cluster_map *m, const char *id);

/* The position of node index `node` among g's members, or -1. */
int cluster_member_index(const cluster_group *g, uint32_t node);

/* The node index holding group g's lease, or -1 (no lease: an election is
 * under way; or a lease of a node the map does not know). */
int cluster_group_leader(const cluster_map *m, uint32_t g);

/* The node that clients are told serves group g: its leader, or while it
 * has none, its preferred leader (members[0]), which is where clients
 * should retry. */
uint32_t cluster_group_master(const cluster_map *m, uint32_t g);

/* ---- a new cluster -------------------------------------------------------- */

/* Parses a node spec "ID@HOST:PORT" or "ID@HOST:PORT@REPL_PORT" (the
 * replication port defaults to PORT + CLUSTER_REPL_PORT_OFFSET).  HOST
 * is a DNS name or an IPv4 address (no ':').  0, or -EINVAL with a reason
 * in *why (a static string). */
int cluster_node_parse(const char *spec, cluster_node *out, const char **why);

/* Fills *m with a new cluster: name, nodes[0, node_count) in that order,
 * replicas per group, `groups` groups (0: node_count), placed as above,
 * no leader, epoch 0, every member in sync.  0, or -EINVAL with a reason
 * in *why: a bad name, too few or too many nodes, replicas or groups, a
 * repeated node id or address. */
int cluster_map_plan(cluster_map *m, const char *name, const cluster_node *nodes,
                     uint32_t node_count, uint32_t replicas, uint32_t groups, const char **why);

/* ---- text formats (the table above) --------------------------------------- */

/* Each encoder writes one format's text into buf[0, cap) and returns its
 * length, or 0 if it does not fit; each decoder reads buf[0, len) and
 * returns 0 or -EINVAL (-EPROTO: another meta version). */
size_t cluster_meta_encode(const cluster_map *m, char *buf, size_t cap);
/* Sets m->replicas, m->group_count, m->node_count and the nodes' ids
 * (distinct, valid ids). */
int cluster_meta_decode(const char *buf, size_t len, cluster_map *m);

size_t cluster_slots_encode(const cluster_map *m, char *buf, size_t cap);
/* Needs m->group_count; sets m->slot_group. */
int cluster_slots_decode(const char *buf, size_t len, cluster_map *m);

size_t cluster_node_encode(const cluster_node *n, char *buf, size_t cap);
/* Sets host, port and repl_port of *n (not its id or live). */
int cluster_node_decode(const char *buf, size_t len, cluster_node *n);

size_t cluster_group_encode(const cluster_map *m, const cluster_group *g, char *buf, size_t cap);
/* Members must be nodes of m (1 + m->replicas of them, distinct); sets
 * member_count and members. */
int cluster_group_decode(const char *buf, size_t len, const cluster_map *m, cluster_group *g);

size_t cluster_epoch_encode(uint64_t epoch, char *buf, size_t cap);
int cluster_epoch_decode(const char *buf, size_t len, uint64_t *epoch);

size_t cluster_lease_encode(const char *node_id, uint64_t epoch, char *buf, size_t cap);
/* The id goes to id[LIMIT_CLUSTER_NODE_ID_BYTES_MAX + 1]. */
int cluster_lease_decode(const char *buf, size_t len, char *id, uint64_t *epoch);

size_t cluster_insync_encode(const cluster_map *m, const cluster_group *g, uint64_t writer_epoch,
                             uint32_t insync, char *buf, size_t cap);
/* Ids must be members of g; the set goes to *insync (bit per member). */
int cluster_insync_decode(const char *buf, size_t len, const cluster_map *m,
                          const cluster_group *g, uint64_t *writer_epoch, uint32_t *insync);

size_t cluster_pos_encode(cluster_pos pos, uint64_t unix_ms, char *buf, size_t cap);
int cluster_pos_decode(const char *buf, size_t len, cluster_pos *pos, uint64_t *unix_ms);

size_t cluster_vote_encode(uint64_t round, cluster_pos pos, char *buf, size_t cap);
int cluster_vote_decode(const char *buf, size_t len, uint64_t *round, cluster_pos *pos);

#endif
