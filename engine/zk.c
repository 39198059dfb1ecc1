/*
 * zk.c — the ZooKeeper client (interface and error mapping in zk.h), over
 * libzookeeper-mt's synchronous calls.
 *
 * Threads.  libzookeeper-mt runs two threads per handle: one for I/O (it
 * also sends the session's pings) and one that delivers completions and
 * watch events.  This module adds a probe thread per handle, which
 * measures contact with the server for leases (zk.h), and a read-write
 * lock so that zk_renew() can swap the handle under calls of other
 * threads: every call holds the lock shared, renew holds it exclusive.
 *
 * The client library's own messages have no context argument, so they go
 * through one process-wide sink: the log function of the newest handle
 * that has one (a process normally has one session), under a mutex so a
 * closing handle never receives a message after zk_close.
 */
#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
/* The synchronous calls exist only in the multithreaded library. */
#define THREADED
#include <zookeeper/zookeeper.h>

#include "clock.h"
#include "zk.h"

/* ---- constants and types ------------------------------------------------- */

/* Probes per session timeout, and probes in flight at most (a paused
 * server answers none; the client fails them when it drops the
 * connection). */
#define ZK_PROBES_PER_TIMEOUT 10
#define ZK_PROBES_INFLIGHT_MAX 4
/* zk_wait_connected polls the state this often. */
#define ZK_WAIT_STEP_MS 5

static_assert(LIMIT_ZK_SESSION_MS_MIN / ZK_PROBES_PER_TIMEOUT >= 10,
              "a probe period of at least 10 ms");

struct zk {
    pthread_rwlock_t lock;       /* shared: calls; exclusive: renew, close */
    zhandle_t *zh;
    zk_options o;
    char hosts[LIMIT_ZK_HOSTS_BYTES_MAX + 1];
    /* Monotonic ms of the sending of the newest answered probe of this
     * session (0: none), and the session's generation (+1 per renew):
     * probes of an older generation are ignored. */
    _Atomic uint64_t contact_ms;
    _Atomic uint32_t generation;
    _Atomic uint32_t probes_inflight;
    pthread_t prober;
    pthread_mutex_t probe_mu;
    pthread_cond_t probe_cv;
    bool probe_stop;
};

/* One probe in flight: freed by its completion. */
typedef struct zk_probe {
    zk *z;
    uint64_t sent_ms;
    uint32_t generation;
} zk_probe;

/* ---- helpers ----------------------------------------------------------- */

/* ZooKeeper's codes as -errno (zk.h lists them). */
static int zk_error(int zrc)
{
    switch (zrc) {
    case ZOK: return 0;
    case ZNONODE: return -ENOENT;
    case ZNODEEXISTS: return -EEXIST;
    case ZNOTEMPTY: return -ENOTEMPTY;
    case ZBADVERSION: return -ESTALE;
    case ZCONNECTIONLOSS: return -ECONNRESET;
    case ZOPERATIONTIMEOUT: return -ETIMEDOUT;
    case ZSESSIONEXPIRED:
    case ZSESSIONMOVED:
    case ZINVALIDSTATE: return -ECONNABORTED;
    case ZCLOSING: return -ESHUTDOWN;
    case ZNOAUTH:
    case ZAUTHFAILED: return -EACCES;
    case ZNOCHILDRENFOREPHEMERALS: return -EPERM;
    case ZBADARGUMENTS: return -EINVAL;
    default: return -EPROTO;
    }
}

static int zk_mode(int flags)
{
    bool eph = (flags & ZK_EPHEMERAL) != 0, seq = (flags & ZK_SEQUENTIAL) != 0;
    return eph ? (seq ? ZOO_EPHEMERAL_SEQUENTIAL : ZOO_EPHEMERAL)
               : (seq ? ZOO_PERSISTENT_SEQUENTIAL : ZOO_PERSISTENT);
}

static bool zk_path_ok(const char *path)
{
    return path != NULL && path[0] == '/' && strlen(path) < LIMIT_ZK_PATH_BYTES_MAX;
}

/* ---- the library's log sink ---------------------------------------------- */

static pthread_mutex_t zk_log_mu = PTHREAD_MUTEX_INITIALIZER;
static zk *zk_log_owner; /* guarded by zk_log_mu */

static void zk_library_log(const char *message)
{
    pthread_mutex_lock(&zk_log_mu);
    if (zk_log_owner != NULL && zk_log_owner->o.log != NULL) {
        /* The library's lines end in a newline of their own. */
        char line[1024];
        snprintf(line, sizeof(line), "zookeeper: %s", message);
        line[strcspn(line, "\r\n")] = '\0';
        zk_log_owner->o.log(zk_log_owner->o.log_ctx, strstr(message, "ERROR") ? 2 : 1, line);
    }
    pthread_mutex_unlock(&zk_log_mu);
}

static void zk_log_level_once(void)
{
    zoo_set_debug_level(ZOO_LOG_LEVEL_WARN);
}

/* ---- watches and probes --------------------------------------------------- */

/* The global watcher of every handle: watch events and state changes. */
static void zk_watcher(zhandle_t *zh, int type, int state, const char *path, void *ctx)
{
    (void)state;
    zk *z = (zk *)zoo_get_context(zh);
    (void)ctx;
    if (z == NULL || z->o.watch == NULL)
        return;
    int ev = type == ZOO_CREATED_EVENT   ? ZK_EVENT_CREATED
             : type == ZOO_DELETED_EVENT ? ZK_EVENT_DELETED
             : type == ZOO_CHANGED_EVENT ? ZK_EVENT_CHANGED
             : type == ZOO_CHILD_EVENT   ? ZK_EVENT_CHILD
                                         : ZK_EVENT_SESSION;
    z->o.watch(z->o.watch_ctx, ev, ev == ZK_EVENT_SESSION || path == NULL ? "" : path);
}

static void zk_probe_done(int rc, const struct Stat *stat, const void *data)
{
    (void)stat;
    zk_probe *p = (zk_probe *)data;
    zk *z = p->z;
    if (rc == ZOK && p->generation == atomic_load(&z->generation)) {
        uint64_t seen = atomic_load(&z->contact_ms);
        while (seen < p->sent_ms &&
               !atomic_compare_exchange_weak(&z->contact_ms, &seen, p->sent_ms))
            ;
    }
    uint32_t before = atomic_fetch_sub(&z->probes_inflight, 1);
    assert(before > 0);
    free(p);
}

/* Sends one probe if the session is connected and few are in flight. */
static void zk_probe_send(zk *z)
{
    pthread_rwlock_rdlock(&z->lock);
    if (z->zh != NULL && zoo_state(z->zh) == ZOO_CONNECTED_STATE &&
        atomic_load(&z->probes_inflight) < ZK_PROBES_INFLIGHT_MAX) {
        zk_probe *p = malloc(sizeof(*p));
        if (p != NULL) {
            *p = (zk_probe){.z = z, .sent_ms = clock_mono_ms(),
                            .generation = atomic_load(&z->generation)};
            atomic_fetch_add(&z->probes_inflight, 1);
            if (zoo_aexists(z->zh, "/", 0, zk_probe_done, p) != ZOK) {
                atomic_fetch_sub(&z->probes_inflight, 1);
                free(p);
            }
        }
    }
    pthread_rwlock_unlock(&z->lock);
}

static void *zk_prober(void *arg)
{
    zk *z = arg;
    uint32_t period_ms = z->o.session_timeout_ms / ZK_PROBES_PER_TIMEOUT;
    pthread_mutex_lock(&z->probe_mu);
    while (!z->probe_stop) {
        pthread_mutex_unlock(&z->probe_mu);
        zk_probe_send(z);
        pthread_mutex_lock(&z->probe_mu);
        struct timespec until = clock_mono_after(period_ms);
        while (!z->probe_stop &&
               pthread_cond_timedwait(&z->probe_cv, &z->probe_mu, &until) != ETIMEDOUT)
            ;
    }
    pthread_mutex_unlock(&z->probe_mu);
    return NULL;
}

/* ---- session -------------------------------------------------------------- */

/* A new handle for z (the lock held exclusive, or z not yet shared). */
static int zk_start(zk *z)
{
    assert(z->zh == NULL);
    atomic_store(&z->contact_ms, 0);
    errno = 0;
    z->zh = zookeeper_init2(z->hosts, zk_watcher, (int)z->o.session_timeout_ms, NULL, z, 0,
                            zk_library_log);
    if (z->zh == NULL)
        return errno ? -errno : -EINVAL;
    return 0;
}

int zk_open(const zk_options *o, zk **out)
{
    static pthread_once_t level_once = PTHREAD_ONCE_INIT;
    assert(o != NULL && out != NULL);
    uint32_t timeout_ms = o->session_timeout_ms ? o->session_timeout_ms
                                                : LIMIT_ZK_SESSION_MS_DEFAULT;
    if (o->hosts == NULL || o->hosts[0] == '\0' || strlen(o->hosts) > LIMIT_ZK_HOSTS_BYTES_MAX ||
        timeout_ms < LIMIT_ZK_SESSION_MS_MIN || timeout_ms > LIMIT_ZK_SESSION_MS_MAX)
        return -EINVAL;
    pthread_once(&level_once, zk_log_level_once);
    zk *z = calloc(1, sizeof(*z));
    if (z == NULL)
        return -ENOMEM;
    z->o = *o;
    z->o.session_timeout_ms = timeout_ms;
    memcpy(z->hosts, o->hosts, strlen(o->hosts) + 1);
    z->o.hosts = z->hosts;
    pthread_rwlock_init(&z->lock, NULL);
    pthread_mutex_init(&z->probe_mu, NULL);
    clock_cond_init(&z->probe_cv);
    if (o->log != NULL) {
        pthread_mutex_lock(&zk_log_mu);
        zk_log_owner = z;
        pthread_mutex_unlock(&zk_log_mu);
    }
    int rc = zk_start(z);
    if (rc == 0)
        rc = -pthread_create(&z->prober, NULL, zk_prober, z);
    if (rc < 0) {
        if (z->zh != NULL)
            zookeeper_close(z->zh);
        z->zh = NULL;
        z->probe_stop = true; /* no prober to join */
        zk_close(z);
        return rc;
    }
    *out = z;
    return 0;
}

int zk_wait_connected(zk *z, uint32_t timeout_ms)
{
    uint64_t end = clock_mono_ms() + timeout_ms;
    for (;;) {
        int st = zk_state(z);
        if (st == ZK_CONNECTED)
            return 0;
        if (st == ZK_EXPIRED)
            return -ECONNABORTED;
        if (clock_mono_ms() >= end)
            return -ETIMEDOUT;
        nanosleep(&(struct timespec){.tv_nsec = ZK_WAIT_STEP_MS * 1000000L}, NULL);
    }
}

int zk_renew(zk *z)
{
    pthread_rwlock_wrlock(&z->lock);
    atomic_fetch_add(&z->generation, 1);
    if (z->zh != NULL)
        zookeeper_close(z->zh);
    z->zh = NULL;
    int rc = zk_start(z);
    pthread_rwlock_unlock(&z->lock);
    return rc;
}

void zk_close(zk *z)
{
    if (z == NULL)
        return;
    pthread_mutex_lock(&z->probe_mu);
    bool joined = z->probe_stop;
    z->probe_stop = true;
    pthread_cond_signal(&z->probe_cv);
    pthread_mutex_unlock(&z->probe_mu);
    if (!joined)
        pthread_join(z->prober, NULL);
    pthread_rwlock_wrlock(&z->lock);
    if (z->zh != NULL)
        zookeeper_close(z->zh); /* completes the probes in flight */
    z->zh = NULL;
    pthread_rwlock_unlock(&z->lock);
    assert(atomic_load(&z->probes_inflight) == 0);
    pthread_mutex_lock(&zk_log_mu);
    if (zk_log_owner == z)
        zk_log_owner = NULL;
    pthread_mutex_unlock(&zk_log_mu);
    pthread_rwlock_destroy(&z->lock);
    pthread_mutex_destroy(&z->probe_mu);
    pthread_cond_destroy(&z->probe_cv);
    free(z);
}

int zk_state(zk *z)
{
    pthread_rwlock_rdlock(&z->lock);
    int st = z->zh == NULL ? ZOO_EXPIRED_SESSION_STATE : zoo_state(z->zh);
    pthread_rwlock_unlock(&z->lock);
    if (st == ZOO_CONNECTED_STATE)
        return ZK_CONNECTED;
    if (st == ZOO_EXPIRED_SESSION_STATE || st == ZOO_AUTH_FAILED_STATE)
        return ZK_EXPIRED;
    return ZK_CONNECTING;
}

int64_t zk_session_id(zk *z)
{
    pthread_rwlock_rdlock(&z->lock);
    int64_t id = 0;
    if (z->zh != NULL)
        id = zoo_client_id(z->zh)->client_id;
    pthread_rwlock_unlock(&z->lock);
    return id;
}

uint32_t zk_session_timeout_ms(zk *z)
{
    pthread_rwlock_rdlock(&z->lock);
    int ms = z->zh != NULL ? zoo_recv_timeout(z->zh) : 0;
    pthread_rwlock_unlock(&z->lock);
    return ms > 0 ? (uint32_t)ms : z->o.session_timeout_ms;
}

uint64_t zk_contact_age_ms(zk *z)
{
    uint64_t at = atomic_load(&z->contact_ms);
    if (at == 0)
        return UINT64_MAX;
    uint64_t now = clock_mono_ms();
    return now > at ? now - at : 0;
}

/* ---- nodes ---------------------------------------------------------------- */

int zk_create(zk *z, const char *path, const void *data, size_t len, int flags, char *made,
              size_t made_cap)
{
    if (!zk_path_ok(path) || len > INT32_MAX || made_cap > INT32_MAX)
        return -EINVAL;
    pthread_rwlock_rdlock(&z->lock);
    int zrc = zoo_create(z->zh, path, data, data ? (int)len : -1, &ZOO_OPEN_ACL_UNSAFE,
                         zk_mode(flags), made, made ? (int)made_cap : 0);
    pthread_rwlock_unlock(&z->lock);
    return zk_error(zrc);
}

int zk_create_parents(zk *z, const char *path)
{
    if (!zk_path_ok(path))
        return -EINVAL;
    char prefix[LIMIT_ZK_PATH_BYTES_MAX];
    size_t n = strlen(path);
    for (size_t i = 1; i <= n; i++) {
        if (i < n && path[i] != '/')
            continue;
        memcpy(prefix, path, i);
        prefix[i] = '\0';
        int rc = zk_create(z, prefix, "", 0, ZK_PERSISTENT, NULL, 0);
        if (rc < 0 && rc != -EEXIST)
            return rc;
    }
    return 0;
}

static void zk_stat_out(const struct Stat *s, zk_stat *st)
{
    if (st == NULL)
        return;
    *st = (zk_stat){.version = s->version, .child_version = s->cversion,
                    .ephemeral_owner = s->ephemeralOwner,
                    .data_bytes = s->dataLength > 0 ? (uint32_t)s->dataLength : 0,
                    .children = s->numChildren > 0 ? (uint32_t)s->numChildren : 0};
}

int zk_get(zk *z, const char *path, bool watch, void *buf, size_t cap, size_t *len, zk_stat *st)
{
    if (!zk_path_ok(path) || cap > INT32_MAX)
        return -EINVAL;
    struct Stat s;
    int got = (int)cap;
    pthread_rwlock_rdlock(&z->lock);
    int zrc = zoo_get(z->zh, path, watch, buf, &got, &s);
    pthread_rwlock_unlock(&z->lock);
    if (zrc != ZOK)
        return zk_error(zrc);
    if (s.dataLength > (int32_t)cap)
        return -EMSGSIZE;
    assert(got <= (int)cap);
    if (len != NULL)
        *len = got > 0 ? (size_t)got : 0;
    zk_stat_out(&s, st);
    return 0;
}

int zk_exists(zk *z, const char *path, bool watch, zk_stat *st)
{
    if (!zk_path_ok(path))
        return -EINVAL;
    struct Stat s;
    pthread_rwlock_rdlock(&z->lock);
    int zrc = zoo_exists(z->zh, path, watch, &s);
    pthread_rwlock_unlock(&z->lock);
    if (zrc == ZOK)
        zk_stat_out(&s, st);
    return zk_error(zrc);
}

int zk_set(zk *z, const char *path, const void *data, size_t len, int32_t version)
{
    if (!zk_path_ok(path) || len > INT32_MAX)
        return -EINVAL;
    pthread_rwlock_rdlock(&z->lock);
    int zrc = zoo_set(z->zh, path, data, data ? (int)len : -1, version);
    pthread_rwlock_unlock(&z->lock);
    return zk_error(zrc);
}

int zk_delete(zk *z, const char *path, int32_t version)
{
    if (!zk_path_ok(path))
        return -EINVAL;
    pthread_rwlock_rdlock(&z->lock);
    int zrc = zoo_delete(z->zh, path, version);
    pthread_rwlock_unlock(&z->lock);
    return zk_error(zrc);
}

int zk_children(zk *z, const char *path, bool watch, zk_name *names, uint32_t cap,
                uint32_t *count)
{
    if (!zk_path_ok(path))
        return -EINVAL;
    struct String_vector sv = {0};
    pthread_rwlock_rdlock(&z->lock);
    int zrc = zoo_get_children(z->zh, path, watch, &sv);
    pthread_rwlock_unlock(&z->lock);
    if (zrc != ZOK)
        return zk_error(zrc);
    int rc = 0;
    if (sv.count < 0 || (uint32_t)sv.count > cap)
        rc = -E2BIG;
    for (int32_t i = 0; rc == 0 && i < sv.count; i++) {
        size_t n = strlen(sv.data[i]);
        if (n >= sizeof(zk_name))
            rc = -EMSGSIZE;
        else
            memcpy(names[i], sv.data[i], n + 1);
    }
    if (rc == 0)
        *count = (uint32_t)sv.count;
    deallocate_String_vector(&sv);
    return rc;
}

/* ---- transactions --------------------------------------------------------- */

static void zk_op_init(zoo_op_t *zo, const zk_op *op)
{
    int len = op->data ? (int)op->len : -1;
    switch (op->kind) {
    case ZK_OP_CREATE:
        zoo_create_op_init(zo, op->path, op->data, len, &ZOO_OPEN_ACL_UNSAFE,
                           zk_mode(op->flags), NULL, 0);
        break;
    case ZK_OP_SET:
        zoo_set_op_init(zo, op->path, op->data, len, op->version, NULL);
        break;
    case ZK_OP_DELETE:
        zoo_delete_op_init(zo, op->path, op->version);
        break;
    default:
        assert(op->kind == ZK_OP_CHECK);
        zoo_check_op_init(zo, op->path, op->version);
        break;
    }
}

int zk_multi(zk *z, const zk_op *ops, uint32_t n, uint32_t *failed)
{
    if (n == 0 || n > ZK_MULTI_OPS_MAX)
        return -EINVAL;
    for (uint32_t i = 0; i < n; i++)
        if (!zk_path_ok(ops[i].path) || ops[i].len > INT32_MAX || ops[i].kind < ZK_OP_CREATE ||
            ops[i].kind > ZK_OP_CHECK)
            return -EINVAL;
    zoo_op_t *zo = calloc(n, sizeof(*zo));
    zoo_op_result_t *res = calloc(n, sizeof(*res));
    if (zo == NULL || res == NULL) {
        free(zo);
        free(res);
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < n; i++)
        zk_op_init(&zo[i], &ops[i]);
    pthread_rwlock_rdlock(&z->lock);
    int zrc = zoo_multi(z->zh, (int)n, zo, res);
    pthread_rwlock_unlock(&z->lock);
    int rc = zk_error(zrc);
    if (rc < 0 && failed != NULL) {
        /* The failed operation carries its own code; the ones after it
         * say ZRUNTIMEINCONSISTENCY (not applied because of it). */
        *failed = n;
        for (uint32_t i = 0; i < n && *failed == n; i++)
            if (res[i].err != ZOK && res[i].err != ZRUNTIMEINCONSISTENCY)
                *failed = i;
    }
    free(zo);
    free(res);
    return rc;
}
