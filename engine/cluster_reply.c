/*
 * cluster_reply.c — CLUSTER SLOTS / SHARDS / NODES and -MOVED from a
 * cluster map (shapes in cluster_reply.h).
 */
#include <assert.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "cluster_reply.h"

/* ---- helpers -------------------------------------------------------------- */

/* Whether host is a dotted IPv4 address (then it is the node's ip too). */
static bool cr_is_ipv4(const char *host)
{
    unsigned a, b, c, d;
    char end;
    return sscanf(host, "%u.%u.%u.%u%c", &a, &b, &c, &d, &end) == 4 && a < 256 && b < 256 &&
           c < 256 && d < 256;
}

/* The master of a slot: its group's (cluster_group_master). */
static uint32_t cr_slot_master(const cluster_map *m, uint32_t slot)
{
    return cluster_group_master(m, m->slot_group[slot]);
}

/* The end of the run of slots from `start` that one group serves. */
static uint32_t cr_run_end(const cluster_map *m, uint32_t start)
{
    uint32_t end = start;
    while (end + 1 < LIMIT_CLUSTER_SLOTS && m->slot_group[end + 1] == m->slot_group[start])
        end++;
    return end;
}

/* ---- CLUSTER SLOTS -------------------------------------------------------- */

/* [host, port, id, {}] */
static void cr_slots_node(resp_out *o, const cluster_node *n, int proto)
{
    resp_array(o, 4);
    resp_bulk_str(o, n->host);
    resp_int(o, n->port);
    resp_bulk_str(o, n->id);
    resp_map(o, 0, proto);
}

void cluster_reply_slots(resp_out *o, const cluster_map *m, int proto)
{
    assert(m->group_count > 0);
    uint32_t runs = 0;
    for (uint32_t s = 0; s < LIMIT_CLUSTER_SLOTS; s = cr_run_end(m, s) + 1)
        runs++;
    resp_array(o, runs);
    for (uint32_t s = 0; s < LIMIT_CLUSTER_SLOTS; s = cr_run_end(m, s) + 1) {
        uint32_t g = m->slot_group[s], master = cr_slot_master(m, s);
        const cluster_group *gr = &m->groups[g];
        uint32_t replicas = 0;
        for (uint32_t j = 0; j < gr->member_count; j++)
            replicas += gr->members[j] != master && m->nodes[gr->members[j]].live;
        resp_array(o, 3 + replicas);
        resp_int(o, s);
        resp_int(o, cr_run_end(m, s));
        cr_slots_node(o, &m->nodes[master], proto);
        for (uint32_t j = 0; j < gr->member_count; j++)
            if (gr->members[j] != master && m->nodes[gr->members[j]].live)
                cr_slots_node(o, &m->nodes[gr->members[j]], proto);
    }
}

/* ---- CLUSTER SHARDS ------------------------------------------------------- */

static void cr_field_str(resp_out *o, const char *name, const char *value)
{
    resp_bulk_str(o, name);
    resp_bulk_str(o, value);
}

static void cr_field_int(resp_out *o, const char *name, int64_t value)
{
    resp_bulk_str(o, name);
    resp_int(o, value);
}

/* One node of a shard: member j of group g. */
static void cr_shard_node(resp_out *o, const cluster_map *m, uint32_t g, uint32_t j, int proto)
{
    const cluster_group *gr = &m->groups[g];
    const cluster_node *n = &m->nodes[gr->members[j]];
    bool master = gr->members[j] == cluster_group_master(m, g);
    bool ip = cr_is_ipv4(n->host);
    resp_map(o, ip ? 7 : 8, proto);
    cr_field_str(o, "id", n->id);
    cr_field_int(o, "port", n->port);
    cr_field_str(o, "ip", n->host);
    cr_field_str(o, "endpoint", n->host);
    if (!ip)
        cr_field_str(o, "hostname", n->host);
    cr_field_str(o, "role", master ? "master" : "replica");
    cr_field_int(o, "replication-offset", (int64_t)(gr->pos[j].seq & INT64_MAX));
    cr_field_str(o, "health", !n->live                                ? "fail"
                              : !master && !(gr->insync & (1u << j)) ? "loading"
                                                                      : "online");
}

void cluster_reply_shards(resp_out *o, const cluster_map *m, int proto)
{
    uint16_t ranges[LIMIT_CLUSTER_SLOTS / 2][2];
    resp_array(o, m->group_count);
    for (uint32_t g = 0; g < m->group_count; g++) {
        const cluster_group *gr = &m->groups[g];
        uint32_t master = cluster_group_master(m, g);
        uint32_t n = cluster_slot_ranges(m, g, ranges, LIMIT_CLUSTER_SLOTS / 2);
        assert(n <= LIMIT_CLUSTER_SLOTS / 2); /* a range is followed by a gap */
        resp_map(o, 2, proto);
        resp_bulk_str(o, "slots");
        resp_array(o, 2 * (size_t)n);
        for (uint32_t r = 0; r < n; r++) {
            resp_int(o, ranges[r][0]);
            resp_int(o, ranges[r][1]);
        }
        resp_bulk_str(o, "nodes");
        resp_array(o, gr->member_count);
        /* The master first, as Redis lists it. */
        int mj = cluster_member_index(gr, master);
        assert(mj >= 0);
        cr_shard_node(o, m, g, (uint32_t)mj, proto);
        for (uint32_t j = 0; j < gr->member_count; j++)
            if ((int)j != mj)
                cr_shard_node(o, m, g, j, proto);
    }
}

/* ---- CLUSTER NODES -------------------------------------------------------- */

/* Where CLUSTER NODES's text goes: counted only (o NULL), or appended to
 * o.  The text is made twice, so its length can precede it without a
 * buffer for all of it. */
typedef struct cr_text {
    resp_out *o;
    size_t len;
} cr_text;

/* The longest piece printed at once: a node's id, address and flags. */
#define CR_PIECE_BYTES_MAX (LIMIT_CLUSTER_NODE_ID_BYTES_MAX + LIMIT_CLUSTER_HOST_BYTES_MAX + 64)

static void cr_printf(cr_text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void cr_printf(cr_text *t, const char *fmt, ...)
{
    char piece[CR_PIECE_BYTES_MAX];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(piece, sizeof(piece), fmt, ap);
    va_end(ap);
    assert(n >= 0 && (size_t)n < sizeof(piece));
    if (t->o != NULL)
        resp_raw(t->o, piece, (size_t)n);
    t->len += (size_t)n;
}

/* One node's line (cluster_reply.h). */
static void cr_node_line(cr_text *t, const cluster_map *m, uint32_t i, uint32_t self)
{
    const cluster_node *n = &m->nodes[i];
    uint64_t epoch = 0;
    bool master = false;
    int follows = -1; /* the first group it is a member of */
    for (uint32_t g = 0; g < m->group_count; g++) {
        if (cluster_member_index(&m->groups[g], i) < 0)
            continue;
        if (follows < 0)
            follows = (int)g;
        if (cluster_group_master(m, g) == i) {
            master = true;
            epoch = m->groups[g].epoch > epoch ? m->groups[g].epoch : epoch;
        }
    }
    cr_printf(t, "%s %s:%u@%u %s%s%s ", n->id, n->host, n->port, n->repl_port,
              i == self ? "myself," : "", master ? "master" : "slave", n->live ? "" : ",fail");
    if (master || follows < 0) {
        cr_printf(t, "-");
    } else {
        epoch = m->groups[follows].epoch;
        cr_printf(t, "%s", m->nodes[cluster_group_master(m, (uint32_t)follows)].id);
    }
    cr_printf(t, " 0 0 %" PRIu64 " %s", epoch, n->live ? "connected" : "disconnected");
    for (uint32_t s = 0; master && s < LIMIT_CLUSTER_SLOTS; s++) {
        if (cr_slot_master(m, s) != i)
            continue;
        uint32_t end = s;
        while (end + 1 < LIMIT_CLUSTER_SLOTS && cr_slot_master(m, end + 1) == i)
            end++;
        if (end == s)
            cr_printf(t, " %" PRIu32, s);
        else
            cr_printf(t, " %" PRIu32 "-%" PRIu32, s, end);
        s = end;
    }
    cr_printf(t, "\n");
}

void cluster_reply_nodes(resp_out *o, const cluster_map *m, uint32_t self, int proto)
{
    assert(proto == 2 || proto == 3);
    cr_text count = {.o = NULL};
    for (uint32_t i = 0; i < m->node_count; i++)
        cr_node_line(&count, m, i, self);
    char head[32];
    int n = proto == 2 ? snprintf(head, sizeof(head), "$%zu\r\n", count.len)
                       : snprintf(head, sizeof(head), "=%zu\r\ntxt:", count.len + 4);
    resp_raw(o, head, (size_t)n);
    cr_text text = {.o = o};
    for (uint32_t i = 0; i < m->node_count; i++)
        cr_node_line(&text, m, i, self);
    assert(text.len == count.len);
    resp_raw(o, "\r\n", 2);
}

/* ---- -MOVED --------------------------------------------------------------- */

void cluster_reply_moved(resp_out *o, const cluster_map *m, uint16_t slot, uint32_t node)
{
    assert(slot < LIMIT_CLUSTER_SLOTS && node < m->node_count);
    resp_errorf(o, "MOVED", "%u %s:%u", slot, m->nodes[node].host, m->nodes[node].port);
}
