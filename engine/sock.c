/*
 * sock.c — TCP sockets by name (sock.h).
 */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

#include "sock.h"

static int sock_resolve(const char *host, uint16_t port, int flags, struct addrinfo **res)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = flags | AI_NUMERICSERV};
    char ps[8];
    snprintf(ps, sizeof(ps), "%u", port);
    return getaddrinfo(host, ps, &hints, res);
}

int sock_listen(const char *addr, uint16_t port, int backlog, int *fd, int *gai_err)
{
    struct addrinfo *res = NULL;
    int gai = sock_resolve(addr, port, AI_PASSIVE, &res);
    if (gai != 0) {
        if (gai_err)
            *gai_err = gai;
        return -EINVAL;
    }
    int err = -EADDRNOTAVAIL;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        int s = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (s < 0) {
            err = -errno;
            continue;
        }
        int one = 1;
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(s, a->ai_addr, a->ai_addrlen) == 0 && listen(s, backlog) == 0) {
            *fd = s;
            err = 0;
            break;
        }
        err = -errno;
        close(s);
    }
    freeaddrinfo(res);
    return err;
}

/* Waits for a non-blocking connect to finish: 0 or -errno. */
static int sock_connected(int s, int timeout_ms)
{
    struct pollfd p = {.fd = s, .events = POLLOUT};
    int n;
    while ((n = poll(&p, 1, timeout_ms)) < 0 && errno == EINTR)
        ;
    if (n == 0)
        return -ETIMEDOUT;
    int err = 0;
    socklen_t len = sizeof(err);
    if (n < 0 || getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        return -errno;
    return -err;
}

int sock_connect(const char *host, uint16_t port, int timeout_ms, int *fd)
{
    struct addrinfo *res = NULL;
    if (sock_resolve(host, port, 0, &res) != 0)
        return -EHOSTUNREACH;
    int err = -ECONNREFUSED;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        int s = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (s < 0) {
            err = -errno;
            continue;
        }
        err = connect(s, a->ai_addr, a->ai_addrlen) == 0 || errno == EINPROGRESS ? 0 : -errno;
        if (err == 0)
            err = sock_connected(s, timeout_ms);
        if (err == 0) {
            int one = 1;
            setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            *fd = s;
            break;
        }
        close(s);
    }
    freeaddrinfo(res);
    return err;
}
