/*
 * cluster_util.c — a real cluster for the tests (cluster_util.h).
 */
#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <errno.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cluster_util.h"
#include "engine_util.h"
#include "tallyd_util.h"

#define CU_UP_MS 60000
#define CU_SESSION_MS "3000"
#define CU_PY "/usr/bin/python3"

uint64_t cu_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t cu_unix_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

long cu_env(const char *name, long def)
{
    const char *v = getenv(name);
    return v && *v ? strtol(v, NULL, 10) : def;
}

static const char *cu_build(void)
{
    const char *b = getenv("TALLY_BUILD");
    cr_assert_not_null(b, "TALLY_BUILD must name the build directory (make test sets it)");
    return b;
}

/* ---- nodes ---------------------------------------------------------------------- */

static void cu_dump(const char *path);

/* A connection to a node with 2 s to connect and to answer, or NULL. */
static redisContext *cu_connect(const cu_node *n)
{
    struct timeval tv = {.tv_sec = 2};
    redisContext *r = redisConnectWithTimeout("127.0.0.1", n->port, tv);
    if (r && !r->err && redisSetTimeout(r, tv) == REDIS_OK)
        return r;
    if (r)
        redisFree(r);
    return NULL;
}

/* Waits until the node answers PING (or exits: asserted). */
static void cu_wait_up(cu *c, uint32_t i)
{
    cu_node *n = &c->nodes[i];
    uint64_t end = cu_mono_ms() + CU_UP_MS;
    while (cu_mono_ms() < end) {
        int st;
        if (waitpid(n->pid, &st, WNOHANG) == n->pid) {
            n->pid = 0;
            cr_assert_fail("node %s exited at start (status %d); see %s", n->id, st, n->log);
        }
        redisContext *r = cu_connect(n);
        if (r) {
            redisReply *rep = redisCommand(r, "PING");
            bool ok = rep && rep->type == REDIS_REPLY_STATUS;
            freeReplyObject(rep);
            redisFree(r);
            if (ok)
                return;
        }
        usleep(50000);
    }
    cr_assert_fail("node %s did not answer within %d ms; see %s", n->id, CU_UP_MS, n->log);
}

void cu_node_start(cu *c, uint32_t i)
{
    cu_node *n = &c->nodes[i];
    cr_assert_eq(n->pid, 0);
    char bin[512], port[8], target[128], advertise[32];
    snprintf(bin, sizeof(bin), "%s/tallyd", cu_build());
    snprintf(port, sizeof(port), "%u", n->port);
    snprintf(target, sizeof(target), "%s/%s", c->zk.hosts, c->name);
    snprintf(advertise, sizeof(advertise), "127.0.0.1:%u", n->port);
    const char *argv[64] = {bin, "--dir", n->dir, "--port", port, "--bind", "127.0.0.1",
                            "--cluster", target, "--node-id", n->id, "--advertise", advertise,
                            "--zk-session-ms", CU_SESSION_MS, "--segment-kib", "256"};
    int argc = 17;
    for (int k = 0; c->extra[k] && argc < 62; k++)
        argv[argc++] = c->extra[k];
    argv[argc] = NULL;
    n->pid = td_exec(argv, n->log);
    n->stopped = false;
    cu_wait_up(c, i);
}

void cu_node_kill(cu *c, uint32_t i)
{
    cu_node *n = &c->nodes[i];
    if (n->pid <= 0)
        return;
    kill(n->pid, SIGKILL);
    waitpid(n->pid, NULL, 0);
    n->pid = 0;
    n->stopped = false;
}

void cu_node_stop(cu *c, uint32_t i)
{
    cu_node *n = &c->nodes[i];
    if (n->pid <= 0)
        return;
    if (n->stopped)
        cu_node_resume(c, i);
    kill(n->pid, SIGTERM);
    int st = 0;
    waitpid(n->pid, &st, 0);
    n->pid = 0;
    if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0))
        cu_dump(n->log);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "node %s exited with %d; see %s", n->id, st,
              n->log);
}

void cu_node_pause(cu *c, uint32_t i)
{
    kill(c->nodes[i].pid, SIGSTOP);
    c->nodes[i].stopped = true;
}

void cu_node_resume(cu *c, uint32_t i)
{
    kill(c->nodes[i].pid, SIGCONT);
    c->nodes[i].stopped = false;
}

static void cu_dump(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    char line[600];
    long skip = 0;
    while (fgets(line, sizeof(line), f))
        skip++;
    rewind(f);
    /* The end of it: what the failure was about. */
    for (long k = 0; fgets(line, sizeof(line), f); k++)
        if (k + 60 >= skip)
            cr_log_error("%s: %s", path, line);
    fclose(f);
}

void cu_start(cu *c, const char *name, uint32_t n, const char *const *extra)
{
    memset(c, 0, sizeof(*c));
    cr_assert(n <= CU_NODES_MAX);
    zku_start(&c->zk);
    snprintf(c->name, sizeof(c->name), "%s", name);
    c->n = n;
    for (int k = 0; extra && extra[k] && k < 23; k++)
        c->extra[k] = extra[k];
    char spec[512] = "";
    for (uint32_t i = 0; i < n; i++) {
        cu_node *nd = &c->nodes[i];
        snprintf(nd->id, sizeof(nd->id), "%c", 'a' + i);
        nd->port = td_free_port();
        do
            nd->repl_port = td_free_port();
        while (nd->repl_port == nd->port);
        eu_tmpdir(nd->dir, "cluster");
        snprintf(nd->log, sizeof(nd->log), "%s.log", nd->dir);
        size_t l = strlen(spec);
        snprintf(spec + l, sizeof(spec) - l, "%s%s@127.0.0.1:%u@%u", i ? "," : "", nd->id,
                 nd->port, nd->repl_port);
    }
    char cmd[1024], out[4096];
    snprintf(cmd, sizeof(cmd), "%s/tally cluster create %s/%s --nodes %s --replicas 1",
             cu_build(), c->zk.hosts, c->name, spec);
    cr_assert_eq(td_run(cmd, out, sizeof(out)), 0, "%s", out);
    for (uint32_t i = 0; i < n; i++)
        cu_node_start(c, i);
    cu_wait_converged(c, 60000);
}

void cu_cleanup(cu *c)
{
    if (c->load_pid > 0)
        cu_load_stop(c);
    for (uint32_t i = 0; i < c->n; i++) {
        cu_node_kill(c, i);
        if (c->nodes[i].dir[0]) {
            eu_rmrf(c->nodes[i].dir);
            unlink(c->nodes[i].log);
        }
    }
    if (c->load_dir[0]) {
        eu_rmrf(c->load_dir);
        unlink(c->load_log);
    }
    zku_cleanup(&c->zk);
}

/* ---- state ------------------------------------------------------------------------ */

static uint64_t cu_field(const char *line, const char *name)
{
    char key[40];
    snprintf(key, sizeof(key), "%s=", name);
    const char *p = strstr(line, key);
    return p ? strtoull(p + strlen(key), NULL, 0) : 0;
}

static void cu_text(const char *line, const char *name, char *out, size_t cap)
{
    char key[40];
    snprintf(key, sizeof(key), "%s=", name);
    const char *p = strstr(line, key);
    size_t n = 0;
    if (p) {
        p += strlen(key);
        while (p[n] && p[n] != ',' && p[n] != '\r' && n + 1 < cap)
            n++;
        memcpy(out, p, n);
    }
    out[n] = 0;
}

bool cu_group_at(cu *c, uint32_t i, uint32_t g, cu_group *out)
{
    memset(out, 0, sizeof(*out));
    cu_node *n = &c->nodes[i];
    redisContext *r = n->pid > 0 && !n->stopped ? cu_connect(n) : NULL;
    if (!r)
        return false;
    redisReply *rep = redisCommand(r, "INFO replication");
    bool ok = rep && rep->type == REDIS_REPLY_STRING;
    if (ok) {
        char key[16];
        snprintf(key, sizeof(key), "group%u:", g);
        const char *line = strstr(rep->str, key);
        if (line) {
            out->present = true;
            cu_text(line, "role", out->role, sizeof(out->role));
            cu_text(line, "leader", out->leader, sizeof(out->leader));
            out->epoch = cu_field(line, "epoch");
            out->durable_seq = cu_field(line, "durable_seq");
            out->replicas = (uint32_t)cu_field(line, "replicas");
            char chain[24];
            cu_text(line, "chain", chain, sizeof(chain));
            out->chain = strtoull(chain, NULL, 16);
        }
    }
    freeReplyObject(rep);
    redisFree(r);
    return ok;
}

int cu_leader(cu *c, uint32_t g)
{
    int best = -1;
    uint64_t epoch = 0;
    for (uint32_t i = 0; i < c->n; i++) {
        cu_group st;
        if (cu_group_at(c, i, g, &st) && st.present && strcmp(st.role, "leader") == 0 &&
            strcmp(st.leader, c->nodes[i].id) == 0 && st.epoch >= epoch) {
            best = (int)i;
            epoch = st.epoch;
        }
    }
    return best;
}

/* Group g converged: a leader, and every running member holding its log. */
static bool cu_group_converged(cu *c, uint32_t g, char *why, size_t cap)
{
    int l = cu_leader(c, g);
    if (l < 0) {
        snprintf(why, cap, "group %u has no leader", g);
        return false;
    }
    cu_group lead;
    if (!cu_group_at(c, (uint32_t)l, g, &lead))
        return false;
    uint32_t members = 0;
    for (uint32_t i = 0; i < c->n; i++) {
        cu_group st;
        if ((int)i == l || !cu_group_at(c, i, g, &st) || !st.present)
            continue;
        members++;
        if (strcmp(st.role, "replica") != 0 || strcmp(st.leader, lead.leader) != 0 ||
            st.durable_seq != lead.durable_seq || st.chain != lead.chain) {
            snprintf(why, cap, "group %u: node %s is %s of %s at seq %llu chain %016llx, its "
                               "leader %s at seq %llu chain %016llx",
                     g, c->nodes[i].id, st.role, st.leader, (unsigned long long)st.durable_seq,
                     (unsigned long long)st.chain, lead.leader,
                     (unsigned long long)lead.durable_seq, (unsigned long long)lead.chain);
            return false;
        }
    }
    if (lead.replicas < members) {
        snprintf(why, cap, "group %u: its leader %s streams to %u of its %u running replicas", g,
                 lead.leader, lead.replicas, members);
        return false;
    }
    return true;
}

void cu_wait_converged(cu *c, int timeout_ms)
{
    uint64_t end = cu_mono_ms() + (uint64_t)timeout_ms;
    char why[400] = "";
    while (cu_mono_ms() < end) {
        bool all = true;
        for (uint32_t g = 0; g < c->n && all; g++)
            all = cu_group_converged(c, g, why, sizeof(why));
        if (all)
            return;
        usleep(100000);
    }
    for (uint32_t i = 0; i < c->n; i++)
        cu_dump(c->nodes[i].log);
    cr_assert_fail("the cluster did not converge within %d ms: %s", timeout_ms, why);
}

/* ---- the load ------------------------------------------------------------------------ */

static const char *cu_script(void)
{
    static char path[600];
    snprintf(path, sizeof(path), "%s/tests/clients/cluster_load.py", td_source_dir());
    return path;
}

/* Every node's address, for the clients' first contact (any one may be
 * down). */
static const char *cu_addrs(cu *c)
{
    static char addrs[160];
    addrs[0] = 0;
    for (uint32_t i = 0; i < c->n; i++) {
        size_t l = strlen(addrs);
        snprintf(addrs + l, sizeof(addrs) - l, "%s127.0.0.1:%u", i ? "," : "", c->nodes[i].port);
    }
    return addrs;
}

void cu_load_start(cu *c)
{
    char out[512];
    if (td_run(CU_PY " -c 'import redis.cluster'", out, sizeof(out)) != 0)
        td_cannot_run("redis-py with RedisCluster is not installed (python3-redis): %s", out);
    eu_tmpdir(c->load_dir, "load");
    snprintf(c->load_log, sizeof(c->load_log), "%s.log", c->load_dir);
    const char *argv[] = {CU_PY, cu_script(), "load", cu_addrs(c), c->load_dir, NULL};
    c->load_pid = td_exec(argv, c->load_log);
    /* Running once every group took a write. */
    uint64_t since = cu_unix_ms();
    for (uint32_t g = 0; g < c->n; g++)
        cr_assert_neq(cu_first_ack_after(c, g, since, 60000), 0,
                      "the load wrote nothing to group %u; see %s", g, c->load_log);
}

void cu_load_stop(cu *c)
{
    if (c->load_pid <= 0)
        return;
    char stop[160];
    snprintf(stop, sizeof(stop), "%s/stop", c->load_dir);
    FILE *f = fopen(stop, "w");
    if (f)
        fclose(f);
    uint64_t end = cu_mono_ms() + 60000;
    int st = 0;
    while (waitpid(c->load_pid, &st, WNOHANG) == 0 && cu_mono_ms() < end)
        usleep(50000);
    if (cu_mono_ms() >= end) {
        kill(c->load_pid, SIGKILL);
        waitpid(c->load_pid, &st, 0);
    }
    c->load_pid = 0;
    if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0))
        cu_dump(c->load_log);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the load failed (%d); see %s", st,
              c->load_log);
}

uint64_t cu_first_ack_after(cu *c, uint32_t g, uint64_t since_ms, int timeout_ms)
{
    char path[160];
    snprintf(path, sizeof(path), "%s/acked-%u.txt", c->load_dir, g);
    uint64_t end = cu_mono_ms() + (uint64_t)timeout_ms;
    long off = 0;
    do {
        FILE *f = fopen(path, "r");
        if (f) {
            fseek(f, off, SEEK_SET);
            char line[256];
            while (fgets(line, sizeof(line), f)) {
                if (line[strlen(line) - 1] != '\n')
                    break; /* being written: read again later */
                off = ftell(f);
                uint64_t t = strtoull(line, NULL, 10);
                if (t >= since_ms) {
                    fclose(f);
                    return t;
                }
            }
            fclose(f);
        }
        usleep(20000);
    } while (cu_mono_ms() < end);
    return 0;
}

uint64_t cu_acked(cu *c)
{
    uint64_t n = 0;
    for (uint32_t g = 0; g < c->n; g++) {
        char path[160];
        snprintf(path, sizeof(path), "%s/acked-%u.txt", c->load_dir, g);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        int ch;
        while ((ch = fgetc(f)) != EOF)
            n += ch == '\n';
        fclose(f);
    }
    return n;
}

static void cu_script_check(cu *c, const char *mode)
{
    char cmd[1024], out[8192];
    snprintf(cmd, sizeof(cmd), CU_PY " %s %s %s %s", cu_script(), mode, cu_addrs(c), c->load_dir);
    int rc = td_run(cmd, out, sizeof(out));
    cr_assert_eq(rc, 0, "%s: %s", mode, out);
    cr_assert_eq(strncmp(out, "ok ", 3), 0, "%s: %s", mode, out);
}

void cu_check_acked(cu *c) { cu_script_check(c, "check"); }

void cu_check_balances(cu *c) { cu_script_check(c, "balances"); }

void cu_verify_all(cu *c)
{
    for (uint32_t i = 0; i < c->n; i++) {
        if (c->nodes[i].pid <= 0)
            continue;
        redisContext *r = redisConnect("127.0.0.1", c->nodes[i].port);
        cr_assert(r && !r->err);
        redisReply *rep = redisCommand(r, "VERIFY");
        cr_assert(rep && rep->type == REDIS_REPLY_STATUS && strcmp(rep->str, "OK") == 0,
                  "VERIFY on node %s: %s", c->nodes[i].id, rep ? rep->str : "(no reply)");
        freeReplyObject(rep);
        redisFree(r);
    }
}

void cu_verify_offline(cu *c)
{
    for (uint32_t i = 0; i < c->n; i++) {
        for (uint32_t g = 0; g < CU_GROUPS_MAX; g++) {
            char dir[128], cmd[1024], out[8192];
            snprintf(dir, sizeof(dir), "%s/group-%u", c->nodes[i].dir, g);
            struct stat st;
            if (stat(dir, &st) != 0)
                continue;
            snprintf(cmd, sizeof(cmd), "%s/tally verify %s", cu_build(), dir);
            cr_assert_eq(td_run(cmd, out, sizeof(out)), 0, "node %s group %u: %s",
                         c->nodes[i].id, g, out);
        }
    }
}
