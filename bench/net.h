/*
 * net.h — the RESP load loop: many non-blocking connections per thread on
 * one epoll, each keeping up to `pipeline` commands in flight.
 *
 * Closed loop (rate 0): a connection refills its pipeline as soon as
 * replies come back.  Open loop (rate > 0): commands are issued on a
 * schedule of `rate` ops/s in total, to whichever connection has room; a
 * command's latency then runs from its scheduled time, not its send time,
 * so a server that falls behind is charged for the queueing it causes
 * (no coordinated omission), and the operations still unsent at the end
 * are counted as dropped with their wait so far (net_unsent).  In the
 * closed loop latency is send → reply.
 *
 * Replies are judged per command: a refusal the command may meet
 * (workload_expects) counts as refused, any other refusal or error reply
 * as an error (counted apart, never as throughput).
 *
 * Times: one clock read per read() batch and one per write() batch; every
 * command in a batch shares it.
 */
#ifndef TALLY_BENCH_NET_H
#define TALLY_BENCH_NET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proc.h"
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
    bool progress;     /* a progress line on stderr ... */
    double progress_s; /* ... every this many seconds (0: 1) */
    int server_pid;    /* > 0: sample this local process's counters (proc.h) */
    const char *server_dir; /* with server_pid: its data directory, for du */
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

/* Open loop, at the end of a run: the operations a thread's schedule had
 * due at due_ns, due_ns + interval_ns, ... before end_ns and never sent
 * (every pipeline was full).  They are the ones that waited longest, so
 * each is charged its wait so far: end_ns - its scheduled time, recorded
 * into h.  Returns how many (at most left: the rest of an ops budget). */
uint64_t net_unsent(hist *h, uint64_t due_ns, uint64_t interval_ns, uint64_t end_ns,
                    uint64_t left);

/* Seconds on the monotonic clock. */
double net_now_s(void);

#endif
