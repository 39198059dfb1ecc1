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
#include "repl.h"
#include "repl_proto.h"
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

/* Cluster mode: joins, opens every group's engine (repl.h). */
static int tallyd_cluster(const config *cfg, const tally_options *engine, repl **out)
{
    char hosts[LIMIT_ZK_HOSTS_BYTES_MAX + 1], name[LIMIT_CLUSTER_NAME_BYTES_MAX + 1];
    if (cluster_parse_target(cfg->cluster, hosts, sizeof(hosts), name, sizeof(name)) < 0) {
        fprintf(stderr, "tallyd: --cluster %s: not ZK_HOSTS/NAME\n", cfg->cluster);
        return -EINVAL;
    }
    uint8_t secret[REPL_SECRET_BYTES_MAX];
    size_t secret_len = 0;
    int rc = repl_secret_load(cfg->repl_secret[0] ? cfg->repl_secret : NULL, hosts, name, secret,
                              sizeof(secret), &secret_len);
    if (rc < 0) {
        fprintf(stderr, "tallyd: the replication secret (%s): %s\n",
                cfg->repl_secret[0] ? cfg->repl_secret : "from ZooKeeper", strerror(-rc));
        return rc;
    }
    repl_options ro = {.dir = cfg->dir, .zk_hosts = hosts, .name = name,
                       .node_id = cfg->node_id, .session_timeout_ms = cfg->zk_session_ms,
                       .ack_local = cfg->ack_local, .secret = secret, .secret_len = secret_len,
                       .repl_bind = cfg->repl_bind[0] ? cfg->repl_bind : cfg->bind,
                       .advertise = cfg->advertise, .engine = *engine, .log = tallyd_log};
    rc = repl_open(&ro, out);
    if (rc < 0) {
        fprintf(stderr, "tallyd: --cluster %s as %s: %s\n", cfg->cluster, cfg->node_id,
                rc == -ESRCH ? "no such node in the cluster's map"
                : rc == -ENOENT ? "no such cluster (tally cluster create first)"
                : rc == -ETIMEDOUT ? "ZooKeeper does not answer"
                : rc == -EADDRNOTAVAIL ? "not the address the cluster's map gives (above)"
                                       : tally_strerror(rc));
        return rc;
    }
    /* Clients are sent to the map's port: it must be this server's. */
    const cluster_map *m = repl_map_acquire(*out);
    uint16_t port = m->nodes[repl_self(*out)].port;
    repl_map_release(*out, m);
    if (port != cfg->port) {
        fprintf(stderr, "tallyd: --port %u, but the cluster's map gives node %s port %u\n",
                cfg->port, cfg->node_id, port);
        repl_close(*out);
        *out = NULL;
        return -EINVAL;
    }
    return 0;
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
    repl *cl = NULL;
    if (cfg.cluster[0]) {
        rc = tallyd_cluster(&cfg, &topts, &cl);
        if (rc != 0) {
            server_close(srv);
            config_auth_free(auth);
            return 1;
        }
        server_attach_cluster(srv, cl);
    } else {
        rc = tally_open(&topts, &t);
        if (rc != 0) {
            server_close(srv);
            config_auth_free(auth);
            return tallyd_fail(cfg.dir, tally_strerror(rc));
        }
        server_attach(srv, t);
    }
    char msg[4400], metrics_at[96] = "";
    if (cfg.metrics_port)
        snprintf(metrics_at, sizeof(metrics_at), ", /metrics on %s:%u", cfg.metrics_bind,
                 cfg.metrics_port);
    char shards[128];
    if (cl)
        snprintf(shards, sizeof(shards), "cluster node %s, acknowledging %s", cfg.node_id,
                 cfg.ack_local ? "after the local flush" : "once replicated");
    else
        snprintf(shards, sizeof(shards), "%u shards", tally_shard_count(t));
    snprintf(msg, sizeof(msg), "listening on %s:%u, data in %s, %s, sync %s%s%s", cfg.bind,
             cfg.port, cfg.dir, shards, cfg.sync == TALLY_SYNC_NONE ? "none" : "always",
             auth ? ", auth on" : "", metrics_at);
    tallyd_log(NULL, 0, msg);
    rc = server_run(srv);
    tally_close(t); /* answers anything left, final checkpoint */
    repl_close(cl);
    server_close(srv);
    config_auth_free(auth);
    tallyd_log(NULL, 0, "bye");
    return rc == 0 ? 0 : 1;
}
