/*
 * tallyd.c — the tally server: opens the data directory (recovering every
 * shard), then serves RESP over TCP until SIGTERM/SIGINT (SPEC §5).
 *
 * Shutdown order matters: the server stops reading and answers what the
 * engine already has; then the engine closes (final checkpoint); then the
 * server's memory goes.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "config.h"
#include "server.h"
#include "tally.h"

static void tallyd_log(void *ctx, int level, const char *msg)
{
    (void)ctx;
    static const char *const names[] = {"info", "warning", "error"};
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char when[32];
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
    fprintf(stderr, "%s.%03ldZ tallyd %s: %s\n", when, ts.tv_nsec / 1000000,
            names[level < 0 ? 0 : level > 2 ? 2 : level], msg);
}

/* Room for every client plus the engine's files (segments, LMDB). */
static void tallyd_raise_fd_limit(const config *cfg)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    rlim_t want = (rlim_t)cfg->max_clients + 1024;
    if (rl.rlim_cur >= want)
        return;
    rl.rlim_cur = want <= rl.rlim_max ? want : rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur < want) {
        char msg[160];
        snprintf(msg, sizeof(msg),
                 "open files limited to %llu: fewer than --maxclients %u clients can connect",
                 (unsigned long long)rl.rlim_cur, cfg->max_clients);
        tallyd_log(NULL, 1, msg);
    }
}

static int tallyd_fail(const char *what, const char *detail)
{
    fprintf(stderr, "tallyd: %s: %s\n", what, detail);
    return 1;
}

int main(int argc, char **argv)
{
    static config cfg;
    config_defaults(&cfg);
    char err[512] = "";
    if (config_parse(&cfg, argc, argv, err, sizeof(err)) != 0) {
        fprintf(stderr, "tallyd: %s\n", err);
        return 2;
    }
    if (cfg.help) {
        fputs(config_usage(), stdout);
        return 0;
    }
    config_auth *auth = NULL;
    if (cfg.auth_file[0]) {
        int rc = config_auth_load(cfg.auth_file, &auth, err, sizeof(err));
        if (rc != 0)
            return tallyd_fail("--auth-file", err);
    } else if (!config_is_loopback(cfg.bind) && !cfg.insecure) {
        fprintf(stderr, "tallyd: refusing to serve %s without --auth-file: anyone who can "
                        "reach it could write to every ledger (give --insecure to do it "
                        "anyway)\n",
                cfg.bind);
        return 2;
    } else if (cfg.metrics_port && !config_is_loopback(cfg.metrics_bind) && !cfg.insecure) {
        fprintf(stderr, "tallyd: refusing to serve /metrics on %s without --auth-file: "
                        "anyone who can reach it could read the server's internals (give "
                        "--insecure to do it anyway)\n",
                cfg.metrics_bind);
        return 2;
    }
    /* Signals are read from a signalfd by the server: block them before
     * any thread starts, so every thread inherits the mask. */
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    pthread_sigmask(SIG_BLOCK, &mask, NULL);
    signal(SIGPIPE, SIG_IGN);
    tallyd_raise_fd_limit(&cfg);

    if (cfg.sync == TALLY_SYNC_NONE)
        tallyd_log(NULL, 1,
                   "*** --sync none: writes are acknowledged BEFORE they are on stable "
                   "storage; a crash or power loss loses acknowledged entries. For "
                   "benchmarks only. ***");
    /* Listen first: a busy port or a bad address must not leave a data
     * directory created (its shard count fixed) by a server that never
     * served. */
    server_options sopts = {.cfg = &cfg, .auth = auth, .log = tallyd_log};
    server *srv = NULL;
    int rc = server_open(&sopts, &srv);
    char where[128];
    snprintf(where, sizeof(where), "listen on %s:%u", cfg.bind, cfg.port);
    if (rc == 0 && cfg.metrics_port) {
        rc = server_listen_metrics(srv, cfg.metrics_bind, cfg.metrics_port);
        snprintf(where, sizeof(where), "--metrics: listen on %s:%u", cfg.metrics_bind,
                 cfg.metrics_port);
        if (rc != 0)
            server_close(srv);
    }
    if (rc != 0) {
        config_auth_free(auth);
        return tallyd_fail(where, strerror(-rc));
    }
    tally_options topts = {.dir = cfg.dir, .shards = cfg.shards, .sync = cfg.sync,
                           .checkpoint_ms = cfg.checkpoint_ms, .log = tallyd_log,
                           .checkpoint_entries = cfg.checkpoint_records,
                           .segment_bytes = cfg.segment_bytes,
                           .snapshot_every_records = cfg.snapshot_every_records,
                           .snapshot_every_ms = cfg.snapshot_every_ms,
                           .retention = cfg.retention,
                           .archive_dir = cfg.archive_dir[0] ? cfg.archive_dir : NULL};
    tally *t = NULL;
    rc = tally_open(&topts, &t);
    if (rc != 0) {
        server_close(srv);
        config_auth_free(auth);
        return tallyd_fail(cfg.dir, tally_strerror(rc));
    }
    server_attach(srv, t);
    char msg[4400], metrics_at[96] = "";
    if (cfg.metrics_port)
        snprintf(metrics_at, sizeof(metrics_at), ", /metrics on %s:%u", cfg.metrics_bind,
                 cfg.metrics_port);
    snprintf(msg, sizeof(msg), "listening on %s:%u, data in %s, %u shards, sync %s%s%s",
             cfg.bind, cfg.port, cfg.dir, tally_shard_count(t),
             cfg.sync == TALLY_SYNC_NONE ? "none" : "always", auth ? ", auth on" : "",
             metrics_at);
    tallyd_log(NULL, 0, msg);
    rc = server_run(srv);
    tally_close(t); /* answers anything left, final checkpoint */
    server_close(srv);
    config_auth_free(auth);
    tallyd_log(NULL, 0, "bye");
    return rc == 0 ? 0 : 1;
}
