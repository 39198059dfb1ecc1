/*
 * groups.c — tally-bench --cluster (groups.h).
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster_map.h"
#include "groups.h"
#include "hist.h"

typedef struct groups_master {
    char host[64];
    uint16_t port;
    uint16_t ranges[LIMIT_CLUSTER_SLOTS / 2][2]; /* a slot range per CLUSTER SLOTS row */
    uint32_t range_count;
    uint64_t *merchants;
    uint64_t merchant_count;
    net_options o;
    report_run r;
    int rc;
    pthread_t thread;
} groups_master;

/* ---- a small RESP reader for CLUSTER SLOTS ----------------------------------- */

typedef struct groups_rd {
    const char *p, *end;
    bool bad;
} groups_rd;

/* The next line's text after its type byte, as a number. */
static long long groups_num(groups_rd *r, char type)
{
    if (r->bad || r->p >= r->end || *r->p != type) {
        r->bad = true;
        return 0;
    }
    char *e;
    long long v = strtoll(r->p + 1, &e, 10);
    if (e + 2 > r->end || e[0] != '\r' || e[1] != '\n') {
        r->bad = true;
        return 0;
    }
    r->p = e + 2;
    return v;
}

static void groups_bulk(groups_rd *r, char *out, size_t cap)
{
    long long n = groups_num(r, '$');
    if (r->bad || n < 0 || (size_t)n >= cap || r->p + n + 2 > r->end) {
        r->bad = true;
        return;
    }
    memcpy(out, r->p, (size_t)n);
    out[n] = 0;
    r->p += n + 2;
}

/* Skips one value of any type (what the masters' rows add after what
 * is read). */
static void groups_skip(groups_rd *r)
{
    if (r->bad || r->p >= r->end) {
        r->bad = true;
        return;
    }
    char t = *r->p;
    if (t == '*' || t == '%') {
        long long n = groups_num(r, t) * (t == '%' ? 2 : 1);
        for (long long i = 0; i < n && !r->bad; i++)
            groups_skip(r);
    } else if (t == '$') {
        char buf[512];
        groups_bulk(r, buf, sizeof(buf));
    } else {
        const char *e = memchr(r->p, '\n', (size_t)(r->end - r->p));
        if (!e)
            r->bad = true;
        else
            r->p = e + 1;
    }
}

/* CLUSTER SLOTS → masters with their slot ranges. */
static int groups_parse(const char *reply, size_t len, groups_master *m, uint32_t *count)
{
    groups_rd r = {.p = reply, .end = reply + len};
    long long rows = groups_num(&r, '*');
    *count = 0;
    for (long long i = 0; i < rows && !r.bad; i++) {
        long long items = groups_num(&r, '*');
        long long lo = groups_num(&r, ':'), hi = groups_num(&r, ':');
        char host[64] = "";
        long long nf = groups_num(&r, '*');
        groups_bulk(&r, host, sizeof(host));
        long long port = groups_num(&r, ':');
        for (long long k = 2; k < nf; k++)
            groups_skip(&r);
        for (long long k = 3; k < items; k++)
            groups_skip(&r); /* replicas */
        if (r.bad || lo < 0 || hi >= LIMIT_CLUSTER_SLOTS || lo > hi || port <= 0 || port > 65535)
            return -EPROTO;
        uint32_t j = 0;
        while (j < *count && !(strcmp(m[j].host, host) == 0 && m[j].port == port))
            j++;
        if (j == *count) {
            if (*count == GROUPS_MASTERS_MAX)
                return -E2BIG;
            snprintf(m[j].host, sizeof(m[j].host), "%s", host);
            m[j].port = (uint16_t)port;
            (*count)++;
        }
        if (m[j].range_count < LIMIT_CLUSTER_SLOTS / 2) {
            m[j].ranges[m[j].range_count][0] = (uint16_t)lo;
            m[j].ranges[m[j].range_count++][1] = (uint16_t)hi;
        }
    }
    return r.bad || *count == 0 ? -EPROTO : 0;
}

/* ---- the runs ------------------------------------------------------------------ */

static bool groups_holds(const groups_master *m, uint16_t slot)
{
    for (uint32_t i = 0; i < m->range_count; i++)
        if (slot >= m->ranges[i][0] && slot <= m->ranges[i][1])
            return true;
    return false;
}

/* Every merchant to the master of its slot. */
static int groups_assign(const net_options *o, groups_master *m, uint32_t count)
{
    for (uint32_t j = 0; j < count; j++) {
        m[j].merchants = calloc(o->work.merchants, sizeof(uint64_t));
        if (!m[j].merchants)
            return -ENOMEM;
    }
    for (uint64_t id = 1; id <= o->work.merchants; id++) {
        char key[24];
        int n = snprintf(key, sizeof(key), "%llu", (unsigned long long)id);
        uint16_t slot = cluster_keyslot(key, (size_t)n);
        for (uint32_t j = 0; j < count; j++)
            if (groups_holds(&m[j], slot)) {
                m[j].merchants[m[j].merchant_count++] = id;
                break;
            }
    }
    return 0;
}

static void *groups_main(void *arg)
{
    groups_master *m = arg;
    m->rc = net_run(&m->o, &m->r);
    return NULL;
}

/* Master j's share of the load: its merchants, their accounts, its part
 * of the connections and threads. */
static void groups_share(const net_options *o, groups_master *m, uint32_t count, uint32_t j)
{
    double part = (double)m[j].merchant_count / (double)o->work.merchants;
    m[j].o = *o;
    m[j].o.host = m[j].host;
    m[j].o.port = m[j].port;
    m[j].o.work.merchants = m[j].merchant_count;
    m[j].o.work.merchant_of = m[j].merchants;
    m[j].o.work.accounts = (uint64_t)((double)o->work.accounts * part);
    if (m[j].o.work.accounts < m[j].merchant_count)
        m[j].o.work.accounts = m[j].merchant_count;
    m[j].o.work.seed = o->work.seed + j;
    uint32_t c = (uint32_t)((double)o->connections * part + 0.5);
    m[j].o.connections = c ? c : 1;
    uint32_t t = o->threads / count;
    m[j].o.threads = t ? t : 1;
    if (m[j].o.threads > m[j].o.connections)
        m[j].o.threads = m[j].o.connections;
    m[j].o.progress = o->progress && j == 0; /* one progress line: the first master's */
    m[j].o.server_pid = 0;
    if (o->ops_max)
        m[j].o.ops_max = (uint64_t)((double)o->ops_max * part) + 1;
    if (o->rate > 0)
        m[j].o.rate = o->rate * part;
}

static void groups_add(report_run *out, const report_run *r)
{
    out->ops += r->ops;
    out->ok += r->ok;
    out->refused += r->refused;
    out->errors += r->errors;
    out->sent += r->sent;
    out->dropped += r->dropped;
    if (r->elapsed_s > out->elapsed_s)
        out->elapsed_s = r->elapsed_s;
    if (!out->first_error[0] && r->first_error[0])
        snprintf(out->first_error, sizeof(out->first_error), "%s", r->first_error);
    hist_merge(out->latency, r->latency);
}

int groups_run(const net_options *o, report_run *out)
{
    static char reply[1 << 20];
    const char *argv[] = {"CLUSTER", "SLOTS"};
    long n = net_call(o->host, o->port, 2, argv, reply, sizeof(reply));
    if (n < 0)
        return (int)n;
    groups_master *m = calloc(GROUPS_MASTERS_MAX, sizeof(*m));
    if (!m)
        return -ENOMEM;
    uint32_t count = 0;
    int rc = groups_parse(reply, (size_t)n, m, &count);
    if (rc == 0)
        rc = groups_assign(o, m, count);
    uint32_t started = 0;
    for (uint32_t j = 0; rc == 0 && j < count; j++) {
        if (m[j].merchant_count == 0)
            continue;
        groups_share(o, m, count, j);
        m[j].r = (report_run){.server_cpu_s = -1, .latency = malloc(sizeof(hist))};
        if (!m[j].r.latency) {
            rc = -ENOMEM;
            break;
        }
        hist_reset(m[j].r.latency);
        rc = -pthread_create(&m[j].thread, NULL, groups_main, &m[j]);
        started += rc == 0;
        if (rc == 0)
            fprintf(stderr, "tally-bench: --cluster: %s:%u leads %llu of the %llu merchants\n",
                    m[j].host, m[j].port, (unsigned long long)m[j].merchant_count,
                    (unsigned long long)o->work.merchants);
    }
    hist_reset(out->latency);
    for (uint32_t j = 0, k = 0; k < started; j++) {
        if (m[j].merchant_count == 0 || !m[j].r.latency)
            continue;
        pthread_join(m[j].thread, NULL);
        k++;
        if (m[j].rc < 0 && rc == 0)
            rc = m[j].rc;
        groups_add(out, &m[j].r);
    }
    out->connections = o->connections;
    out->threads = o->threads;
    for (uint32_t j = 0; j < count; j++) {
        free(m[j].r.latency);
        free(m[j].merchants);
    }
    free(m);
    return rc;
}
