/*
 * server.h — tallyd's network loop: RESP over TCP on one epoll thread,
 * requests handed to the engine, replies returned in request order per
 * connection (SPEC §4–5).
 *
 * Lifecycle: server_open() (binds and listens) → server_listen_metrics()
 * (optional) → server_attach() (the engine) → server_run() (until SIGTERM/SIGINT or server_stop) →
 * server_close().  Binding comes first so that a busy port or a bad
 * address is refused before the data directory is created or recovered.  The caller must block
 * SIGTERM and SIGINT in every thread before starting any (the server reads
 * them from a signalfd) and ignore SIGPIPE.
 */
#ifndef TALLY_SERVER_H
#define TALLY_SERVER_H

#include <stdint.h>

#include "config.h"
#include "tally.h"

typedef struct server server;

typedef struct server_options {
    const config *cfg;        /* bind, port, max_clients, sync (for INFO), dir */
    tally *t;                 /* the engine, or NULL until server_attach() */
    const config_auth *auth;  /* NULL: open server */
    tally_log_fn log;         /* NULL: stderr */
    void *log_ctx;
} server_options;

/* Binds and listens.  Errors: -errno (address in use, permission...). */
int server_open(const server_options *o, server **out);

/* Also serves GET /metrics over HTTP on addr:port (metrics.h), from the
 * same loop; before server_run().  Errors: -errno (address in use...),
 * -EINVAL (an address that does not resolve). */
int server_listen_metrics(server *s, const char *addr, uint16_t port);

/* Gives the server its engine, opened by the caller after server_open();
 * before server_run(). */
void server_attach(server *s, tally *t);

/* Cluster mode: the server routes by slot through the node's groups
 * (repl.h) instead of one engine; before server_run(). */
struct repl;
void server_attach_cluster(server *s, struct repl *r);

/* Serves until a stop: then stops accepting and reading, answers every
 * request already handed to the engine, flushes replies (a few seconds at
 * most for clients that do not read), closes connections and returns 0.
 * Errors: -errno if the loop itself fails. */
int server_run(server *s);

/* Asks server_run to stop (thread-safe). */
void server_stop(server *s);

/* Frees everything.  Close the engine first (tally_close): it may still
 * complete requests, and their slots live here. */
void server_close(server *s);

#endif
