/*
 * cluster_admin.h — `tally cluster`, the operator's commands on a
 * cluster's map in ZooKeeper (tools/tally.c dispatches to it):
 *
 *   tally cluster create ZK_HOSTS/NAME --nodes ID@HOST:PORT[@REPL_PORT],...
 *                        [--replicas R] [--groups G]
 *       Plans the cluster (cluster_map.h: placement and slots; R defaults
 *       to 1, G to the number of nodes), writes it under /tally/NAME in one
 *       transaction, and prints its status.  Refuses a name in use.
 *   tally cluster status ZK_HOSTS/NAME
 *       Prints the map as ZooKeeper has it now.
 *
 * ZK_HOSTS is ZooKeeper's connect string, "host:port[,host:port...]",
 * optionally with a chroot; NAME follows the last '/'.
 *
 * Status output (also after create), one fact per line, fields separated
 * by spaces, so that it reads as it is and greps and awks easily:
 *
 *   cluster NAME: N nodes, G groups, R replicas per group, 16384 slots
 *   node ID HOST:PORT repl REPL_PORT live|down
 *   ...
 *   group G slots RANGES (COUNT) epoch E leader ID|none
 *     member ID leader|follower in-sync|behind seq S epoch LOG_EPOCH lag L
 *     ...
 *
 * RANGES is "start-end[,start-end...]".  epoch is the group's epoch
 * counter (the newest election's); leader is the node holding the lease
 * ("none" during an election).  For each member: its role, whether the
 * leader counts it in sync, its durable seq and the epoch of its log's
 * last record as it last reported them (at most a second old; "-" if
 * never), and lag, the leader's reported seq minus its own ("-" when
 * either is unknown or there is no leader).
 *
 * Exit status: 0 done, 1 an error (ZooKeeper unreachable, no such
 * cluster, a name in use), 2 a usage error.
 */
#ifndef TALLY_CLUSTER_ADMIN_H
#define TALLY_CLUSTER_ADMIN_H

#include <stdio.h>

/* Runs `tally cluster` with argv[0] being the subcommand ("create",
 * "status"); output to out, errors to err.  Returns the exit status. */
int cluster_admin_main(int argc, char **argv, FILE *out, FILE *err);

/* The usage lines of `tally cluster`, for tally --help. */
extern const char cluster_admin_usage[];

#endif
