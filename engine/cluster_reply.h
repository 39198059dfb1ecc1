/*
 * cluster_reply.h — the replies of CLUSTER SLOTS, CLUSTER SHARDS and
 * CLUSTER NODES, and the -MOVED redirection, in Redis Cluster's shapes
 * (Redis 7), built from a cluster map: pure functions from a
 * cluster_map to RESP bytes appended to a resp_out, RESP2 or RESP3.
 *
 * How tally's groups show as Redis's shards.  A shard is a group; its
 * master is the group's leader, or while an election is under way its
 * preferred leader (cluster_group_master), so that clients always see
 * every slot covered and retry there; its replicas are the other
 * members.  A node leads some groups and follows others (the ring
 * placement): it appears in several shards, with a role in each.
 *
 * CLUSTER SLOTS   an array with one entry per run of slots served by one
 *                 master, in slot order: [start, end, master, replica...],
 *                 each node [host, port, id, {}] (the fourth element, a map
 *                 of extra networking data, is empty: the host is the
 *                 preferred endpoint).  Replicas whose node is not alive
 *                 are left out, as Redis leaves out failed replicas.
 * CLUSTER SHARDS  an array with one map per group, in group order:
 *                 {slots: [start, end, ...], nodes: [node...]}; each node a
 *                 map of id, port, ip, endpoint, [hostname], role
 *                 ("master"/"replica"), replication-offset (its durable
 *                 seq as last reported), health ("online"; "fail" when not
 *                 alive; "loading" for a live replica out of the in-sync
 *                 set).  Maps are flat arrays in RESP2, as Redis sends.
 * CLUSTER NODES   a bulk string (RESP3: a verbatim "txt" string) with a
 *                 line per node, in the map's order:
 *                 "ID HOST:PORT@REPL_PORT FLAGS MASTER 0 0 EPOCH LINK SLOTS\n"
 *                 FLAGS: [myself,]master for a node that masters a shard,
 *                 else [myself,]slave, plus ",fail" when not alive;
 *                 MASTER: "-", or for a slave the master of the first group
 *                 it is a member of; EPOCH: the greatest epoch among the
 *                 groups it masters (a slave: that group's); LINK:
 *                 connected/disconnected (alive or not); SLOTS: the ranges
 *                 it masters, "start-end" or "slot", merged and in order.
 *                 The replication port stands where Redis puts its bus port.
 * -MOVED          "-MOVED SLOT HOST:PORT".
 */
#ifndef TALLY_CLUSTER_REPLY_H
#define TALLY_CLUSTER_REPLY_H

#include <stdint.h>

#include "cluster_map.h"
#include "resp.h"

/* proto is 2 or 3. */
void cluster_reply_slots(resp_out *o, const cluster_map *m, int proto);
void cluster_reply_shards(resp_out *o, const cluster_map *m, int proto);
/* self: the node answering (the "myself" flag). */
void cluster_reply_nodes(resp_out *o, const cluster_map *m, uint32_t self, int proto);
/* Redirects a command for slot to node (the leader of the slot's group:
 * cluster_group_leader; with no leader a command should get -TRYAGAIN
 * rather than a redirection that may point back here). */
void cluster_reply_moved(resp_out *o, const cluster_map *m, uint16_t slot, uint32_t node);

#endif
