/*
 * cluster_map.c — the cluster map as a value: slots, placement and the
 * text formats of its ZooKeeper nodes (interface and formats in
 * cluster_map.h).
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "cluster_map.h"

/* ---- constants ------------------------------------------------------------ */

/* Fields on one line at most: meta's, 7 + its nodes (insync has 1 + its
 * members). */
#define CM_FIELDS_MAX (7 + LIMIT_CLUSTER_NODES_MAX)

static_assert(CM_FIELDS_MAX >= 1 + LIMIT_CLUSTER_MEMBERS_MAX, "an in-sync line's fields fit");
static_assert(LIMIT_CLUSTER_NODE_ID_BYTES_MAX <= LIMIT_CLUSTER_NAME_BYTES_MAX,
              "ids are checked by the name rule");

/* ---- CRC16 and slots ------------------------------------------------------ */

uint16_t cluster_crc16(const void *buf, size_t len)
{
    const unsigned char *p = buf;
    uint32_t crc = 0;
    for (size_t i = 0; i < len; i++) {
        crc ^= (uint32_t)p[i] << 8;
        for (int bit = 0; bit < 8; bit++)
            crc = (crc & 0x8000u) ? ((crc << 1) ^ 0x1021u) : (crc << 1);
        crc &= 0xffffu;
    }
    return (uint16_t)crc;
}

uint16_t cluster_keyslot(const void *key, size_t len)
{
    const char *k = key;
    const char *open = memchr(k, '{', len);
    if (open != NULL) {
        size_t after = (size_t)(open - k) + 1;
        const char *close = memchr(open + 1, '}', len - after);
        /* "{}" hashes the whole key, as in Redis. */
        if (close != NULL && close > open + 1)
            return cluster_crc16(open + 1, (size_t)(close - open - 1)) % LIMIT_CLUSTER_SLOTS;
    }
    return cluster_crc16(k, len) % LIMIT_CLUSTER_SLOTS;
}

uint32_t cluster_slot_ranges(const cluster_map *m, uint32_t g, uint16_t (*ranges)[2],
                             uint32_t cap)
{
    assert(g < m->group_count);
    uint32_t n = 0, last = UINT32_MAX;
    for (uint32_t s = 0; s < LIMIT_CLUSTER_SLOTS; s++) {
        if (m->slot_group[s] != g)
            continue;
        if (n > 0 && last + 1 == s) {
            if (n <= cap)
                ranges[n - 1][1] = (uint16_t)s;
        } else {
            if (n < cap) {
                ranges[n][0] = (uint16_t)s;
                ranges[n][1] = (uint16_t)s;
            }
            n++;
        }
        last = s;
    }
    return n;
}

/* ---- lookups -------------------------------------------------------------- */

bool cluster_name_ok(const char *s, size_t len, size_t max_bytes)
{
    if (len == 0 || len > max_bytes)
        return false;
    if ((len == 1 && s[0] == '.') || (len == 2 && s[0] == '.' && s[1] == '.'))
        return false; /* ZooKeeper refuses these names */
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '.' || c == '-';
        if (!ok)
            return false;
    }
    return true;
}

int cluster_node_index(const cluster_map *m, const char *id)
{
    for (uint32_t i = 0; i < m->node_count; i++)
        if (strcmp(m->nodes[i].id, id) == 0)
            return (int)i;
    return -1;
}

int cluster_member_index(const cluster_group *g, uint32_t node)
{
    for (uint32_t j = 0; j < g->member_count; j++)
        if (g->members[j] == node)
            return (int)j;
    return -1;
}

int cluster_group_leader(const cluster_map *m, uint32_t g)
{
    assert(g < m->group_count);
    const cluster_group *gr = &m->groups[g];
    return gr->leased && gr->leader >= 0 ? gr->leader : -1;
}

uint32_t cluster_group_master(const cluster_map *m, uint32_t g)
{
    int leader = cluster_group_leader(m, g);
    return leader >= 0 ? (uint32_t)leader : m->groups[g].members[0];
}

/* ---- field parsing -------------------------------------------------------- */

typedef struct cm_field {
    const char *s;
    size_t len;
} cm_field;

/* Splits one line, buf[0, len) ending in '\n', into fields separated by
 * single spaces; only printable ASCII besides.  0 or -EINVAL. */
static int cm_split(const char *buf, size_t len, cm_field *f, uint32_t cap, uint32_t *count)
{
    if (len == 0 || buf[len - 1] != '\n')
        return -EINVAL;
    uint32_t n = 0;
    size_t start = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)buf[i];
        if (c != ' ' && c != '\n') {
            if (c < 0x21 || c > 0x7e)
                return -EINVAL;
            continue;
        }
        if (i == start || n == cap)
            return -EINVAL; /* an empty field, or too many */
        f[n++] = (cm_field){buf + start, i - start};
        start = i + 1;
        if (c == '\n' && i + 1 != len)
            return -EINVAL; /* more than one line */
    }
    *count = n;
    return 0;
}

/* A decimal number of at most 20 digits, <= max.  0 or -EINVAL. */
static int cm_u64(cm_field f, uint64_t max, uint64_t *out)
{
    if (f.len == 0 || f.len > 20)
        return -EINVAL;
    uint64_t v = 0;
    for (size_t i = 0; i < f.len; i++) {
        unsigned d = (unsigned)(f.s[i] - '0');
        if (d > 9 || v > (UINT64_MAX - d) / 10)
            return -EINVAL;
        v = v * 10 + d;
    }
    if (v > max)
        return -EINVAL;
    *out = v;
    return 0;
}

static bool cm_is(cm_field f, const char *word)
{
    return f.len == strlen(word) && memcmp(f.s, word, f.len) == 0;
}

/* The node index a field names, or -1. */
static int cm_node(const cluster_map *m, cm_field f)
{
    for (uint32_t i = 0; i < m->node_count; i++)
        if (cm_is(f, m->nodes[i].id))
            return (int)i;
    return -1;
}

/* snprintf's length if it fit in cap, else 0 (the encoders' result). */
static size_t cm_fit(int n, size_t cap)
{
    return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

/* ---- a new cluster -------------------------------------------------------- */

static int cm_port(const char *s, size_t len, uint16_t *out)
{
    uint64_t v;
    if (cm_u64((cm_field){s, len}, 65535, &v) < 0 || v == 0)
        return -EINVAL;
    *out = (uint16_t)v;
    return 0;
}

int cluster_node_parse(const char *spec, cluster_node *out, const char **why)
{
    const char *at = strchr(spec, '@');
    const char *colon = at ? strchr(at, ':') : NULL;
    *why = "a node is ID@HOST:PORT or ID@HOST:PORT@REPL_PORT";
    if (at == NULL || colon == NULL)
        return -EINVAL;
    const char *port_end = strchr(colon, '@');
    const char *end = spec + strlen(spec);
    cluster_node n = {0};
    size_t id_len = (size_t)(at - spec), host_len = (size_t)(colon - at - 1);
    if (!cluster_name_ok(spec, id_len, LIMIT_CLUSTER_NODE_ID_BYTES_MAX)) {
        *why = "a node id is 1..40 bytes of A-Z a-z 0-9 _ . -";
        return -EINVAL;
    }
    if (host_len == 0 || host_len > LIMIT_CLUSTER_HOST_BYTES_MAX ||
        memchr(at + 1, ' ', host_len) != NULL) {
        *why = "a node's host is 1..253 bytes (a DNS name or an IPv4 address)";
        return -EINVAL;
    }
    if (cm_port(colon + 1, (size_t)((port_end ? port_end : end) - colon - 1), &n.port) < 0 ||
        (port_end && cm_port(port_end + 1, (size_t)(end - port_end - 1), &n.repl_port) < 0)) {
        *why = "a node's ports are 1..65535";
        return -EINVAL;
    }
    if (port_end == NULL) {
        if (n.port > 65535 - CLUSTER_REPL_PORT_OFFSET) {
            *why = "PORT + 10000 is no port: name the replication port (ID@HOST:PORT@REPL_PORT)";
            return -EINVAL;
        }
        n.repl_port = (uint16_t)(n.port + CLUSTER_REPL_PORT_OFFSET);
    }
    memcpy(n.id, spec, id_len);
    memcpy(n.host, at + 1, host_len);
    *out = n;
    return 0;
}

/* Checks the plan's arguments; 0 or -EINVAL with *why. */
static int cm_plan_check(const char *name, const cluster_node *nodes, uint32_t node_count,
                         uint32_t replicas, uint32_t groups, const char **why)
{
    *why = "a cluster name is 1..64 bytes of A-Z a-z 0-9 _ . -";
    if (!cluster_name_ok(name, strlen(name), LIMIT_CLUSTER_NAME_BYTES_MAX))
        return -EINVAL;
    *why = "a cluster has 1..64 nodes";
    if (node_count == 0 || node_count > LIMIT_CLUSTER_NODES_MAX)
        return -EINVAL;
    *why = "--replicas is 0..4 and less than the number of nodes";
    if (replicas > LIMIT_CLUSTER_REPLICAS_MAX || replicas >= node_count)
        return -EINVAL;
    *why = "--groups is the number of nodes, or the nodes divided by 1 + replicas";
    if (groups != node_count && groups * (replicas + 1) != node_count)
        return -EINVAL;
    for (uint32_t i = 0; i < node_count; i++)
        for (uint32_t k = 0; k < i; k++) {
            *why = "two nodes have the same id";
            if (strcmp(nodes[i].id, nodes[k].id) == 0)
                return -EINVAL;
            *why = "two nodes have the same address";
            if (strcmp(nodes[i].host, nodes[k].host) == 0 &&
                (nodes[i].port == nodes[k].port || nodes[i].port == nodes[k].repl_port ||
                 nodes[i].repl_port == nodes[k].port || nodes[i].repl_port == nodes[k].repl_port))
                return -EINVAL;
        }
    *why = NULL;
    return 0;
}

int cluster_map_plan(cluster_map *m, const char *name, const cluster_node *nodes,
                     uint32_t node_count, uint32_t replicas, uint32_t groups, const char **why)
{
    if (groups == 0)
        groups = node_count;
    int rc = cm_plan_check(name, nodes, node_count, replicas, groups, why);
    if (rc < 0)
        return rc;
    memset(m, 0, sizeof(*m));
    memcpy(m->name, name, strlen(name) + 1);
    m->replicas = replicas;
    m->node_count = node_count;
    m->group_count = groups;
    memcpy(m->nodes, nodes, node_count * sizeof(*nodes));
    uint32_t step = groups == node_count ? 1 : groups;
    for (uint32_t g = 0; g < groups; g++) {
        cluster_group *gr = &m->groups[g];
        gr->member_count = replicas + 1;
        for (uint32_t j = 0; j <= replicas; j++)
            gr->members[j] = (uint16_t)((g + j * step) % node_count);
        gr->leader = -1;
        gr->insync = (1u << gr->member_count) - 1;
        /* Slots round(g·S/G) .. round((g+1)·S/G) - 1. */
        uint32_t first = (2 * g * LIMIT_CLUSTER_SLOTS + groups) / (2 * groups);
        uint32_t next = (2 * (g + 1) * LIMIT_CLUSTER_SLOTS + groups) / (2 * groups);
        for (uint32_t s = first; s < next; s++)
            m->slot_group[s] = (uint16_t)g;
    }
    for (uint32_t g = 0; g < groups; g++)
        for (uint32_t j = 0; j < m->groups[g].member_count; j++)
            assert(cluster_member_index(&m->groups[g], m->groups[g].members[j]) == (int)j);
    return 0;
}

/* ---- meta and slots ------------------------------------------------------- */

size_t cluster_meta_encode(const cluster_map *m, char *buf, size_t cap)
{
    size_t used = cm_fit(snprintf(buf, cap, "tally-cluster %d replicas %" PRIu32 " groups %" PRIu32
                                  " nodes", CLUSTER_MAP_FORMAT, m->replicas, m->group_count),
                         cap);
    for (uint32_t i = 0; used > 0 && i < m->node_count; i++) {
        size_t n = cm_fit(snprintf(buf + used, cap - used, " %s", m->nodes[i].id), cap - used);
        used = n ? used + n : 0;
    }
    if (used == 0 || used + 1 >= cap)
        return 0;
    memcpy(buf + used, "\n", 2);
    return used + 1;
}

int cluster_meta_decode(const char *buf, size_t len, cluster_map *m)
{
    cm_field f[CM_FIELDS_MAX];
    uint32_t n;
    uint64_t version, replicas, groups;
    if (cm_split(buf, len, f, CM_FIELDS_MAX, &n) < 0 || n < 2 || !cm_is(f[0], "tally-cluster") ||
        cm_u64(f[1], UINT32_MAX, &version) < 0)
        return -EINVAL;
    if (version != CLUSTER_MAP_FORMAT)
        return -EPROTO;
    uint32_t nodes = n - 7;
    if (n < 8 || !cm_is(f[2], "replicas") ||
        cm_u64(f[3], LIMIT_CLUSTER_REPLICAS_MAX, &replicas) < 0 || !cm_is(f[4], "groups") ||
        cm_u64(f[5], LIMIT_CLUSTER_GROUPS_MAX, &groups) < 0 || groups == 0 ||
        !cm_is(f[6], "nodes") || nodes > LIMIT_CLUSTER_NODES_MAX || replicas >= nodes)
        return -EINVAL;
    for (uint32_t i = 0; i < nodes; i++) {
        if (!cluster_name_ok(f[7 + i].s, f[7 + i].len, LIMIT_CLUSTER_NODE_ID_BYTES_MAX))
            return -EINVAL;
        for (uint32_t k = 0; k < i; k++)
            if (f[7 + k].len == f[7 + i].len && memcmp(f[7 + k].s, f[7 + i].s, f[7 + i].len) == 0)
                return -EINVAL;
    }
    m->replicas = (uint32_t)replicas;
    m->group_count = (uint32_t)groups;
    m->node_count = nodes;
    for (uint32_t i = 0; i < nodes; i++) {
        memset(&m->nodes[i], 0, sizeof(m->nodes[i]));
        memcpy(m->nodes[i].id, f[7 + i].s, f[7 + i].len);
    }
    return 0;
}

size_t cluster_slots_encode(const cluster_map *m, char *buf, size_t cap)
{
    size_t used = 0;
    uint32_t start = 0;
    for (uint32_t s = 1; s <= LIMIT_CLUSTER_SLOTS; s++) {
        if (s < LIMIT_CLUSTER_SLOTS && m->slot_group[s] == m->slot_group[start])
            continue;
        size_t n = cm_fit(snprintf(buf + used, cap - used, "%" PRIu32 "-%" PRIu32 " %u\n", start,
                                   s - 1, m->slot_group[start]),
                          cap - used);
        if (n == 0)
            return 0;
        used += n;
        start = s;
    }
    return used;
}

/* One "START-END GROUP\n" line that must begin at slot `next`; advances
 * next past its END. */
static int cm_slots_line(const char *line, size_t len, cluster_map *m, uint32_t *next)
{
    cm_field f[CM_FIELDS_MAX];
    uint32_t n;
    uint64_t start, end, group;
    if (cm_split(line, len, f, CM_FIELDS_MAX, &n) < 0 || n != 2)
        return -EINVAL;
    const char *dash = memchr(f[0].s, '-', f[0].len);
    if (dash == NULL)
        return -EINVAL;
    cm_field a = {f[0].s, (size_t)(dash - f[0].s)};
    cm_field b = {dash + 1, f[0].len - a.len - 1};
    if (cm_u64(a, LIMIT_CLUSTER_SLOTS - 1, &start) < 0 ||
        cm_u64(b, LIMIT_CLUSTER_SLOTS - 1, &end) < 0 || start != *next || end < start ||
        cm_u64(f[1], m->group_count - 1, &group) < 0)
        return -EINVAL;
    for (uint64_t s = start; s <= end; s++)
        m->slot_group[s] = (uint16_t)group;
    *next = (uint32_t)end + 1;
    return 0;
}

int cluster_slots_decode(const char *buf, size_t len, cluster_map *m)
{
    assert(m->group_count > 0);
    static_assert(LIMIT_CLUSTER_SLOTS <= UINT16_MAX + 1, "slots are uint16_t");
    uint16_t saved[LIMIT_CLUSTER_SLOTS];
    memcpy(saved, m->slot_group, sizeof(saved));
    uint32_t next = 0;
    size_t at = 0;
    int rc = 0;
    while (rc == 0 && at < len) {
        const char *nl = memchr(buf + at, '\n', len - at);
        if (nl == NULL) {
            rc = -EINVAL;
            break;
        }
        size_t line = (size_t)(nl - (buf + at)) + 1;
        rc = cm_slots_line(buf + at, line, m, &next);
        at += line;
    }
    if (rc == 0 && next != LIMIT_CLUSTER_SLOTS)
        rc = -EINVAL; /* slots left unassigned */
    if (rc < 0)
        memcpy(m->slot_group, saved, sizeof(saved));
    return rc;
}

/* ---- nodes and groups ----------------------------------------------------- */

size_t cluster_node_encode(const cluster_node *n, char *buf, size_t cap)
{
    return cm_fit(snprintf(buf, cap, "%s %u %u\n", n->host, n->port, n->repl_port), cap);
}

int cluster_node_decode(const char *buf, size_t len, cluster_node *n)
{
    cm_field f[CM_FIELDS_MAX];
    uint32_t count;
    uint16_t port, repl_port;
    if (cm_split(buf, len, f, CM_FIELDS_MAX, &count) < 0 || count != 3 ||
        f[0].len > LIMIT_CLUSTER_HOST_BYTES_MAX || memchr(f[0].s, ':', f[0].len) != NULL ||
        cm_port(f[1].s, f[1].len, &port) < 0 || cm_port(f[2].s, f[2].len, &repl_port) < 0)
        return -EINVAL;
    memcpy(n->host, f[0].s, f[0].len);
    n->host[f[0].len] = '\0';
    n->port = port;
    n->repl_port = repl_port;
    return 0;
}

/* Appends " ID" for each member of g in mask (the first without its
 * space when lead is false). */
static size_t cm_ids(const cluster_map *m, const cluster_group *g, uint32_t mask, bool lead,
                     char *buf, size_t cap)
{
    size_t used = 0;
    for (uint32_t j = 0; j < g->member_count; j++) {
        if (!(mask & (1u << j)))
            continue;
        size_t n = cm_fit(snprintf(buf + used, cap - used, "%s%s", (used || lead) ? " " : "",
                                   m->nodes[g->members[j]].id),
                          cap - used);
        if (n == 0)
            return SIZE_MAX;
        used += n;
    }
    return used;
}

size_t cluster_group_encode(const cluster_map *m, const cluster_group *g, char *buf, size_t cap)
{
    size_t n = cm_ids(m, g, (1u << g->member_count) - 1, false, buf, cap);
    if (n == SIZE_MAX || n + 1 >= cap)
        return 0;
    memcpy(buf + n, "\n", 2);
    return n + 1;
}

int cluster_group_decode(const char *buf, size_t len, const cluster_map *m, cluster_group *g)
{
    cm_field f[CM_FIELDS_MAX];
    uint32_t n;
    if (cm_split(buf, len, f, CM_FIELDS_MAX, &n) < 0 || n != m->replicas + 1 ||
        n > LIMIT_CLUSTER_MEMBERS_MAX)
        return -EINVAL;
    uint16_t members[LIMIT_CLUSTER_MEMBERS_MAX];
    for (uint32_t j = 0; j < n; j++) {
        int node = cm_node(m, f[j]);
        if (node < 0)
            return -EINVAL;
        for (uint32_t k = 0; k < j; k++)
            if (members[k] == node)
                return -EINVAL;
        members[j] = (uint16_t)node;
    }
    g->member_count = n;
    memcpy(g->members, members, n * sizeof(members[0]));
    return 0;
}

/* ---- epochs, leases, in-sync sets, positions, votes ----------------------- */

size_t cluster_epoch_encode(uint64_t epoch, char *buf, size_t cap)
{
    return cm_fit(snprintf(buf, cap, "%" PRIu64 "\n", epoch), cap);
}

int cluster_epoch_decode(const char *buf, size_t len, uint64_t *epoch)
{
    cm_field f[CM_FIELDS_MAX];
    uint32_t n;
    if (cm_split(buf, len, f, CM_FIELDS_MAX, &n) < 0 || n != 1)
        return -EINVAL;
    return cm_u64(f[0], UINT64_MAX, epoch);
}

size_t cluster_lease_encode(const char *node_id, uint64_t epoch, char *buf, size_t cap)
{
    return cm_fit(snprintf(buf, cap, "%s %" PRIu64 "\n", node_id, epoch), cap);
}

int cluster_lease_decode(const char *buf, size_t len, char *id, uint64_t *epoch)
{
    cm_field f[CM_FIELDS_MAX];
    uint32_t n;
    uint64_t e;
    if (cm_split(buf, len, f, CM_FIELDS_MAX, &n) < 0 || n != 2 ||
        !cluster_name_ok(f[0].s, f[0].len, LIMIT_CLUSTER_NODE_ID_BYTES_MAX) ||
        cm_u64(f[1], UINT64_MAX, &e) < 0 || e == 0)
        return -EINVAL;
    memcpy(id, f[0].s, f[0].len);
    id[f[0].len] = '\0';
    *epoch = e;
    return 0;
}

size_t cluster_insync_encode(const cluster_map *m, const cluster_group *g, uint64_t writer_epoch,
                             uint32_t insync, char *buf, size_t cap)
{
    size_t n = cm_fit(snprintf(buf, cap, "%" PRIu64, writer_epoch), cap);
    if (n == 0)
        return 0;
    size_t ids = cm_ids(m, g, insync, true, buf + n, cap - n);
    if (ids == SIZE_MAX || n + ids + 1 >= cap)
        return 0;
    memcpy(buf + n + ids, "\n", 2);
    return n + ids + 1;
}

int cluster_insync_decode(const char *buf, size_t len, const cluster_map *m,
                          const cluster_group *g, uint64_t *writer_epoch, uint32_t *insync)
{
    cm_field f[CM_FIELDS_MAX];
    uint32_t n, set = 0;
    uint64_t e;
    if (cm_split(buf, len, f, CM_FIELDS_MAX, &n) < 0 || n < 1 || cm_u64(f[0], UINT64_MAX, &e) < 0)
        return -EINVAL;
    for (uint32_t i = 1; i < n; i++) {
        int node = cm_node(m, f[i]);
        int j = node < 0 ? -1 : cluster_member_index(g, (uint32_t)node);
        if (j < 0 || (set & (1u << j)))
            return -EINVAL;
        set |= 1u << j;
    }
    *writer_epoch = e;
    *insync = set;
    return 0;
}

size_t cluster_pos_encode(cluster_pos pos, uint64_t unix_ms, char *buf, size_t cap)
{
    return cm_fit(snprintf(buf, cap, "%" PRIu64 " %" PRIu64 " %" PRIu64 "\n", pos.log_epoch,
                           pos.seq, unix_ms),
                  cap);
}

/* Three numbers on one line. */
static int cm_three(const char *buf, size_t len, uint64_t *a, uint64_t *b, uint64_t *c)
{
    cm_field f[CM_FIELDS_MAX];
    uint32_t n;
    uint64_t x, y, z;
    if (cm_split(buf, len, f, CM_FIELDS_MAX, &n) < 0 || n != 3 ||
        cm_u64(f[0], UINT64_MAX, &x) < 0 || cm_u64(f[1], UINT64_MAX, &y) < 0 ||
        cm_u64(f[2], UINT64_MAX, &z) < 0)
        return -EINVAL;
    *a = x;
    *b = y;
    *c = z;
    return 0;
}

int cluster_pos_decode(const char *buf, size_t len, cluster_pos *pos, uint64_t *unix_ms)
{
    cluster_pos p;
    uint64_t ms;
    int rc = cm_three(buf, len, &p.log_epoch, &p.seq, &ms);
    if (rc == 0) {
        *pos = p;
        *unix_ms = ms;
    }
    return rc;
}

size_t cluster_vote_encode(uint64_t round, cluster_pos pos, char *buf, size_t cap)
{
    return cm_fit(snprintf(buf, cap, "%" PRIu64 " %" PRIu64 " %" PRIu64 "\n", round,
                           pos.log_epoch, pos.seq),
                  cap);
}

int cluster_vote_decode(const char *buf, size_t len, uint64_t *round, cluster_pos *pos)
{
    cluster_pos p;
    uint64_t r;
    int rc = cm_three(buf, len, &r, &p.log_epoch, &p.seq);
    if (rc == 0) {
        *round = r;
        *pos = p;
    }
    return rc;
}
