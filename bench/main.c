/*
 * main.c — tally-bench: command line, subcommands, output.
 *
 *   tally-bench [run] [options]   RESP load against tallyd or Redis
 *   tally-bench engine [options]  the engine's C API, no network
 *   tally-bench summarize ...     latencies from a file (pgbench's log) as a report
 *   tally-bench freeport          prints a free TCP port on 127.0.0.1
 *   tally-bench fscheck DIR...    refuses directories on tmpfs (durable figures need a disk)
 *   tally-bench ready [options]   times a (re)starting server until every shard answers
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
#include "groups.h"
#include "net.h"
#include "proc.h"
#include "selftest.h"
#include "tally.h"
#include "wire.h"

/* A line of a latency file, for summarize, and the columns read of it. */
#define MAIN_LINE_BYTES_MAX 4096
#define MAIN_COLUMNS_MAX 16

static const char main_usage[] =
    "usage: tally-bench [run] [options]      RESP load generator\n"
    "       tally-bench engine [options]     engine API benchmark (no network)\n"
    "       tally-bench summarize [options]  latencies from a file as a report\n"
    "       tally-bench freeport             print a free TCP port on 127.0.0.1\n"
    "       tally-bench fscheck DIR...       fail if a directory is on tmpfs/ramfs\n"
    "       tally-bench ready [options]      time until a starting server's shards all answer\n"
    "       tally-bench selftest             check the histogram, RESP scanner, workload,\n"
    "                                        open-loop and per-entry arithmetic\n"
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
    "      --server-pid PID   sample this local server's /proc counters: CPU per op, bytes\n"
    "                         written per entry, RssAnon, disk per entry\n"
    "      --server-dir DIR   its data directory (default: CONFIG GET dir)\n"
    "      --durable          fail unless the server says every write is durable\n"
    "      --cluster          HOST:PORT is a node of a tally cluster: each merchant's\n"
    "                         commands go to its shard group's leader (CLUSTER SLOTS)\n"
    "      --progress-s S     seconds between progress lines (1)\n"
    "common to run and engine:\n"
    "  -w, --workload W       points-v1 | points-mix | points-transfer | earn-only |\n"
    "                         redeem-heavy | read-heavy | hold-capture | ping (points-v1)\n"
    "      --ids seq|random   ids <nonce>-<stream>-<n>, or order-<random 64-bit> (seq)\n"
    "      --accounts N       accounts in total (100000)\n"
    "      --merchants N      merchants, accounts spread evenly (100)\n"
    "      --zipf S           Zipf exponent over accounts, 0 = uniform (0)\n"
    "      --seed N           random seed (time)\n"
    "      --json FILE        also write the result as one JSON object\n"
    "      --system NAME      name in the report (tally, redis, engine)\n"
    "      --label TEXT       free text in the report\n"
    "      --setting K=V      add a durability setting to the report (repeatable)\n"
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
    "      --pgbench-log      the file is pgbench's -l log: latency us in column 3, the\n"
    "                         end time in columns 5-6; the elapsed time is measured from it\n"
    "      --ops-per-line N   operations each line stands for (a pipeline of N) (1)\n"
    "      --errors N         errors the caller counted (the run then fails)\n"
    "      --refused N        of the operations, refusals the caller counted\n"
    "      --connections N, --pipeline N   recorded in the report\n"
    "ready:\n"
    "  -p, --port N, -H, --host ADDR\n"
    "      --since T          the server's start, unix seconds (date +%s.%N) (now)\n"
    "      --merchants N      probe BALANCE of merchants 1..max(N, 32 x shards) (100)\n"
    "      --timeout S        give up after S seconds (600)\n"
    "      --json FILE        also write {first_ping_s, all_shards_balance_s, ...}\n";

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
    bool pgbench_log;
    uint32_t ops_per_line;
    uint64_t errors;
    uint64_t refused;   /* summarize: of the operations, refused (counted by the caller) */
    bool durable;
    bool cluster;       /* run: a tally cluster, each group's share to its leader */
    double since_s;     /* ready: the server's start, unix s */
    double timeout_s;
    report_setting settings[REPORT_SETTINGS_MAX];
    uint32_t setting_count;
} main_args;

enum {
    OPT_TARGET = 256, OPT_THREADS, OPT_WARMUP, OPT_RATE, OPT_PREFILL, OPT_SHA, OPT_ACCOUNTS,
    OPT_MERCHANTS, OPT_ZIPF, OPT_SEED, OPT_JSON, OPT_SYSTEM, OPT_LABEL, OPT_DIR, OPT_SHARDS,
    OPT_SYNC, OPT_INFLIGHT, OPT_FILE, OPT_COLUMN, OPT_UNIT, OPT_ELAPSED, OPT_SERVER_PID,
    OPT_SERVER_CPU, OPT_SERVER_DIR, OPT_DURABLE, OPT_PROGRESS, OPT_IDS, OPT_SETTING,
    OPT_PGBENCH_LOG, OPT_OPS_PER_LINE, OPT_ERRORS, OPT_REFUSED, OPT_SINCE, OPT_TIMEOUT,
    OPT_CLUSTER,
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
    {"server-dir", required_argument, NULL, OPT_SERVER_DIR},
    {"durable", no_argument, NULL, OPT_DURABLE},
    {"cluster", no_argument, NULL, OPT_CLUSTER},
    {"progress-s", required_argument, NULL, OPT_PROGRESS},
    {"ids", required_argument, NULL, OPT_IDS},
    {"setting", required_argument, NULL, OPT_SETTING},
    {"pgbench-log", no_argument, NULL, OPT_PGBENCH_LOG},
    {"ops-per-line", required_argument, NULL, OPT_OPS_PER_LINE},
    {"errors", required_argument, NULL, OPT_ERRORS},
    {"refused", required_argument, NULL, OPT_REFUSED},
    {"since", required_argument, NULL, OPT_SINCE},
    {"timeout", required_argument, NULL, OPT_TIMEOUT},
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
    a->ops_per_line = 1;
    a->timeout_s = 600;
}

static void main_setting(main_args *a, const char *arg)
{
    const char *eq = strchr(arg, '=');
    if (!eq || eq == arg || a->setting_count == REPORT_SETTINGS_MAX)
        main_die("--setting takes NAME=VALUE (at most 12)", arg);
    report_setting *s = &a->settings[a->setting_count++];
    snprintf(s->name, sizeof(s->name), "%.*s", (int)(eq - arg), arg);
    snprintf(s->value, sizeof(s->value), "%s", eq + 1);
}

static void main_option(main_args *a, int opt, const char *arg)
{
    switch (opt) {
    case 'H': a->net.host = arg; break;
    case 'p': a->net.port = (uint16_t)main_u64(arg, 65535); break;
    case OPT_TARGET: a->target = arg; break;
    case OPT_CLUSTER: a->cluster = true; break;
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
    case OPT_COLUMN: a->column = (uint32_t)main_u64(arg, MAIN_COLUMNS_MAX); break;
    case OPT_UNIT: a->unit = arg; break;
    case OPT_ELAPSED: a->elapsed_s = main_double(arg, 1e7); break;
    case OPT_SERVER_PID: a->net.server_pid = (int)main_u64(arg, INT32_MAX); break;
    case OPT_SERVER_CPU: a->server_cpu_s = main_double(arg, 1e9); break;
    case OPT_SERVER_DIR: a->net.server_dir = arg; break;
    case OPT_DURABLE: a->durable = true; break;
    case OPT_PROGRESS: a->net.progress_s = main_double(arg, 86400); break;
    case OPT_IDS:
        if (strcmp(arg, "seq") && strcmp(arg, "random"))
            main_die("--ids is seq or random", arg);
        a->work.ids = strcmp(arg, "random") == 0 ? WORKLOAD_IDS_RANDOM : WORKLOAD_IDS_SEQUENTIAL;
        break;
    case OPT_SETTING: main_setting(a, arg); break;
    case OPT_PGBENCH_LOG: a->pgbench_log = true; break;
    case OPT_OPS_PER_LINE: a->ops_per_line = (uint32_t)main_u64(arg, 1u << 20); break;
    case OPT_ERRORS: a->errors = main_u64(arg, UINT64_MAX / 2); break;
    case OPT_REFUSED: a->refused = main_u64(arg, UINT64_MAX / 2); break;
    case OPT_SINCE: a->since_s = main_double(arg, 1e11); break;
    case OPT_TIMEOUT: a->timeout_s = main_double(arg, 86400); break;
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
    for (uint32_t i = 0; i < a->setting_count; i++)
        report_setting_add(r, a->settings[i].name, a->settings[i].value);
    return report_finish(r, a->json, "tally-bench");
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

static bool main_local(const char *host)
{
    return strcmp(host, "127.0.0.1") == 0 || strcmp(host, "localhost") == 0 ||
           strcmp(host, "::1") == 0;
}

/* Reads back what the server runs with (CONFIG GET; tally's INFO server)
 * into the report, checks its data directory is on a disk when writes are
 * durable, and with --durable refuses a server whose writes are not. */
static int main_server_settings(main_args *a, report_run *r)
{
    static char dir[4200];
    static const char *const names[] = {"appendonly", "appendfsync", "save", "shards"};
    const char *argv[] = {"CONFIG", "GET", "appendonly", "appendfsync", "save", "shards", "dir"};
    char reply[8192], v[4096];
    if (net_call(a->net.host, a->net.port, 7, argv, reply, sizeof(reply)) < 0)
        reply[0] = '\0';
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (wire_config_value(reply, names[i], v, sizeof(v)) == 0)
            report_setting_add(r, names[i], v);
    const char *fsync = report_setting_get(r, "appendfsync");
    const char *aof = report_setting_get(r, "appendonly");
    bool durable = fsync && strcmp(fsync, "always") == 0 && aof && strcmp(aof, "yes") == 0;
    if (a->net.target == WIRE_TALLY) {
        const char *info[] = {"INFO", "server"};
        char text[8192];
        if (net_call(a->net.host, a->net.port, 2, info, text, sizeof(text)) > 0 &&
            wire_info_field(text, "sync", v, sizeof(v)) == 0) {
            report_setting_add(r, "sync", v);
            durable = durable && strcmp(v, "always") == 0;
        }
    }
    /* A relative dir is the server's: resolvable through its cwd only. */
    if (wire_config_value(reply, "dir", v, sizeof(v)) == 0 && main_local(a->net.host) &&
        (v[0] == '/' || (v[0] && a->net.server_pid > 0))) {
        if (v[0] != '/' && a->net.server_pid > 0)
            snprintf(dir, sizeof(dir), "/proc/%d/cwd/%s", a->net.server_pid, v);
        else
            snprintf(dir, sizeof(dir), "%s", v);
        if (report_data_fs(r, dir, durable, "tally-bench") != 0)
            return 1;
        if (!a->net.server_dir && a->net.server_pid > 0)
            a->net.server_dir = dir;
    }
    if (a->durable && !durable) {
        fprintf(stderr, "tally-bench: --durable: %s:%u does not say every write is durable "
                        "(appendonly=%s appendfsync=%s)\n",
                a->net.host, a->net.port, aof ? aof : "?", fsync ? fsync : "?");
        return 1;
    }
    return 0;
}

static int main_run(main_args *a)
{
    if (strcmp(a->target, "tally") && strcmp(a->target, "redis"))
        main_die("--target is tally or redis", a->target);
    a->net.target = strcmp(a->target, "redis") == 0 ? WIRE_REDIS : WIRE_TALLY;
    if (a->net.target == WIRE_REDIS && a->work.mix == WORKLOAD_POINTS_MIX)
        main_die("the Redis ledger script has no REVERSE or EXPIRES", "points-mix");
    if (a->net.target == WIRE_REDIS && a->work.mix == WORKLOAD_POINTS_TRANSFER)
        main_die("the Redis ledger script has no TRANSFER", "points-transfer");
    a->net.progress = !a->quiet;
    const char *ping[] = {"PING"};
    char reply[256];
    long n = net_call(a->net.host, a->net.port, 1, ping, reply, sizeof(reply));
    if (n < 0) {
        fprintf(stderr, "tally-bench: %s:%u: %s\n", a->net.host, a->net.port, strerror((int)-n));
        return 1;
    }
    hist *h = malloc(sizeof(hist));
    if (!h)
        return 1;
    report_run r = {.latency = h, .server_cpu_s = -1};
    if (main_server_settings(a, &r) != 0 ||
        (a->net.target == WIRE_REDIS && main_load_script(a) != 0) ||
        (a->prefill > 0 && main_prefill(a) != 0)) {
        free(h);
        return 1;
    }
    a->net.work = a->work;
    workload_nonce(a->net.work.nonce);
    snprintf(r.system, sizeof(r.system), "%s", a->target);
    snprintf(r.label, sizeof(r.label), "%s:%u c=%u P=%u threads=%u%s", a->net.host, a->net.port,
             a->net.connections, a->net.pipeline, a->net.threads,
             a->net.rate > 0 ? " open-loop" : "");
    if (a->cluster) {
        if (a->net.target != WIRE_TALLY || a->net.server_pid > 0)
            main_die("--cluster drives a tally cluster (no --target redis, --server-pid)", "");
        report_setting_add(&r, "cluster", "each group's leader");
    }
    int rc = a->cluster ? groups_run(&a->net, &r) : net_run(&a->net, &r);
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
    const char *tmp = getenv("TMPDIR");
    a->engine.tmp_parent = tmp && tmp[0] ? tmp : "/tmp";
    workload_nonce(a->engine.work.nonce);
    hist *h = malloc(sizeof(hist));
    if (!h)
        return 1;
    report_run r = {.latency = h, .server_cpu_s = -1};
    snprintf(r.system, sizeof(r.system), "engine");
    report_setting_add(&r, "sync", a->engine.sync == TALLY_SYNC_NONE ? "none" : "always");
    if (report_data_fs(&r, a->engine.dir ? a->engine.dir : a->engine.tmp_parent,
                       a->engine.sync == TALLY_SYNC_ALWAYS, "tally-bench engine") != 0) {
        free(h);
        return 1;
    }
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

/* One line of a latency file: its latency (ns) and, for a pgbench log,
 * the end time (ns since the epoch, from columns 5 and 6); false if the
 * line holds no latency (pgbench logs a failed transaction that way). */
static bool main_line(const main_args *a, char *line, double scale, double *lat_ns,
                      double *end_ns)
{
    char *cols[MAIN_COLUMNS_MAX], *save = NULL;
    uint32_t n = 0;
    for (char *tok = strtok_r(line, " \t\n", &save); tok && n < MAIN_COLUMNS_MAX;
         tok = strtok_r(NULL, " \t\n", &save))
        cols[n++] = tok;
    uint32_t lat_col = a->pgbench_log ? 3 : a->column;
    if (lat_col == 0 || lat_col > n || (a->pgbench_log && n < 6))
        return false;
    char *end;
    double v = strtod(cols[lat_col - 1], &end);
    if (end == cols[lat_col - 1] || v < 0)
        return false;
    *lat_ns = v * scale;
    *end_ns = a->pgbench_log ? strtod(cols[4], NULL) * 1e9 + strtod(cols[5], NULL) * 1e3 : 0;
    return true;
}

/* Reads one latency per line from column N (pgbench's per-transaction
 * log: client, transaction, latency_us, script, end s, end us).  With
 * --pgbench-log the elapsed time is measured: from the first transaction's
 * start (end - latency) to the last one's end. */
static int main_summarize(main_args *a)
{
    if (!a->file)
        main_die("summarize needs", "--file");
    double scale = a->pgbench_log || strcmp(a->unit, "us") == 0 ? 1e3
                   : strcmp(a->unit, "ms") == 0                ? 1e6
                                                               : 1.0;
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
                    .threads = 1, .seed = a->work.seed, .errors = a->errors};
    char line[MAIN_LINE_BYTES_MAX];
    double first_ns = 0, last_ns = 0;
    uint64_t bad = 0;
    while (fgets(line, sizeof(line), f)) {
        double lat, end;
        if (!main_line(a, line, scale, &lat, &end)) {
            bad++;
            continue;
        }
        if (a->pgbench_log && (first_ns == 0 || end - lat < first_ns))
            first_ns = end - lat;
        if (end > last_ns)
            last_ns = end;
        for (uint32_t i = 0; i < a->ops_per_line; i++)
            hist_record(h, (uint64_t)lat);
        r.ok += a->ops_per_line;
    }
    fclose(f);
    r.errors += bad * a->ops_per_line;
    if (r.errors)
        snprintf(r.first_error, sizeof(r.first_error), "%llu failed (%llu lines without a "
                 "latency in %s)", (unsigned long long)r.errors, (unsigned long long)bad,
                 a->file);
    if (a->elapsed_s <= 0 && last_ns > first_ns)
        r.elapsed_s = (last_ns - first_ns) / 1e9;
    r.ops = r.ok;
    r.refused = a->refused < r.ok ? a->refused : r.ok;
    r.ok -= r.refused;
    snprintf(r.system, sizeof(r.system), "%s", "file");
    snprintf(r.workload, sizeof(r.workload), "%s", workload_mix_name(a->work.mix));
    snprintf(r.label, sizeof(r.label), "%s", a->file);
    int rc = main_output(a, &r);
    free(h);
    return rc;
}

/* Every directory must be on a filesystem that keeps data through a power
 * loss: durable figures from tmpfs would measure memory copies. */
static int main_fscheck(int argc, char **argv)
{
    int rc = argc > 1 ? 0 : 2;
    for (int i = 1; i < argc; i++) {
        report_run r = {0};
        if (report_data_fs(&r, argv[i], true, "tally-bench fscheck") != 0)
            rc = 1;
        else
            printf("%s: %s\n", argv[i], r.setting_count ? r.settings[0].value : "?");
    }
    return rc;
}

static double main_wall_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Waits until `argv` answers without an error reply; returns the wall
 * time it did, or -1 at the deadline. */
static double main_await(const main_args *a, int argc, const char *const *argv, double deadline_s,
                         char *last, size_t cap)
{
    for (;;) {
        long n = net_call(a->net.host, a->net.port, argc, argv, last, cap);
        double now = main_wall_s();
        if (n > 0 && last[0] != '-')
            return now;
        if (n < 0)
            snprintf(last, cap, "%s", strerror((int)-n));
        if (now >= deadline_s)
            return -1;
        struct timespec pause = {.tv_nsec = 5000000};
        nanosleep(&pause, NULL);
    }
}

/* How long a (re)starting server takes until it answers PING, and until
 * every shard answers BALANCE: merchants 1..max(N, 32 x shards) are asked
 * (each shard is XXH3(merchant) mod shards: missing one has probability
 * shards x (1 - 1/shards)^(32 x shards), below 1e-8 for 2 shards). */
static int main_ready(main_args *a)
{
    double since = a->since_s > 0 ? a->since_s : main_wall_s();
    double deadline = since + a->timeout_s;
    char last[512] = "", reply[512];
    const char *ping[] = {"PING"};
    double ping_at = main_await(a, 1, ping, deadline, last, sizeof(last));
    uint64_t shards = 1, probe = 0;
    double ready_at = -1;
    if (ping_at >= 0) {
        const char *cfg[] = {"CONFIG", "GET", "shards"};
        char v[32];
        if (net_call(a->net.host, a->net.port, 3, cfg, reply, sizeof(reply)) > 0 &&
            wire_config_value(reply, "shards", v, sizeof(v)) == 0 && atoi(v) > 0)
            shards = (uint64_t)atoi(v);
        probe = a->work.merchants > 32 * shards ? a->work.merchants : 32 * shards;
        ready_at = ping_at;
        for (uint64_t m = 1; m <= probe && ready_at >= 0; m++) {
            char merchant[24];
            snprintf(merchant, sizeof(merchant), "%llu", (unsigned long long)m);
            const char *bal[] = {"BALANCE", merchant, "1"};
            ready_at = main_await(a, 3, bal, deadline, last, sizeof(last));
        }
    }
    if (ping_at < 0 || ready_at < 0) {
        fprintf(stderr, "tally-bench ready: %s:%u not ready after %.0f s (last: %.200s)\n",
                a->net.host, a->net.port, a->timeout_s, last);
        return 1;
    }
    printf("ready: first PING after %.3f s, every shard (%llu) answered BALANCE after %.3f s "
           "(%llu merchants probed)\n",
           ping_at - since, (unsigned long long)shards, ready_at - since,
           (unsigned long long)probe);
    if (a->json) {
        FILE *f = fopen(a->json, "w");
        if (!f)
            return 1;
        fprintf(f, "{\"first_ping_s\":%.3f,\"all_shards_balance_s\":%.3f,\"shards\":%llu,"
                   "\"merchants_probed\":%llu}\n",
                ping_at - since, ready_at - since, (unsigned long long)shards,
                (unsigned long long)probe);
        fclose(f);
    }
    return 0;
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
    if (strcmp(sub, "fscheck") == 0)
        return main_fscheck(argc, argv);
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
    if (strcmp(sub, "ready") == 0)
        return main_ready(&a);
    main_die("unknown subcommand", sub);
    return 2;
}
