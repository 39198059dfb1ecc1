/*
 * server.c — tallyd's network loop (server.h).
 *
 * One thread, one epoll set: the listening socket, every client socket, a
 * signalfd (SIGTERM/SIGINT) and an eventfd that shard threads ring when
 * they complete requests.
 *
 * Reply order (DESIGN-NOTES §3): every parsed command takes a slot at the
 * tail of its connection's queue.  A command the server answers itself
 * (PING, HELLO, an error) fills its slot at once; an engine request fills
 * its slot when its shard calls done(), durable.  Only the completed
 * prefix of the queue is encoded into the output buffer, so replies leave
 * in request order even when pipelined commands go to different shards.
 *
 * Completions cross threads through a lock-free stack: done() pushes the
 * slot and rings the eventfd only when the stack was empty, so a batch of
 * thousands of completions costs one wakeup.  The loop reads the eventfd
 * first and then takes the whole stack, so no completion is left behind.
 *
 * Backpressure: a connection stops being read while it has
 * LIMIT_CLIENT_PIPELINE_MAX reply units unanswered (a unit is an entry's
 * worth of reply: HISTORY LIMIT n weighs n) or LIMIT_CLIENT_OUTPUT_BYTES_MAX
 * bytes unsent; while LIMIT_SERVER_INFLIGHT_MAX units are unanswered only
 * connections with nothing unanswered are read, one request each, within
 * LIMIT_SERVER_INFLIGHT_RESERVE units more.  Completed replies are
 * encoded only while the client's unsent bytes are under its limit; the
 * rest wait in their slots.  Memory is bounded by these, whatever clients
 * send or fail to read.
 *
 * A connection whose client vanished while its requests are in the engine
 * is closed at once but freed only when its last slot completes; freeing
 * happens at the end of a loop turn (the graveyard), so no function ever
 * holds a pointer to a freed connection.  A client that half-closes (EOF,
 * as `nc` does at the end of its input) gets the replies to everything it
 * sent before the connection is closed.
 *
 * Metrics (metrics.h): every figure the server keeps is a plain integer
 * in s->m, counted on this thread — a request's command, result and
 * latency when its reply is ready.  GET /metrics (--metrics) is served
 * from this same loop, not from a thread of its own: the counters are
 * then read by the thread that writes them, so counting needs no atomics
 * and a scrape sees one consistent set (a request's counter and its
 * histogram agree).  A scrape costs the loop the text's few microseconds
 * per shard plus a stat of each shard's state files; HTTP connections are
 * few (LIMIT_HTTP_CONNECTIONS_MAX), their heads bounded and timed like
 * RESP commands, so a bad scraper cannot hold the loop.
 */
#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "command.h"
#include "http.h"
#include "metrics.h"
#include "repl.h"
#include "resp.h"
#include "server.h"
#include "sock.h"

/* ---- constants ---------------------------------------------------------- */

#define SERVER_EVENTS_MAX 256
#define SERVER_INPUT_BYTES_MIN 16384
#define SERVER_SLOT_CHUNK 256
#define SERVER_TICK_MS 250
/* After a stop: how long clients that do not read get to take their
 * replies before their connections are closed anyway. */
#define SERVER_DRAIN_MS 5000

static_assert(SERVER_INPUT_BYTES_MIN <= LIMIT_CLIENT_INPUT_BYTES_MAX, "input buffer bounds");

/* epoll data for the non-client descriptors (client data is the conn). */
static char server_tag_listen, server_tag_done, server_tag_signal, server_tag_stop,
    server_tag_http;

/* ---- types -------------------------------------------------------------- */

typedef struct server_conn server_conn;

/* A reply slot.  req is the first member: done() gets &slot->req. */
typedef struct server_slot {
    tally_request req;
    server_conn *conn;
    struct server_slot *next;      /* connection queue / free list */
    struct server_slot *done_next; /* completion stack */
    resp_out pre;                  /* a reply made at dispatch time */
    int proto;                     /* the session's protocol at dispatch */
    uint32_t units;                /* reply units it holds (backpressure) */
    uint32_t deferred;             /* of them, not yet counted server-wide (FOLLOW BLOCK) */
    uint32_t command;              /* its row of the command table (metrics) */
    uint64_t start_us;             /* dispatched at (monotonic), for its latency */
    bool engine;                   /* req went to the engine */
    bool ready;
} server_slot;

struct server_conn {
    server *srv;
    int fd; /* -1 once closed */
    uint64_t id;
    command_session session;
    resp_parser parser;
    char *in;
    size_t in_len, in_off, in_cap;
    resp_out out;
    size_t out_sent;
    server_slot *head, *tail;
    uint32_t pending;      /* slots in the queue */
    uint32_t pending_units; /* their reply units */
    uint64_t connected_ms;
    uint64_t partial_ms;   /* when the incomplete command began; 0: none */
    uint64_t sent_ms;      /* last time its replies moved (or had room) */
    bool reading;          /* EPOLLIN registered */
    bool writing;          /* EPOLLOUT registered */
    bool closing;          /* close once the output is flushed */
    bool eof;              /* the client sent EOF: read no more */
    bool stalled;          /* waiting for the global in-flight limit */
    bool buried;           /* in the graveyard, freed at the end of the turn */
    server_conn *prev_all, *next_all;
    server_conn *next_dead;
    server_conn *next_done; /* on the list of connections with completions */
    bool done_listed;
};

/* An HTTP connection to the metrics endpoint: one request at a time. */
typedef struct server_http {
    int fd;                  /* -1: this slot is free */
    char in[LIMIT_HTTP_HEAD_BYTES_MAX];
    size_t in_len;
    char *out;               /* the response being sent (malloc'd), or NULL */
    size_t out_len, out_sent;
    uint64_t since_ms;       /* connected, or the last response sent */
    uint64_t sending_ms;     /* the response began to be sent */
    bool close_after;        /* close once the response is sent */
    bool writing;            /* EPOLLOUT registered instead of EPOLLIN */
} server_http;

struct server {
    server_options opts;
    command_env env;
    command_server_info info;
    metrics m;
    int listen_fd, epoll_fd, done_fd, signal_fd, stop_fd, http_fd;
    server_http http[LIMIT_HTTP_CONNECTIONS_MAX];
    _Atomic(server_slot *) done_head;
    server_slot *free_slots;
    server_slot **chunks; /* every slot allocation, freed at close */
    uint32_t chunks_count;
    uint64_t slots_total;
    uint64_t inflight;       /* slots taken, over all connections */
    uint64_t inflight_units; /* their reply units */
    uint64_t next_id;
    server_conn *conns; /* every open or draining connection */
    server_conn *graveyard;
    uint32_t freed_since_trim; /* connections freed since the heap was trimmed */
    uint32_t stalled;   /* connections waiting for in-flight room */
    bool stopping;
    uint64_t stop_ms;
    resp_command cmd;   /* one parse at a time: the loop is one thread */
};

/* ---- small helpers ------------------------------------------------------ */

static uint64_t server_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint64_t server_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void server_say(server *s, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void server_say(server *s, int level, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (s->opts.log)
        s->opts.log(s->opts.log_ctx, level, msg);
    else
        fprintf(stderr, "tallyd: %s\n", msg);
}

/* Sends buf[*sent, len) until it is all sent or the socket is full,
 * moving *sent: 0, or -1 if the connection failed (the caller closes it). */
static int server_send(int fd, const char *buf, size_t len, size_t *sent)
{
    while (*sent < len) {
        ssize_t n = send(fd, buf + *sent, len - *sent, MSG_NOSIGNAL);
        if (n > 0) {
            *sent += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        return -1;
    }
    return 0;
}

static int server_epoll(server *s, int op, int fd, uint32_t events, void *ptr)
{
    struct epoll_event ev = {.events = events, .data.ptr = ptr};
    return epoll_ctl(s->epoll_fd, op, fd, &ev) < 0 ? -errno : 0;
}

/* ---- slots -------------------------------------------------------------- */

static server_slot *server_slot_get(server *s, server_conn *c)
{
    if (!s->free_slots) {
        server_slot **chunks = realloc(s->chunks, (s->chunks_count + 1) * sizeof(*chunks));
        if (!chunks)
            return NULL;
        s->chunks = chunks;
        server_slot *chunk = calloc(SERVER_SLOT_CHUNK, sizeof(*chunk));
        if (!chunk)
            return NULL;
        s->chunks[s->chunks_count++] = chunk;
        for (int i = 0; i < SERVER_SLOT_CHUNK; i++) {
            chunk[i].next = s->free_slots;
            s->free_slots = &chunk[i];
        }
        s->slots_total += SERVER_SLOT_CHUNK;
    }
    server_slot *sl = s->free_slots;
    s->free_slots = sl->next;
    tally_request_reset(&sl->req); /* its result was freed when it was answered */
    sl->conn = c;
    sl->next = NULL;
    sl->done_next = NULL;
    sl->pre.len = 0;
    sl->pre.oom = false;
    sl->proto = c->session.proto;
    sl->engine = false;
    sl->ready = false;
    if (c->tail)
        c->tail->next = sl;
    else
        c->head = sl;
    c->tail = sl;
    sl->units = 1;
    sl->deferred = 0;
    c->pending++;
    c->pending_units++;
    s->inflight++;
    s->inflight_units++;
    return sl;
}

/* Back to the free list (the pre buffer's memory is kept for reuse). */
static void server_slot_put(server *s, server_slot *sl)
{
    if (sl->conn) {
        sl->conn->pending_units -= sl->units;
    }
    s->inflight_units -= sl->units - sl->deferred;
    tally_request_release(&sl->req);
    if (sl->pre.cap > 4096) {
        resp_out_free(&sl->pre);
        sl->pre = (resp_out){0};
    }
    sl->next = s->free_slots;
    s->free_slots = sl;
    s->inflight--;
}

/* Called on a shard thread when the request is durable. */
static void server_done(tally_request *req)
{
    server_slot *sl = (server_slot *)req;
    server *s = sl->conn->srv;
    server_slot *old = atomic_load(&s->done_head);
    do
        sl->done_next = old;
    while (!atomic_compare_exchange_weak(&s->done_head, &old, sl));
    if (old == NULL) {
        uint64_t one = 1;
        ssize_t w = write(s->done_fd, &one, sizeof(one));
        (void)w; /* a full eventfd counter still wakes the loop */
    }
}

/* ---- connections: lifecycle --------------------------------------------- */

static void server_conn_free(server *s, server_conn *c)
{
    for (server_slot *sl = c->head; sl; sl = sl->next)
        sl->conn = NULL; /* only at close, after the engine stopped */
    if (c->prev_all)
        c->prev_all->next_all = c->next_all;
    else
        s->conns = c->next_all;
    if (c->next_all)
        c->next_all->prev_all = c->prev_all;
    if (c->stalled)
        s->stalled--;
    command_session_free(&c->session);
    free(c->in);
    resp_out_free(&c->out);
    free(c);
}

/* Puts a closed connection without slots in the graveyard. */
static void server_conn_bury(server *s, server_conn *c)
{
    if (c->buried || c->fd >= 0 || c->pending > 0)
        return;
    c->buried = true;
    c->next_dead = s->graveyard;
    s->graveyard = c;
}

static void server_graveyard(server *s)
{
    while (s->graveyard) {
        server_conn *c = s->graveyard;
        s->graveyard = c->next_dead;
        server_conn_free(s, c);
        s->freed_since_trim++;
    }
}

/* Answers the connection's waiting FOLLOWs now, [cursor, no entries]:
 * its client left or stopped sending, or the server stops (a FOLLOW
 * BLOCK 0 would otherwise hold the connection for good). */
static void server_conn_wake(server *s, server_conn *c)
{
    if (!s->opts.t)
        return; /* server_close: the engine is gone */
    for (server_slot *sl = c->head; sl; sl = sl->next)
        if (sl->engine && !sl->ready && sl->req.op == TALLY_OP_FOLLOW)
            tally_wake(s->opts.t, &sl->req);
}

/* Closes the socket now; the connection is freed when no slot of it is
 * still in the engine. */
static void server_conn_close(server *s, server_conn *c)
{
    server_conn_wake(s, c);
    if (c->fd >= 0) {
        epoll_ctl(s->epoll_fd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
        assert(s->m.clients > 0);
        s->m.clients--;
    }
    /* Slots already answered (or never sent to the engine) go now; those
     * in the engine are dropped as they complete. */
    server_slot **pp = &c->head;
    c->tail = NULL;
    while (*pp) {
        server_slot *sl = *pp;
        if (sl->ready || !sl->engine) {
            *pp = sl->next;
            c->pending--;
            server_slot_put(s, sl);
        } else {
            c->tail = sl;
            pp = &sl->next;
        }
    }
    server_conn_bury(s, c);
}

static void server_accept(server *s)
{
    for (;;) {
        int fd = accept4(s->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
                errno != ECONNABORTED)
                server_say(s, 1, "accept: %s", strerror(errno));
            return;
        }
        s->m.connections_accepted++;
        if (s->m.clients >= s->m.max_clients || s->stopping) {
            static const char full[] = "-ERR max number of clients reached\r\n";
            ssize_t w = send(fd, full, sizeof(full) - 1, MSG_NOSIGNAL);
            (void)w;
            close(fd);
            s->m.connections_rejected++;
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        server_conn *c = calloc(1, sizeof(*c));
        char *in = malloc(SERVER_INPUT_BYTES_MIN);
        if (!c || !in || server_epoll(s, EPOLL_CTL_ADD, fd, EPOLLIN, c) < 0) {
            free(c);
            free(in);
            close(fd);
            s->m.connections_rejected++;
            continue;
        }
        c->srv = s;
        c->fd = fd;
        c->in = in;
        c->in_cap = SERVER_INPUT_BYTES_MIN;
        c->id = ++s->next_id;
        c->session.id = c->id;
        c->session.proto = 2;
        c->connected_ms = server_now_ms();
        c->sent_ms = c->connected_ms;
        c->reading = true;
        c->next_all = s->conns;
        if (s->conns)
            s->conns->prev_all = c;
        s->conns = c;
        s->m.clients++;
    }
}

/* ---- connections: output ------------------------------------------------- */

static void server_conn_events(server *s, server_conn *c, bool reading, bool writing)
{
    if (c->fd < 0 || (c->reading == reading && c->writing == writing))
        return;
    uint32_t ev = (reading ? EPOLLIN : 0) | (writing ? EPOLLOUT : 0);
    if (server_epoll(s, EPOLL_CTL_MOD, c->fd, ev, c) == 0) {
        c->reading = reading;
        c->writing = writing;
    }
}

/* Encodes the replies of the completed prefix of the queue, while the
 * client's unsent bytes are under its limit (the rest wait in their
 * slots: encoding them would only move the memory). */
static void server_conn_collect(server *s, server_conn *c)
{
    while (c->head && c->head->ready &&
           c->out.len - c->out_sent < LIMIT_CLIENT_OUTPUT_BYTES_MAX) {
        server_slot *sl = c->head;
        c->head = sl->next;
        if (!c->head)
            c->tail = NULL;
        c->pending--;
        if (sl->engine)
            command_reply(sl->proto, &sl->req, &c->out);
        else
            resp_raw(&c->out, sl->pre.data, sl->pre.len);
        server_slot_put(s, sl);
    }
}

/* Writes what is buffered; closes on error or when a closing connection
 * has sent everything.  Returns false if the connection was closed. */
static bool server_conn_write(server *s, server_conn *c)
{
    if (c->out.oom) {
        server_say(s, 1, "client %llu: out of memory for its replies; closing",
                   (unsigned long long)c->id);
        server_conn_close(s, c);
        return false;
    }
    size_t sent = c->out_sent;
    if (server_send(c->fd, c->out.data, c->out.len, &c->out_sent) < 0) {
        server_conn_close(s, c);
        return false;
    }
    if (c->out_sent != sent)
        c->sent_ms = server_now_ms();
    if (c->out_sent == c->out.len) {
        c->out.len = 0;
        c->out_sent = 0;
    } else if (c->out_sent > c->out.len / 2) {
        resp_out_consume(&c->out, c->out_sent);
        c->out_sent = 0;
    }
    bool done_reading = c->closing || (c->eof && c->in_off == c->in_len);
    if (done_reading && c->out.len == 0 && c->head == NULL) {
        server_conn_close(s, c);
        return false;
    }
    return true;
}

/* ---- connections: input --------------------------------------------------- */

/* Past the server-wide limit only a connection with nothing unanswered
 * goes on, one request at a time, within the reserve: 16 clients that never
 * read can hold the whole limit (4,096 units each), and the others must
 * not wait for the stuck ones to be disconnected. */
static bool server_conn_blocked(const server *s, const server_conn *c)
{
    if (c->pending_units >= LIMIT_CLIENT_PIPELINE_MAX ||
        c->out.len - c->out_sent >= LIMIT_CLIENT_OUTPUT_BYTES_MAX)
        return true;
    if (s->inflight_units < LIMIT_SERVER_INFLIGHT_MAX)
        return false;
    return c->pending > 0 ||
           s->inflight_units >= LIMIT_SERVER_INFLIGHT_MAX + LIMIT_SERVER_INFLIGHT_RESERVE;
}

/* Hands a request to the engine: the one engine, or in cluster mode the
 * group command_dispatch routed it to (every group for VERIFY and
 * SNAPSHOT without a merchant). */
static void server_submit(server *s, server_conn *c, tally_request *req)
{
    if (!s->env.cluster)
        tally_submit(s->opts.t, req);
    else if (c->session.route_group == COMMAND_ALL_GROUPS)
        repl_submit_all(s->env.cluster, req);
    else
        repl_submit(s->env.cluster, c->session.route_group, req);
}

/* Dispatches one parsed command into a new slot; start_us is when the
 * loop began dispatching it. */
static void server_conn_command(server *s, server_conn *c, const char *buf, uint64_t start_us)
{
    server_slot *sl = server_slot_get(s, c);
    if (!sl) {
        static const char oom[] = "-ERR out of memory\r\n";
        resp_raw(&c->out, oom, sizeof(oom) - 1);
        c->closing = true;
        return;
    }
    s->m.commands_total++;
    int rc = command_dispatch(&s->env, &c->session, &s->cmd, buf, &sl->req, &sl->pre);
    sl->command = c->session.command;
    sl->start_us = start_us;
    if (rc == COMMAND_SUBMIT) {
        /* A HISTORY reply can hold LIMIT entries: it weighs that much.  A
         * FOLLOW that may wait (BLOCK) holds no entries while it waits:
         * server-wide it weighs one unit until it is answered, so that
         * waiting followers never stop the server reading the others. */
        uint32_t w = command_units(&sl->req);
        sl->deferred = sl->req.op == TALLY_OP_FOLLOW && (sl->req.flags & TALLY_REQ_BLOCK)
                           ? w - 1
                           : 0;
        c->pending_units += w - 1;
        s->inflight_units += w - 1 - sl->deferred;
        sl->units = w;
        sl->engine = true;
        sl->req.done = server_done;
        sl->req.user = sl;
        server_submit(s, c, &sl->req);
        return;
    }
    sl->ready = true;
    uint64_t now_us = server_now_us();
    metrics_request(&s->m, sl->command, metrics_result_of_reply(sl->pre.data, sl->pre.len),
                    now_us > start_us ? now_us - start_us : 0);
    if (c->session.quit)
        c->closing = true;
}

/* Parses and dispatches buffered commands while the connection may. */
static void server_conn_parse(server *s, server_conn *c)
{
    uint64_t start_us = 0; /* one clock read for the commands of one read */
    while (!c->closing && c->in_off < c->in_len && !server_conn_blocked(s, c)) {
        size_t used = 0;
        const char *buf = c->in + c->in_off;
        int rc = resp_parse(&c->parser, buf, c->in_len - c->in_off, &s->cmd, &used);
        if (rc == RESP_MORE && c->eof) {
            /* The client half-closed mid-command: it can never complete. */
            resp_parser_reset(&c->parser);
            c->in_off = c->in_len;
            break;
        }
        if (rc == RESP_MORE) {
            if (c->partial_ms == 0)
                c->partial_ms = server_now_ms();
            break;
        }
        if (rc == RESP_EPROTO) {
            s->m.protocol_errors++;
            server_slot *sl = server_slot_get(s, c);
            if (sl) {
                resp_error(&sl->pre, "ERR", c->parser.error);
                sl->ready = true;
            }
            c->closing = true;
            c->in_off = c->in_len = 0;
            break;
        }
        c->partial_ms = 0;
        if (rc == RESP_COMMAND) {
            if (start_us == 0)
                start_us = server_now_us();
            server_conn_command(s, c, buf, start_us);
        }
        c->in_off += used;
    }
    if (c->in_off == c->in_len) {
        c->in_off = c->in_len = 0;
        c->partial_ms = 0;
    }
    if (server_conn_blocked(s, c) && s->inflight_units >= LIMIT_SERVER_INFLIGHT_MAX &&
        !c->stalled) {
        c->stalled = true;
        s->stalled++;
    }
}

/* Makes room for reading: moves the unparsed bytes to the front, grows
 * the buffer up to its limit.  Returns the free bytes. */
static size_t server_conn_room(server_conn *c)
{
    if (c->in_off > 0) {
        memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
        c->in_len -= c->in_off;
        c->in_off = 0;
    }
    if (c->in_len == c->in_cap && c->in_cap < LIMIT_CLIENT_INPUT_BYTES_MAX) {
        size_t cap = c->in_cap * 2 < LIMIT_CLIENT_INPUT_BYTES_MAX ? c->in_cap * 2
                                                                  : LIMIT_CLIENT_INPUT_BYTES_MAX;
        char *n = realloc(c->in, cap);
        if (n) {
            c->in = n;
            c->in_cap = cap;
        }
    }
    return c->in_cap - c->in_len;
}

/* Brings a connection up to date: encodes completed replies, writes,
 * parses buffered input if it may, and (un)registers interest. */
static void server_conn_pump(server *s, server_conn *c)
{
    if (c->fd < 0)
        return;
    server_conn_collect(s, c);
    if (!server_conn_write(s, c))
        return;
    if (!s->stopping) {
        server_conn_parse(s, c);
        server_conn_collect(s, c);
        if (!server_conn_write(s, c))
            return;
    }
    bool may_read = !s->stopping && !c->closing && !c->eof && !server_conn_blocked(s, c);
    server_conn_events(s, c, may_read, c->out.len > c->out_sent);
}

static void server_conn_read(server *s, server_conn *c)
{
    size_t room = server_conn_room(c);
    if (room == 0) {
        server_conn_pump(s, c);
        return;
    }
    ssize_t n = recv(c->fd, c->in + c->in_len, room, 0);
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        server_conn_close(s, c);
        return;
    }
    if (n == 0) {
        /* Half-close: answer what was sent, then close.  A partial
         * command at EOF can never complete: drop it.  A waiting FOLLOW
         * answers now. */
        c->eof = true;
        server_conn_wake(s, c);
    }
    if (n > 0)
        c->in_len += (size_t)n;
    server_conn_pump(s, c);
}

/* ---- completions -------------------------------------------------------- */

static void server_completions(server *s)
{
    uint64_t v;
    ssize_t r = read(s->done_fd, &v, sizeof(v));
    (void)r;
    server_slot *sl = atomic_exchange(&s->done_head, NULL);
    /* First mark every completion and list their connections, touching no
     * slot after that: pumping a connection answers slots, frees them and
     * may reuse them for new commands, so the completion list must not be
     * walked once pumping began. */
    server_conn *todo = NULL;
    uint64_t now_us = sl ? server_now_us() : 0;
    for (server_slot *p = sl; p; p = p->done_next) {
        p->ready = true;
        s->inflight_units += p->deferred;
        p->deferred = 0;
        metrics_request(&s->m, p->command, metrics_result_of_status(p->req.res.status),
                        now_us > p->start_us ? now_us - p->start_us : 0);
        server_conn *c = p->conn;
        if (!c->done_listed) {
            c->done_listed = true;
            c->next_done = todo;
            todo = c;
        }
    }
    while (todo) {
        server_conn *c = todo;
        todo = c->next_done;
        c->done_listed = false;
        if (c->fd >= 0) {
            server_conn_pump(s, c); /* answers the completed prefix */
            continue;
        }
        /* The client is gone: drop its answered slots. */
        server_slot **pp = &c->head;
        c->tail = NULL;
        while (*pp) {
            if ((*pp)->ready) {
                server_slot *d = *pp;
                *pp = d->next;
                c->pending--;
                server_slot_put(s, d);
            } else {
                c->tail = *pp;
                pp = &(*pp)->next;
            }
        }
        server_conn_bury(s, c);
    }
}

/* Room again under the global limit (requests answered, or connections
 * closed): the connections that waited for it go on. */
static void server_resume_stalled(server *s)
{
    if (!s->stalled || s->inflight_units >= LIMIT_SERVER_INFLIGHT_MAX / 2)
        return;
    server_conn *next;
    for (server_conn *c = s->conns; c && s->stalled; c = next) {
        next = c->next_all;
        if (!c->stalled)
            continue;
        c->stalled = false;
        s->stalled--;
        server_conn_pump(s, c);
    }
}

/* ---- /metrics over HTTP --------------------------------------------------- */

static void server_http_close(server *s, server_http *h)
{
    if (h->fd < 0)
        return;
    epoll_ctl(s->epoll_fd, EPOLL_CTL_DEL, h->fd, NULL);
    close(h->fd);
    h->fd = -1;
    free(h->out);
    h->out = NULL;
    h->in_len = h->out_len = h->out_sent = 0;
}

/* Queues one response (head, then body unless it is a HEAD request's). */
static void server_http_respond(server *s, server_http *h, int status, const char *type,
                                const char *body, size_t body_len, bool send_body,
                                const char *extra)
{
    char head[512];
    size_t head_len = http_head(head, sizeof(head), status, type, body_len, !h->close_after,
                                extra);
    assert(head_len > 0);
    size_t len = head_len + (send_body ? body_len : 0);
    h->out = malloc(len);
    if (!h->out) {
        server_http_close(s, h);
        return;
    }
    memcpy(h->out, head, head_len);
    if (send_body && body_len)
        memcpy(h->out + head_len, body, body_len);
    h->out_len = len;
    h->out_sent = 0;
    h->sending_ms = server_now_ms();
}

static void server_http_error(server *s, server_http *h, int status, const char *extra)
{
    char body[96];
    int n = snprintf(body, sizeof(body), "%d %s\n", status, http_reason(status));
    server_http_respond(s, h, status, "text/plain; charset=utf-8", body, (size_t)n, true, extra);
}

/* With an auth file, a scrape shows server internals: admins only, as
 * INFO shows them.  0 if allowed, else the status to answer. */
static int server_http_auth(const server *s, const http_request *r)
{
    if (!s->env.auth)
        return 0;
    const config_token *t = r->bearer ? config_auth_find(s->env.auth, r->bearer, r->bearer_len)
                                      : NULL;
    if (!t)
        return 401;
    return t->admin ? 0 : 403;
}

/* Cluster mode's exposition: a row per shard group this node serves. */
static void server_cluster_metrics(server *s, metrics_text *text)
{
    tally_shard_stats *st = calloc(LIMIT_CLUSTER_GROUPS_MAX, sizeof(*st));
    uint32_t groups[LIMIT_CLUSTER_GROUPS_MAX], n = 0;
    for (uint32_t g = 0; st && g < LIMIT_CLUSTER_GROUPS_MAX; g++)
        if (repl_group_stats(s->env.cluster, g, &st[n]) == 0)
            groups[n++] = g;
    if (st)
        metrics_prometheus_rows(&s->m, st, groups, n, text);
    else
        text->oom = true;
    free(st);
}

/* Answers one parsed request. */
static void server_http_answer(server *s, server_http *h, const http_request *r)
{
    bool get = http_method_is(r, "GET"), head = http_method_is(r, "HEAD");
    h->close_after = !r->keep_alive || r->has_body || s->stopping;
    if (r->path_len != 8 || memcmp(r->path, "/metrics", 8) != 0) {
        server_http_error(s, h, 404, "");
        return;
    }
    if (!get && !head) {
        server_http_error(s, h, 405, "Allow: GET, HEAD\r\n");
        return;
    }
    int denied = server_http_auth(s, r);
    if (denied) {
        server_http_error(s, h, denied,
                          denied == 401 ? "WWW-Authenticate: Bearer realm=\"tally\"\r\n" : "");
        return;
    }
    s->m.requests_inflight = s->inflight;
    metrics_text text = {0};
    if (s->env.cluster)
        server_cluster_metrics(s, &text);
    else
        metrics_prometheus(&s->m, s->opts.t, &text);
    if (text.oom) {
        h->close_after = true;
        server_http_error(s, h, 503, "");
    } else {
        server_http_respond(s, h, 200, METRICS_CONTENT_TYPE, text.buf, text.len, get, "");
    }
    metrics_text_free(&text);
}

/* Parses what the connection sent and answers a whole request, if one is
 * there and no response is still being sent. */
static void server_http_parse(server *s, server_http *h)
{
    if (h->fd < 0 || h->out || h->in_len == 0)
        return;
    http_request r;
    int rc = http_parse(h->in, h->in_len, &r);
    if (rc == HTTP_MORE)
        return;
    if (rc == HTTP_BAD) {
        h->close_after = true;
        server_http_error(s, h, r.status, "");
        h->in_len = 0;
        return;
    }
    server_http_answer(s, h, &r);
    if (h->fd < 0)
        return;
    memmove(h->in, h->in + r.head_bytes, h->in_len - r.head_bytes);
    h->in_len -= r.head_bytes;
}

/* Sends what it can; then reads again, or closes after a last response. */
static void server_http_write(server *s, server_http *h)
{
    if (h->out && server_send(h->fd, h->out, h->out_len, &h->out_sent) < 0) {
        server_http_close(s, h);
        return;
    }
    bool pending = h->out && h->out_sent < h->out_len;
    if (!pending && h->out) {
        free(h->out);
        h->out = NULL;
        if (h->close_after) {
            server_http_close(s, h);
            return;
        }
        h->since_ms = server_now_ms();
    }
    if (pending != h->writing &&
        server_epoll(s, EPOLL_CTL_MOD, h->fd, pending ? EPOLLOUT : EPOLLIN, h) == 0)
        h->writing = pending;
}

static void server_http_read(server *s, server_http *h)
{
    /* A full buffer was parsed (a request taken, or 431 answered) before
     * this connection was read again. */
    assert(h->in_len < sizeof(h->in));
    ssize_t n = recv(h->fd, h->in + h->in_len, sizeof(h->in) - h->in_len, 0);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        server_http_close(s, h); /* gone: a half-sent request is never answered */
        return;
    }
    if (n > 0)
        h->in_len += (size_t)n;
    server_http_parse(s, h);
}

static void server_http_event(server *s, server_http *h, uint32_t events)
{
    if (h->fd < 0)
        return;
    if (events & EPOLLERR) {
        server_http_close(s, h);
        return;
    }
    if (events & (EPOLLIN | EPOLLHUP)) {
        if (h->writing) {
            server_http_close(s, h); /* a hang-up while a response waits */
            return;
        }
        server_http_read(s, h);
    }
    /* A response made just now, or one waiting for room: send it, then
     * answer what was pipelined behind its request. */
    while (h->fd >= 0 && h->out) {
        server_http_write(s, h);
        if (h->fd < 0 || h->out)
            break;
        server_http_parse(s, h);
    }
}

static void server_http_accept(server *s)
{
    for (;;) {
        int fd = accept4(s->http_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        server_http *h = NULL;
        for (int i = 0; i < LIMIT_HTTP_CONNECTIONS_MAX && !h; i++)
            if (s->http[i].fd < 0)
                h = &s->http[i];
        if (!h || s->stopping || server_epoll(s, EPOLL_CTL_ADD, fd, EPOLLIN, h) < 0) {
            static const char busy[] = "HTTP/1.1 503 Service Unavailable\r\n"
                                       "Content-Length: 0\r\nConnection: close\r\n\r\n";
            ssize_t w = send(fd, busy, sizeof(busy) - 1, MSG_NOSIGNAL);
            (void)w;
            close(fd);
            continue;
        }
        h->fd = fd;
        h->in_len = 0;
        h->writing = false;
        h->close_after = false;
        h->since_ms = server_now_ms();
    }
}

/* A request must arrive whole within LIMIT_HTTP_RECV_MS of the connection
 * or of the previous response (an idle keep-alive connection goes then
 * too), and a response must be taken within LIMIT_HTTP_SEND_MS. */
static void server_http_tick(server *s, uint64_t now)
{
    for (int i = 0; i < LIMIT_HTTP_CONNECTIONS_MAX; i++) {
        server_http *h = &s->http[i];
        if (h->fd < 0)
            continue;
        bool late = h->out ? now - h->sending_ms > LIMIT_HTTP_SEND_MS
                           : (now - h->since_ms > LIMIT_HTTP_RECV_MS || s->stopping);
        if (late)
            server_http_close(s, h);
    }
}

/* ---- timers --------------------------------------------------------------- */

/* After many connections came and went, give their freed buffers back to
 * the system: glibc keeps a freed heap otherwise, and a server that saw a
 * burst of clients would hold that memory for good. */
static void server_trim(server *s)
{
    if (s->freed_since_trim < 1000)
        return;
    s->freed_since_trim = 0;
    malloc_trim(0);
}

/* Slow clients: a command must arrive whole within LIMIT_COMMAND_RECV_MS
 * (a byte a second does not keep a connection alive), and a client of an
 * authenticated server must authenticate within LIMIT_AUTH_MS. */
static void server_tick(server *s)
{
    uint64_t now = server_now_ms();
    server_http_tick(s, now);
    server_conn *next;
    for (server_conn *c = s->conns; c; c = next) {
        next = c->next_all;
        if (c->fd < 0)
            continue;
        const char *why = NULL;
        /* Replies stuck at the output limit: the client does not read. */
        bool stuck = c->out.len - c->out_sent >= LIMIT_CLIENT_OUTPUT_BYTES_MAX;
        bool pressed = s->inflight_units >= LIMIT_SERVER_INFLIGHT_MAX / 2;
        if (!stuck)
            c->sent_ms = now;
        if (stuck && now - c->sent_ms > (pressed ? LIMIT_CLIENT_STUCK_PRESSED_MS
                                                 : LIMIT_CLIENT_STUCK_MS)) {
            server_say(s, 1, "client %llu does not read its replies (%zu bytes waiting): closed",
                       (unsigned long long)c->id, c->out.len - c->out_sent);
            why = "";
        } else if (c->partial_ms && now - c->partial_ms > LIMIT_COMMAND_RECV_MS)
            why = "-ERR Protocol error: command not received in time\r\n";
        else if (s->env.auth && !c->session.token && now - c->connected_ms > LIMIT_AUTH_MS)
            why = "-NOAUTH authentication timeout\r\n";
        else if (s->stopping && now - s->stop_ms > SERVER_DRAIN_MS)
            why = "";
        if (!why)
            continue;
        if (why[0]) {
            ssize_t w = send(c->fd, why, strlen(why), MSG_NOSIGNAL);
            (void)w;
        }
        server_conn_close(s, c);
    }
}

/* ---- stop ------------------------------------------------------------------ */

static void server_begin_stop(server *s)
{
    if (s->stopping)
        return;
    s->stopping = true;
    s->stop_ms = server_now_ms();
    server_say(s, 0, "stopping: no new connections or commands; answering %llu in flight",
               (unsigned long long)s->inflight);
    int *listeners[] = {&s->listen_fd, &s->http_fd};
    for (size_t i = 0; i < sizeof(listeners) / sizeof(listeners[0]); i++) {
        if (*listeners[i] < 0)
            continue;
        epoll_ctl(s->epoll_fd, EPOLL_CTL_DEL, *listeners[i], NULL);
        close(*listeners[i]);
        *listeners[i] = -1;
    }
    for (server_conn *c = s->conns; c; c = c->next_all) {
        server_conn_wake(s, c);
        server_conn_events(s, c, false, c->out.len > c->out_sent);
    }
}

/* Done when nothing is in the engine and every reply is written. */
static bool server_drained(server *s)
{
    if (s->inflight > 0)
        return false;
    for (server_conn *c = s->conns; c; c = c->next_all)
        if (c->fd >= 0 && c->out.len > c->out_sent)
            return false;
    return true;
}

void server_stop(server *s)
{
    uint64_t one = 1;
    ssize_t w = write(s->stop_fd, &one, sizeof(one));
    (void)w;
}

/* ---- open / run / close ------------------------------------------------------ */

/* A listening socket on addr:port_number into *fd; option names the
 * option it came from, for the log. */
static int server_listen(server *s, const char *option, const char *addr, uint16_t port_number,
                         int *listen_fd)
{
    int gai = 0;
    int rc = sock_listen(addr, port_number, 1024, listen_fd, &gai);
    if (rc == -EINVAL && gai != 0)
        server_say(s, 2, "cannot resolve %s %s: %s", option, addr, gai_strerror(gai));
    return rc;
}

int server_open(const server_options *o, server **out)
{
    server *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->opts = *o;
    s->listen_fd = s->epoll_fd = s->done_fd = s->signal_fd = s->stop_fd = s->http_fd = -1;
    for (int i = 0; i < LIMIT_HTTP_CONNECTIONS_MAX; i++)
        s->http[i].fd = -1;
    s->info = (command_server_info){
        .max_clients = o->cfg->max_clients, .port = o->cfg->port, .bind = o->cfg->bind,
        .dir = o->cfg->dir, .sync = o->cfg->sync,
    };
    const char *names[METRICS_COMMANDS_MAX];
    unsigned count = command_count();
    for (unsigned i = 0; i < count; i++)
        names[i] = command_name(i);
    metrics_init(&s->m, o->cfg->dir, o->cfg->max_clients, names, count);
    s->env = (command_env){.t = o->t, .auth = o->auth, .info = &s->info, .metrics = &s->m};
    int rc = server_listen(s, "--bind", o->cfg->bind, o->cfg->port, &s->listen_fd);
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    if (rc == 0 && ((s->epoll_fd = epoll_create1(EPOLL_CLOEXEC)) < 0 ||
                    (s->done_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0 ||
                    (s->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0 ||
                    (s->signal_fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC)) < 0))
        rc = -errno;
    if (rc == 0)
        rc = server_epoll(s, EPOLL_CTL_ADD, s->listen_fd, EPOLLIN, &server_tag_listen);
    if (rc == 0)
        rc = server_epoll(s, EPOLL_CTL_ADD, s->done_fd, EPOLLIN, &server_tag_done);
    if (rc == 0)
        rc = server_epoll(s, EPOLL_CTL_ADD, s->stop_fd, EPOLLIN, &server_tag_stop);
    if (rc == 0)
        rc = server_epoll(s, EPOLL_CTL_ADD, s->signal_fd, EPOLLIN, &server_tag_signal);
    if (rc < 0) {
        server_close(s);
        return rc;
    }
    *out = s;
    return 0;
}

int server_listen_metrics(server *s, const char *addr, uint16_t port)
{
    assert(s->http_fd < 0);
    int rc = server_listen(s, "--metrics", addr, port, &s->http_fd);
    if (rc == 0)
        rc = server_epoll(s, EPOLL_CTL_ADD, s->http_fd, EPOLLIN, &server_tag_http);
    if (rc < 0 && s->http_fd >= 0) {
        close(s->http_fd);
        s->http_fd = -1;
    }
    return rc;
}

void server_attach(server *s, tally *t)
{
    assert(t != NULL);
    s->opts.t = t;
    s->env.t = t;
}

void server_attach_cluster(server *s, struct repl *r)
{
    assert(r != NULL);
    s->env.cluster = r;
}

static void server_event(server *s, const struct epoll_event *ev)
{
    void *p = ev->data.ptr;
    if (p == &server_tag_listen) {
        server_accept(s);
    } else if (p == &server_tag_done) {
        server_completions(s);
    } else if (p == &server_tag_http) {
        server_http_accept(s);
    } else if (p >= (void *)s->http && p < (void *)(s->http + LIMIT_HTTP_CONNECTIONS_MAX)) {
        server_http_event(s, p, ev->events);
    } else if (p == &server_tag_signal) {
        struct signalfd_siginfo si;
        while (read(s->signal_fd, &si, sizeof(si)) == sizeof(si))
            server_say(s, 0, "signal %u received", si.ssi_signo);
        server_begin_stop(s);
    } else if (p == &server_tag_stop) {
        uint64_t v;
        ssize_t r = read(s->stop_fd, &v, sizeof(v));
        (void)r;
        server_begin_stop(s);
    } else {
        server_conn *c = p;
        if (c->fd < 0)
            return;
        if (ev->events & EPOLLERR) {
            server_conn_close(s, c);
            return;
        }
        if (ev->events & EPOLLOUT)
            server_conn_pump(s, c);
        if ((ev->events & (EPOLLIN | EPOLLHUP)) && c->fd >= 0 && c->reading)
            server_conn_read(s, c);
        else if ((ev->events & EPOLLHUP) && c->fd >= 0)
            server_conn_close(s, c);
    }
}

int server_run(server *s)
{
    assert((s->opts.t != NULL || s->env.cluster != NULL) && "server_attach() first");
    struct epoll_event evs[SERVER_EVENTS_MAX];
    uint64_t last_tick = server_now_ms();
    for (;;) {
        int n = epoll_wait(s->epoll_fd, evs, SERVER_EVENTS_MAX, SERVER_TICK_MS);
        if (n < 0 && errno != EINTR)
            return -errno;
        for (int i = 0; i < n; i++)
            server_event(s, &evs[i]);
        uint64_t now = server_now_ms();
        if (now - last_tick >= SERVER_TICK_MS) {
            last_tick = now;
            server_tick(s);
            server_trim(s);
        }
        s->m.requests_inflight = s->inflight;
        server_resume_stalled(s);
        server_graveyard(s);
        if (s->stopping && server_drained(s))
            break;
    }
    server_say(s, 0, "stopped: every request handed to the engine was answered");
    return 0;
}

void server_close(server *s)
{
    if (!s)
        return;
    /* The engine has stopped (or never got these requests): nothing will
     * complete any more. */
    s->opts.t = NULL;
    while (s->conns) {
        server_conn *c = s->conns;
        if (c->fd >= 0)
            server_conn_close(s, c);
        if (!c->buried)
            server_conn_free(s, c);
        else
            server_graveyard(s);
    }
    server_graveyard(s);
    for (int i = 0; i < LIMIT_HTTP_CONNECTIONS_MAX; i++)
        server_http_close(s, &s->http[i]);
    int fds[] = {s->listen_fd, s->epoll_fd, s->done_fd, s->signal_fd, s->stop_fd, s->http_fd};
    for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++)
        if (fds[i] >= 0)
            close(fds[i]);
    for (uint32_t i = 0; i < s->chunks_count; i++) {
        for (int k = 0; k < SERVER_SLOT_CHUNK; k++) {
            resp_out_free(&s->chunks[i][k].pre);
            tally_request_release(&s->chunks[i][k].req);
        }
        free(s->chunks[i]);
    }
    free(s->chunks);
    free(s);
}
