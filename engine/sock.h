/*
 * sock.h — TCP sockets by name: a listening socket for an address and
 * port (tallyd's RESP and /metrics ports, a cluster node's replication
 * port), and a connection made within a deadline (a replica to its
 * leader).  Both non-blocking, close-on-exec.
 */
#ifndef TALLY_SOCK_H
#define TALLY_SOCK_H

#include <stdint.h>

/* Listens on addr:port (a name or numeric address; SO_REUSEADDR) with
 * the given backlog: the first of addr's addresses that binds.  0 and
 * *fd, -EINVAL if addr does not resolve (getaddrinfo's code in *gai_err
 * when not NULL), or the last bind/listen -errno. */
int sock_listen(const char *addr, uint16_t port, int backlog, int *fd, int *gai_err);

/* Connects to host:port within timeout_ms, TCP_NODELAY set.  0 and *fd,
 * -EHOSTUNREACH (host does not resolve), -ETIMEDOUT, or -errno. */
int sock_connect(const char *host, uint16_t port, int timeout_ms, int *fd);

#endif
