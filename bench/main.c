/*
 * main.c — tally-bench: command line, subcommands, output.
 *
 *   tally-bench [run] [options]   RESP load against tallyd or Redis
 *   tally-bench engine [options]  the engine's C API, no network
 *   tally-bench summarize ...     latencies from a file (pgbench's log) as a report
 *   tally-bench freeport          prints a free TCP port on 127.0.0.1
 *   tally-bench selftest          checks the bench's own modules
 *   tally-bench redis-script      prints the ledger Lua script the Redis peer runs
 *
 * Every option is listed by `tally-bench --help` and in bench/README.md.
 */
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"
#include "net.h"
#include "selftest.h"
#include "tally.h"
#include "wire.h"

/* A line of a latency file, for summarize. */
#define MAIN_LINE_BYTES_MAX 4096

static const char main_usage[] =
    "usage: tally-bench [run] [options]      RESP load generator\n"
    "       tally-bench engine [options]     engine API benchmark (no network)\n"
    "       tally-bench summarize [options]  latencies from a file as a report\n"
    "       tally-bench freeport             print a free TCP port on 127.0.0.1\n"
    "       tally-bench selftest             check the histogram, RESP scanner, workload\n"
    "       tally-bench redis-script         print the ledger Lua script the Redis peer runs\n"
    "\n"
    "run:\n"
    "  -H, --host ADDR        server address (127.0.0.1)\n"
    "  -p, --port N           server port (7379)\n"
    "      --target T         tally | redis (EVALSHA of the ledger Lua script) (tally)\n"
    "  -c, --connections N    connections (50)\n"
    "  -P, --pipeline N       commands in flight per connection (16)\n"
    "      --threads N        client threads, connections spread over them (1)\n"
    "  -d, --duration S       measured seconds (10); 0 with -n: until N ops\n"
    "  -n, --ops N            stop after N operations (0: no limit)\n"
    "      --warmup S         seconds of load before measuring (0)\n"
    "      --rate R           open loop at R ops/s in total, latency from schedule (0: closed)\n"
    "      --prefill P        first EARN P points to every account once (not measured)\n"
    "      --script-sha SHA   redis: use this loaded script instead of SCRIPT LOAD\n"
    "      --server-pid PID   report the CPU time this (local) server process used per op\n"
    "common to run and engine:\n"
    "  -w, --workload W       points-v1 | earn-only | redeem-heavy | read-heavy |\n"
    "                         hold-capture | ping (points-v1)\n"
    "      --accounts N       accounts in total (100000)\n"
    "      --merchants N      merchants, accounts spread evenly (100)\n"
    "      --zipf S           Zipf exponent over accounts, 0 = uniform (0)\n"
    "      --seed N           random seed (time)\n"
    "      --json FILE        also write the result as one JSON object\n"
    "      --system NAME      name in the report (tally, redis, engine)\n"
    "      --label TEXT       free text in the report\n"
    "  -q, --quiet            no progress line\n"
    "engine:\n"
    "      --dir DIR          data directory (a fresh temporary one, removed after)\n"
    "      --shards N         shards (the engine's default: CPU count)\n"
    "      --sync always|none flush policy (always)\n"
    "      --inflight N       requests in flight (4096)\n"
    "summarize:\n"
    "      --file F           whitespace-separated columns, one operation a line\n"
    "      --column N         1-based column holding the latency (3)\n"
    "      --unit us|ms|ns    unit of that column (us)\n"
    "      --elapsed S        seconds the operations took (for ops/s)\n"
    "      --server-cpu S     CPU seconds the server used, measured by the caller\n"
    "      --connections N, --pipeline N   recorded in the report\n";

typedef struct main_args {
    net_options net;
    engine_options engine;
    workload_config work;
    const char *json;
    const char *system;
    const char *label;
    const char *target;
    const char *sha;
    int64_t prefill;
    bool quiet;
    const char *file;
    uint32_t column;
    const char *unit;
    double elapsed_s;
    double server_cpu_s; /* summarize: measured by the caller, -1 = unknown */
} main_args;

enum {
    OPT_TARGET = 256, OPT_THREADS, OPT_WARMUP, OPT_RATE, OPT_PREFILL, OPT_SHA, OPT_ACCOUNTS,
    OPT_MERCHANTS, OPT_ZIPF, OPT_SEED, OPT_JSON, OPT_SYSTEM, OPT_LABEL, OPT_DIR, OPT_SHARDS,
    OPT_SYNC, OPT_INFLIGHT, OPT_FILE, OPT_COLUMN, OPT_UNIT, OPT_ELAPSED, OPT_SERVER_PID,
    OPT_SERVER_CPU,
};

static const struct option main_options[] = {
    {"host", required_argument, NULL, 'H'},       {"port", required_argument, NULL, 'p'},
    {"target", required_argument, NULL, OPT_TARGET},
    {"connections", required_argument, NULL, 'c'}, {"pipeline", required_argument, NULL, 'P'},
    {"threads", required_argument, NULL, OPT_THREADS},
    {"duration", required_argument, NULL, 'd'},   {"ops", required_argument, NULL, 'n'},
    {"warmup", required_argument, NULL, OPT_WARMUP}, {"rate", required_argument, NULL, OPT_RATE},
    {"prefill", required_argument, NULL, OPT_PREFILL},
    {"script-sha", required_argument, NULL, OPT_SHA},
    {"workload", required_argument, NULL, 'w'},
    {"accounts", required_argument, NULL, OPT_ACCOUNTS},
    {"merchants", required_argument, NULL, OPT_MERCHANTS},
    {"zipf", required_argument, NULL, OPT_ZIPF},  {"seed", required_argument, NULL, OPT_SEED},
    {"json", required_argument, NULL, OPT_JSON},  {"system", required_argument, NULL, OPT_SYSTEM},
    {"label", required_argument, NULL, OPT_LABEL}, {"quiet", no_argument, NULL, 'q'},
    {"dir", required_argument, NULL, OPT_DIR},    {"shards", required_argument, NULL, OPT_SHARDS},
    {"sync", required_argument, NULL, OPT_SYNC},
    {"inflight", required_argument, NULL, OPT_INFLIGHT},
    {"file", required_argument, NULL, OPT_FILE},  {"column", required_argument, NULL, OPT_COLUMN},
    {"unit", required_argument, NULL, OPT_UNIT},  {"elapsed", required_argument, NULL, OPT_ELAPSED},
    {"server-pid", required_argument, NULL, OPT_SERVER_PID},
    {"server-cpu", required_argument, NULL, OPT_SERVER_CPU},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

/* ---- argument parsing --------------------------------------------------- */

static void main_die(const char *what, const char *arg)
{
    fprintf(stderr, "tally-bench: %s: %s\n(see tally-bench --help)\n", what, arg);
    exit(2);
}

static uint64_t main_u64(const char *arg, uint64_t max)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(arg, &end, 10);
    if (errno || end == arg || *end || arg[0] == '-' || v > max)
        main_die("not a number in range", arg);
    return v;
}

static double main_double(const char *arg, double max)
{
    char *end;
    double v = strtod(arg, &end);
    if (end == arg || *end || !(v >= 0.0) || v > max)
        main_die("not a number in range", arg);
    return v;
}

static void main_defaults(main_args *a)
{
    memset(a, 0, sizeof(*a));
    a->net = (net_options){.host = "127.0.0.1", .port = 7379, .connections = 50,
                           .pipeline = 16, .threads = 1, .duration_s = 10};
    a->engine = (engine_options){.inflight = 4096, .duration_s = 10, .sync = TALLY_SYNC_ALWAYS};
    a->work = (workload_config){.mix = WORKLOAD_POINTS_V1, .accounts = 100000,
                                .merchants = 100, .seed = (uint64_t)time(NULL)};
    a->target = "tally";
    a->column = 3;
    a->unit = "us";
    a->server_cpu_s = -1;
}

static void main_option(main_args *a, int opt, const char *arg)
{
    switch (opt) {
    case 'H': a->net.host = arg; break;
    case 'p': a->net.port = (uint16_t)main_u64(arg, 65535); break;
    case OPT_TARGET: a->target = arg; break;
    case 'c': a->net.connections = (uint32_t)main_u64(arg, NET_CONNECTIONS_MAX); break;
    case 'P': a->net.pipeline = (uint32_t)main_u64(arg, NET_PIPELINE_MAX); break;
    case OPT_THREADS: a->net.threads = (uint32_t)main_u64(arg, NET_THREADS_MAX); break;
    case 'd': a->net.duration_s = a->engine.duration_s = main_double(arg, 86400); break;
    case 'n': a->net.ops_max = a->engine.ops_max = main_u64(arg, UINT64_MAX / 2); break;
    case OPT_WARMUP: a->net.warmup_s = a->engine.warmup_s = main_double(arg, 3600); break;
    case OPT_RATE: a->net.rate = main_double(arg, 1e9); break;
    case OPT_PREFILL: a->prefill = (int64_t)main_u64(arg, LIMIT_AMOUNT_MAX); break;
    case OPT_SHA: a->sha = arg; break;
    case 'w':
        a->work.mix = workload_mix_parse(arg);
        if (a->work.mix < 0 || a->work.mix == WORKLOAD_PREFILL)
            main_die("unknown workload", arg);
        break;
    case OPT_ACCOUNTS: a->work.accounts = main_u64(arg, 1ull << 40); break;
    case OPT_MERCHANTS: a->work.merchants = main_u64(arg, 1ull << 32); break;
    case OPT_ZIPF: a->work.zipf_s = main_double(arg, 10); break;
    case OPT_SEED: a->work.seed = main_u64(arg, UINT64_MAX); break;
    case OPT_JSON: a->json = arg; break;
    case OPT_SYSTEM: a->system = arg; break;
    case OPT_LABEL: a->label = arg; break;
    case 'q': a->quiet = true; break;
    case OPT_DIR: a->engine.dir = arg; break;
    case OPT_SHARDS: a->engine.shards = (uint32_t)main_u64(arg, LIMIT_SHARDS_MAX); break;
    case OPT_SYNC:
        if (strcmp(arg, "always") && strcmp(arg, "none"))
            main_die("--sync is always or none", arg);
        a->engine.sync = strcmp(arg, "none") == 0 ? TALLY_SYNC_NONE : TALLY_SYNC_ALWAYS;
        break;
    case OPT_INFLIGHT: a->engine.inflight = (uint32_t)main_u64(arg, ENGINE_INFLIGHT_MAX); break;
    case OPT_FILE: a->file = arg; break;
    case OPT_COLUMN: a->column = (uint32_t)main_u64(arg, 64); break;
    case OPT_UNIT: a->unit = arg; break;
    case OPT_ELAPSED: a->elapsed_s = main_double(arg, 1e7); break;
    case OPT_SERVER_PID: a->net.server_pid = (int)main_u64(arg, INT32_MAX); break;
    case OPT_SERVER_CPU: a->server_cpu_s = main_double(arg, 1e9); break;
    case 'h': fputs(main_usage, stdout); exit(0);
    default: fputs(main_usage, stderr); exit(2);
    }
}

/* ---- output ------------------------------------------------------------- */

static int main_output(const main_args *a, report_run *r)
{
    if (a->label)
        snprintf(r->label, sizeof(r->label), "%s", a->label);
    if (a->system)
        snprintf(r->system, sizeof(r->system), "%s", a->system);
    report_text(stdout, r);
    fflush(stdout);
    if (a->json) {
        FILE *f = fopen(a->json, "w");
        if (!f) {
            fprintf(stderr, "tally-bench: %s: %s\n", a->json, strerror(errno));
            return 1;
        }
        report_json(f, r);
        if (fclose(f) != 0)
            return 1;
    }
    if (r->ops == 0) {
        fprintf(stderr, "tally-bench: no operation completed%s%s\n",
                r->first_error[0] ? ": " : "", r->first_error);
        return 1;
    }
    return 0;
}

/* ---- subcommands -------------------------------------------------------- */

static int main_load_script(main_args *a)
{
    if (a->sha) {
        if (strlen(a->sha) != 40)
            main_die("--script-sha takes 40 hex digits", a->sha);
        memcpy(a->net.sha, a->sha, 41);
        return 0;
    }
    const char *argv[] = {"SCRIPT", "LOAD", wire_redis_script};
    char reply[256];
    long n = net_call(a->net.host, a->net.port, 3, argv, reply, sizeof(reply));
    if (n < 0 || strncmp(reply, "$40\r\n", 5) != 0) {
        fprintf(stderr, "tally-bench: SCRIPT LOAD failed: %s\n",
                n < 0 ? strerror((int)-n) : reply);
        return 1;
    }
    memcpy(a->net.sha, reply + 5, 40);
    a->net.sha[40] = '\0';
    return 0;
}

static int main_prefill(main_args *a)
{
    net_options o = a->net;
    o.work = a->work;
    o.work.mix = WORKLOAD_PREFILL;
    o.work.prefill_points = a->prefill;
    workload_nonce(o.work.nonce);
    o.threads = 1;
    o.duration_s = o.warmup_s = o.rate = 0;
    o.ops_max = 0;
    o.progress = false;
    hist *h = malloc(sizeof(hist));
    if (!h)
        return 1;
    report_run r = {.latency = h, .server_cpu_s = -1};
    double t0 = net_now_s();
    int rc = net_run(&o, &r);
    fprintf(stderr, "prefill: %llu accounts earned %lld points each in %.1f s (errors %llu)\n",
            (unsigned long long)r.ops, (long long)a->prefill, net_now_s() - t0,
            (unsigned long long)r.errors);
    free(h);
    return rc < 0 || r.errors ? 1 : 0;
}

static int main_run(main_args *a)
{
    if (strcmp(a->target, "tally") && strcmp(a->target, "redis"))
        main_die("--target is tally or redis", a->target);
    a->net.target = strcmp(a->target, "redis") == 0 ? WIRE_REDIS : WIRE_TALLY;
    a->net.progress = !a->quiet;
    const char *ping[] = {"PING"};
    char reply[256];
    long n = net_call(a->net.host, a->net.port, 1, ping, reply, sizeof(reply));
    if (n < 0) {
        fprintf(stderr, "tally-bench: %s:%u: %s\n", a->net.host, a->net.port, strerror((int)-n));
        return 1;
    }
    if (a->net.target == WIRE_REDIS && main_load_script(a) != 0)
        return 1;
    if (a->prefill > 0 && main_prefill(a) != 0)
        return 1;
    a->net.work = a->work;
    workload_nonce(a->net.work.nonce);
    hist *h = malloc(sizeof(hist));
    if (!h)
        return 1;
    report_run r = {.latency = h, .server_cpu_s = -1};
    snprintf(r.system, sizeof(r.system), "%s", a->target);
    snprintf(r.label, sizeof(r.label), "%s:%u c=%u P=%u threads=%u%s", a->net.host, a->net.port,
             a->net.connections, a->net.pipeline, a->net.threads,
             a->net.rate > 0 ? " open-loop" : "");
    int rc = net_run(&a->net, &r);
    if (rc < 0) {
        fprintf(stderr, "tally-bench: %s\n", strerror(-rc));
        free(h);
        return 1;
    }
    rc = main_output(a, &r);
    free(h);
    return rc;
}

static int main_engine(main_args *a)
{
    a->engine.work = a->work;
    a->engine.progress = !a->quiet;
    workload_nonce(a->engine.work.nonce);
    hist *h = malloc(sizeof(hist));
    if (!h)
        return 1;
    report_run r = {.latency = h, .server_cpu_s = -1};
    snprintf(r.system, sizeof(r.system), "engine");
    int rc = engine_run(&a->engine, &r);
    if (rc < 0) {
        fprintf(stderr, "tally-bench engine: %s\n", tally_strerror(rc));
        free(h);
        return 1;
    }
    snprintf(r.label, sizeof(r.label), "C API, %u shards, sync %s, %u in flight", r.shards,
             r.sync, a->engine.inflight);
    rc = main_output(a, &r);
    free(h);
    return rc;
}

/* Reads one latency per line from column N (pgbench's per-transaction
 * log: client, transaction, latency_us, ...). */
static int main_summarize(main_args *a)
{
    if (!a->file)
        main_die("summarize needs", "--file");
    double scale = strcmp(a->unit, "ns") == 0 ? 1.0 : strcmp(a->unit, "ms") == 0 ? 1e6 : 1e3;
    FILE *f = fopen(a->file, "r");
    if (!f) {
        fprintf(stderr, "tally-bench: %s: %s\n", a->file, strerror(errno));
        return 1;
    }
    hist *h = malloc(sizeof(hist));
    if (!h) {
        fclose(f);
        return 1;
    }
    hist_reset(h);
    report_run r = {.latency = h, .server_cpu_s = a->server_cpu_s, .elapsed_s = a->elapsed_s,
                    .connections = a->net.connections, .pipeline = a->net.pipeline,
                    .threads = 1};
    char line[MAIN_LINE_BYTES_MAX];
    while (fgets(line, sizeof(line), f)) {
        char *save = NULL, *tok = strtok_r(line, " \t\n", &save);
        for (uint32_t col = 1; tok && col < a->column; col++)
            tok = strtok_r(NULL, " \t\n", &save);
        char *end;
        double v = tok ? strtod(tok, &end) : -1.0;
        if (!tok || end == tok || v < 0) {
            r.errors++;
            continue;
        }
        hist_record(h, (uint64_t)(v * scale));
        r.ok++;
    }
    fclose(f);
    r.ops = r.ok;
    snprintf(r.system, sizeof(r.system), "%s", "file");
    snprintf(r.workload, sizeof(r.workload), "%s", workload_mix_name(a->work.mix));
    snprintf(r.label, sizeof(r.label), "%s", a->file);
    int rc = main_output(a, &r);
    free(h);
    return rc;
}

static int main_freeport(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &len) < 0) {
        perror("tally-bench freeport");
        return 1;
    }
    printf("%u\n", ntohs(sa.sin_port));
    close(fd);
    return 0;
}

int main(int argc, char **argv)
{
    const char *sub = "run";
    if (argc > 1 && argv[1][0] != '-') {
        sub = argv[1];
        argv++;
        argc--;
    }
    if (strcmp(sub, "freeport") == 0)
        return main_freeport();
    if (strcmp(sub, "redis-script") == 0) {
        fputs(wire_redis_script, stdout);
        return 0;
    }
    if (strcmp(sub, "selftest") == 0)
        return selftest_run();
    main_args a;
    main_defaults(&a);
    int opt;
    while ((opt = getopt_long(argc, argv, "H:p:c:P:d:n:w:qh", main_options, NULL)) != -1)
        main_option(&a, opt, optarg);
    if (optind < argc)
        main_die("unexpected argument", argv[optind]);
    if (strcmp(sub, "run") == 0)
        return main_run(&a);
    if (strcmp(sub, "engine") == 0)
        return main_engine(&a);
    if (strcmp(sub, "summarize") == 0)
        return main_summarize(&a);
    main_die("unknown subcommand", sub);
    return 2;
}
