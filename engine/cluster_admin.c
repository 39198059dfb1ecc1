/*
 * cluster_admin.c — `tally cluster create|status` (usage and output
 * format in cluster_admin.h).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "cluster.h"
#include "cluster_admin.h"

/* ---- constants ------------------------------------------------------------ */

/* How long the tool waits for ZooKeeper to answer. */
#define CA_CONNECT_MS 10000
/* The tool's session (it holds nothing ephemeral). */
#define CA_SESSION_MS 10000

const char cluster_admin_usage[] =
    "       tally cluster create ZK_HOSTS/NAME --nodes ID@HOST:PORT[@REPL_PORT],...\n"
    "                            [--replicas R] [--groups G]\n"
    "       tally cluster status ZK_HOSTS/NAME\n";

typedef struct ca_args {
    const char *cmd;
    const char *target;
    const char *nodes;
    uint32_t replicas;
    uint32_t groups;
    char hosts[LIMIT_ZK_HOSTS_BYTES_MAX + 1];
    char name[LIMIT_CLUSTER_NAME_BYTES_MAX + 1];
} ca_args;

/* ---- helpers -------------------------------------------------------------- */

static int ca_usage(FILE *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A usage error: what is wrong; exit status 2. */
static int ca_usage(FILE *err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("tally cluster: ", err);
    vfprintf(err, fmt, ap);
    va_end(ap);
    fputs(" (tally --help shows the usage)\n", err);
    return 2;
}

static int ca_count(const char *s, uint32_t max, uint32_t *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (s[0] < '0' || s[0] > '9' || *end != '\0' || errno != 0 || v > max)
        return -EINVAL;
    *out = (uint32_t)v;
    return 0;
}

static int ca_parse(ca_args *a, int argc, char **argv, FILE *err)
{
    for (int i = 1; i < argc; i++) {
        const char *opt = argv[i];
        if (opt[0] != '-') {
            if (a->target != NULL)
                return ca_usage(err, "unexpected argument '%s'", opt);
            a->target = opt;
            continue;
        }
        bool create = strcmp(a->cmd, "create") == 0;
        if (!create || (strcmp(opt, "--nodes") != 0 && strcmp(opt, "--replicas") != 0 &&
                        strcmp(opt, "--groups") != 0))
            return ca_usage(err, "unknown option %s", opt);
        if (i + 1 >= argc)
            return ca_usage(err, "%s needs a value", opt);
        const char *v = argv[++i];
        if (strcmp(opt, "--nodes") == 0)
            a->nodes = v;
        else if (strcmp(opt, "--replicas") == 0 &&
                 ca_count(v, LIMIT_CLUSTER_REPLICAS_MAX, &a->replicas) < 0)
            return ca_usage(err, "--replicas must be 0..%d, got '%s'", LIMIT_CLUSTER_REPLICAS_MAX,
                            v);
        else if (strcmp(opt, "--groups") == 0 &&
                 ca_count(v, LIMIT_CLUSTER_GROUPS_MAX, &a->groups) < 0)
            return ca_usage(err, "--groups must be 1..%d, got '%s'", LIMIT_CLUSTER_GROUPS_MAX, v);
    }
    if (a->target == NULL)
        return ca_usage(err, "%s needs ZK_HOSTS/NAME", a->cmd);
    if (cluster_parse_target(a->target, a->hosts, sizeof(a->hosts), a->name, sizeof(a->name)) < 0)
        return ca_usage(err, "'%s' is not ZK_HOSTS/NAME (NAME: 1..64 of A-Z a-z 0-9 _ . -)",
                        a->target);
    if (strcmp(a->cmd, "create") == 0 && a->nodes == NULL)
        return ca_usage(err, "create needs --nodes ID@HOST:PORT,...");
    return 0;
}

/* A session with ZooKeeper, or NULL after saying why. */
static zk *ca_connect(const ca_args *a, FILE *err)
{
    zk *z;
    int rc = zk_open(&(zk_options){.hosts = a->hosts, .session_timeout_ms = CA_SESSION_MS}, &z);
    if (rc == 0 && (rc = zk_wait_connected(z, CA_CONNECT_MS)) < 0)
        zk_close(z);
    if (rc < 0) {
        fprintf(err, "tally cluster: cannot reach ZooKeeper at %s: %s\n", a->hosts,
                rc == -ETIMEDOUT ? "no answer within 10 s" : strerror(-rc));
        return NULL;
    }
    return z;
}

/* ---- status --------------------------------------------------------------- */

static void ca_ranges(FILE *out, const cluster_map *m, uint32_t g)
{
    uint16_t ranges[LIMIT_CLUSTER_SLOTS / 2][2];
    uint32_t n = cluster_slot_ranges(m, g, ranges, LIMIT_CLUSTER_SLOTS / 2), count = 0;
    for (uint32_t r = 0; r < n; r++) {
        fprintf(out, "%s%u-%u", r ? "," : "", ranges[r][0], ranges[r][1]);
        count += ranges[r][1] - ranges[r][0] + 1u;
    }
    fprintf(out, "%s (%" PRIu32 ")", n ? "" : "none", count);
}

static void ca_member(FILE *out, const cluster_map *m, uint32_t g, uint32_t j)
{
    const cluster_group *gr = &m->groups[g];
    int leader = cluster_group_leader(m, g);
    int lj = leader < 0 ? -1 : cluster_member_index(gr, (uint32_t)leader);
    bool known = gr->pos_unix_ms[j] != 0, leader_known = lj >= 0 && gr->pos_unix_ms[lj] != 0;
    fprintf(out, "  member %s %s %s", m->nodes[gr->members[j]].id,
            (int)j == lj ? "leader" : "follower", gr->insync & (1u << j) ? "in-sync" : "behind");
    if (known)
        fprintf(out, " seq %" PRIu64 " epoch %" PRIu64, gr->pos[j].seq, gr->pos[j].log_epoch);
    else
        fputs(" seq - epoch -", out);
    if (known && leader_known)
        fprintf(out, " lag %" PRId64 "\n", (int64_t)(gr->pos[lj].seq - gr->pos[j].seq));
    else
        fputs(" lag -\n", out);
}

static void ca_print(FILE *out, const cluster_map *m)
{
    fprintf(out, "cluster %s: %" PRIu32 " nodes, %" PRIu32 " groups, %" PRIu32
                 " replicas per group, %d slots\n",
            m->name, m->node_count, m->group_count, m->replicas, LIMIT_CLUSTER_SLOTS);
    for (uint32_t i = 0; i < m->node_count; i++) {
        const cluster_node *n = &m->nodes[i];
        fprintf(out, "node %s %s:%u repl %u %s\n", n->id, n->host, n->port, n->repl_port,
                n->live ? "live" : "down");
    }
    for (uint32_t g = 0; g < m->group_count; g++) {
        int leader = cluster_group_leader(m, g);
        fprintf(out, "group %" PRIu32 " slots ", g);
        ca_ranges(out, m, g);
        fprintf(out, " epoch %" PRIu64 " leader %s\n", m->groups[g].epoch,
                leader >= 0 ? m->nodes[leader].id : "none");
        for (uint32_t j = 0; j < m->groups[g].member_count; j++)
            ca_member(out, m, g, j);
    }
}

static int ca_status(const ca_args *a, FILE *out, FILE *err)
{
    zk *z = ca_connect(a, err);
    if (z == NULL)
        return 1;
    cluster_map *m = malloc(sizeof(*m));
    int rc = m ? cluster_read(z, a->name, false, m) : -ENOMEM;
    if (rc == 0)
        ca_print(out, m);
    else if (rc == -ENOENT)
        fprintf(err, "tally cluster: no cluster %s in ZooKeeper at %s\n", a->name, a->hosts);
    else
        fprintf(err, "tally cluster: reading cluster %s: %s\n", a->name, strerror(-rc));
    free(m);
    zk_close(z);
    return rc == 0 ? 0 : 1;
}

/* ---- create --------------------------------------------------------------- */

/* The --nodes list into nodes[]; the count, or -1 after saying why. */
static int ca_nodes(const char *list, cluster_node *nodes, FILE *err)
{
    char spec[LIMIT_CLUSTER_NODE_ID_BYTES_MAX + LIMIT_CLUSTER_HOST_BYTES_MAX + 16];
    int n = 0;
    for (const char *p = list; *p != '\0';) {
        size_t len = strcspn(p, ",");
        const char *why = "a node spec is too long";
        if (n == LIMIT_CLUSTER_NODES_MAX) {
            fprintf(err, "tally cluster: more than %d nodes\n", LIMIT_CLUSTER_NODES_MAX);
            return -1;
        }
        int rc = -EINVAL;
        if (len < sizeof(spec)) {
            memcpy(spec, p, len);
            spec[len] = '\0';
            rc = cluster_node_parse(spec, &nodes[n], &why);
        }
        if (rc < 0) {
            fprintf(err, "tally cluster: --nodes: '%.*s': %s\n", (int)len, p, why);
            return -1;
        }
        n++;
        p += len + (p[len] == ',');
    }
    return n;
}

static int ca_create(const ca_args *a, FILE *out, FILE *err)
{
    cluster_node nodes[LIMIT_CLUSTER_NODES_MAX];
    int n = ca_nodes(a->nodes, nodes, err);
    if (n < 0)
        return 2;
    cluster_map *m = malloc(sizeof(*m));
    if (m == NULL)
        return 1;
    const char *why = NULL;
    if (cluster_map_plan(m, a->name, nodes, (uint32_t)n, a->replicas, a->groups, &why) < 0) {
        fprintf(err, "tally cluster: %s\n", why);
        free(m);
        return 2;
    }
    zk *z = ca_connect(a, err);
    int rc = z ? cluster_create(z, m) : -ECONNREFUSED;
    if (rc == 0)
        rc = cluster_read(z, a->name, false, m);
    if (rc == 0) {
        fprintf(out, "created /tally/%s in ZooKeeper at %s\n", a->name, a->hosts);
        ca_print(out, m);
    } else if (rc == -EEXIST) {
        fprintf(err, "tally cluster: cluster %s already exists in ZooKeeper at %s\n", a->name,
                a->hosts);
    } else if (z != NULL) {
        fprintf(err, "tally cluster: creating cluster %s: %s\n", a->name, strerror(-rc));
    }
    zk_close(z);
    free(m);
    return rc == 0 ? 0 : 1;
}

/* ---- main ----------------------------------------------------------------- */

int cluster_admin_main(int argc, char **argv, FILE *out, FILE *err)
{
    if (argc < 1)
        return ca_usage(err, "cluster needs a command: create or status");
    ca_args a = {.cmd = argv[0], .replicas = 1};
    if (strcmp(a.cmd, "create") != 0 && strcmp(a.cmd, "status") != 0)
        return ca_usage(err, "unknown cluster command '%s'", a.cmd);
    int rc = ca_parse(&a, argc, argv, err);
    if (rc != 0)
        return rc;
    return strcmp(a.cmd, "create") == 0 ? ca_create(&a, out, err) : ca_status(&a, out, err);
}
