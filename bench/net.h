/*
 * net.h — the RESP load loop: many non-blocking connections per thread on
 * one epoll, each keeping up to `pipeline` commands in flight.
 *
 * Closed loop (rate 0): a connection refills its pipeline as soon as
 * replies come back.  Open loop (rate > 0): commands are issued on a
 * schedule of `rate` ops/s in total, to whichever connection has room; a
 * command's latency then runs from its scheduled time, not its send time,
 * so a server that falls behind is charged for the queueing it causes
 * (no coordinated omission).  In the closed loop latency is send → reply.
 *
 * Times: one clock read per read() batch and one per write() batch; every
 * command in a batch shares it.
 */
#ifndef TALLY_BENCH_NET_H
#define TALLY_BENCH_NET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "report.h"
#include "workload.h"

/* Bounds on what a run may ask for; each connection's buffers are sized
 * from the pipeline depth at start. */
#define NET_CONNECTIONS_MAX 4096
#define NET_PIPELINE_MAX 4096
#define NET_THREADS_MAX 64
/* Input buffer per connection: holds at least one whole reply. */
#define NET_INPUT_BYTES 65536
/* How long to wait for replies still in flight after the run ends. */
#define NET_DRAIN_S 30.0

typedef struct net_options {
    const char *host;
    uint16_t port;
    int target;       /* enum wire_target */
    char sha[41];     /* WIRE_REDIS: the loaded script's SHA1 */
    uint32_t connections;
    uint32_t pipeline;
    uint32_t threads;
    double duration_s; /* 0 = until ops_max */
    uint64_t ops_max;  /* 0 = until duration_s */
    double warmup_s;   /* replies before this are not measured */
    double rate;       /* ops/s in total; 0 = closed loop */
    bool progress;     /* a line per second on stderr */
    int server_pid;    /* > 0: measure this process's CPU time (Linux /proc) */
    workload_config work;
} net_options;

/* Runs the load and fills out (out->latency must point to a histogram the
 * caller owns).  Returns 0, or -errno when no connection could be made. */
int net_run(const net_options *o, report_run *out);

/* One blocking command on a fresh connection, for set-up (SCRIPT LOAD,
 * PING, INFO): copies the raw reply into reply (NUL-ended, cut to cap).
 * Returns the reply's length, or -errno / -EPROTO. */
long net_call(const char *host, uint16_t port, int argc, const char *const *argv,
              char *reply, size_t cap);

/* CPU seconds (user + system, including reaped children) that process pid
 * has used, from /proc/PID/stat; -1 if it cannot be read. */
double net_proc_cpu_s(int pid);

/* Seconds on the monotonic clock. */
double net_now_s(void);

#endif
