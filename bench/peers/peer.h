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
 * of the commit that made it durable, like a client's ack would.  The
 * first `--warmup` seconds run the same loop unmeasured.  A database on
 * tmpfs is refused (durable figures need a disk), and each peer records
 * its durability settings as read back from the engine.
 */
#ifndef TALLY_BENCH_PEER_H
#define TALLY_BENCH_PEER_H

#include <getopt.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../hist.c"
#include "../proc.c"
#include "../report.c"
#include "../workload.c"

/* Operations per transaction: the batched mode's ceiling. */
#define PEER_BATCH_MAX 100000

enum { PEER_OK = 0, PEER_REFUSED = 1, PEER_ERROR = 2 };

typedef struct peer_options {
    const char *path;
    double duration_s;
    double warmup_s;
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

static void peer_usage(const char *prog, const char *what)
{
    fprintf(stderr,
            "usage: %s --db PATH [-d S | -n N] [--warmup S] [--batch K]\n"
            "          [-w points-v1|earn-only|redeem-heavy] [--accounts N] [--merchants N]\n"
            "          [--zipf S] [--seed N] [--json FILE] [--system NAME] [--label TEXT] [-q]\n"
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
        {"quiet", no_argument, NULL, 'q'},         {"warmup", required_argument, NULL, 'W'},
        {NULL, 0, NULL, 0},
    };
    *o = (peer_options){.duration_s = 10, .batch = 1};
    o->work = (workload_config){.mix = WORKLOAD_POINTS_V1, .accounts = 100000,
                                .merchants = 100, .seed = (uint64_t)time(NULL)};
    int c;
    while ((c = getopt_long(argc, argv, "d:n:w:q", opts, NULL)) != -1) {
        switch (c) {
        case 'D': o->path = optarg; break;
        case 'd': o->duration_s = atof(optarg); break;
        case 'W': o->warmup_s = atof(optarg); break;
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
        (o->duration_s <= 0 && o->ops_max == 0) || o->warmup_s < 0)
        peer_usage(argv[0], what);
    workload_nonce(o->work.nonce);
}

/* Refuses a database on tmpfs (1): every peer measures durable commits.
 * The file itself may not exist yet: its directory is checked. */
static int peer_check_disk(const char *path, report_run *r)
{
    char buf[4096];
    snprintf(buf, sizeof(buf), "%s", path);
    struct stat st;
    const char *dir = stat(path, &st) == 0 && S_ISDIR(st.st_mode) ? path : dirname(buf);
    return report_data_fs(r, dir, true, r->system);
}

/* One transaction of up to o->batch operations; their latencies go to h
 * when h is not NULL.  Returns false (r->errors and first_error set) when
 * an operation or the commit failed. */
static bool peer_txn(const peer_options *o, const peer_backend *b, void *ctx, workload *w,
                     uint64_t *starts, hist *h, report_run *r, uint64_t *last)
{
    if (b->begin(ctx) != 0) {
        r->errors++;
        snprintf(r->first_error, sizeof(r->first_error), "begin: %s", b->error(ctx));
        return false;
    }
    uint32_t n = 0, refused = 0;
    for (; n < o->batch; n++) {
        workload_op op[WORKLOAD_BURST_MAX];
        workload_next(w, op);
        starts[n] = peer_mono_ns();
        int rc = b->apply(ctx, &op[0]);
        if (rc == PEER_ERROR)
            break;
        refused += rc == PEER_REFUSED;
    }
    if (n < o->batch || b->commit(ctx) != 0) {
        r->errors += n + 1;
        snprintf(r->first_error, sizeof(r->first_error), "%s", b->error(ctx));
        return false;
    }
    *last = peer_mono_ns();
    if (!h)
        return true;
    for (uint32_t i = 0; i < n; i++)
        hist_record(h, *last - starts[i]);
    r->ok += n - refused;
    r->refused += refused;
    return true;
}

/* Runs the warm-up and the measured loop and prints/writes the report;
 * returns the exit status (non-zero on any error). */
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
    uint64_t last = peer_mono_ns(), warm_end = last + (uint64_t)(o->warmup_s * 1e9);
    bool ok = true;
    while (ok && last < warm_end)
        ok = peer_txn(o, b, ctx, &w, starts, NULL, r, &last);
    uint64_t t0 = peer_mono_ns(), end = t0 + (uint64_t)(o->duration_s * 1e9);
    uint64_t tick = t0 + 1000000000ull, tick_ops = 0, tick_ns = t0;
    last = t0;
    double cpu0 = proc_cpu_s(getpid());
    while (ok && (o->duration_s <= 0 || last < end) &&
           (!o->ops_max || r->ok + r->refused < o->ops_max)) {
        ok = peer_txn(o, b, ctx, &w, starts, h, r, &last);
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
    double cpu1 = proc_cpu_s(getpid());
    r->server_cpu_s = cpu0 >= 0 && cpu1 >= 0 ? cpu1 - cpu0 : -1;
    r->connections = 1;
    r->pipeline = o->batch;
    r->threads = 1;
    r->seed = o->work.seed;
    r->warmup_s = o->warmup_s;
    snprintf(r->workload, sizeof(r->workload), "%s", workload_mix_name(o->work.mix));
    if (o->system)
        snprintf(r->system, sizeof(r->system), "%s", o->system);
    if (o->label)
        snprintf(r->label, sizeof(r->label), "%s", o->label);
    int rc = report_finish(r, o->json, r->system);
    free(starts);
    free(h);
    return rc;
}

#endif
