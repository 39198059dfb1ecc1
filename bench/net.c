/*
 * net.c — the epoll load loop (net.h).
 *
 * Each thread owns its connections, its workload stream, its counters and
 * its latency histogram; nothing is shared on the hot path.  Once a second
 * each thread publishes a copy of its histogram and counters under a
 * mutex so thread 0 can print the progress line; at the end thread 0
 * merges them all.  Memory is allocated at start only: per connection an
 * output buffer of (pipeline + burst) commands, an input buffer, and a
 * ring of send times of the same length.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "net.h"
#include "wire.h"

#define NET_EVENTS_MAX 256

typedef struct net_conn {
    int fd;
    bool dead;
    char *out;          /* encoded commands not yet written */
    size_t out_len;
    size_t out_off;     /* bytes of out already written */
    char *in;           /* reply bytes not yet scanned */
    size_t in_len;
    uint64_t *sent_ns;  /* ring: send (or scheduled) time per command */
    uint8_t *kind;      /* ring: each command's enum workload_kind */
    workload_op *ops;   /* ring: the operations, when the workload tracks them */
    uint32_t ring_cap;
    uint32_t ring_head; /* next slot to fill */
    uint32_t inflight;
} net_conn;

typedef struct net_thread {
    const net_options *o;
    uint32_t index;
    pthread_t tid;
    int epfd;
    net_conn *conns;
    uint32_t conn_count;
    uint32_t conn_live;
    uint32_t rr; /* open loop: next connection to try */
    workload work;
    uint64_t ops_budget; /* 0 = unlimited */
    uint64_t sent;
    uint64_t sent_measured; /* sent while measuring */
    uint64_t dropped;       /* open loop: due before the end, never sent */
    bool stopping;
    bool measuring;
    uint64_t inflight;
    uint64_t ok, refused, errors;
    uint64_t measure_start_ns;
    uint64_t last_reply_ns;
    char first_error[WIRE_ERROR_BYTES_MAX];
    hist *lat;
    /* published once a second for the progress line */
    pthread_mutex_t pub_lock;
    hist *pub_lat;
    uint64_t pub_ops;
    int rc;
} net_thread;

typedef struct net_shared {
    net_thread *threads;
    uint32_t count;
    uint64_t start_ns;
    hist *scratch;
    proc_sample server_begin; /* when thread 0 began measuring */
    bool server_begun;
} net_shared;

static net_shared net_run_state;

/* ---- clocks ------------------------------------------------------------- */

static uint64_t net_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

double net_now_s(void)
{
    return (double)net_mono_ns() / 1e9;
}

/* ---- connections -------------------------------------------------------- */

static int net_connect(const char *host, uint16_t port, int *out)
{
    char service[8];
    snprintf(service, sizeof(service), "%u", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    int gai = getaddrinfo(host, service, &hints, &res);
    if (gai != 0)
        return -EHOSTUNREACH;
    int rc = -ECONNREFUSED;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            rc = -errno;
            continue;
        }
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            *out = fd;
            rc = 0;
            break;
        }
        rc = -errno;
        close(fd);
    }
    freeaddrinfo(res);
    return rc;
}

long net_call(const char *host, uint16_t port, int argc, const char *const *argv, char *reply,
              size_t cap)
{
    char cmd[8192];
    size_t len = wire_command(cmd, sizeof(cmd), argc, argv);
    if (len == 0)
        return -E2BIG;
    int fd;
    int rc = net_connect(host, port, &fd);
    if (rc < 0)
        return rc;
    for (size_t off = 0; off < len;) {
        ssize_t n = write(fd, cmd + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            close(fd);
            return -EIO;
        }
        off += (size_t)n;
    }
    static char buf[1 << 20];
    size_t got = 0;
    for (;;) {
        size_t used;
        wire_reply r;
        int st = wire_scan(buf, got, &used, &r);
        if (st == WIRE_REPLY)
            break;
        ssize_t n = -1;
        if (st == WIRE_MORE && got < sizeof(buf))
            n = read(fd, buf + got, sizeof(buf) - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            close(fd);
            return st == WIRE_EPROTO ? -EPROTO : -EIO;
        }
        got += (size_t)n;
    }
    close(fd);
    size_t copy = got < cap - 1 ? got : cap - 1;
    memcpy(reply, buf, copy);
    reply[copy] = '\0';
    return (long)got;
}

static int net_conn_open(net_thread *t, net_conn *c)
{
    const net_options *o = t->o;
    c->ring_cap = o->pipeline + WORKLOAD_BURST_MAX;
    c->out = malloc((size_t)c->ring_cap * WIRE_COMMAND_BYTES_MAX);
    c->in = malloc(NET_INPUT_BYTES);
    c->sent_ns = calloc(c->ring_cap, sizeof(uint64_t));
    c->kind = calloc(c->ring_cap, sizeof(uint8_t));
    if (workload_tracks(&o->work))
        c->ops = calloc(c->ring_cap, sizeof(workload_op));
    if (!c->out || !c->in || !c->sent_ns || !c->kind ||
        (workload_tracks(&o->work) && !c->ops))
        return -ENOMEM;
    int rc = net_connect(o->host, o->port, &c->fd);
    if (rc < 0)
        return rc;
    int flags = fcntl(c->fd, F_GETFL);
    if (flags < 0 || fcntl(c->fd, F_SETFL, flags | O_NONBLOCK) < 0)
        return -errno;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = c};
    if (epoll_ctl(t->epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0)
        return -errno;
    return 0;
}

static void net_conn_free(net_conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    free(c->out);
    free(c->in);
    free(c->sent_ns);
    free(c->kind);
    free(c->ops);
}

/* The connection broke: its commands in flight count as errors. */
static void net_conn_fail(net_thread *t, net_conn *c, const char *why)
{
    if (c->dead)
        return;
    c->dead = true;
    if (t->measuring)
        t->errors += c->inflight;
    if (!t->first_error[0])
        snprintf(t->first_error, sizeof(t->first_error), "connection: %s", why);
    t->inflight -= c->inflight;
    c->inflight = 0;
    epoll_ctl(t->epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    t->conn_live--;
}

/* ---- sending ------------------------------------------------------------ */

static void net_flush(net_thread *t, net_conn *c)
{
    while (!c->dead && c->out_off < c->out_len) {
        ssize_t n = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
        if (n > 0) {
            c->out_off += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && errno == EAGAIN) {
            return; /* EPOLLOUT (edge-triggered) resumes it */
        } else {
            net_conn_fail(t, c, n < 0 ? strerror(errno) : "write returned 0");
            return;
        }
    }
    c->out_off = c->out_len = 0;
}

/* Encodes one burst of operations into c's output; false when the run's
 * operation budget (or a prefill) is exhausted. */
static bool net_issue(net_thread *t, net_conn *c, uint64_t when_ns)
{
    if (t->ops_budget && t->sent >= t->ops_budget)
        return false;
    workload_op ops[WORKLOAD_BURST_MAX];
    uint32_t n = workload_next(&t->work, ops);
    if (n == 0)
        return false;
    if (c->out_off > 0 && c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
    for (uint32_t i = 0; i < n; i++) {
        assert(c->inflight < c->ring_cap);
        /* Room: every unsent byte belongs to a command in flight, and at
         * most ring_cap commands are in flight. */
        assert(c->out_len + WIRE_COMMAND_BYTES_MAX <= (size_t)c->ring_cap * WIRE_COMMAND_BYTES_MAX);
        c->out_len += wire_encode(c->out + c->out_len, t->o->target, t->o->sha, &ops[i]);
        c->sent_ns[c->ring_head] = when_ns;
        c->kind[c->ring_head] = ops[i].kind;
        if (c->ops)
            c->ops[c->ring_head] = ops[i];
        c->ring_head = (c->ring_head + 1) % c->ring_cap;
        c->inflight++;
        t->inflight++;
    }
    t->sent += n;
    if (t->measuring)
        t->sent_measured += n;
    return true;
}

/* Closed loop: top c's pipeline up and write it. */
static void net_refill(net_thread *t, net_conn *c)
{
    if (t->stopping || c->dead)
        return;
    uint64_t now = 0;
    bool any = false;
    while (c->inflight < t->o->pipeline) {
        if (!any)
            now = net_mono_ns();
        if (!net_issue(t, c, now)) {
            t->stopping = true; /* the budget or the prefill is used up */
            break;
        }
        any = true;
    }
    if (any)
        net_flush(t, c);
}

/* Open loop: issue every operation that is due, to connections with room,
 * then write each connection that got some once (one syscall per
 * connection per wake-up, not one per operation). */
static void net_issue_due(net_thread *t, uint64_t *due_ns, uint64_t interval_ns, uint64_t now)
{
    while (!t->stopping && *due_ns <= now) {
        net_conn *c = NULL;
        for (uint32_t i = 0; i < t->conn_count; i++) {
            net_conn *x = &t->conns[(t->rr + i) % t->conn_count];
            if (!x->dead && x->inflight < t->o->pipeline) {
                c = x;
                t->rr = (t->rr + i + 1) % t->conn_count;
                break;
            }
        }
        if (!c)
            break; /* every pipeline is full: the backlog waits, its clock runs */
        uint64_t before = t->sent;
        if (!net_issue(t, c, *due_ns)) {
            t->stopping = true;
            break;
        }
        *due_ns += interval_ns * (t->sent - before);
    }
    for (uint32_t i = 0; i < t->conn_count; i++)
        if (!t->conns[i].dead && t->conns[i].out_len > t->conns[i].out_off)
            net_flush(t, &t->conns[i]);
}

/* ---- receiving ---------------------------------------------------------- */

static void net_account(net_thread *t, net_conn *c, const wire_reply *r, uint64_t now)
{
    assert(c->inflight > 0);
    uint32_t tail = (c->ring_head + c->ring_cap - c->inflight) % c->ring_cap;
    uint64_t sent = c->sent_ns[tail];
    int kind = c->kind[tail];
    c->inflight--;
    t->inflight--;
    /* A refusal this command may meet is an answer; any other is an error
     * (a -NOTFOUND to a REDEEM means the ledger lost track of something). */
    bool answer = r->outcome == WIRE_OK ||
                  (r->outcome == WIRE_REFUSED && workload_expects(kind, r->refusal));
    if (c->ops)
        workload_done(&t->work, &c->ops[tail], r->outcome == WIRE_OK);
    if (!t->measuring)
        return;
    t->last_reply_ns = now;
    if (!answer) {
        t->errors++;
        if (!t->first_error[0])
            snprintf(t->first_error, sizeof(t->first_error), "%.8s: -%.80s",
                     workload_kind_name(kind), r->error);
        return;
    }
    if (r->outcome == WIRE_REFUSED)
        t->refused++;
    else
        t->ok++;
    hist_record(t->lat, now > sent ? now - sent : 0);
}

/* Scans every whole reply in c's input; false on a protocol error. */
static bool net_consume(net_thread *t, net_conn *c, uint64_t now)
{
    size_t pos = 0;
    while (pos < c->in_len) {
        size_t used;
        wire_reply r;
        int st = wire_scan(c->in + pos, c->in_len - pos, &used, &r);
        if (st == WIRE_MORE)
            break;
        if (st == WIRE_EPROTO || c->inflight == 0) {
            net_conn_fail(t, c, st == WIRE_EPROTO ? "reply is not RESP" : "unexpected reply");
            return false;
        }
        net_account(t, c, &r, now);
        pos += used;
    }
    memmove(c->in, c->in + pos, c->in_len - pos);
    c->in_len -= pos;
    return true;
}

static void net_read(net_thread *t, net_conn *c)
{
    while (!c->dead) {
        if (c->in_len == NET_INPUT_BYTES) {
            net_conn_fail(t, c, "one reply is larger than the input buffer");
            return;
        }
        ssize_t n = read(c->fd, c->in + c->in_len, NET_INPUT_BYTES - c->in_len);
        if (n > 0) {
            c->in_len += (size_t)n;
            if (!net_consume(t, c, net_mono_ns()))
                return;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            break;
        net_conn_fail(t, c, n == 0 ? "closed by the server" : strerror(errno));
        return;
    }
    if (t->o->rate <= 0.0)
        net_refill(t, c);
}

/* ---- progress ----------------------------------------------------------- */

static void net_publish(net_thread *t)
{
    pthread_mutex_lock(&t->pub_lock);
    memcpy(t->pub_lat, t->lat, sizeof(hist));
    t->pub_ops = t->ok + t->refused;
    pthread_mutex_unlock(&t->pub_lock);
}

/* A line a second (or every progress_s): the rate since the last line,
 * p99 so far, and with an operation budget (a fill) how far it is and
 * when it should end at the rate so far. */
static void net_progress(const net_options *o, uint64_t now, uint64_t *last_ops,
                         uint64_t *last_ns)
{
    net_shared *s = &net_run_state;
    hist_reset(s->scratch);
    uint64_t ops = 0;
    for (uint32_t i = 0; i < s->count; i++) {
        net_thread *t = &s->threads[i];
        pthread_mutex_lock(&t->pub_lock);
        hist_merge(s->scratch, t->pub_lat);
        ops += t->pub_ops;
        pthread_mutex_unlock(&t->pub_lock);
    }
    double dt = (double)(now - *last_ns) / 1e9;
    double rate = dt > 0 && ops >= *last_ops ? (double)(ops - *last_ops) / dt : 0.0;
    double run_s = (double)(now - s->start_ns) / 1e9;
    char eta[96] = "";
    if (o->ops_max > 0 && ops > 0 && ops <= o->ops_max) {
        double left_s = (double)(o->ops_max - ops) * run_s / (double)ops;
        snprintf(eta, sizeof(eta), " of %llu (%.1f %%), %.0f/s overall, ETA %02d:%02d:%02d",
                 (unsigned long long)o->ops_max,
                 100.0 * (double)ops / (double)o->ops_max, (double)ops / run_s,
                 (int)(left_s / 3600), (int)(left_s / 60) % 60, (int)left_s % 60);
    }
    fprintf(stderr, "[%7.1fs] %10.0f ops/s  p99 so far %8.1f us  ops %llu%s\n", run_s, rate,
            (double)hist_quantile(s->scratch, 0.99) / 1000.0, (unsigned long long)ops, eta);
    *last_ops = ops;
    *last_ns = now;
}

/* ---- the server's counters ---------------------------------------------- */

/* The ledger's record count from INFO ledger (tally), -1 elsewhere. */
static int64_t net_records(const net_options *o)
{
    const char *argv[] = {"INFO", "ledger"};
    char reply[4096], value[32];
    if (net_call(o->host, o->port, 2, argv, reply, sizeof(reply)) < 0 ||
        wire_info_field(reply, "records", value, sizeof(value)) != 0)
        return -1;
    return strtoll(value, NULL, 10);
}

/* The server process's counters; with_disk: also du of its directory
 * (a walk of every file: only at the end of a window). */
static void net_server_sample(const net_options *o, bool with_disk, proc_sample *out)
{
    if (proc_sample_get(o->server_pid, with_disk ? o->server_dir : NULL, out) != 0)
        *out = (proc_sample){.cpu_s = -1, .write_bytes = -1, .rss_anon_kib = -1,
                             .disk_bytes = -1, .records = -1};
    out->records = o->target == WIRE_TALLY ? net_records(o) : -1;
}

uint64_t net_unsent(hist *h, uint64_t due_ns, uint64_t interval_ns, uint64_t end_ns,
                    uint64_t left)
{
    assert(interval_ns > 0);
    uint64_t n = 0;
    for (uint64_t at = due_ns; at < end_ns && n < left; at += interval_ns, n++)
        hist_record(h, end_ns - at);
    return n;
}

/* ---- the loop ----------------------------------------------------------- */

static void net_begin_measuring(net_thread *t, uint64_t now)
{
    t->measuring = true;
    t->measure_start_ns = now;
    t->last_reply_ns = now;
    t->ok = t->refused = t->errors = 0;
    hist_reset(t->lat);
    if (t->index == 0 && t->o->server_pid > 0) {
        net_server_sample(t->o, false, &net_run_state.server_begin);
        net_run_state.server_begun = true;
    }
}

static void *net_thread_main(void *arg)
{
    net_thread *t = arg;
    const net_options *o = t->o;
    uint64_t start = net_run_state.start_ns;
    uint64_t warm_end = start + (uint64_t)(o->warmup_s * 1e9);
    uint64_t end = o->duration_s > 0 ? warm_end + (uint64_t)(o->duration_s * 1e9) : UINT64_MAX;
    uint64_t interval_ns = o->rate > 0 ? (uint64_t)(1e9 * o->threads / o->rate) : 0;
    uint64_t due_ns = start;
    uint64_t pub_ns = (uint64_t)(o->progress_s > 0 ? o->progress_s * 1e9 : 1e9);
    uint64_t next_pub = start + pub_ns;
    uint64_t last_ops = 0, last_ns = start;
    uint64_t stop_ns = 0;
    if (o->warmup_s <= 0)
        net_begin_measuring(t, start);
    if (o->rate <= 0)
        for (uint32_t i = 0; i < t->conn_count; i++)
            net_refill(t, &t->conns[i]);
    struct epoll_event evs[NET_EVENTS_MAX];
    for (;;) {
        uint64_t now = net_mono_ns();
        if (!t->measuring && now >= warm_end)
            net_begin_measuring(t, now);
        if (!t->stopping && (now >= end || t->conn_live == 0))
            t->stopping = true;
        if (t->stopping && stop_ns == 0) {
            stop_ns = now;
            if (interval_ns && t->measuring)
                t->dropped = net_unsent(t->lat, due_ns, interval_ns, now < end ? now : end,
                                        t->ops_budget ? t->ops_budget - t->sent : UINT64_MAX);
        }
        if (interval_ns)
            net_issue_due(t, &due_ns, interval_ns, now);
        if (now >= next_pub) {
            net_publish(t);
            if (t->index == 0 && o->progress)
                net_progress(o, now, &last_ops, &last_ns);
            next_pub += pub_ns;
        }
        if (t->stopping && (t->inflight == 0 || t->conn_live == 0))
            break;
        if (t->stopping && now - stop_ns > (uint64_t)(NET_DRAIN_S * 1e9)) {
            snprintf(t->first_error, sizeof(t->first_error),
                     "%llu replies still missing after %.0f s", (unsigned long long)t->inflight,
                     NET_DRAIN_S);
            t->errors += t->inflight;
            break;
        }
        uint64_t wake = next_pub;
        if (!t->stopping && end < wake)
            wake = end;
        if (!t->measuring && warm_end < wake)
            wake = warm_end;
        if (interval_ns && !t->stopping && due_ns < wake)
            wake = due_ns;
        uint64_t wait = wake > now ? wake - now : 0;
        struct timespec ts = {.tv_sec = (time_t)(wait / 1000000000ull),
                              .tv_nsec = (long)(wait % 1000000000ull)};
        int n = epoll_pwait2(t->epfd, evs, NET_EVENTS_MAX, &ts, NULL);
        if (n < 0 && errno != EINTR) {
            t->rc = -errno;
            break;
        }
        for (int i = 0; i < n; i++) {
            net_conn *c = evs[i].data.ptr;
            if (evs[i].events & (EPOLLERR | EPOLLHUP) && !(evs[i].events & EPOLLIN))
                net_conn_fail(t, c, "socket error");
            if (!c->dead && (evs[i].events & EPOLLOUT))
                net_flush(t, c);
            if (!c->dead && (evs[i].events & EPOLLIN))
                net_read(t, c);
        }
    }
    net_publish(t);
    return NULL;
}

static void net_thread_free(net_thread *t)
{
    for (uint32_t i = 0; i < t->conn_count; i++)
        net_conn_free(&t->conns[i]);
    free(t->conns);
    free(t->lat);
    free(t->pub_lat);
    if (t->epfd >= 0)
        close(t->epfd);
    pthread_mutex_destroy(&t->pub_lock);
}

static int net_thread_init(net_thread *t, const net_options *o, uint32_t index)
{
    memset(t, 0, sizeof(*t));
    t->o = o;
    t->index = index;
    t->epfd = -1;
    pthread_mutex_init(&t->pub_lock, NULL);
    t->conn_count = o->connections / o->threads + (index < o->connections % o->threads);
    t->conns = calloc(t->conn_count ? t->conn_count : 1, sizeof(net_conn));
    t->lat = malloc(sizeof(hist));
    t->pub_lat = malloc(sizeof(hist));
    if (!t->conns || !t->lat || !t->pub_lat)
        return -ENOMEM;
    for (uint32_t i = 0; i < t->conn_count; i++)
        t->conns[i].fd = -1;
    hist_reset(t->lat);
    hist_reset(t->pub_lat);
    if (o->ops_max)
        t->ops_budget = o->ops_max / o->threads + (index < o->ops_max % o->threads);
    int rc = workload_init(&t->work, &o->work, index);
    if (rc < 0)
        return rc;
    if (o->work.mix == WORKLOAD_PREFILL && o->threads > 1)
        return -EINVAL; /* a prefill walks the accounts once, in one stream */
    t->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (t->epfd < 0)
        return -errno;
    for (uint32_t i = 0; i < t->conn_count; i++) {
        rc = net_conn_open(t, &t->conns[i]);
        if (rc < 0)
            return rc;
        t->conn_live++;
    }
    return 0;
}

static int net_check(const net_options *o)
{
    if (o->connections == 0 || o->connections > NET_CONNECTIONS_MAX || o->pipeline == 0 ||
        o->pipeline > NET_PIPELINE_MAX || o->threads == 0 || o->threads > NET_THREADS_MAX ||
        o->threads > o->connections || o->rate < 0 || o->warmup_s < 0 || o->duration_s < 0 ||
        (o->duration_s <= 0 && o->ops_max == 0 && o->work.mix != WORKLOAD_PREFILL))
        return -EINVAL;
    return 0;
}

static void net_collect(const net_options *o, net_thread *threads, report_run *out)
{
    hist_reset(out->latency);
    uint64_t first = UINT64_MAX, last = 0;
    for (uint32_t i = 0; i < o->threads; i++) {
        net_thread *t = &threads[i];
        hist_merge(out->latency, t->lat);
        out->ok += t->ok;
        out->refused += t->refused;
        out->errors += t->errors;
        out->sent += t->sent_measured;
        out->dropped += t->dropped;
        if (!out->first_error[0] && t->first_error[0])
            snprintf(out->first_error, sizeof(out->first_error), "%s", t->first_error);
        if (t->measuring && t->measure_start_ns < first)
            first = t->measure_start_ns;
        if (t->measuring && t->last_reply_ns > last)
            last = t->last_reply_ns;
    }
    out->ops = out->ok + out->refused;
    out->elapsed_s = last > first ? (double)(last - first) / 1e9 : 0.0;
    out->connections = o->connections;
    out->pipeline = o->pipeline;
    out->threads = o->threads;
    out->rate_asked = o->rate;
    out->warmup_s = o->warmup_s;
    out->seed = o->work.seed;
    snprintf(out->workload, sizeof(out->workload), "%s", workload_mix_name(o->work.mix));
}

int net_run(const net_options *o, report_run *out)
{
    int rc = net_check(o);
    if (rc < 0)
        return rc;
    net_thread *threads = calloc(o->threads, sizeof(net_thread));
    hist *scratch = malloc(sizeof(hist));
    if (!threads || !scratch) {
        free(threads);
        free(scratch);
        return -ENOMEM;
    }
    uint32_t ready = 0;
    for (; ready < o->threads && rc == 0; ready++)
        rc = net_thread_init(&threads[ready], o, ready);
    if (rc == 0) {
        net_run_state = (net_shared){.threads = threads, .count = o->threads,
                                     .start_ns = net_mono_ns(), .scratch = scratch};
        uint32_t started = 1;
        for (; started < o->threads; started++)
            if (pthread_create(&threads[started].tid, NULL, net_thread_main, &threads[started]))
                break;
        net_thread_main(&threads[0]);
        for (uint32_t i = 1; i < started; i++)
            pthread_join(threads[i].tid, NULL);
        for (uint32_t i = 0; i < o->threads && rc == 0; i++)
            rc = threads[i].rc;
        if (started < o->threads && rc == 0)
            rc = -EAGAIN;
        net_collect(o, threads, out);
        if (net_run_state.server_begun) {
            out->server_before = net_run_state.server_begin;
            net_server_sample(o, true, &out->server_after);
            out->server_sampled = true;
            proc_figures f;
            proc_figures_get(&out->server_before, &out->server_after, out->ops, &f);
            out->server_cpu_s = f.cpu_s;
        }
    }
    for (uint32_t i = 0; i < ready; i++)
        net_thread_free(&threads[i]);
    free(threads);
    free(scratch);
    return rc;
}
