/*
 * cluster.c — the cluster's coordination in ZooKeeper (layout, election
 * and leases in cluster.h): creating and reading the map, and a member's
 * handle, whose thread reads the map when a watch fires, votes, takes
 * leases and reports positions.
 *
 * Locking.  c->mu guards the current snapshot, the positions and the
 * wake-up flags; it is never held across a ZooKeeper call (the watch
 * callback takes it on ZooKeeper's completion thread).  Leases are
 * atomics, so cluster_lease() takes no lock.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "cluster.h"

/* ---- constants and types -------------------------------------------------- */

/* The longest text of a node other than the slot map: the meta line with
 * every node id, or a node's host and ports. */
#define CL_TEXT_BYTES_MAX (64 + LIMIT_CLUSTER_NODES_MAX * (LIMIT_CLUSTER_NODE_ID_BYTES_MAX + 1))
/* The thread's turn: a twentieth of the session timeout, within these. */
#define CL_TICK_MS_MIN 20
#define CL_TICK_MS_MAX 250

/* Every text but the meta's and the slot map's. */
#define CL_SHORT_TEXT_BYTES_MAX 512

static_assert(CL_SHORT_TEXT_BYTES_MAX > LIMIT_CLUSTER_HOST_BYTES_MAX + 16, "a node's text fits");
static_assert(CL_SHORT_TEXT_BYTES_MAX > 24 + LIMIT_CLUSTER_MEMBERS_MAX *
                                                 (LIMIT_CLUSTER_NODE_ID_BYTES_MAX + 1),
              "a group's and an in-sync set's text fit");
static_assert(CL_TEXT_BYTES_MAX >= CL_SHORT_TEXT_BYTES_MAX, "the reading buffer holds them all");

/* A published map and the readers holding it. */
typedef struct cl_snap {
    uint32_t refs; /* c->mu */
    cluster_map map;
} cl_snap;

struct cluster {
    char hosts[LIMIT_ZK_HOSTS_BYTES_MAX + 1];
    char name[LIMIT_CLUSTER_NAME_BYTES_MAX + 1];
    char node_id[LIMIT_CLUSTER_NODE_ID_BYTES_MAX + 1];
    cluster_options o;
    zk *zk;
    uint32_t self;
    int member_of[LIMIT_CLUSTER_GROUPS_MAX]; /* this node's member index, -1 */
    uint32_t group_count;
    _Atomic uint32_t timeout_ms;             /* the session's, as granted */
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop, dirty;  /* mu */
    cl_snap *snap;     /* mu; replaced by the thread only */
    /* Positions (mu): the latest given, whether any was, the last one
     * written to ZooKeeper and when (monotonic ms). */
    cluster_pos pos[LIMIT_CLUSTER_GROUPS_MAX];
    bool pos_known[LIMIT_CLUSTER_GROUPS_MAX];
    cluster_pos pos_sent[LIMIT_CLUSTER_GROUPS_MAX];
    uint64_t pos_sent_ms[LIMIT_CLUSTER_GROUPS_MAX];
    /* Leases held: the epoch (0: none) and the epoch node's version that
     * this node's election gave it (the fence of its writes). */
    _Atomic uint64_t lease_epoch[LIMIT_CLUSTER_GROUPS_MAX];
    _Atomic int32_t lease_version[LIMIT_CLUSTER_GROUPS_MAX];
    /* A resign is under way (mu): its lease node is not stale. */
    bool resigning[LIMIT_CLUSTER_GROUPS_MAX];
    /* The thread's own state. */
    bool joined;
    uint64_t next_read_ms;
    uint64_t logged_round[LIMIT_CLUSTER_GROUPS_MAX]; /* +1: 0 = none logged */
    cluster_map *scratch;
};

/* ---- helpers -------------------------------------------------------------- */

static void cl_log(cluster *c, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void cl_log(cluster *c, int level, const char *fmt, ...)
{
    if (c->o.log == NULL)
        return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    c->o.log(c->o.log_ctx, level, msg);
}

/* "/tally/NAME" + the formatted suffix, into path[LIMIT_ZK_PATH_BYTES_MAX]. */
static void cl_path(char *path, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void cl_path(char *path, const char *name, const char *fmt, ...)
{
    int n = snprintf(path, LIMIT_ZK_PATH_BYTES_MAX, "/tally/%s", name);
    assert(n > 0 && n < LIMIT_ZK_PATH_BYTES_MAX);
    va_list ap;
    va_start(ap, fmt);
    int more = vsnprintf(path + n, LIMIT_ZK_PATH_BYTES_MAX - (size_t)n, fmt, ap);
    va_end(ap);
    assert(more >= 0 && n + more < LIMIT_ZK_PATH_BYTES_MAX); /* names and ids are bounded */
}

static bool cl_pos_eq(cluster_pos a, cluster_pos b)
{
    return a.log_epoch == b.log_epoch && a.seq == b.seq;
}

/* (epoch, seq) order, epoch first. */
static bool cl_pos_gt(cluster_pos a, cluster_pos b)
{
    return a.log_epoch != b.log_epoch ? a.log_epoch > b.log_epoch : a.seq > b.seq;
}

/* Creates path with data, or replaces its data if it exists. */
static int cl_put(zk *z, const char *path, const char *data, size_t len, int flags)
{
    int rc = zk_set(z, path, data, len, -1);
    if (rc == -ENOENT) {
        rc = zk_create(z, path, data, len, flags, NULL, 0);
        if (rc == -EEXIST) /* created meanwhile */
            rc = zk_set(z, path, data, len, -1);
    }
    return rc;
}

/* ---- the target ----------------------------------------------------------- */

int cluster_parse_target(const char *arg, char *hosts, size_t hosts_cap, char *name,
                         size_t name_cap)
{
    const char *slash = strrchr(arg, '/');
    if (slash == NULL || slash == arg)
        return -EINVAL;
    size_t hl = (size_t)(slash - arg), nl = strlen(slash + 1);
    if (hl >= hosts_cap || hl > LIMIT_ZK_HOSTS_BYTES_MAX || nl >= name_cap ||
        !cluster_name_ok(slash + 1, nl, LIMIT_CLUSTER_NAME_BYTES_MAX))
        return -EINVAL;
    memcpy(hosts, arg, hl);
    hosts[hl] = '\0';
    memcpy(name, slash + 1, nl + 1);
    return 0;
}

/* ---- creating a cluster --------------------------------------------------- */

/* The operations of a creation, with room for their paths and texts
 * (the meta's, the only long one, has its own). */
typedef struct cl_batch {
    zk_op ops[ZK_MULTI_OPS_MAX];
    char paths[ZK_MULTI_OPS_MAX][LIMIT_ZK_PATH_BYTES_MAX];
    char texts[ZK_MULTI_OPS_MAX][CL_SHORT_TEXT_BYTES_MAX];
    char meta[CL_TEXT_BYTES_MAX];
    uint32_t count;
} cl_batch;

/* Adds a create of path (already in b->paths[b->count]) with data. */
static void cl_batch_create(cl_batch *b, const char *data, size_t len)
{
    assert(b->count < ZK_MULTI_OPS_MAX);
    b->ops[b->count] = (zk_op){.kind = ZK_OP_CREATE, .path = b->paths[b->count], .data = data,
                               .len = len, .flags = ZK_PERSISTENT};
    b->count++;
}

/* Adds a create of /tally/NAME + suffix whose text an encoder wrote into
 * b->texts[b->count] (len 0: an empty node). */
static void cl_batch_text(cl_batch *b, const char *name, const char *suffix, size_t len)
{
    cl_path(b->paths[b->count], name, "%s", suffix);
    cl_batch_create(b, b->texts[b->count], len);
}

static void cl_batch_group(cl_batch *b, const cluster_map *m, uint32_t g)
{
    const cluster_group *gr = &m->groups[g];
    char suffix[64];
    snprintf(suffix, sizeof(suffix), "/groups/%" PRIu32, g);
    size_t n = cluster_group_encode(m, gr, b->texts[b->count], CL_SHORT_TEXT_BYTES_MAX);
    assert(n > 0);
    cl_batch_text(b, m->name, suffix, n);
    snprintf(suffix, sizeof(suffix), "/groups/%" PRIu32 "/epoch", g);
    n = cluster_epoch_encode(0, b->texts[b->count], CL_SHORT_TEXT_BYTES_MAX);
    cl_batch_text(b, m->name, suffix, n);
    snprintf(suffix, sizeof(suffix), "/groups/%" PRIu32 "/insync", g);
    n = cluster_insync_encode(m, gr, 0, gr->insync, b->texts[b->count], CL_SHORT_TEXT_BYTES_MAX);
    assert(n > 0);
    cl_batch_text(b, m->name, suffix, n);
    snprintf(suffix, sizeof(suffix), "/groups/%" PRIu32 "/pos", g);
    cl_batch_text(b, m->name, suffix, 0);
    snprintf(suffix, sizeof(suffix), "/groups/%" PRIu32 "/votes", g);
    cl_batch_text(b, m->name, suffix, 0);
}

/* Every node of a new cluster, in creation order (parents first). */
static int cl_batch_fill(cl_batch *b, const cluster_map *m, char *slots, size_t slots_cap)
{
    size_t n = cluster_meta_encode(m, b->meta, sizeof(b->meta));
    if (n == 0)
        return -EINVAL;
    cl_path(b->paths[b->count], m->name, "%s", "");
    cl_batch_create(b, b->meta, n);
    size_t sl = cluster_slots_encode(m, slots, slots_cap);
    if (sl == 0)
        return -EINVAL;
    cl_path(b->paths[b->count], m->name, "/slots");
    cl_batch_create(b, slots, sl);
    cl_batch_text(b, m->name, "/nodes", 0);
    for (uint32_t i = 0; i < m->node_count; i++) {
        n = cluster_node_encode(&m->nodes[i], b->texts[b->count], CL_SHORT_TEXT_BYTES_MAX);
        if (n == 0)
            return -EINVAL;
        cl_path(b->paths[b->count], m->name, "/nodes/%s", m->nodes[i].id);
        cl_batch_create(b, b->texts[b->count], n);
    }
    cl_batch_text(b, m->name, "/live", 0);
    cl_batch_text(b, m->name, "/groups", 0);
    for (uint32_t g = 0; g < m->group_count; g++)
        cl_batch_group(b, m, g);
    return 0;
}

int cluster_create(zk *z, const cluster_map *plan)
{
    assert(plan->node_count > 0 && plan->group_count > 0);
    cl_batch *b = calloc(1, sizeof(*b));
    char *slots = malloc(LIMIT_CLUSTER_SLOTS_TEXT_BYTES_MAX);
    int rc = b && slots ? 0 : -ENOMEM;
    if (rc == 0)
        rc = cl_batch_fill(b, plan, slots, LIMIT_CLUSTER_SLOTS_TEXT_BYTES_MAX);
    if (rc == 0)
        rc = zk_create_parents(z, "/tally");
    uint32_t failed = 0;
    if (rc == 0)
        rc = zk_multi(z, b->ops, b->count, &failed);
    if (rc == -EEXIST && failed != 0)
        rc = -EPROTO; /* only the root may exist before: a half-made tree */
    free(b);
    free(slots);
    return rc;
}

/* ---- reading a cluster ---------------------------------------------------- */

/* Reads a node's text into buf[0, CL_TEXT_BYTES_MAX). */
static int cl_get(zk *z, const char *path, bool watch, char *buf, size_t *len, zk_stat *st)
{
    return zk_get(z, path, watch, buf, CL_TEXT_BYTES_MAX, len, st);
}

static int cl_read_nodes(zk *z, bool watch, cluster_map *m, char *buf)
{
    char path[LIMIT_ZK_PATH_BYTES_MAX];
    size_t len;
    for (uint32_t i = 0; i < m->node_count; i++) {
        cl_path(path, m->name, "/nodes/%s", m->nodes[i].id);
        int rc = cl_get(z, path, watch, buf, &len, NULL);
        if (rc == 0)
            rc = cluster_node_decode(buf, len, &m->nodes[i]);
        if (rc < 0)
            return rc == -ENOENT ? -EINVAL : rc; /* the meta names it */
    }
    zk_name names[LIMIT_CLUSTER_NODES_MAX];
    uint32_t count;
    cl_path(path, m->name, "/live");
    int rc = zk_children(z, path, watch, names, LIMIT_CLUSTER_NODES_MAX, &count);
    if (rc < 0)
        return rc == -E2BIG ? -EINVAL : rc;
    for (uint32_t k = 0; k < count; k++) {
        int i = cluster_node_index(m, names[k]);
        if (i >= 0)
            m->nodes[i].live = true;
    }
    return 0;
}

static int cl_read_slots(zk *z, bool watch, cluster_map *m)
{
    char path[LIMIT_ZK_PATH_BYTES_MAX];
    char *text = malloc(LIMIT_CLUSTER_SLOTS_TEXT_BYTES_MAX);
    if (text == NULL)
        return -ENOMEM;
    size_t len;
    cl_path(path, m->name, "/slots");
    int rc = zk_get(z, path, watch, text, LIMIT_CLUSTER_SLOTS_TEXT_BYTES_MAX, &len, NULL);
    if (rc == 0)
        rc = cluster_slots_decode(text, len, m);
    free(text);
    return rc == -ENOENT || rc == -EMSGSIZE ? -EINVAL : rc;
}

/* The lease of group g: exists (watched either way), then its text. */
static int cl_read_lease(zk *z, bool watch, cluster_map *m, uint32_t g, char *buf)
{
    char path[LIMIT_ZK_PATH_BYTES_MAX], id[LIMIT_CLUSTER_NODE_ID_BYTES_MAX + 1];
    cluster_group *gr = &m->groups[g];
    size_t len;
    zk_stat st;
    cl_path(path, m->name, "/groups/%" PRIu32 "/lease", g);
    gr->leader = -1;
    int rc = zk_exists(z, path, watch, NULL);
    if (rc == 0)
        rc = cl_get(z, path, false, buf, &len, &st);
    if (rc == -ENOENT)
        return 0; /* none, or gone since: the watch tells */
    if (rc == 0)
        rc = cluster_lease_decode(buf, len, id, &gr->leader_epoch);
    if (rc == 0) {
        gr->leased = true;
        gr->leader = cluster_node_index(m, id);
        gr->leader_session = st.ephemeral_owner;
    }
    return rc;
}

/* Each member's reported position (not watched) and vote (watched). */
static int cl_read_members(zk *z, bool watch, cluster_map *m, uint32_t g, char *buf)
{
    char path[LIMIT_ZK_PATH_BYTES_MAX];
    cluster_group *gr = &m->groups[g];
    size_t len;
    zk_name names[LIMIT_CLUSTER_MEMBERS_MAX];
    uint32_t count = 0;
    cl_path(path, m->name, "/groups/%" PRIu32 "/votes", g);
    int rc = zk_children(z, path, watch, names, LIMIT_CLUSTER_MEMBERS_MAX, &count);
    for (uint32_t j = 0; rc == 0 && j < gr->member_count; j++) {
        const char *id = m->nodes[gr->members[j]].id;
        cl_path(path, m->name, "/groups/%" PRIu32 "/pos/%s", g, id);
        rc = cl_get(z, path, false, buf, &len, NULL);
        if (rc == 0)
            rc = cluster_pos_decode(buf, len, &gr->pos[j], &gr->pos_unix_ms[j]);
        if (rc == -ENOENT)
            rc = 0;
        bool voted = false;
        for (uint32_t k = 0; k < count; k++)
            voted |= strcmp(names[k], id) == 0;
        if (rc < 0 || !voted)
            continue;
        cl_path(path, m->name, "/groups/%" PRIu32 "/votes/%s", g, id);
        rc = cl_get(z, path, watch, buf, &len, NULL);
        if (rc == 0)
            rc = cluster_vote_decode(buf, len, &gr->vote_round[j], &gr->vote[j]);
        gr->voted[j] = rc == 0;
        if (rc == -ENOENT)
            rc = 0;
    }
    return rc == -E2BIG ? -EINVAL : rc;
}

static int cl_read_group(zk *z, bool watch, cluster_map *m, uint32_t g, char *buf)
{
    char path[LIMIT_ZK_PATH_BYTES_MAX];
    cluster_group *gr = &m->groups[g];
    size_t len;
    zk_stat st;
    cl_path(path, m->name, "/groups/%" PRIu32, g);
    int rc = cl_get(z, path, watch, buf, &len, NULL);
    if (rc == 0)
        rc = cluster_group_decode(buf, len, m, gr);
    if (rc == 0) {
        cl_path(path, m->name, "/groups/%" PRIu32 "/epoch", g);
        rc = cl_get(z, path, watch, buf, &len, &st);
    }
    if (rc == 0 && (rc = cluster_epoch_decode(buf, len, &gr->epoch)) == 0)
        gr->epoch_version = st.version;
    if (rc == 0)
        rc = cl_read_lease(z, watch, m, g, buf);
    if (rc == 0) {
        cl_path(path, m->name, "/groups/%" PRIu32 "/insync", g);
        rc = cl_get(z, path, watch, buf, &len, &st);
    }
    if (rc == 0 &&
        (rc = cluster_insync_decode(buf, len, m, gr, &gr->insync_epoch, &gr->insync)) == 0)
        gr->insync_version = st.version;
    if (rc == 0)
        rc = cl_read_members(z, watch, m, g, buf);
    return rc == -ENOENT || rc == -EMSGSIZE ? -EINVAL : rc;
}

int cluster_read(zk *z, const char *name, bool watch, cluster_map *out)
{
    if (!cluster_name_ok(name, strlen(name), LIMIT_CLUSTER_NAME_BYTES_MAX))
        return -EINVAL;
    cluster_map *m = calloc(1, sizeof(*m));
    char *buf = malloc(CL_TEXT_BYTES_MAX);
    if (m == NULL || buf == NULL) {
        free(m);
        free(buf);
        return -ENOMEM;
    }
    memcpy(m->name, name, strlen(name) + 1);
    char path[LIMIT_ZK_PATH_BYTES_MAX];
    size_t len;
    cl_path(path, name, "%s", "");
    int rc = cl_get(z, path, watch, buf, &len, NULL);
    if (rc == 0)
        rc = cluster_meta_decode(buf, len, m);
    if (rc == -EMSGSIZE)
        rc = -EINVAL;
    if (rc == 0)
        rc = cl_read_nodes(z, watch, m, buf);
    if (rc == 0)
        rc = cl_read_slots(z, watch, m);
    for (uint32_t g = 0; rc == 0 && g < m->group_count; g++)
        rc = cl_read_group(z, watch, m, g, buf);
    if (rc == 0)
        memcpy(out, m, sizeof(*m));
    free(m);
    free(buf);
    return rc;
}

/* ---- snapshots ------------------------------------------------------------ */

const cluster_map *cluster_map_acquire(cluster *c)
{
    pthread_mutex_lock(&c->mu);
    cl_snap *s = c->snap;
    s->refs++;
    pthread_mutex_unlock(&c->mu);
    return &s->map;
}

void cluster_map_release(cluster *c, const cluster_map *m)
{
    cl_snap *s = (cl_snap *)(void *)((char *)(uintptr_t)m - offsetof(cl_snap, map));
    pthread_mutex_lock(&c->mu);
    assert(s->refs > 0);
    bool last = --s->refs == 0;
    pthread_mutex_unlock(&c->mu);
    if (last)
        free(s);
}

/* Makes m current if it differs from the current map; true if it did. */
static bool cl_publish(cluster *c, const cluster_map *m)
{
    if (c->snap != NULL && memcmp(&c->snap->map, m, sizeof(*m)) == 0)
        return false;
    cl_snap *s = malloc(sizeof(*s));
    if (s == NULL)
        return false; /* the next read tries again */
    s->refs = 1;
    memcpy(&s->map, m, sizeof(*m));
    pthread_mutex_lock(&c->mu);
    cl_snap *old = c->snap;
    c->snap = s;
    pthread_mutex_unlock(&c->mu);
    if (old != NULL)
        cluster_map_release(c, &old->map);
    return true;
}

static void cl_emit(cluster *c, int kind, uint32_t g, uint64_t epoch, const cluster_map *m)
{
    if (c->o.event != NULL)
        c->o.event(c->o.event_ctx, &(cluster_event){.kind = kind, .group = g, .epoch = epoch,
                                                     .map = m});
}

/* ---- the thread: leases --------------------------------------------------- */

/* Gives up every lease: the session is over. */
static void cl_session_lost(cluster *c)
{
    for (uint32_t g = 0; g < c->group_count; g++) {
        uint64_t e = atomic_exchange(&c->lease_epoch[g], 0);
        if (e != 0) {
            cl_log(c, 1, "cluster %s: group %" PRIu32 ": lease of epoch %" PRIu64
                         " lost with the session", c->name, g, e);
            cl_emit(c, CLUSTER_EVENT_DEPOSED, g, e, NULL);
        }
    }
    cl_log(c, 1, "cluster %s: ZooKeeper session expired; starting a new one", c->name);
    int rc = zk_renew(c->zk);
    if (rc < 0)
        cl_log(c, 2, "cluster %s: new ZooKeeper session: %s", c->name, strerror(-rc));
    c->joined = false;
}

static bool cl_resigning(cluster *c, uint32_t g)
{
    pthread_mutex_lock(&c->mu);
    bool r = c->resigning[g];
    pthread_mutex_unlock(&c->mu);
    return r;
}

/* Ends the leases the map shows this node no longer holds, and drops a
 * lease node of this session that this node gave up (a failed resign). */
static void cl_check_leases(cluster *c, const cluster_map *m)
{
    int64_t session = zk_session_id(c->zk);
    for (uint32_t g = 0; g < m->group_count; g++) {
        const cluster_group *gr = &m->groups[g];
        uint64_t e = atomic_load(&c->lease_epoch[g]);
        bool mine = gr->leased && gr->leader == (int32_t)c->self && gr->leader_session == session;
        if (e != 0 && !(mine && gr->leader_epoch == e) &&
            atomic_compare_exchange_strong(&c->lease_epoch[g], &e, 0)) {
            cl_log(c, 1, "cluster %s: group %" PRIu32 ": lease of epoch %" PRIu64 " lost",
                   c->name, g, e);
            cl_emit(c, CLUSTER_EVENT_DEPOSED, g, e, NULL);
        } else if (e == 0 && mine && !cl_resigning(c, g)) {
            char path[LIMIT_ZK_PATH_BYTES_MAX];
            cl_path(path, c->name, "/groups/%" PRIu32 "/lease", g);
            zk_delete(c->zk, path, -1);
        }
    }
}

/* The winner's transaction (cluster.h): the in-sync set unchanged, the
 * epoch from round to round + 1, the lease created. */
static void cl_take_lease(cluster *c, const cluster_group *gr, uint32_t g, uint64_t round)
{
    char insync[LIMIT_ZK_PATH_BYTES_MAX], epoch[LIMIT_ZK_PATH_BYTES_MAX],
        lease[LIMIT_ZK_PATH_BYTES_MAX];
    char etext[32], ltext[LIMIT_CLUSTER_NODE_ID_BYTES_MAX + 32];
    cl_path(insync, c->name, "/groups/%" PRIu32 "/insync", g);
    cl_path(epoch, c->name, "/groups/%" PRIu32 "/epoch", g);
    cl_path(lease, c->name, "/groups/%" PRIu32 "/lease", g);
    size_t el = cluster_epoch_encode(round + 1, etext, sizeof(etext));
    size_t ll = cluster_lease_encode(c->node_id, round + 1, ltext, sizeof(ltext));
    assert(el > 0 && ll > 0);
    zk_op ops[3] = {
        {.kind = ZK_OP_CHECK, .path = insync, .version = gr->insync_version},
        {.kind = ZK_OP_SET, .path = epoch, .data = etext, .len = el,
         .version = gr->epoch_version},
        {.kind = ZK_OP_CREATE, .path = lease, .data = ltext, .len = ll, .flags = ZK_EPHEMERAL},
    };
    int rc = zk_multi(c->zk, ops, 3, NULL);
    if (rc < 0) {
        cl_log(c, 0, "cluster %s: group %" PRIu32 ": taking the lease of epoch %" PRIu64
                     ": %s (someone else moved first)", c->name, g, round + 1, strerror(-rc));
        return;
    }
    atomic_store(&c->lease_version[g], gr->epoch_version + 1);
    atomic_store(&c->lease_epoch[g], round + 1);
    cl_log(c, 0, "cluster %s: group %" PRIu32 ": this node (%s) leads with epoch %" PRIu64,
           c->name, g, c->node_id, round + 1);
    cl_emit(c, CLUSTER_EVENT_LEADER, g, round + 1, NULL);
}

/* ---- the thread: elections and positions ---------------------------------- */

static int cl_write_pos(cluster *c, uint32_t g, cluster_pos p)
{
    char path[LIMIT_ZK_PATH_BYTES_MAX], text[80];
    cl_path(path, c->name, "/groups/%" PRIu32 "/pos/%s", g, c->node_id);
    size_t n = cluster_pos_encode(p, clock_unix_ms(), text, sizeof(text));
    assert(n > 0);
    int rc = cl_put(c->zk, path, text, n, ZK_PERSISTENT);
    if (rc == 0) {
        pthread_mutex_lock(&c->mu);
        c->pos_sent[g] = p;
        c->pos_sent_ms[g] = clock_mono_ms();
        pthread_mutex_unlock(&c->mu);
    }
    return rc;
}

/* Writes this node's vote in round `round` of group g (and its position). */
static void cl_vote(cluster *c, uint32_t g, uint64_t round, cluster_pos p)
{
    char path[LIMIT_ZK_PATH_BYTES_MAX], text[80];
    cl_path(path, c->name, "/groups/%" PRIu32 "/votes/%s", g, c->node_id);
    size_t n = cluster_vote_encode(round, p, text, sizeof(text));
    assert(n > 0);
    int rc = cl_write_pos(c, g, p);
    if (rc == 0)
        rc = cl_put(c->zk, path, text, n, ZK_EPHEMERAL);
    if (rc < 0)
        cl_log(c, 1, "cluster %s: group %" PRIu32 ": voting in round %" PRIu64 ": %s", c->name,
               g, round, strerror(-rc));
}

/* The member that wins round `round` of gr: -1 while a voter has not
 * voted in it (cluster.h has the rule). */
static int cl_winner(const cluster_map *m, const cluster_group *gr, uint64_t round)
{
    int best = -1;
    for (uint32_t k = 0; k < gr->member_count; k++) {
        if (!(gr->insync & (1u << k)) || !m->nodes[gr->members[k]].live)
            continue;
        if (!gr->voted[k] || gr->vote_round[k] != round)
            return -1;
        if (best < 0 || cl_pos_gt(gr->vote[k], gr->vote[best]))
            best = (int)k;
    }
    return best;
}

/* One step of group g's election, for a group without a lease. */
static void cl_elect(cluster *c, const cluster_map *m, uint32_t g)
{
    const cluster_group *gr = &m->groups[g];
    int j = c->member_of[g];
    assert(j >= 0 && !gr->leased);
    if (!(gr->insync & (1u << j)))
        return; /* not in sync: neither votes nor wins */
    pthread_mutex_lock(&c->mu);
    bool known = c->pos_known[g];
    cluster_pos p = c->pos[g];
    pthread_mutex_unlock(&c->mu);
    if (!known)
        return; /* no position yet: the others wait for this vote */
    uint64_t round = gr->epoch;
    if (!gr->voted[j] || gr->vote_round[j] != round || !cl_pos_eq(gr->vote[j], p)) {
        cl_vote(c, g, round, p); /* its watch brings the map back */
        return;
    }
    int w = cl_winner(m, gr, round);
    if (w >= 0 && c->logged_round[g] != round + 1) {
        c->logged_round[g] = round + 1;
        cl_log(c, 0, "cluster %s: group %" PRIu32 ": round %" PRIu64 " elects %s (epoch %" PRIu64
                     ", seq %" PRIu64 ")", c->name, g, round, m->nodes[gr->members[w]].id,
               gr->vote[w].log_epoch, gr->vote[w].seq);
    }
    if (w == j)
        cl_take_lease(c, gr, g, round);
}

/* Writes the positions that changed, at most once per report period. */
static void cl_report(cluster *c)
{
    uint64_t now = clock_mono_ms();
    for (uint32_t g = 0; g < c->group_count; g++) {
        pthread_mutex_lock(&c->mu);
        bool due = c->pos_known[g] && !cl_pos_eq(c->pos[g], c->pos_sent[g]) &&
                   now - c->pos_sent_ms[g] >= LIMIT_CLUSTER_POS_REPORT_MS;
        cluster_pos p = c->pos[g];
        pthread_mutex_unlock(&c->mu);
        if (due)
            cl_write_pos(c, g, p);
    }
}

/* ---- the thread ----------------------------------------------------------- */

/* Registers this node as alive; a live node of an older session of this
 * node (a restart) is replaced. */
static int cl_join(cluster *c, const cluster_map *m)
{
    char path[LIMIT_ZK_PATH_BYTES_MAX], text[CL_TEXT_BYTES_MAX];
    cl_path(path, c->name, "/live/%s", c->node_id);
    size_t n = cluster_node_encode(&m->nodes[c->self], text, sizeof(text));
    assert(n > 0);
    int rc = zk_create(c->zk, path, text, n, ZK_EPHEMERAL, NULL, 0);
    zk_stat st;
    if (rc == -EEXIST && zk_exists(c->zk, path, false, &st) == 0 &&
        st.ephemeral_owner != zk_session_id(c->zk)) {
        zk_delete(c->zk, path, st.version);
        rc = zk_create(c->zk, path, text, n, ZK_EPHEMERAL, NULL, 0);
    }
    if (rc == -EEXIST)
        rc = 0; /* this session's own */
    if (rc < 0)
        cl_log(c, 1, "cluster %s: registering node %s: %s", c->name, c->node_id, strerror(-rc));
    c->joined = rc == 0;
    return rc;
}

static void cl_turn(cluster *c, bool dirty)
{
    int st = zk_state(c->zk);
    if (st == ZK_EXPIRED) {
        cl_session_lost(c);
        return;
    }
    if (st != ZK_CONNECTED)
        return;
    atomic_store(&c->timeout_ms, zk_session_timeout_ms(c->zk));
    const cluster_map *m = &c->snap->map; /* only this thread replaces it */
    if (!c->joined && cl_join(c, m) < 0)
        return;
    uint64_t now = clock_mono_ms();
    if (dirty || now >= c->next_read_ms) {
        int rc = cluster_read(c->zk, c->name, true, c->scratch);
        if (rc < 0) {
            cl_log(c, 1, "cluster %s: reading the map: %s", c->name, strerror(-rc));
            c->next_read_ms = 0;
            return;
        }
        c->next_read_ms = now + LIMIT_CLUSTER_POS_REPORT_MS;
        if (cl_publish(c, c->scratch))
            cl_emit(c, CLUSTER_EVENT_MAP, 0, 0, &c->snap->map);
        m = &c->snap->map;
    }
    cl_check_leases(c, m);
    cl_report(c);
    for (uint32_t g = 0; g < m->group_count; g++)
        if (c->member_of[g] >= 0 && !m->groups[g].leased)
            cl_elect(c, m, g);
}

static void *cl_thread(void *arg)
{
    cluster *c = arg;
    for (;;) {
        uint32_t tick = atomic_load(&c->timeout_ms) / 20;
        tick = tick < CL_TICK_MS_MIN ? CL_TICK_MS_MIN : tick;
        tick = tick > CL_TICK_MS_MAX ? CL_TICK_MS_MAX : tick;
        struct timespec until = clock_mono_after(tick);
        pthread_mutex_lock(&c->mu);
        while (!c->stop && !c->dirty &&
               pthread_cond_timedwait(&c->cv, &c->mu, &until) != ETIMEDOUT)
            ;
        bool stop = c->stop, dirty = c->dirty;
        c->dirty = false;
        pthread_mutex_unlock(&c->mu);
        if (stop)
            break;
        cl_turn(c, dirty);
    }
    return NULL;
}

/* The zk watch: anything watched changed, or the session did. */
static void cl_watch(void *ctx, int event, const char *path)
{
    (void)event;
    (void)path;
    cluster *c = ctx;
    pthread_mutex_lock(&c->mu);
    c->dirty = true;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

/* ---- a member's handle ---------------------------------------------------- */

static int cl_copy_options(cluster *c, const cluster_options *o)
{
    if (o->zk_hosts == NULL || o->name == NULL || o->node_id == NULL ||
        strlen(o->zk_hosts) > LIMIT_ZK_HOSTS_BYTES_MAX ||
        !cluster_name_ok(o->name, strlen(o->name), LIMIT_CLUSTER_NAME_BYTES_MAX) ||
        !cluster_name_ok(o->node_id, strlen(o->node_id), LIMIT_CLUSTER_NODE_ID_BYTES_MAX))
        return -EINVAL;
    c->o = *o;
    memcpy(c->hosts, o->zk_hosts, strlen(o->zk_hosts) + 1);
    memcpy(c->name, o->name, strlen(o->name) + 1);
    memcpy(c->node_id, o->node_id, strlen(o->node_id) + 1);
    c->o.zk_hosts = c->hosts;
    c->o.name = c->name;
    c->o.node_id = c->node_id;
    return 0;
}

/* Connects, reads the map, finds this node in it, joins. */
static int cl_start(cluster *c)
{
    zk_options zo = {.hosts = c->hosts, .session_timeout_ms = c->o.session_timeout_ms,
                     .watch = cl_watch, .watch_ctx = c, .log = c->o.log, .log_ctx = c->o.log_ctx};
    int rc = zk_open(&zo, &c->zk);
    if (rc < 0)
        return rc;
    uint32_t wait_ms = c->o.connect_timeout_ms ? c->o.connect_timeout_ms
                                               : zk_session_timeout_ms(c->zk);
    rc = zk_wait_connected(c->zk, wait_ms);
    if (rc == 0)
        rc = cluster_read(c->zk, c->name, true, c->scratch);
    if (rc < 0)
        return rc;
    int self = cluster_node_index(c->scratch, c->node_id);
    if (self < 0)
        return -ESRCH;
    c->self = (uint32_t)self;
    c->group_count = c->scratch->group_count;
    for (uint32_t g = 0; g < LIMIT_CLUSTER_GROUPS_MAX; g++)
        c->member_of[g] = g < c->group_count
                              ? cluster_member_index(&c->scratch->groups[g], c->self)
                              : -1;
    atomic_store(&c->timeout_ms, zk_session_timeout_ms(c->zk));
    if (!cl_publish(c, c->scratch))
        return -ENOMEM;
    c->next_read_ms = clock_mono_ms() + LIMIT_CLUSTER_POS_REPORT_MS;
    rc = cl_join(c, &c->snap->map);
    /* Read again, so that the first map shows this node alive. */
    if (rc == 0)
        rc = cluster_read(c->zk, c->name, true, c->scratch);
    if (rc == 0)
        cl_publish(c, c->scratch);
    if (rc == 0)
        rc = -pthread_create(&c->thread, NULL, cl_thread, c);
    return rc;
}

int cluster_open(const cluster_options *o, cluster **out)
{
    cluster *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return -ENOMEM;
    int rc = cl_copy_options(c, o);
    c->scratch = malloc(sizeof(*c->scratch));
    if (rc == 0 && c->scratch == NULL)
        rc = -ENOMEM;
    pthread_mutex_init(&c->mu, NULL);
    clock_cond_init(&c->cv);
    if (rc == 0)
        rc = cl_start(c);
    if (rc < 0) {
        c->stop = true; /* no thread to join */
        cluster_close(c);
        return rc;
    }
    *out = c;
    return 0;
}

void cluster_close(cluster *c)
{
    if (c == NULL)
        return;
    pthread_mutex_lock(&c->mu);
    bool running = !c->stop;
    c->stop = true;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
    if (running)
        pthread_join(c->thread, NULL);
    zk_close(c->zk);
    if (c->snap != NULL) {
        assert(c->snap->refs == 1); /* every acquired map was released */
        free(c->snap);
    }
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    free(c->scratch);
    free(c);
}

uint32_t cluster_self(const cluster *c)
{
    return c->self;
}

int cluster_position(cluster *c, uint32_t g, cluster_pos pos)
{
    if (g >= c->group_count || c->member_of[g] < 0)
        return -EINVAL;
    pthread_mutex_lock(&c->mu);
    bool first = !c->pos_known[g];
    c->pos[g] = pos;
    c->pos_known[g] = true;
    if (first) {
        c->dirty = true; /* an election may wait for this vote */
        pthread_cond_signal(&c->cv);
    }
    pthread_mutex_unlock(&c->mu);
    return 0;
}

bool cluster_lease(cluster *c, uint32_t g, uint64_t *epoch)
{
    if (g >= LIMIT_CLUSTER_GROUPS_MAX)
        return false;
    uint64_t e = atomic_load(&c->lease_epoch[g]);
    if (e == 0 || zk_contact_age_ms(c->zk) >= atomic_load(&c->timeout_ms) / 3)
        return false;
    *epoch = e;
    return true;
}

/* A fenced write of group g's in-sync set (cluster.h): the checks on the
 * epoch node and the lease, the set (if its version is insync_version,
 * -1: any), and for a resign the lease's deletion. */
static int cl_fenced(cluster *c, uint32_t g, int32_t version, const char *insync_text,
                     size_t len, int32_t insync_version, bool drop_lease)
{
    char epoch[LIMIT_ZK_PATH_BYTES_MAX], lease[LIMIT_ZK_PATH_BYTES_MAX],
        insync[LIMIT_ZK_PATH_BYTES_MAX];
    cl_path(epoch, c->name, "/groups/%" PRIu32 "/epoch", g);
    cl_path(lease, c->name, "/groups/%" PRIu32 "/lease", g);
    cl_path(insync, c->name, "/groups/%" PRIu32 "/insync", g);
    zk_op ops[4] = {
        {.kind = ZK_OP_CHECK, .path = epoch, .version = version},
        {.kind = ZK_OP_CHECK, .path = lease, .version = 0},
        {.kind = ZK_OP_SET, .path = insync, .data = insync_text, .len = len,
         .version = insync_version},
        {.kind = ZK_OP_DELETE, .path = lease, .version = 0},
    };
    int rc = zk_multi(c->zk, ops, drop_lease ? 4 : 3, NULL);
    pthread_mutex_lock(&c->mu);
    c->dirty = true;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
    return rc == -ENOENT ? -ESTALE : rc; /* the lease is gone */
}

int cluster_insync_set(cluster *c, uint32_t g, uint32_t insync)
{
    if (g >= c->group_count || c->member_of[g] < 0)
        return -EPERM;
    const cluster_map *m = cluster_map_acquire(c);
    const cluster_group *gr = &m->groups[g];
    uint64_t e = atomic_load(&c->lease_epoch[g]);
    int32_t version = atomic_load(&c->lease_version[g]);
    char text[CL_TEXT_BYTES_MAX];
    size_t n = 0;
    int rc = e == 0 ? -EPERM : (insync >> gr->member_count) != 0 ? -EINVAL : 0;
    if (rc == 0) {
        n = cluster_insync_encode(m, gr, e, insync, text, sizeof(text));
        assert(n > 0);
    }
    cluster_map_release(c, m);
    return rc < 0 ? rc : cl_fenced(c, g, version, text, n, -1, false);
}

/* The in-sync set of group g as ZooKeeper has it now, and its version. */
static int cl_read_insync(cluster *c, const cluster_map *m, uint32_t g, uint32_t *insync,
                          int32_t *version)
{
    char path[LIMIT_ZK_PATH_BYTES_MAX], text[CL_TEXT_BYTES_MAX];
    size_t len;
    zk_stat st;
    uint64_t writer;
    cl_path(path, c->name, "/groups/%" PRIu32 "/insync", g);
    int rc = zk_get(c->zk, path, false, text, sizeof(text), &len, &st);
    if (rc == 0)
        rc = cluster_insync_decode(text, len, m, &m->groups[g], &writer, insync);
    if (rc == 0)
        *version = st.version;
    return rc;
}

int cluster_resign(cluster *c, uint32_t g)
{
    if (g >= c->group_count || c->member_of[g] < 0 || atomic_load(&c->lease_epoch[g]) == 0)
        return -EPERM;
    const cluster_map *m = cluster_map_acquire(c);
    const cluster_group *gr = &m->groups[g];
    uint32_t insync = 0;
    int32_t insync_version = -1;
    int rc = cl_read_insync(c, m, g, &insync, &insync_version);
    uint32_t rest = insync & ~(1u << c->member_of[g]);
    if (rc == 0 && rest == 0)
        rc = -EBUSY; /* nobody else could take over */
    pthread_mutex_lock(&c->mu);
    c->resigning[g] = true;
    pthread_mutex_unlock(&c->mu);
    uint64_t e = rc < 0 ? 0 : atomic_exchange(&c->lease_epoch[g], 0);
    int32_t version = atomic_load(&c->lease_version[g]);
    char text[CL_TEXT_BYTES_MAX];
    size_t n = e == 0 ? 0 : cluster_insync_encode(m, gr, e, rest, text, sizeof(text));
    cluster_map_release(c, m);
    if (rc == 0)
        rc = e == 0 ? -EPERM : cl_fenced(c, g, version, text, n, insync_version, true);
    pthread_mutex_lock(&c->mu);
    c->resigning[g] = false;
    pthread_mutex_unlock(&c->mu);
    if (e != 0)
        cl_log(c, 0, "cluster %s: group %" PRIu32 ": resigned the lease of epoch %" PRIu64 "%s%s",
               c->name, g, e, rc < 0 ? ": " : "", rc < 0 ? strerror(-rc) : "");
    return rc;
}
