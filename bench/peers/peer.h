/*
 * peer.h — what the in-process peers (SQLite, LMDB) share: options, the
 * measured loop and the report.  Each peer is one program built from one
 * object (the Makefile's peer rule), so this header brings the bench's
 * histogram, workload and report modules in as source: every system in the
 * comparison then draws the same operations and is measured and reported
 * by the same code.
 *
 * The loop: BEGIN; up to `batch` operations; COMMIT (durable: the peer's
 * synced commit).  An operation's latency runs from its start to the end
 * of the commit that made it durable, like a client's ack would.
 */
#ifndef TALLY_BENCH_PEER_H
#define TALLY_BENCH_PEER_H

#include <getopt.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../hist.c"
#include "../report.c"
#include "../workload.c"

/* Operations per transaction: the batched mode's ceiling. */
#define PEER_BATCH_MAX 100000

enum { PEER_OK = 0, PEER_REFUSED = 1, PEER_ERROR = 2 };

typedef struct peer_options {
    const char *path;
    double duration_s;
    uint64_t ops_max;
    uint32_t batch;
    const char *json;
    const char *system;
    const char *label;
    bool quiet;
    workload_config work;
} peer_options;

/* A peer: begin and commit a transaction, apply one operation. */
typedef struct peer_backend {
    int (*begin)(void *ctx);
    int (*apply)(void *ctx, const workload_op *op); /* PEER_OK, _REFUSED, _ERROR */
    int (*commit)(void *ctx);
    const char *(*error)(void *ctx);
} peer_backend;

static uint64_t peer_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* CPU seconds of this process: the database engine and the driver both. */
static double peer_cpu_s(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return -1;
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static void peer_usage(const char *prog, const char *what)
{
    fprintf(stderr,
            "usage: %s --db PATH [-d S | -n N] [--batch K] [-w points-v1|earn-only|redeem-heavy]\n"
            "          [--accounts N] [--merchants N] [--zipf S] [--seed N] [--json FILE]\n"
            "          [--system NAME] [--label TEXT] [-q]\n"
            "  %s\n",
            prog, what);
    exit(2);
}

static void peer_parse(int argc, char **argv, peer_options *o, const char *what)
{
    static const struct option opts[] = {
        {"db", required_argument, NULL, 'D'},      {"duration", required_argument, NULL, 'd'},
        {"ops", required_argument, NULL, 'n'},     {"batch", required_argument, NULL, 'b'},
        {"workload", required_argument, NULL, 'w'}, {"accounts", required_argument, NULL, 'A'},
        {"merchants", required_argument, NULL, 'M'}, {"zipf", required_argument, NULL, 'z'},
        {"seed", required_argument, NULL, 's'},    {"json", required_argument, NULL, 'j'},
        {"system", required_argument, NULL, 'S'},  {"label", required_argument, NULL, 'L'},
        {"quiet", no_argument, NULL, 'q'},         {NULL, 0, NULL, 0},
    };
    *o = (peer_options){.duration_s = 10, .batch = 1};
    o->work = (workload_config){.mix = WORKLOAD_POINTS_V1, .accounts = 100000,
                                .merchants = 100, .seed = (uint64_t)time(NULL)};
    int c;
    while ((c = getopt_long(argc, argv, "d:n:w:q", opts, NULL)) != -1) {
        switch (c) {
        case 'D': o->path = optarg; break;
        case 'd': o->duration_s = atof(optarg); break;
        case 'n': o->ops_max = strtoull(optarg, NULL, 10); break;
        case 'b': o->batch = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 'w': o->work.mix = workload_mix_parse(optarg); break;
        case 'A': o->work.accounts = strtoull(optarg, NULL, 10); break;
        case 'M': o->work.merchants = strtoull(optarg, NULL, 10); break;
        case 'z': o->work.zipf_s = atof(optarg); break;
        case 's': o->work.seed = strtoull(optarg, NULL, 10); break;
        case 'j': o->json = optarg; break;
        case 'S': o->system = optarg; break;
        case 'L': o->label = optarg; break;
        case 'q': o->quiet = true; break;
        default: peer_usage(argv[0], what);
        }
    }
    bool mix_ok = o->work.mix == WORKLOAD_POINTS_V1 || o->work.mix == WORKLOAD_EARN_ONLY ||
                  o->work.mix == WORKLOAD_REDEEM_HEAVY;
    if (!o->path || optind < argc || !mix_ok || o->batch == 0 || o->batch > PEER_BATCH_MAX ||
        (o->duration_s <= 0 && o->ops_max == 0))
        peer_usage(argv[0], what);
    workload_nonce(o->work.nonce);
}

/* Runs the measured loop and prints/writes the report; returns the exit
 * status. */
static int peer_run(const peer_options *o, const peer_backend *b, void *ctx, report_run *r)
{
    workload w;
    if (workload_init(&w, &o->work, 0) != 0)
        return 2;
    hist *h = malloc(sizeof(hist));
    uint64_t *starts = malloc(sizeof(uint64_t) * o->batch);
    if (!h || !starts)
        return 1;
    hist_reset(h);
    r->latency = h;
    uint64_t t0 = peer_mono_ns(), end = t0 + (uint64_t)(o->duration_s * 1e9), last = t0;
    uint64_t tick = t0 + 1000000000ull, tick_ops = 0, tick_ns = t0;
    double cpu0 = peer_cpu_s();
    while ((o->duration_s <= 0 || last < end) && (!o->ops_max || r->ok + r->refused < o->ops_max)) {
        if (b->begin(ctx) != 0)
            break;
        uint32_t n = 0, refused = 0;
        for (; n < o->batch; n++) {
            workload_op op[WORKLOAD_BURST_MAX];
            workload_next(&w, op);
            starts[n] = peer_mono_ns();
            int rc = b->apply(ctx, &op[0]);
            if (rc == PEER_ERROR)
                break;
            refused += rc == PEER_REFUSED;
        }
        if (n < o->batch || b->commit(ctx) != 0) {
            r->errors += n + 1;
            snprintf(r->first_error, sizeof(r->first_error), "%s", b->error(ctx));
            break;
        }
        last = peer_mono_ns();
        for (uint32_t i = 0; i < n; i++)
            hist_record(h, last - starts[i]);
        r->ok += n - refused;
        r->refused += refused;
        if (last >= tick) {
            uint64_t ops = r->ok + r->refused;
            if (!o->quiet)
                fprintf(stderr, "[%5.1fs] %10.0f ops/s  p99 so far %8.1f us\n",
                        (double)(last - t0) / 1e9,
                        (double)(ops - tick_ops) * 1e9 / (double)(last - tick_ns),
                        (double)hist_quantile(h, 0.99) / 1000.0);
            tick_ops = ops;
            tick_ns = last;
            tick += 1000000000ull;
        }
    }
    r->ops = r->ok + r->refused;
    r->elapsed_s = (double)(last - t0) / 1e9;
    double cpu1 = peer_cpu_s();
    r->server_cpu_s = cpu0 >= 0 && cpu1 >= 0 ? cpu1 - cpu0 : -1;
    r->connections = 1;
    r->pipeline = o->batch;
    r->threads = 1;
    snprintf(r->workload, sizeof(r->workload), "%s", workload_mix_name(o->work.mix));
    if (o->system)
        snprintf(r->system, sizeof(r->system), "%s", o->system);
    if (o->label)
        snprintf(r->label, sizeof(r->label), "%s", o->label);
    report_text(stdout, r);
    if (o->json) {
        FILE *f = fopen(o->json, "w");
        if (!f)
            return 1;
        report_json(f, r);
        fclose(f);
    }
    free(starts);
    free(h);
    return r->ops > 0 ? 0 : 1;
}

#endif
