/*
 * groups.h — tally-bench --cluster: the same workload against a tally
 * cluster, each shard group's share sent straight to its leader.
 *
 * CLUSTER SLOTS (asked of the node given) says which node masters each
 * slot range; every merchant of the workload goes to the master of its
 * slot (CRC16 of its decimal, as every Redis Cluster client computes
 * it).  One load per master then runs at once, each with the merchants
 * its slots hold, its share of the accounts and connections, and its own
 * histogram; the results are added up into one report: throughput over
 * the cluster, latency over every operation.  A -MOVED (leadership moved
 * during the run) counts as an error, as any other refusal.
 */
#ifndef TALLY_BENCH_GROUPS_H
#define TALLY_BENCH_GROUPS_H

#include "net.h"
#include "report.h"

/* Masters a cluster may have. */
#define GROUPS_MASTERS_MAX 64

/* Runs o's load across the cluster o->host:o->port belongs to.  0, or
 * -errno / -EPROTO (no cluster there, no connection). */
int groups_run(const net_options *o, report_run *out);

#endif
