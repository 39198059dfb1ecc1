/*
 * zk.h — a small client of ZooKeeper (over libzookeeper-mt, the only
 * module that includes its header: STYLE rule 2).
 *
 * What the cluster needs from ZooKeeper and nothing more: a session with
 * a timeout, one watch callback for every watch and session event,
 * create (persistent or ephemeral, optionally sequential), get, exists,
 * set with a version check (compare-and-set), delete, children, and
 * multi (several operations applied all or none).  Every call here is
 * synchronous: it blocks the calling thread until ZooKeeper answers, or
 * until the client gives up on the connection (about two thirds of the
 * session timeout).  Never call them from the watch callback: it runs on
 * the client's completion thread, whose answers such a call would wait
 * for (a deadlock).  The callback should record what changed and wake
 * another thread.
 *
 * Lease arithmetic.  The server expires a session when it has heard
 * nothing from the client for the session timeout, counted from the last
 * request it received.  A probe thread sends a cheap request every tenth
 * of the timeout, and zk_contact_age_ms() is the time since the *sending*
 * of the newest probe that was answered: the server heard from the
 * session after that instant, so the session (and every ephemeral node
 * it owns, such as a leader lease) cannot expire earlier than that
 * instant plus the timeout.  A leader that stops acknowledging once the
 * age passes a third of the timeout thus stops two thirds of a timeout
 * before anyone else can take its lease, whatever the network or a
 * paused server did (assuming clocks that run at about the same rate).
 *
 * Errors are -errno at this module's edge (tally_strerror() prints them):
 *   -ENOENT      no such node (ZNONODE)
 *   -EEXIST      the node exists (ZNODEEXISTS)
 *   -ENOTEMPTY   the node has children (ZNOTEMPTY)
 *   -ESTALE      a version check failed (ZBADVERSION): someone else
 *                changed the node since it was read
 *   -ECONNRESET  the connection was lost while the request was out; it may
 *                or may not have been applied (ZCONNECTIONLOSS)
 *   -ETIMEDOUT   the operation timed out (ZOPERATIONTIMEOUT), or
 *                zk_wait_connected gave up
 *   -ECONNABORTED the session expired (ZSESSIONEXPIRED, and any request on
 *                an expired handle): its ephemeral nodes are gone; call
 *                zk_renew() for a new session
 *   -ESHUTDOWN   the handle is closing (ZCLOSING)
 *   -EACCES      an ACL or authentication refused it (ZNOAUTH, ZAUTHFAILED)
 *   -EPERM       an ephemeral node cannot have children
 *                (ZNOCHILDRENFOREPHEMERALS)
 *   -EMSGSIZE    the node's data does not fit the caller's buffer
 *   -E2BIG       more children than the caller's array holds
 *   -EINVAL      a bad argument (ZBADARGUMENTS, a path too long)
 *   -EPROTO      anything else the client or server reported
 */
#ifndef TALLY_ZK_H
#define TALLY_ZK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "limits.h"

typedef struct zk zk;

/* Session states (zk_state). */
enum zk_state {
    ZK_CONNECTING = 0, /* no server answers yet, or the connection was lost */
    ZK_CONNECTED = 1,  /* a server serves the session */
    ZK_EXPIRED = 2,    /* the session is over: zk_renew() or zk_close() */
};

/* Watch events (the watch callback's event). */
enum zk_event {
    ZK_EVENT_CREATED = 1, /* a node watched by zk_exists was created */
    ZK_EVENT_DELETED,     /* a watched node was deleted */
    ZK_EVENT_CHANGED,     /* a watched node's data changed */
    ZK_EVENT_CHILD,       /* a watched node's children changed */
    ZK_EVENT_SESSION,     /* the session state changed (path is "") */
};

/* Create flags. */
enum {
    ZK_PERSISTENT = 0,
    ZK_EPHEMERAL = 1,  /* deleted when the creating session ends */
    ZK_SEQUENTIAL = 2, /* ZooKeeper appends a 10-digit counter to the name */
};

/* One watch fired, or the session changed state.  Called on the client's
 * completion thread (see the top of this file: record and return).
 * Watches are one-shot, as in ZooKeeper: read again with watch = true to
 * see the next change. */
typedef void zk_watch_fn(void *ctx, int event, const char *path);

/* The client's own messages (connection refused, reconnects): level 1 =
 * warning, 2 = error. */
typedef void zk_log_fn(void *ctx, int level, const char *msg);

typedef struct zk_options {
    const char *hosts;           /* "host:port,host:port[/chroot]" */
    uint32_t session_timeout_ms; /* 0 = LIMIT_ZK_SESSION_MS_DEFAULT */
    zk_watch_fn *watch;          /* may be NULL */
    void *watch_ctx;
    zk_log_fn *log;              /* NULL: the client's messages are dropped */
    void *log_ctx;
} zk_options;

/* What ZooKeeper keeps about a node besides its data. */
typedef struct zk_stat {
    int32_t version;          /* data version: +1 per set */
    int32_t child_version;    /* +1 per child created or deleted */
    int64_t ephemeral_owner;  /* session id of an ephemeral node's owner, 0 */
    uint32_t data_bytes;
    uint32_t children;
} zk_stat;

/* ---- session -------------------------------------------------------------- */

/* Starts a session with the servers in o->hosts (copied) and returns at
 * once; the session is usable when zk_state() says ZK_CONNECTED (see
 * zk_wait_connected).  Errors: -EINVAL (no hosts, too long, a timeout
 * outside LIMIT_ZK_SESSION_MS_MIN..MAX), -ENOMEM, -errno. */
int zk_open(const zk_options *o, zk **out);

/* Waits until the session is connected: 0, -ETIMEDOUT, or -ECONNABORTED
 * if it expired meanwhile. */
int zk_wait_connected(zk *z, uint32_t timeout_ms);

/* Ends an expired (or any) session and starts a new one with the same
 * options; the new session owns none of the old one's ephemeral nodes and
 * has none of its watches.  Blocks until calls in progress on other
 * threads have returned.  0 or as zk_open. */
int zk_renew(zk *z);

/* Closes the session (its ephemeral nodes are deleted at once) and frees
 * z.  No call on z may be in progress or follow.  NULL is ignored. */
void zk_close(zk *z);

/* enum zk_state, now.  Any thread. */
int zk_state(zk *z);

/* The session id (what zk_stat.ephemeral_owner holds for this session's
 * ephemeral nodes); 0 before the first connection. */
int64_t zk_session_id(zk *z);

/* The timeout the server granted (the asked one until connected). */
uint32_t zk_session_timeout_ms(zk *z);

/* Milliseconds since the sending of the newest answered probe (see the
 * top of this file); UINT64_MAX while this session has had none.  Cheap
 * (two atomic loads and a clock read); any thread. */
uint64_t zk_contact_age_ms(zk *z);

/* ---- nodes ---------------------------------------------------------------- */

/* Creates path with data[0, len) and flags (ZK_EPHEMERAL, ZK_SEQUENTIAL).
 * The name created (with a sequential suffix) goes to made[0, made_cap)
 * when made is not NULL.  -EEXIST, -ENOENT (no parent), as above. */
int zk_create(zk *z, const char *path, const void *data, size_t len, int flags, char *made,
              size_t made_cap);

/* Creates path and every missing ancestor as empty persistent nodes; an
 * existing one is fine.  0 or as above. */
int zk_create_parents(zk *z, const char *path);

/* Reads path's data into buf[0, cap), its length into *len and its stat
 * into *st (either may be NULL).  With watch, the next change or deletion
 * of the node is reported (a node that does not exist gets no watch: use
 * zk_exists).  -ENOENT, -EMSGSIZE, as above. */
int zk_get(zk *z, const char *path, bool watch, void *buf, size_t cap, size_t *len, zk_stat *st);

/* 0 if path exists (*st written when not NULL), -ENOENT if not.  With
 * watch, its creation, change or deletion is reported either way. */
int zk_exists(zk *z, const char *path, bool watch, zk_stat *st);

/* Replaces path's data if its version is `version` (-1: any).  -ESTALE,
 * -ENOENT, as above. */
int zk_set(zk *z, const char *path, const void *data, size_t len, int32_t version);

/* Deletes path if its version is `version` (-1: any).  -ENOENT, -ESTALE,
 * -ENOTEMPTY, as above. */
int zk_delete(zk *z, const char *path, int32_t version);

/* A node name (the last part of a path), NUL-terminated. */
typedef char zk_name[LIMIT_CLUSTER_NAME_BYTES_MAX + 16];

/* The names of path's children, unordered, into names[0, cap); their
 * number into *count.  With watch, the next creation or deletion of a
 * child is reported.  -ENOENT, -E2BIG (more than cap), -EMSGSIZE (a name
 * longer than a zk_name), as above. */
int zk_children(zk *z, const char *path, bool watch, zk_name *names, uint32_t cap,
                uint32_t *count);

/* ---- transactions --------------------------------------------------------- */

enum zk_op_kind {
    ZK_OP_CREATE = 1, /* path, data, len, flags */
    ZK_OP_SET,        /* path, data, len, version (-1: any) */
    ZK_OP_DELETE,     /* path, version (-1: any) */
    ZK_OP_CHECK,      /* path's version is `version`, else nothing applies */
};

typedef struct zk_op {
    int kind;             /* enum zk_op_kind */
    const char *path;
    const void *data;
    size_t len;
    int32_t version;
    int flags;
} zk_op;

/* The longest transaction (cluster creation: a few nodes per cluster
 * node and group). */
#define ZK_MULTI_OPS_MAX (8 + 2 * LIMIT_CLUSTER_NODES_MAX + \
                          LIMIT_CLUSTER_GROUPS_MAX * (5 + LIMIT_CLUSTER_MEMBERS_MAX))

/* Applies ops[0, n) atomically: all of them, or none.  On failure the
 * error is that of the first operation that failed, and its index goes to
 * *failed when failed is not NULL.  -EINVAL if n is 0 or over
 * ZK_MULTI_OPS_MAX; otherwise as above. */
int zk_multi(zk *z, const zk_op *ops, uint32_t n, uint32_t *failed);

#endif
