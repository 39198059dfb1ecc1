/*
 * zk_util.h — a private ZooKeeper server for the cluster tests: Debian's
 * zookeeperd (its Java server, org.apache.zookeeper.server.ZooKeeperServerMain,
 * run directly with a generated zoo.cfg) on a free loopback port with a
 * temporary data directory.  It is killed if the test process dies
 * (PR_SET_PDEATHSIG), and zku_cleanup stops it and removes the directory.
 * The server can be stopped and started again on the same port and data
 * (sessions survive a restart within their timeout), and paused with
 * SIGSTOP to play a server that stopped answering.
 *
 * Its tick is 200 ms, so sessions of 400 ms to 60 s are granted as asked.
 */
#ifndef TALLY_TESTS_ZK_UTIL_H
#define TALLY_TESTS_ZK_UTIL_H

#include <stdint.h>
#include <sys/types.h>

typedef struct zku {
    pid_t pid;        /* 0 while stopped */
    uint16_t port;
    char dir[64];     /* zoo.cfg, data/ */
    char log[96];     /* the server's stdout and stderr */
    char hosts[32];   /* "127.0.0.1:PORT": the connect string */
    int paused;
} zku;

/* Creates the directory and configuration, starts the server and waits
 * until it serves (srvr answers "Mode: standalone").  A machine without
 * Java or the zookeeper package cannot run the test (td_cannot_run). */
void zku_start(zku *z);
/* SIGTERM and wait (SIGKILL if it lingers); the data stays. */
void zku_stop(zku *z);
/* Starts a stopped server again, same port and data, and waits for it. */
void zku_restart(zku *z);
/* SIGSTOP / SIGCONT. */
void zku_pause(zku *z);
void zku_resume(zku *z);
/* Stops it if running and removes its directory and log. */
void zku_cleanup(zku *z);

/* A four-letter command's answer (e.g. "srvr") into out; bytes read, 0 if
 * the server did not answer within timeout_ms. */
size_t zku_ask(const zku *z, const char *word, char *out, size_t cap, int timeout_ms);

#endif
