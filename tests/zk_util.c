/*
 * zk_util.c — a private ZooKeeper for tests (zk_util.h).
 */
#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "engine_util.h"
#include "tallyd_util.h"
#include "zk_util.h"

/* Debian's zookeeper package: the server's jar (its manifest names the
 * jars it needs) and the JVM. */
#define ZKU_JAR "/usr/share/java/zookeeper.jar"
#define ZKU_JAVA "/usr/bin/java"
/* A JVM starting on a machine shared with other tests (sanitizers) can be
 * slow: this is a deadline, not an expectation. */
#define ZKU_START_MS 90000
#define ZKU_STOP_MS 15000

static uint64_t zku_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

size_t zku_ask(const zku *z, const char *word, char *out, size_t cap, int timeout_ms)
{
    out[0] = '\0';
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(z->port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    size_t got = 0;
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        send(fd, word, strlen(word), MSG_NOSIGNAL) == (ssize_t)strlen(word)) {
        uint64_t end = zku_ms() + (uint64_t)timeout_ms;
        while (got + 1 < cap && zku_ms() < end) {
            struct pollfd p = {.fd = fd, .events = POLLIN};
            if (poll(&p, 1, (int)(end - zku_ms())) <= 0)
                break;
            ssize_t n = recv(fd, out + got, cap - 1 - got, 0);
            if (n <= 0)
                break;
            got += (size_t)n;
        }
    }
    out[got] = '\0';
    close(fd);
    return got;
}

static void zku_config(const zku *z)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/zoo.cfg", z->dir);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    /* A short tick so that tests may ask for short sessions; no admin web
     * server; small preallocated logs; no fsync (the tests lose no power). */
    fprintf(f,
            "tickTime=200\n"
            "minSessionTimeout=400\n"
            "maxSessionTimeout=60000\n"
            "dataDir=%s/data\n"
            "clientPort=%u\n"
            "clientPortAddress=127.0.0.1\n"
            "maxClientCnxns=0\n"
            "admin.enableServer=false\n"
            "4lw.commands.whitelist=srvr,ruok\n"
            "preAllocSize=1024\n"
            "forceSync=no\n",
            z->dir, z->port);
    fclose(f);
}

/* Starts the JVM and waits until the server serves; asserts it does. */
static void zku_launch(zku *z)
{
    char cfg[128];
    snprintf(cfg, sizeof(cfg), "%s/zoo.cfg", z->dir);
    const char *argv[] = {ZKU_JAVA, "-Xmx128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                          "-XX:-UsePerfData", "-Dzookeeper.jmx.log4j.disable=true", "-cp",
                          ZKU_JAR, "org.apache.zookeeper.server.ZooKeeperServerMain", cfg, NULL};
    z->pid = td_exec(argv, z->log);
    z->paused = 0;
    uint64_t end = zku_ms() + ZKU_START_MS;
    char answer[1024];
    while (zku_ms() < end) {
        int st;
        if (waitpid(z->pid, &st, WNOHANG) == z->pid) {
            z->pid = 0;
            cr_assert_fail("ZooKeeper exited at start (status %d); see %s", st, z->log);
        }
        if (zku_ask(z, "srvr", answer, sizeof(answer), 1000) > 0 &&
            strstr(answer, "Mode: standalone") != NULL)
            return;
        usleep(50000);
    }
    cr_assert_fail("ZooKeeper did not serve within %d ms; see %s", ZKU_START_MS, z->log);
}

void zku_start(zku *z)
{
    memset(z, 0, sizeof(*z));
    struct stat st;
    if (stat(ZKU_JAR, &st) != 0 || stat(ZKU_JAVA, &st) != 0)
        td_cannot_run("no ZooKeeper server here (%s, %s): apt-get install zookeeperd", ZKU_JAR,
                      ZKU_JAVA);
    eu_tmpdir(z->dir, "zk");
    snprintf(z->log, sizeof(z->log), "%s.log", z->dir);
    z->port = td_free_port();
    snprintf(z->hosts, sizeof(z->hosts), "127.0.0.1:%u", z->port);
    zku_config(z);
    zku_launch(z);
}

void zku_stop(zku *z)
{
    if (z->pid <= 0)
        return;
    if (z->paused)
        zku_resume(z);
    kill(z->pid, SIGTERM);
    uint64_t end = zku_ms() + ZKU_STOP_MS;
    pid_t got;
    while ((got = waitpid(z->pid, NULL, WNOHANG)) == 0 && zku_ms() < end)
        usleep(20000);
    if (got == 0) {
        kill(z->pid, SIGKILL);
        waitpid(z->pid, NULL, 0);
    }
    z->pid = 0;
}

void zku_restart(zku *z)
{
    cr_assert_eq(z->pid, 0, "zku_restart: the server is running");
    zku_launch(z);
}

void zku_pause(zku *z)
{
    cr_assert(z->pid > 0);
    kill(z->pid, SIGSTOP);
    z->paused = 1;
}

void zku_resume(zku *z)
{
    cr_assert(z->pid > 0);
    kill(z->pid, SIGCONT);
    z->paused = 0;
}

void zku_cleanup(zku *z)
{
    zku_stop(z);
    if (z->dir[0] != '\0') {
        eu_rmrf(z->dir);
        unlink(z->log);
        z->dir[0] = '\0';
    }
}
