/*
 * tallyd_util.h — integration tests against a real tallyd process: start
 * it from $TALLY_BUILD on a free loopback port, talk to it with hiredis
 * (RESP2) or raw sockets (RESP3, malformed input), stop it with SIGTERM
 * or kill -9.  Every server is also killed if the test process dies
 * (PR_SET_PDEATHSIG), so a crashing test leaves nothing running.
 */
#ifndef TALLY_TESTS_TALLYD_UTIL_H
#define TALLY_TESTS_TALLYD_UTIL_H

#include <hiredis/hiredis.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct td {
    pid_t pid;
    uint16_t port;
    char dir[64];     /* data directory */
    char log[96];     /* tallyd's stderr */
    char auth[96];    /* auth file, "" if none */
} td;

/* A loopback port the kernel just handed out (bound to 0, then released):
 * free a moment ago, for a second listener (tallyd --metrics). */
uint16_t td_free_port(void);
/* Makes a fresh data directory under /tmp (td->dir). */
void td_init(td *t, const char *tag);
/* Starts tallyd on t->dir with extra arguments (NULL-terminated list, may
 * be NULL) and waits until it accepts connections.  Asserts it came up. */
void td_start(td *t, const char *const *extra);
/* Starts it again on the port of its last start (clients that reconnect
 * find it there); asserts it came up. */
void td_restart(td *t, const char *const *extra);
/* Starts and returns the exit status without asserting it came up (for
 * refused configurations): -1 if it is serving (then it is stopped). */
int td_start_expect_exit(td *t, const char *const *extra);
/* SIGTERM and wait; returns the exit status (asserts a clean exit 0). */
void td_stop(td *t);
/* kill -9 and reap. */
void td_kill9(td *t);
/* Stops if running and removes the directory. */
void td_cleanup(td *t);
/* Writes an auth file into the data directory's parent and remembers it. */
void td_write_auth(td *t, const char *text);

/* A hiredis connection (RESP2), asserted. */
redisContext *td_connect(const td *t);
/* A command; asserts a reply came back (the connection is alive). */
redisReply *td_cmd(redisContext *c, const char *fmt, ...);
/* Field of a flat field/value array reply (RESP2 map), or NULL. */
const redisReply *td_field(const redisReply *r, const char *name);
long long td_int_field(const redisReply *r, const char *name);
/* Reads n pipelined replies (redisAppendCommand), asserting each is an
 * entry (a write acknowledged). */
void td_replies_ok(redisContext *c, int n);

/* Raw socket to the server, with a receive timeout. */
int td_raw(const td *t);
void td_send(int fd, const void *buf, size_t n);
void td_sends(int fd, const char *s);
/* Reads until `need` bytes, EOF or timeout; returns bytes read. */
size_t td_recv(int fd, char *buf, size_t need, int timeout_ms);
/* Reads until the text ends with `suffix` (or EOF/timeout). */
size_t td_recv_until(int fd, char *buf, size_t cap, const char *suffix, int timeout_ms);
/* True if the peer has closed the connection (EOF within timeout_ms). */
int td_closed(int fd, int timeout_ms);

/* A test that cannot run here (not root, a tool missing): skipped, except
 * under CI=true, where it fails — Criterion leaves skipped tests out of its
 * count, so a skip would pass unseen.  Does not return. */
void td_cannot_run(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
/* The source tree (the parent of $TALLY_BUILD), for scripts and docs. */
const char *td_source_dir(void);
/* Runs a shell command (sh -c), stdout and stderr into out (NUL-terminated,
 * cut to cap); returns its exit status (128 + signal if killed). */
int td_run(const char *cmd, char *out, size_t cap);

/* A loopback port the kernel just handed out (bound to 0, then released):
 * free unless another process takes it meanwhile. */
uint16_t td_free_port(void);
/* Starts argv (searched in PATH) with stdout and stderr appended to log,
 * killed if this process dies. */
pid_t td_exec(const char *const *argv, const char *log);
/* A "<field>: N kB" line of tallyd's /proc/PID/status (VmRSS, RssAnon…),
 * -1 if absent. */
long td_status_kib(const td *t, const char *field);
/* tallyd's resident memory in KiB (VmRSS). */
long td_rss_kib(const td *t);

#endif
