/*
 * repl.c — a cluster node: its groups' engines, replication and routing
 * (repl.h says what and why; repl_proto.h the wire format).
 *
 * Threads:
 *   - the cluster's own (cluster.c), whose events only set flags here;
 *   - the manager: turns leadership events into roles, keeps each led
 *     group's in-sync set, starts and stops the followers;
 *   - the listener: accepts replicas on the replication port, one peer
 *     thread each (the leader's side: handshake, then stream and acks);
 *   - one follower thread per group this node follows (the replica's
 *     side: connect, handshake, cut or bootstrap, stream, acknowledge);
 *   - the engines' shard threads, which call back when a batch is
 *     durable and may be acknowledged.
 * Nothing spins: threads block in poll(), on condition variables, or in
 * the engines.
 *
 * Locks: r->mu guards the events and the list of peers; each group's
 * mu its members' replication state; its lock (a rwlock) its engine
 * pointer, held for reading only around a call into the engine and for
 * writing only to swap it (a reopen).
 */
#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "log.h"
#include "os.h"
#include "repl.h"
#include "repl_proto.h"
#include "snapshot.h"
#include "sock.h"
#include "zk.h"

/* ---- constants ------------------------------------------------------------------ */

/* A leader sends a heartbeat (its commit seq) this often when idle. */
#define REPL_HEARTBEAT_MS 200
/* A replica that heard nothing from its leader for this long reconnects. */
#define REPL_SILENCE_MS 3000
#define REPL_CONNECT_MS 2000
#define REPL_HANDSHAKE_MS 5000
/* Sending a frame may take this long before the connection is dropped. */
#define REPL_SEND_MS 10000
/* Between attempts to reach a leader. */
#define REPL_RETRY_MS 200
/* The manager's turn. */
#define REPL_TICK_MS 100
/* An in-sync replica disconnected (or, --ack local, too far behind) for
 * this long leaves the in-sync set (when it may). */
#define REPL_DROP_MS 1500
/* --ack local: "too far behind". */
#define REPL_LOCAL_LAG_RECORDS 100000
/* A replica is caught up if it acknowledged the leader's durable seq this
 * recently. */
#define REPL_CAUGHT_MS 1000
/* Records a leader sends ahead of a replica's acknowledgement. */
#define REPL_WINDOW_RECORDS 200000
/* Chunks a replica has in its engine at once. */
#define REPL_CHUNKS 4

static_assert(REPL_CHUNKS >= 2, "a replica reads the next chunk while one flushes");

/* ---- types ---------------------------------------------------------------------- */

typedef struct repl_group repl_group;

/* The leader's view of one member. */
typedef struct repl_member {
    uint32_t gen;      /* the peer thread that streams to it */
    bool streaming;
    uint64_t acked;    /* its durable seq, as acknowledged */
    uint64_t seen_ms;  /* last streaming (monotonic) */
    uint64_t caught_ms; /* last acknowledged the durable seq */
} repl_member;

/* A replica's chunk in its engine. */
typedef struct repl_chunk {
    tally_replica_chunk c;
    repl_group *gr;
    uint8_t *buf;
    size_t cap;
    _Atomic int state; /* 0 free, 1 in the engine, 2 done */
} repl_chunk;

/* A replica's connection on the leader's side. */
typedef struct repl_peer {
    repl *r;
    int fd;
    int wake_fd; /* new durable records, leadership changes, stop */
    pthread_t thread;
    _Atomic bool finished;
    repl_group *gr; /* once joined */
    struct repl_peer *next;
} repl_peer;

struct repl_group {
    repl *r;
    uint32_t g;
    int member;              /* this node's member index */
    char dir[4200];
    tally_replica replica;
    pthread_rwlock_t lock;   /* t */
    tally *t;
    _Atomic int role;
    _Atomic uint64_t epoch;
    _Atomic uint64_t durable, durable_epoch;
    _Atomic uint64_t replicated, commit, lag;
    _Atomic uint32_t streaming;
    _Atomic int leader_node;
    /* the leader's side (mu) */
    pthread_mutex_t mu;
    repl_member m[LIMIT_CLUSTER_MEMBERS_MAX];
    uint32_t ackset, joining;
    uint64_t unconfirmed_ms; /* since when no ack set member streams (0: one does) */
    bool lease_ok;           /* the manager's last look at may_ack */
    /* the follower thread */
    pthread_t fthread;
    bool frunning;
    _Atomic bool fstop;
    int fwake_fd;            /* its chunks completed, or stop */
    uint64_t max_epoch;      /* the highest leader epoch it accepted */
    repl_chunk chunks[REPL_CHUNKS];
    /* events from the cluster (r->mu) */
    bool ev_deposed;
};

struct repl {
    repl_options o;            /* its strings point into the copies below */
    char zk_hosts[LIMIT_ZK_HOSTS_BYTES_MAX + 1];
    char name[LIMIT_CLUSTER_NAME_BYTES_MAX + 1];
    char node_id[LIMIT_CLUSTER_NODE_ID_BYTES_MAX + 1];
    char dir[4096];
    char bind[256];
    uint8_t secret[REPL_SECRET_BYTES_MAX];
    size_t secret_len;
    cluster *c;
    uint32_t self;
    uint32_t group_count;
    repl_group *groups[LIMIT_CLUSTER_GROUPS_MAX];
    int listen_fd;
    int stop_fd;
    pthread_t listen_thread, mgr_thread;
    bool listening, managing;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop, dirty;
    repl_peer *peers;
};

/* ---- small helpers ----------------------------------------------------------------- */

static void repl_say(repl *r, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void repl_say(repl *r, int level, const char *fmt, ...)
{
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    int n = snprintf(msg, sizeof(msg), "cluster %s: ", r->o.name);
    vsnprintf(msg + n, sizeof(msg) - (size_t)n, fmt, ap);
    va_end(ap);
    if (r->o.log)
        r->o.log(r->o.log_ctx, level, msg);
    else
        fprintf(stderr, "tallyd: %s\n", msg);
}

static void repl_ring(int fd)
{
    uint64_t one = 1;
    ssize_t w = write(fd, &one, sizeof(one));
    (void)w; /* a full counter still wakes the reader */
}

static void repl_drain(int fd)
{
    uint64_t v;
    ssize_t n = read(fd, &v, sizeof(v));
    (void)n;
}

const char *repl_role_name(int role)
{
    return role == REPL_LEADER ? "leader" : role == REPL_FOLLOWER ? "replica" : "none";
}

static void repl_wake_manager(repl *r)
{
    pthread_mutex_lock(&r->mu);
    r->dirty = true;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

/* ---- engines ------------------------------------------------------------------------ */

/* The group's engine, held for reading (release with repl_engine_put):
 * NULL while it is being reopened. */
static tally *repl_engine_get(repl_group *gr)
{
    pthread_rwlock_rdlock(&gr->lock);
    if (gr->t == NULL)
        pthread_rwlock_unlock(&gr->lock);
    return gr->t;
}

static void repl_engine_put(repl_group *gr) { pthread_rwlock_unlock(&gr->lock); }

/* A shard thread: may the leader acknowledge now? */
static bool repl_may_ack(void *ctx)
{
    repl_group *gr = ctx;
    uint64_t e = 0;
    return atomic_load(&gr->role) == REPL_LEADER && cluster_lease(gr->r->c, gr->g, &e) &&
           e == atomic_load(&gr->epoch);
}

static void repl_ack_update(repl_group *gr);

/* A shard thread: a batch is durable. */
static void repl_on_durable(void *ctx, uint64_t seq, uint32_t epoch)
{
    repl_group *gr = ctx;
    atomic_store(&gr->durable, seq);
    atomic_store(&gr->durable_epoch, epoch);
    cluster_position(gr->r->c, gr->g, (cluster_pos){.log_epoch = epoch, .seq = seq});
    if (atomic_load(&gr->role) != REPL_LEADER)
        return;
    pthread_mutex_lock(&gr->mu);
    repl_ack_update(gr);
    pthread_mutex_unlock(&gr->mu);
    pthread_mutex_lock(&gr->r->mu);
    for (repl_peer *p = gr->r->peers; p; p = p->next)
        if (p->gr == gr)
            repl_ring(p->wake_fd);
    pthread_mutex_unlock(&gr->r->mu);
}

/* Opens the group's engine (recovering it) and makes it current; cut
 * and first as tally_replica says.  Reports its position. */
static int repl_engine_open(repl_group *gr, uint64_t cut_after, uint64_t first_seq,
                            uint64_t first_prev)
{
    repl *r = gr->r;
    gr->replica = (tally_replica){.may_ack = repl_may_ack, .on_durable = repl_on_durable,
                                  .ctx = gr, .cut_after = cut_after, .first_seq = first_seq,
                                  .first_prev = first_prev};
    tally_options to = r->o.engine;
    to.dir = gr->dir;
    to.shards = 1;
    to.replica = &gr->replica;
    tally *t = NULL;
    int rc = tally_open(&to, &t);
    if (rc < 0) {
        repl_say(r, 2, "group %" PRIu32 ": opening %s: %s", gr->g, gr->dir, tally_strerror(rc));
        return rc;
    }
    tally_shard_stats st;
    tally_shard_stats_get(t, 0, &st);
    if (st.status != 0) {
        repl_say(r, 2, "group %" PRIu32 ": %s", gr->g, st.status_message);
        tally_close(t);
        return st.status;
    }
    atomic_store(&gr->durable, st.durable_seq);
    atomic_store(&gr->durable_epoch, st.durable_epoch);
    atomic_store(&gr->commit, st.commit_seq);
    pthread_rwlock_wrlock(&gr->lock);
    gr->t = t;
    pthread_rwlock_unlock(&gr->lock);
    cluster_position(r->c, gr->g,
                     (cluster_pos){.log_epoch = st.durable_epoch, .seq = st.durable_seq});
    return 0;
}

/* Takes the engine away (requests get TALLY_ETRYAGAIN meanwhile) and
 * closes it: it answers what it holds. */
static void repl_engine_close(repl_group *gr)
{
    pthread_rwlock_wrlock(&gr->lock);
    tally *t = gr->t;
    gr->t = NULL;
    pthread_rwlock_unlock(&gr->lock);
    tally_close(t);
}

/* Removes a directory tree (missing is fine). */
static int repl_rmtree(const char *path)
{
    if (access(path, F_OK) != 0)
        return 0;
    return os_remove_tree(path);
}

/* Moves the group's directory aside and removes it: the replica starts
 * over from nothing (its leader streams from seq 1, or sends a snapshot). */
static int repl_wipe(repl_group *gr)
{
    char old[4300];
    snprintf(old, sizeof(old), "%s.old", gr->dir);
    int rc = repl_rmtree(old);
    if (rc == 0 && access(gr->dir, F_OK) == 0 && rename(gr->dir, old) != 0)
        rc = -errno;
    if (rc == 0)
        rc = repl_rmtree(old);
    return rc;
}

/* ---- the leader's side: acknowledgements -------------------------------------------- */

/* Recomputes what the leader may acknowledge and checkpoint (gr->mu
 * held): the least seq every member of the ack set acknowledged; with
 * an empty ack set nobody else can be elected, so the durable seq is as
 * safe as it gets (and --ack replicated acknowledges nothing). */
static void repl_ack_update(repl_group *gr)
{
    uint64_t durable = atomic_load(&gr->durable), least = UINT64_MAX;
    for (uint32_t j = 0; j < LIMIT_CLUSTER_MEMBERS_MAX; j++)
        if (gr->ackset & (1u << j) && gr->m[j].acked < least)
            least = gr->m[j].acked;
    uint64_t commit = least < durable ? least : durable;
    atomic_store(&gr->commit, commit);
    atomic_store(&gr->lag, least == UINT64_MAX ? 0 : durable - commit);
    tally *t = repl_engine_get(gr);
    if (t == NULL)
        return;
    tally_replica_commit(t, commit);
    tally_replica_lag(t, least == UINT64_MAX ? 0 : durable - commit);
    if (!gr->r->o.ack_local && least != UINT64_MAX) {
        tally_replica_ack(t, commit);
        atomic_store(&gr->replicated, commit);
    } else if (gr->r->o.ack_local) {
        atomic_store(&gr->replicated, commit);
    }
    repl_engine_put(gr);
}

/* A member acknowledged its durable seq. */
static void repl_member_acked(repl_group *gr, uint32_t j, uint32_t gen, uint64_t seq)
{
    pthread_mutex_lock(&gr->mu);
    repl_member *m = &gr->m[j];
    if (m->gen == gen) {
        uint64_t now = clock_mono_ms();
        if (seq > m->acked)
            m->acked = seq;
        m->seen_ms = now;
        if (m->acked >= atomic_load(&gr->durable))
            m->caught_ms = now;
        repl_ack_update(gr);
    }
    pthread_mutex_unlock(&gr->mu);
}

/* ---- the leader's side: a peer's handshake ----------------------------------------- */

/* The greatest probe at or above the floor where both logs agree, or -1;
 * 0 counts when the leader's log starts at seq 1 (an empty prefix). */
static int64_t repl_match(log_t *log, const repl_join *j)
{
    uint64_t first = log_first_seq(log), durable = log_durable_seq(log);
    int64_t best = -1;
    if (j->floor_seq == 0 && first == 1)
        best = 0;
    for (uint32_t i = 0; i < j->probe_count; i++) {
        const repl_probe *p = &j->probes[i];
        if (p->seq < j->floor_seq || p->seq < first || p->seq > durable ||
            (int64_t)p->seq <= best)
            continue;
        uint64_t sum = 0;
        if (log_checksum_at(log, p->seq, &sum) == 0 && sum == p->sum)
            best = (int64_t)p->seq;
    }
    return best;
}

/* Sends one file of the snapshot in pieces. */
static int repl_send_file(int fd, const char *dir, const char *name)
{
    char path[4400];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    int in = open(path, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return -errno;
    uint8_t *buf = malloc(REPL_SNAP_PIECE_BYTES);
    uint8_t head[64 + 512];
    int rc = buf ? 0 : -ENOMEM;
    uint64_t off = 0;
    size_t name_len = strlen(name);
    for (bool first = true; rc == 0; first = false) {
        ssize_t n = pread(in, buf, REPL_SNAP_PIECE_BYTES, (off_t)off);
        if (n < 0) {
            rc = -errno;
            break;
        }
        if (n == 0 && !first)
            break;
        size_t h = repl_enc_head(REPL_SNAPFILE, 2 + name_len + 8 + (size_t)n, head);
        head[h++] = (uint8_t)name_len;
        head[h++] = (uint8_t)(name_len >> 8);
        memcpy(head + h, name, name_len);
        h += name_len;
        for (int i = 0; i < 8; i++)
            head[h++] = (uint8_t)(off >> (8 * i));
        rc = repl_send2(fd, head, h, buf, (size_t)n, REPL_SEND_MS);
        off += (uint64_t)n;
        if (n == 0)
            break;
    }
    free(buf);
    close(in);
    return rc;
}

/* Sends the newest snapshot (its .mdb, its id index's runs, its .meta
 * last) and SNAPEND; *from: the seq the log is streamed after. */
static int repl_send_snapshot(repl_group *gr, int fd, log_t *log, uint64_t *from)
{
    char dir[4300];
    snprintf(dir, sizeof(dir), "%s/shard-000/snapshots", gr->dir);
    snapshot_info snap;
    uint32_t n = 0;
    int rc = snapshot_list(dir, true, &snap, 1, &n);
    if (rc == 0 && n == 0)
        rc = -ENOENT;
    if (rc < 0)
        return rc;
    const char *mdb = strrchr(snap.path, '/') + 1;
    char base[256], idsname[300], meta[300];
    snprintf(base, sizeof(base), "%.*s", (int)(strlen(mdb) - 4), mdb);
    snprintf(idsname, sizeof(idsname), "%s.ids", base);
    snprintf(meta, sizeof(meta), "%s.meta", base);
    /* The log must continue from the id index's seq: read the record
     * after it for the chain value. */
    record *rec = malloc(sizeof(*rec));
    log_loc loc;
    rc = rec ? log_read_seq(log, snap.ids_seq + 1, rec, &loc) : -ENOMEM;
    uint64_t prev = rc == 0 ? rec->prev : 0;
    free(rec);
    if (rc < 0)
        return rc; /* the log after it is gone (or not there yet): not usable */
    rc = repl_send_file(fd, dir, mdb);
    char idsdir[4700];
    snprintf(idsdir, sizeof(idsdir), "%s/%s", dir, idsname);
    DIR *d = rc == 0 ? opendir(idsdir) : NULL;
    for (struct dirent *e; rc == 0 && d && (e = readdir(d)) != NULL;) {
        if (e->d_name[0] == '.')
            continue;
        char name[600];
        snprintf(name, sizeof(name), "%s/%s", idsname, e->d_name);
        rc = repl_send_file(fd, dir, name);
    }
    if (d)
        closedir(d);
    if (rc == 0)
        rc = repl_send_file(fd, dir, meta);
    uint8_t buf[128];
    repl_snapend se = {.seq = snap.seq, .ids_seq = snap.ids_seq, .first_seq = snap.ids_seq + 1,
                       .first_prev = prev};
    if (rc == 0)
        rc = repl_send(fd, buf, repl_enc_snapend(&se, buf, sizeof(buf)), REPL_SEND_MS);
    if (rc == 0) {
        *from = snap.ids_seq;
        repl_say(gr->r, 0, "group %" PRIu32 ": sent snapshot seq %" PRIu64 " to a replica",
                 gr->g, snap.seq);
    }
    return rc;
}

/* The JOIN: authenticated, for a group this node leads, from one of its
 * members.  *j the member, *gr the group; or a REFUSE is sent. */
static int repl_accept_join(repl_peer *p, const uint8_t *nonce_l, repl_join *jn, uint32_t *j,
                            repl_group **grp, uint64_t *epoch)
{
    repl *r = p->r;
    repl_rx rx = {0};
    repl_frame f;
    int rc = repl_recv(p->fd, &rx, REPL_AUTH_BYTES_MAX, REPL_HANDSHAKE_MS, -1, &f);
    if (rc == 0)
        rc = repl_dec_join(&f, jn);
    repl_rx_free(&rx);
    if (rc < 0)
        return rc;
    uint8_t mac[REPL_MAC_BYTES];
    repl_mac_join(r->secret, r->secret_len, nonce_l, jn->nonce, jn->group, jn->id, mac);
    const char *why = NULL;
    repl_group *gr = jn->group < r->group_count ? r->groups[jn->group] : NULL;
    int member = -1;
    if (jn->version != REPL_VERSION)
        why = "unsupported replication protocol version";
    else if (!repl_mac_equal(mac, jn->mac))
        why = "authentication failed";
    else if (gr == NULL || atomic_load(&gr->role) != REPL_LEADER)
        why = "this node does not lead that group";
    if (why == NULL) {
        const cluster_map *m = cluster_map_acquire(r->c);
        int node = cluster_node_index(m, jn->id);
        member = node < 0 ? -1 : cluster_member_index(&m->groups[gr->g], (uint32_t)node);
        cluster_map_release(r->c, m);
        if (member < 0 || member == gr->member)
            why = "not a member of that group";
    }
    if (why != NULL) {
        uint8_t buf[256];
        repl_send(p->fd, buf, repl_enc_refuse(why, buf, sizeof(buf)), REPL_HANDSHAKE_MS);
        /* Replicas knock while leadership moves: only a bad peer is news. */
        if (gr == NULL || atomic_load(&gr->role) == REPL_LEADER)
            repl_say(r, 1, "replication: refused %s (group %" PRIu32 "): %s", jn->id, jn->group,
                     why);
        return -EACCES;
    }
    *j = (uint32_t)member;
    *grp = gr;
    *epoch = atomic_load(&gr->epoch);
    return 0;
}

/* ---- the leader's side: streaming ---------------------------------------------------- */

typedef struct repl_stream {
    repl_peer *p;
    repl_group *gr;
    log_t *log;
    uint32_t j, gen;
    uint64_t epoch;
    uint64_t sent, acked;
    uint8_t *frame;
    size_t cap;
    repl_rx rx;
    uint64_t beat_ms;
} repl_stream;

/* Fills s->frame with the durable records after s->sent, cut at the end
 * of a write once past LIMIT_REPL_CHUNK_BYTES.  Its length, 0 if none;
 * < 0 on error (TALLY_EARCHIVED: the replica needs a snapshot). */
static int64_t repl_build_frame(repl_stream *s, uint64_t *last)
{
    log_iter it;
    int rc = log_iter_init(s->log, s->sent, &it);
    if (rc < 0)
        return rc;
    const size_t head = REPL_HEAD_BYTES + 16;
    size_t len = head;
    record *r = malloc(sizeof(*r));
    if (!r)
        return -ENOMEM;
    for (;;) {
        if (len + LIMIT_RECORD_BYTES_MAX > s->cap) {
            size_t cap = s->cap ? s->cap * 2 : LIMIT_REPL_CHUNK_BYTES + 64 * 1024;
            uint8_t *nb = cap <= REPL_FRAME_BYTES_MAX ? realloc(s->frame, cap) : NULL;
            if (!nb) {
                rc = -ENOMEM;
                break;
            }
            s->frame = nb;
            s->cap = cap;
        }
        size_t n = 0;
        rc = log_iter_next_raw(&it, r, s->frame + len, &n);
        if (rc <= 0)
            break;
        len += n;
        *last = r->seq;
        if (len - head >= LIMIT_REPL_CHUNK_BYTES && record_ends_write(r))
            break;
    }
    free(r);
    if (rc < 0)
        return rc;
    if (len == head)
        return 0;
    repl_enc_head(REPL_RECORDS, len - REPL_HEAD_BYTES, s->frame);
    uint64_t v[2] = {s->epoch, atomic_load(&s->gr->commit)};
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < 8; i++)
            s->frame[REPL_HEAD_BYTES + 8 * k + i] = (uint8_t)(v[k] >> (8 * i));
    return (int64_t)len;
}

/* Whether this peer should stop streaming: the node no longer leads the
 * group with this epoch, or is closing. */
static bool repl_stream_over(const repl_stream *s)
{
    repl *r = s->p->r;
    pthread_mutex_lock(&r->mu);
    bool stop = r->stop;
    pthread_mutex_unlock(&r->mu);
    return stop || atomic_load(&s->gr->role) != REPL_LEADER ||
           atomic_load(&s->gr->epoch) != s->epoch;
}

static int repl_stream_beat(repl_stream *s)
{
    uint8_t buf[64];
    uint64_t v[3] = {s->epoch, atomic_load(&s->gr->commit), log_durable_seq(s->log)};
    s->beat_ms = clock_mono_ms();
    return repl_send(s->p->fd, buf, repl_enc_u64s(REPL_COMMIT, v, 3, buf, sizeof(buf)),
                     REPL_SEND_MS);
}

/* Reads acknowledgements (waiting up to wait_ms, or until woken). */
static int repl_stream_acks(repl_stream *s, int wait_ms)
{
    repl_frame f;
    int rc = repl_recv(s->p->fd, &s->rx, 64, wait_ms, s->p->wake_fd, &f);
    if (rc == -EINTR) {
        repl_drain(s->p->wake_fd);
        return 0;
    }
    if (rc == -ETIMEDOUT)
        return 0;
    if (rc < 0)
        return rc;
    uint64_t seq;
    const uint8_t *rest;
    size_t rest_len;
    if (f.type != REPL_ACK || repl_dec_u64s(&f, &seq, 1, &rest, &rest_len) < 0 || rest_len ||
        seq > s->sent)
        return -EPROTO;
    s->acked = seq;
    repl_member_acked(s->gr, s->j, s->gen, seq);
    return 0;
}

static int repl_stream_run(repl_stream *s)
{
    int rc = 0;
    while (rc == 0 && !repl_stream_over(s)) {
        uint64_t durable = log_durable_seq(s->log);
        if (s->sent < durable && s->sent - s->acked < REPL_WINDOW_RECORDS) {
            uint64_t last = s->sent;
            int64_t len = repl_build_frame(s, &last);
            if (len < 0)
                return (int)len;
            if (len > 0) {
                rc = repl_send(s->p->fd, s->frame, (size_t)len, REPL_SEND_MS);
                s->sent = last;
                s->beat_ms = clock_mono_ms();
            }
            if (rc == 0)
                rc = repl_stream_acks(s, 0);
            continue;
        }
        uint64_t now = clock_mono_ms();
        if (now - s->beat_ms >= REPL_HEARTBEAT_MS) {
            rc = repl_stream_beat(s);
            continue;
        }
        rc = repl_stream_acks(s, (int)(REPL_HEARTBEAT_MS - (now - s->beat_ms)));
    }
    return rc;
}

static void *repl_peer_main(void *arg)
{
    repl_peer *p = arg;
    repl *r = p->r;
    repl_hello hello = {.version = REPL_VERSION};
    uint8_t buf[256];
    repl_join *jn = calloc(1, sizeof(*jn));
    repl_stream s = {.p = p};
    int rc = jn ? repl_nonce(hello.nonce) : -ENOMEM;
    if (rc == 0)
        rc = repl_send(p->fd, buf, repl_enc_hello(&hello, buf, sizeof(buf)), REPL_HANDSHAKE_MS);
    if (rc == 0)
        rc = repl_accept_join(p, hello.nonce, jn, &s.j, &s.gr, &s.epoch);
    tally *t = rc == 0 ? repl_engine_get(s.gr) : NULL;
    if (rc == 0 && t == NULL)
        rc = -EAGAIN;
    if (t) {
        /* The log of a group this node leads stays open while it leads. */
        s.log = tally_replica_log(t);
        repl_engine_put(s.gr);
    }
    int64_t match = rc == 0 ? repl_match(s.log, jn) : -1;
    repl_welcome w = {.epoch = s.epoch, .match_seq = match < 0 ? 0 : (uint64_t)match,
                      .snapshot = match < 0};
    if (rc == 0) {
        w.leader_seq = log_durable_seq(s.log);
        repl_mac_welcome(r->secret, r->secret_len, jn->nonce, hello.nonce, s.epoch, w.mac);
        rc = repl_send(p->fd, buf, repl_enc_welcome(&w, buf, sizeof(buf)), REPL_HANDSHAKE_MS);
    }
    if (rc == 0) {
        pthread_mutex_lock(&r->mu);
        p->gr = s.gr; /* from now on woken by its durable records */
        pthread_mutex_unlock(&r->mu);
        pthread_mutex_lock(&s.gr->mu);
        repl_member *m = &s.gr->m[s.j];
        s.gen = ++m->gen;
        m->streaming = true;
        m->acked = w.snapshot ? 0 : w.match_seq;
        m->seen_ms = clock_mono_ms();
        atomic_fetch_add(&s.gr->streaming, 1);
        repl_ack_update(s.gr);
        pthread_mutex_unlock(&s.gr->mu);
        repl_say(r, 0, "group %" PRIu32 ": replica %s joined at seq %" PRIu64 "%s", s.gr->g,
                 jn->id, w.match_seq, w.snapshot ? " (needs a snapshot)" : "");
        s.sent = w.match_seq;
        s.acked = s.sent;
        if (w.snapshot)
            rc = repl_send_snapshot(s.gr, p->fd, s.log, &s.sent);
        if (rc == 0)
            rc = repl_stream_run(&s);
        pthread_mutex_lock(&s.gr->mu);
        if (m->gen == s.gen) {
            m->streaming = false;
            m->seen_ms = clock_mono_ms();
        }
        atomic_fetch_sub(&s.gr->streaming, 1);
        pthread_mutex_unlock(&s.gr->mu);
        repl_say(r, rc == 0 ? 0 : 1, "group %" PRIu32 ": replica %s left at seq %" PRIu64 ": %s",
                 s.gr->g, jn->id, s.acked, rc == 0 ? "leadership moved" : tally_strerror(rc));
    }
    free(s.frame);
    repl_rx_free(&s.rx);
    free(jn);
    close(p->fd);
    p->fd = -1;
    atomic_store(&p->finished, true);
    repl_wake_manager(r);
    return NULL;
}

/* ---- the replica's side ------------------------------------------------------------- */

typedef struct repl_follow {
    repl_group *gr;
    int fd;
    uint32_t leader;
    uint64_t epoch;
    uint64_t commit;
    uint64_t heard_ms;
    uint32_t oldest, inflight;
    repl_rx rx;
} repl_follow;

/* Where this replica's log stands, with the probes that find where it
 * parts from the leader's (repl_proto.h). */
static void repl_position(repl_group *gr, repl_join *jn)
{
    tally *t = repl_engine_get(gr);
    if (t == NULL)
        return; /* nothing usable: last 0, floor 0, the leader starts it over */
    tally_shard_stats *st = malloc(sizeof(*st));
    if (st && tally_shard_stats_get(t, 0, st) == 0) {
        log_t *log = tally_replica_log(t);
        jn->log_epoch = st->durable_epoch;
        jn->last_seq = st->durable_seq;
        jn->floor_seq = st->checkpoint_seq;
        uint64_t first = log_first_seq(log), step = 1, seq = jn->last_seq;
        uint32_t n = 0;
        while (seq >= first && seq > jn->floor_seq && n + 1 < REPL_PROBES_MAX) {
            uint64_t sum;
            if (log_checksum_at(log, seq, &sum) == 0)
                jn->probes[n++] = (repl_probe){.seq = seq, .sum = sum};
            if (n >= 16)
                step *= 2;
            seq = seq > step ? seq - step : 0;
        }
        uint64_t sum;
        if (jn->floor_seq >= first && jn->floor_seq > 0 &&
            log_checksum_at(log, jn->floor_seq, &sum) == 0)
            jn->probes[n++] = (repl_probe){.seq = jn->floor_seq, .sum = sum};
        jn->probe_count = n;
    }
    free(st);
    repl_engine_put(gr);
}

/* HELLO, JOIN, WELCOME: *w the leader's answer. */
static int repl_handshake(repl_follow *f, repl_welcome *w)
{
    repl_group *gr = f->gr;
    repl *r = gr->r;
    repl_frame fr;
    repl_hello hello;
    int rc = repl_recv(f->fd, &f->rx, REPL_AUTH_BYTES_MAX, REPL_HANDSHAKE_MS, -1, &fr);
    if (rc == 0)
        rc = repl_dec_hello(&fr, &hello);
    if (rc == 0 && hello.version != REPL_VERSION)
        rc = -EPROTO;
    repl_join *jn = rc == 0 ? calloc(1, sizeof(*jn)) : NULL;
    if (rc == 0 && !jn)
        rc = -ENOMEM;
    if (rc == 0)
        rc = repl_nonce(jn->nonce);
    uint8_t buf[REPL_AUTH_BYTES_MAX];
    if (rc == 0) {
        jn->version = REPL_VERSION;
        jn->group = gr->g;
        snprintf(jn->id, sizeof(jn->id), "%s", r->o.node_id);
        repl_mac_join(r->secret, r->secret_len, hello.nonce, jn->nonce, gr->g, jn->id, jn->mac);
        repl_position(gr, jn);
        rc = repl_send(f->fd, buf, repl_enc_join(jn, buf, sizeof(buf)), REPL_HANDSHAKE_MS);
    }
    if (rc == 0)
        rc = repl_recv(f->fd, &f->rx, REPL_AUTH_BYTES_MAX, REPL_HANDSHAKE_MS, -1, &fr);
    if (rc == 0 && fr.type == REPL_REFUSE) {
        if (fr.len < 20 || memcmp(fr.p, "this node does not l", 20) != 0)
            repl_say(r, 1, "group %" PRIu32 ": the leader refused: %.*s", gr->g, (int)fr.len,
                     (const char *)fr.p);
        rc = -EAGAIN; /* a leader not yet taken up its lease: again shortly */
    }
    if (rc == 0)
        rc = repl_dec_welcome(&fr, w);
    uint8_t mac[REPL_MAC_BYTES];
    if (rc == 0) {
        repl_mac_welcome(r->secret, r->secret_len, jn->nonce, hello.nonce, w->epoch, mac);
        if (!repl_mac_equal(mac, w->mac)) {
            repl_say(r, 2, "group %" PRIu32 ": the leader failed authentication", gr->g);
            rc = -EACCES;
        }
    }
    /* Followers reject an older epoch than one they followed. */
    if (rc == 0 && (w->epoch < gr->max_epoch || w->epoch != f->epoch)) {
        repl_say(r, 1, "group %" PRIu32 ": leader's epoch %" PRIu64 " is not the lease's (%"
                       PRIu64 ") or is older than %" PRIu64 ": refused",
                 gr->g, w->epoch, f->epoch, gr->max_epoch);
        rc = -ESTALE;
    }
    free(jn);
    return rc;
}

/* A chunk is durable (or failed): the follower thread acknowledges it. */
static void repl_chunk_done(tally_request *req)
{
    repl_chunk *c = (repl_chunk *)(void *)req;
    atomic_store(&c->state, 2);
    repl_ring(c->gr->fwake_fd);
}

static int repl_send_ack(repl_follow *f, uint64_t seq)
{
    uint8_t buf[32];
    return repl_send(f->fd, buf, repl_enc_u64s(REPL_ACK, &seq, 1, buf, sizeof(buf)),
                     REPL_SEND_MS);
}

/* The leader's commit seq moved, or this replica's durable seq did: its
 * checkpoints may reach the lesser. */
static void repl_follow_commit(repl_follow *f)
{
    repl_group *gr = f->gr;
    uint64_t durable = atomic_load(&gr->durable);
    uint64_t c = f->commit < durable ? f->commit : durable;
    atomic_store(&gr->replicated, c);
    atomic_store(&gr->commit, c);
    tally *t = repl_engine_get(gr);
    if (t) {
        tally_replica_commit(t, c);
        repl_engine_put(gr);
    }
}

/* Acknowledges the chunks done, in order.  < 0 if one failed. */
static int repl_follow_reap(repl_follow *f)
{
    repl_group *gr = f->gr;
    while (f->inflight > 0) {
        repl_chunk *c = &gr->chunks[f->oldest];
        if (atomic_load(&c->state) != 2)
            break;
        int st = c->c.req.res.status;
        uint64_t seq = c->c.last_seq;
        atomic_store(&c->state, 0);
        f->oldest = (f->oldest + 1) % REPL_CHUNKS;
        f->inflight--;
        if (st != 0) {
            repl_say(gr->r, 1, "group %" PRIu32 ": leader's records refused: %s", gr->g,
                     c->c.req.res.message);
            return st;
        }
        /* Durable (the engine answers only then): acknowledged. */
        int rc = repl_send_ack(f, seq);
        if (rc < 0)
            return rc;
        repl_follow_commit(f);
    }
    return 0;
}

/* Hands a RECORDS frame's records to the engine. */
static int repl_follow_records(repl_follow *f, const uint8_t *p, size_t len, uint64_t epoch)
{
    repl_group *gr = f->gr;
    uint32_t i = (f->oldest + f->inflight) % REPL_CHUNKS;
    repl_chunk *c = &gr->chunks[i];
    assert(f->inflight < REPL_CHUNKS && atomic_load(&c->state) == 0);
    if (len > c->cap) {
        uint8_t *nb = realloc(c->buf, len);
        if (!nb)
            return -ENOMEM;
        c->buf = nb;
        c->cap = len;
    }
    memcpy(c->buf, p, len);
    tally_request_reset(&c->c.req);
    c->c.req.done = repl_chunk_done;
    c->c.buf = c->buf;
    c->c.len = len;
    c->c.epoch = (uint32_t)epoch;
    c->gr = gr;
    atomic_store(&c->state, 1);
    f->inflight++;
    tally *t = repl_engine_get(gr);
    if (t == NULL) {
        atomic_store(&c->state, 2);
        c->c.req.res.status = TALLY_ETRYAGAIN;
        return 0;
    }
    tally_replica_append(t, &c->c);
    repl_engine_put(gr);
    return 0;
}

/* Whether the map still names the leader this replica follows. */
static bool repl_follow_current(repl_follow *f)
{
    repl *r = f->gr->r;
    const cluster_map *m = cluster_map_acquire(r->c);
    const cluster_group *g = &m->groups[f->gr->g];
    bool same = g->leased && g->leader == (int32_t)f->leader && g->leader_epoch == f->epoch;
    cluster_map_release(r->c, m);
    return same && !atomic_load(&f->gr->fstop);
}

/* Streams from the leader until it goes, moves, or falls silent. */
static int repl_follow_stream(repl_follow *f)
{
    repl_group *gr = f->gr;
    int rc = 0;
    f->heard_ms = clock_mono_ms();
    while (rc == 0 && repl_follow_current(f)) {
        rc = repl_follow_reap(f);
        if (rc < 0)
            break;
        uint64_t now = clock_mono_ms();
        if (now - f->heard_ms > REPL_SILENCE_MS)
            return -ETIMEDOUT;
        int wait = (int)(REPL_SILENCE_MS - (now - f->heard_ms));
        if (f->inflight == REPL_CHUNKS) {
            struct pollfd p = {.fd = gr->fwake_fd, .events = POLLIN};
            if (poll(&p, 1, wait) > 0)
                repl_drain(gr->fwake_fd);
            continue;
        }
        repl_frame fr;
        rc = repl_recv(f->fd, &f->rx, REPL_FRAME_BYTES_MAX, wait, gr->fwake_fd, &fr);
        if (rc == -EINTR || rc == -ETIMEDOUT) {
            if (rc == -EINTR)
                repl_drain(gr->fwake_fd);
            rc = 0;
            continue;
        }
        if (rc < 0)
            break;
        f->heard_ms = clock_mono_ms();
        uint64_t v[3];
        const uint8_t *rest;
        size_t rest_len;
        if (fr.type == REPL_RECORDS && repl_dec_u64s(&fr, v, 2, &rest, &rest_len) == 0 &&
            v[0] == f->epoch && rest_len > 0) {
            f->commit = v[1];
            rc = repl_follow_records(f, rest, rest_len, v[0]);
        } else if (fr.type == REPL_COMMIT && repl_dec_u64s(&fr, v, 3, &rest, &rest_len) == 0 &&
                   v[0] == f->epoch && rest_len == 0) {
            f->commit = v[1];
            repl_follow_commit(f);
        } else {
            rc = -EPROTO;
        }
    }
    return rc;
}

/* Waits for the chunks still in the engine (each is answered: applied
 * and durable, or refused). */
static void repl_follow_settle(repl_follow *f)
{
    while (f->inflight > 0) {
        repl_chunk *c = &f->gr->chunks[f->oldest];
        if (atomic_load(&c->state) != 2) {
            struct pollfd p = {.fd = f->gr->fwake_fd, .events = POLLIN};
            if (poll(&p, 1, 1000) > 0)
                repl_drain(f->gr->fwake_fd);
            continue;
        }
        atomic_store(&c->state, 0);
        f->oldest = (f->oldest + 1) % REPL_CHUNKS;
        f->inflight--;
    }
}

/* Writes a piece of a snapshot file into the staging directory. */
static int repl_boot_piece(const char *snaps, const repl_frame *fr)
{
    char name[512], path[5200];
    uint64_t off;
    const uint8_t *data;
    size_t len;
    int rc = repl_dec_snapfile(fr, name, sizeof(name), &off, &data, &len);
    if (rc < 0)
        return rc;
    char *slash = strchr(name, '/');
    if (slash) {
        *slash = 0;
        snprintf(path, sizeof(path), "%s/%s", snaps, name);
        if (mkdir(path, 0755) < 0 && errno != EEXIST)
            return -errno;
        *slash = '/';
    }
    snprintf(path, sizeof(path), "%s/%s", snaps, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    rc = len ? os_pwrite_all(os_default(), fd, data, len, off) : 0;
    if (rc == 0 && fdatasync(fd) < 0)
        rc = -errno;
    close(fd);
    return rc;
}

/* Appends a RECORDS frame to the bootstrap log, flushed. */
static int repl_boot_records(repl_follow *f, log_t *log, const repl_frame *fr)
{
    uint64_t v[2];
    const uint8_t *p;
    size_t len;
    if (repl_dec_u64s(fr, v, 2, &p, &len) < 0 || v[0] != f->epoch)
        return -EPROTO;
    f->commit = v[1];
    record *r = malloc(sizeof(*r));
    int rc = r ? 0 : -ENOMEM;
    for (size_t off = 0; rc == 0 && off < len;) {
        size_t n;
        uint64_t sum;
        if (record_decode(p + off, len - off, r, &n, &sum) != RECORD_OK) {
            rc = -EPROTO;
            break;
        }
        if (!log_batch_room(log, n))
            rc = log_flush_sync(log);
        if (rc == 0)
            rc = log_append_raw(log, p + off, n, r, &(log_loc){0});
        off += n;
    }
    free(r);
    if (rc == 0)
        rc = log_flush_sync(log);
    if (rc == 0)
        rc = repl_send_ack(f, log_last_seq(log));
    return rc;
}

/* A replica the leader's retained log no longer reaches: the leader's
 * snapshot and the log after it are written into DIR/group-G.boot (the
 * engine closed), which then takes the group directory's place and opens
 * (its state restored from the snapshot, the log replayed after it). */
static int repl_bootstrap(repl_follow *f)
{
    repl_group *gr = f->gr;
    repl *r = gr->r;
    char boot[4300], shard[4400], snaps[4500];
    snprintf(boot, sizeof(boot), "%s.boot", gr->dir);
    snprintf(shard, sizeof(shard), "%s/shard-000", boot);
    snprintf(snaps, sizeof(snaps), "%s/snapshots", shard);
    repl_engine_close(gr);
    int rc = repl_rmtree(boot);
    if (rc == 0 && (mkdir(boot, 0755) < 0 || mkdir(shard, 0755) < 0 || mkdir(snaps, 0755) < 0))
        rc = -errno;
    repl_frame fr;
    repl_snapend se = {0};
    while (rc == 0) {
        rc = repl_recv(f->fd, &f->rx, REPL_FRAME_BYTES_MAX, REPL_SILENCE_MS * 10, -1, &fr);
        if (rc == 0 && fr.type == REPL_SNAPEND) {
            rc = repl_dec_snapend(&fr, &se);
            break;
        }
        if (rc == 0)
            rc = fr.type == REPL_SNAPFILE ? repl_boot_piece(snaps, &fr) : -EPROTO;
    }
    log_t *log = NULL;
    log_recovery rec;
    log_options lo = {.dir = shard, .shard = 0, .segment_bytes = r->o.engine.segment_bytes,
                      .from_seq = se.first_seq - 1, .first_seq = se.first_seq,
                      .first_prev = se.first_prev};
    if (rc == 0)
        rc = log_open(&lo, &log, &rec);
    while (rc == 0 && log_last_seq(log) < se.seq) {
        rc = repl_recv(f->fd, &f->rx, REPL_FRAME_BYTES_MAX, REPL_SILENCE_MS * 10, -1, &fr);
        if (rc == 0 && fr.type == REPL_RECORDS)
            rc = repl_boot_records(f, log, &fr);
        else if (rc == 0 && fr.type != REPL_COMMIT)
            rc = -EPROTO;
    }
    log_close(log);
    char old[4300];
    snprintf(old, sizeof(old), "%s.old", gr->dir);
    if (rc == 0)
        rc = repl_rmtree(old);
    if (rc == 0 && access(gr->dir, F_OK) == 0 && rename(gr->dir, old) < 0)
        rc = -errno;
    if (rc == 0 && rename(boot, gr->dir) < 0)
        rc = -errno;
    if (rc == 0)
        rc = os_default()->fsync_dir(os_default()->ctx, r->dir);
    if (rc == 0)
        rc = repl_rmtree(old);
    if (rc == 0)
        rc = repl_engine_open(gr, 0, 0, 0);
    repl_say(r, rc == 0 ? 0 : 2, "group %" PRIu32 ": bootstrapped from the leader's snapshot seq %"
                                 PRIu64 ": %s", gr->g, se.seq, tally_strerror(rc));
    return rc;
}

/* After the WELCOME: keeps the log up to the common prefix (reopening
 * the engine with the rest cut), or starts over from nothing, or takes a
 * snapshot. */
static int repl_follow_align(repl_follow *f, const repl_welcome *w)
{
    repl_group *gr = f->gr;
    if (w->snapshot)
        return repl_bootstrap(f);
    tally *t = repl_engine_get(gr);
    uint64_t last = 0, floor = 0;
    if (t) {
        tally_shard_stats *st = malloc(sizeof(*st));
        if (st && tally_shard_stats_get(t, 0, st) == 0) {
            last = st->durable_seq;
            floor = st->checkpoint_seq;
        }
        free(st);
        repl_engine_put(gr);
    }
    if (t && w->match_seq >= floor && w->match_seq == last)
        return 0;
    int rc = 0;
    if (t && w->match_seq >= floor) {
        repl_say(gr->r, 1, "group %" PRIu32 ": dropping seq %" PRIu64 "..%" PRIu64
                           ": its leader (epoch %" PRIu64 ") does not have them",
                 gr->g, w->match_seq + 1, last, w->epoch);
        repl_engine_close(gr);
        return repl_engine_open(gr, w->match_seq, 0, 0);
    }
    if (w->match_seq != 0)
        return -EPROTO;
    repl_say(gr->r, 1, "group %" PRIu32 ": starting over from its leader's seq 1", gr->g);
    if (t)
        repl_engine_close(gr);
    rc = repl_wipe(gr);
    return rc < 0 ? rc : repl_engine_open(gr, 0, 0, 0);
}

/* One connection to the current leader, start to end. */
static int repl_follow_once(repl_group *gr)
{
    repl *r = gr->r;
    repl_follow f = {.gr = gr, .fd = -1};
    char host[LIMIT_CLUSTER_HOST_BYTES_MAX + 1];
    uint16_t port = 0;
    const cluster_map *m = cluster_map_acquire(r->c);
    const cluster_group *g = &m->groups[gr->g];
    int leader = g->leased ? g->leader : -1;
    if (leader >= 0 && (uint32_t)leader != r->self) {
        f.leader = (uint32_t)leader;
        f.epoch = g->leader_epoch;
        snprintf(host, sizeof(host), "%s", m->nodes[leader].host);
        port = m->nodes[leader].repl_port;
    }
    cluster_map_release(r->c, m);
    atomic_store(&gr->leader_node, port ? leader : -1);
    if (port == 0)
        return -EAGAIN; /* no leader (an election), or this node: wait */
    int rc = sock_connect(host, port, REPL_CONNECT_MS, &f.fd);
    repl_welcome w;
    if (rc == 0)
        rc = repl_handshake(&f, &w);
    if (rc == 0) {
        gr->max_epoch = w.epoch;
        atomic_store(&gr->epoch, w.epoch);
        rc = repl_follow_align(&f, &w);
    }
    if (rc == 0) {
        repl_say(r, 0, "group %" PRIu32 ": following %s (epoch %" PRIu64 ") from seq %" PRIu64,
                 gr->g, host, w.epoch, atomic_load(&gr->durable));
        f.commit = 0;
        rc = repl_follow_stream(&f);
    }
    repl_follow_settle(&f);
    if (f.fd >= 0)
        close(f.fd);
    repl_rx_free(&f.rx);
    return rc;
}

static void *repl_follow_main(void *arg)
{
    repl_group *gr = arg;
    while (!atomic_load(&gr->fstop)) {
        int rc = repl_follow_once(gr);
        if (rc < 0 && rc != -EAGAIN && !atomic_load(&gr->fstop))
            repl_say(gr->r, 0, "group %" PRIu32 ": replication from the leader stopped: %s",
                     gr->g, tally_strerror(rc));
        struct pollfd p = {.fd = gr->fwake_fd, .events = POLLIN};
        if (!atomic_load(&gr->fstop) && poll(&p, 1, REPL_RETRY_MS) > 0)
            repl_drain(gr->fwake_fd);
    }
    return NULL;
}

static void repl_follow_start(repl_group *gr)
{
    if (gr->frunning)
        return;
    atomic_store(&gr->fstop, false);
    gr->frunning = pthread_create(&gr->fthread, NULL, repl_follow_main, gr) == 0;
}

static void repl_follow_stop(repl_group *gr)
{
    if (!gr->frunning)
        return;
    atomic_store(&gr->fstop, true);
    repl_ring(gr->fwake_fd);
    pthread_join(gr->fthread, NULL);
    gr->frunning = false;
}

/* ---- the manager: roles and in-sync sets --------------------------------------------- */

/* The cluster's thread: record and wake (cluster.h: it must not block). */
static void repl_event(void *ctx, const cluster_event *ev)
{
    repl *r = ctx;
    pthread_mutex_lock(&r->mu);
    repl_group *gr = ev->group < r->group_count ? r->groups[ev->group] : NULL;
    if (gr && ev->kind == CLUSTER_EVENT_DEPOSED)
        gr->ev_deposed = true; /* a lease won is read from cluster_lease() */
    r->dirty = true;
    pthread_cond_signal(&r->cv);
    /* A replica waiting for a leader looks again at once. */
    for (uint32_t g = 0; ev->kind == CLUSTER_EVENT_MAP && g < r->group_count; g++)
        if (r->groups[g] && atomic_load(&r->groups[g]->role) != REPL_LEADER)
            repl_ring(r->groups[g]->fwake_fd);
    pthread_mutex_unlock(&r->mu);
}

/* Wakes the peers streaming group gr's log (leadership moved). */
static void repl_wake_peers(repl_group *gr)
{
    pthread_mutex_lock(&gr->r->mu);
    for (repl_peer *p = gr->r->peers; p; p = p->next)
        if (p->gr == gr)
            repl_ring(p->wake_fd);
    pthread_mutex_unlock(&gr->r->mu);
}

static void repl_promote(repl_group *gr, uint64_t epoch)
{
    repl *r = gr->r;
    repl_follow_stop(gr);
    tally *t = repl_engine_get(gr);
    if (t == NULL) {
        repl_say(r, 2, "group %" PRIu32 ": elected with epoch %" PRIu64 " but its engine is not "
                       "open: resigning", gr->g, epoch);
        cluster_resign(r->c, gr->g);
        atomic_store(&gr->role, REPL_FOLLOWER);
        return;
    }
    const cluster_map *m = cluster_map_acquire(r->c);
    uint32_t insync = m->groups[gr->g].insync;
    cluster_map_release(r->c, m);
    uint64_t now = clock_mono_ms();
    pthread_mutex_lock(&gr->mu);
    gr->ackset = insync & ~(1u << gr->member);
    gr->joining = 0;
    gr->unconfirmed_ms = 0;
    for (uint32_t j = 0; j < LIMIT_CLUSTER_MEMBERS_MAX; j++) {
        repl_member *mb = &gr->m[j];
        *mb = (repl_member){.gen = mb->gen + 1, .seen_ms = now};
    }
    atomic_store(&gr->epoch, epoch);
    atomic_store(&gr->role, REPL_LEADER);
    gr->lease_ok = false;
    tally_replica_lead(t, true, (uint32_t)epoch);
    if (r->o.ack_local)
        tally_replica_ack(t, UINT64_MAX);
    repl_engine_put(gr);
    repl_ack_update(gr);
    pthread_mutex_unlock(&gr->mu);
    repl_say(r, 0, "group %" PRIu32 ": leading with epoch %" PRIu64 " from seq %" PRIu64
                   " (acknowledging %s)", gr->g, epoch, atomic_load(&gr->durable),
             r->o.ack_local ? "after the local flush" : "once a replica has it");
}

static void repl_demote(repl_group *gr)
{
    atomic_store(&gr->role, REPL_FOLLOWER);
    atomic_store(&gr->lag, 0);
    tally *t = repl_engine_get(gr);
    if (t) {
        tally_replica_lead(t, false, 0); /* the requests waiting: TRYAGAIN */
        repl_engine_put(gr);
    }
    repl_wake_peers(gr);
    repl_say(gr->r, 1, "group %" PRIu32 ": no longer leads (epoch %" PRIu64 "); rejoining as a "
                       "replica", gr->g, atomic_load(&gr->epoch));
}

/* Whether member j should leave the in-sync set now (gr->mu held). */
static bool repl_member_bad(repl_group *gr, uint32_t j, uint64_t now)
{
    const repl_member *m = &gr->m[j];
    uint64_t durable = atomic_load(&gr->durable);
    bool gone = !m->streaming && now - m->seen_ms > REPL_DROP_MS;
    bool behind = m->streaming && durable > m->acked + REPL_LOCAL_LAG_RECORDS &&
                  now - m->caught_ms > REPL_DROP_MS;
    if (!gone && !(gr->r->o.ack_local && behind))
        return false;
    if (gr->r->o.ack_local)
        return true;
    /* --ack replicated: only while another one can confirm writes. */
    for (uint32_t k = 0; k < LIMIT_CLUSTER_MEMBERS_MAX; k++)
        if (k != j && (gr->ackset & (1u << k)) && gr->m[k].streaming &&
            now - gr->m[k].caught_ms < REPL_CAUGHT_MS)
            return true;
    return false;
}

/* One look at a led group's in-sync set: at most one fenced write. */
static void repl_insync_turn(repl_group *gr)
{
    repl *r = gr->r;
    const cluster_map *map = cluster_map_acquire(r->c);
    uint32_t zkset = map->groups[gr->g].insync, members = map->groups[gr->g].member_count;
    cluster_map_release(r->c, map);
    uint32_t self = 1u << gr->member, add = 0, drop = 0;
    uint64_t now = clock_mono_ms(), durable = atomic_load(&gr->durable);
    pthread_mutex_lock(&gr->mu);
    for (uint32_t j = 0; j < members && !add && !drop; j++) {
        uint32_t bit = 1u << j;
        repl_member *m = &gr->m[j];
        if (bit == self)
            continue;
        if (m->streaming && m->acked >= durable)
            m->caught_ms = now;
        if (m->streaming)
            m->seen_ms = now;
        bool caught = m->streaming && now - m->caught_ms < REPL_CAUGHT_MS;
        if (!(zkset & bit) && !(gr->ackset & bit) && caught)
            add = bit;
        else if ((zkset & bit) && !(gr->joining & bit) && repl_member_bad(gr, j, now))
            drop = bit;
    }
    if (add) {
        /* In the ack set before it is in sync: nothing is acknowledged
         * without it from now on. */
        gr->ackset |= add;
        gr->joining |= add;
        repl_ack_update(gr);
    }
    pthread_mutex_unlock(&gr->mu);
    if (!add && !drop)
        return;
    uint32_t want = add ? zkset | add | self : (zkset & ~drop) | self;
    int rc = cluster_insync_set(r->c, gr->g, want);
    pthread_mutex_lock(&gr->mu);
    gr->joining &= ~add;
    if (rc < 0 && add)
        gr->ackset &= ~add;
    if (rc == 0 && drop)
        gr->ackset &= ~drop; /* out of the in-sync set first, then not waited for */
    repl_ack_update(gr);
    pthread_mutex_unlock(&gr->mu);
    repl_say(r, rc == 0 ? 0 : 1, "group %" PRIu32 ": %s member %d %s the in-sync set%s%s",
             gr->g, rc == 0 ? "" : "could not move ", __builtin_ctz(add | drop),
             add ? "into" : "out of", rc < 0 ? ": " : "", rc < 0 ? strerror(-rc) : "");
}

/* --ack replicated: when no member of the ack set has streamed for
 * REPL_DROP_MS, the requests waiting for one are answered -TRYAGAIN
 * instead of waiting for its return (new writes are refused at once:
 * repl_route). */
static void repl_expire_turn(repl_group *gr)
{
    if (gr->r->o.ack_local)
        return;
    uint64_t now = clock_mono_ms();
    pthread_mutex_lock(&gr->mu);
    bool any = false;
    for (uint32_t j = 0; j < LIMIT_CLUSTER_MEMBERS_MAX; j++)
        any = any || ((gr->ackset & (1u << j)) && gr->m[j].streaming);
    bool expire = false;
    if (any)
        gr->unconfirmed_ms = 0;
    else if (gr->unconfirmed_ms == 0)
        gr->unconfirmed_ms = now;
    else
        expire = now - gr->unconfirmed_ms > REPL_DROP_MS;
    pthread_mutex_unlock(&gr->mu);
    tally *t = expire ? repl_engine_get(gr) : NULL;
    if (t) {
        tally_replica_expire(t);
        repl_engine_put(gr);
    }
}

static void repl_group_turn(repl_group *gr, bool deposed)
{
    int role = atomic_load(&gr->role);
    if (deposed && role == REPL_LEADER) {
        uint64_t e = 0;
        if (!cluster_lease(gr->r->c, gr->g, &e) || e != atomic_load(&gr->epoch)) {
            repl_demote(gr);
            role = REPL_FOLLOWER;
        }
    }
    /* The lease itself, not only its event: a lease won while ZooKeeper's
     * answers were late (cluster_lease false for a moment) is taken up at
     * the next turn. */
    uint64_t e = 0;
    if (cluster_lease(gr->r->c, gr->g, &e) &&
        (role != REPL_LEADER || atomic_load(&gr->epoch) != e)) {
        if (role == REPL_LEADER)
            repl_demote(gr);
        repl_promote(gr, e);
        role = atomic_load(&gr->role);
    }
    if (role == REPL_NONE) {
        atomic_store(&gr->role, REPL_FOLLOWER);
        role = REPL_FOLLOWER;
    }
    if (role == REPL_FOLLOWER) {
        repl_follow_start(gr);
        return;
    }
    repl_insync_turn(gr);
    repl_expire_turn(gr);
    bool ok = repl_may_ack(gr);
    if (ok && !gr->lease_ok) {
        tally *t = repl_engine_get(gr);
        if (t) {
            tally_replica_kick(t); /* requests held while the lease was in doubt */
            repl_engine_put(gr);
        }
    }
    gr->lease_ok = ok;
}

/* Joins the peer threads that finished. */
static void repl_reap_peers(repl *r, bool all)
{
    for (;;) {
        repl_peer *done = NULL;
        pthread_mutex_lock(&r->mu);
        for (repl_peer **pp = &r->peers; *pp; pp = &(*pp)->next) {
            if (all || atomic_load(&(*pp)->finished)) {
                done = *pp;
                *pp = done->next;
                break;
            }
        }
        pthread_mutex_unlock(&r->mu);
        if (!done)
            return;
        if (!atomic_load(&done->finished))
            repl_ring(done->wake_fd);
        pthread_join(done->thread, NULL);
        close(done->wake_fd);
        free(done);
    }
}

static void *repl_mgr_main(void *arg)
{
    repl *r = arg;
    for (;;) {
        struct timespec until = clock_mono_after(REPL_TICK_MS);
        bool deposed[LIMIT_CLUSTER_GROUPS_MAX] = {0};
        pthread_mutex_lock(&r->mu);
        while (!r->stop && !r->dirty &&
               pthread_cond_timedwait(&r->cv, &r->mu, &until) != ETIMEDOUT)
            ;
        bool stop = r->stop;
        r->dirty = false;
        for (uint32_t g = 0; g < r->group_count; g++) {
            repl_group *gr = r->groups[g];
            if (!gr)
                continue;
            deposed[g] = gr->ev_deposed;
            gr->ev_deposed = false;
        }
        pthread_mutex_unlock(&r->mu);
        if (stop)
            break;
        for (uint32_t g = 0; g < r->group_count; g++)
            if (r->groups[g])
                repl_group_turn(r->groups[g], deposed[g]);
        repl_reap_peers(r, false);
    }
    return NULL;
}

/* ---- the listener ------------------------------------------------------------------ */

static void *repl_listen_main(void *arg)
{
    repl *r = arg;
    for (;;) {
        struct pollfd p[2] = {{.fd = r->listen_fd, .events = POLLIN},
                              {.fd = r->stop_fd, .events = POLLIN}};
        if (poll(p, 2, -1) < 0 && errno != EINTR)
            break;
        if (p[1].revents & POLLIN)
            break;
        if (!(p[0].revents & POLLIN))
            continue;
        int fd = accept4(r->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        repl_peer *peer = calloc(1, sizeof(*peer));
        int wake = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (!peer || wake < 0) {
            free(peer);
            if (wake >= 0)
                close(wake);
            close(fd);
            continue;
        }
        *peer = (repl_peer){.r = r, .fd = fd, .wake_fd = wake};
        pthread_mutex_lock(&r->mu);
        bool ok = !r->stop && pthread_create(&peer->thread, NULL, repl_peer_main, peer) == 0;
        if (ok) {
            peer->next = r->peers;
            r->peers = peer;
        }
        pthread_mutex_unlock(&r->mu);
        if (!ok) {
            close(wake);
            close(fd);
            free(peer);
        }
    }
    return NULL;
}

/* ---- routing ---------------------------------------------------------------------- */

int repl_route(repl *r, uint16_t slot, bool write, bool readonly, uint32_t *group,
               uint32_t *node, const char **why)
{
    const cluster_map *m = cluster_map_acquire(r->c);
    uint32_t g = m->slot_group[slot];
    int leader = cluster_group_leader(m, g);
    cluster_map_release(r->c, m);
    repl_group *gr = r->groups[g];
    *group = g;
    uint64_t e = 0;
    if (gr && atomic_load(&gr->role) == REPL_LEADER) {
        if (!cluster_lease(r->c, g, &e) || e != atomic_load(&gr->epoch)) {
            *why = "this node's lease on the slot's shard group is in doubt (no answer from "
                   "ZooKeeper): retry";
            return REPL_ROUTE_TRYAGAIN;
        }
        if (write && !r->o.ack_local && atomic_load(&gr->streaming) == 0) {
            *why = "no replica of the slot's shard group can confirm writes now: retry";
            return REPL_ROUTE_TRYAGAIN;
        }
        return REPL_ROUTE_LOCAL;
    }
    if (leader < 0) {
        *why = "the slot's shard group is electing a leader: retry";
        return REPL_ROUTE_TRYAGAIN;
    }
    if ((uint32_t)leader == r->self) {
        *why = "this node is taking over the slot's shard group: retry";
        return REPL_ROUTE_TRYAGAIN;
    }
    if (!write && readonly && gr && atomic_load(&gr->leader_node) == leader && gr->t != NULL)
        return REPL_ROUTE_LOCAL; /* a replica's read, as of its durable seq */
    *node = (uint32_t)leader;
    return REPL_ROUTE_MOVED;
}

void repl_submit(repl *r, uint32_t g, tally_request *req)
{
    repl_group *gr = g < r->group_count ? r->groups[g] : NULL;
    tally *t = gr ? repl_engine_get(gr) : NULL;
    if (t == NULL) {
        req->res.status = TALLY_ETRYAGAIN;
        snprintf(req->res.message, sizeof(req->res.message),
                 "the shard group's engine is reopening here: retry");
        req->done(req);
        return;
    }
    tally_submit(t, req);
    repl_engine_put(gr);
}

/* VERIFY or SNAPSHOT over every engine of the node, one after another. */
typedef struct repl_all {
    tally_request sub; /* first: done() gets it */
    tally_request *parent;
    repl *r;
    uint32_t next;
    int status;
    char message[160];
} repl_all;

static void repl_all_next(repl_all *a);

static void repl_all_done(tally_request *req)
{
    repl_all *a = (repl_all *)(void *)req;
    if (a->status == 0) {
        a->status = req->res.status;
        snprintf(a->message, sizeof(a->message), "%s", req->res.message);
    }
    tally_result_free(&req->res);
    repl_all_next(a);
}

static void repl_all_next(repl_all *a)
{
    while (a->next < a->r->group_count && a->r->groups[a->next] == NULL)
        a->next++;
    if (a->next == a->r->group_count) {
        tally_request *p = a->parent;
        p->res.status = a->status;
        snprintf(p->res.message, sizeof(p->res.message), "%s", a->message);
        free(a);
        p->done(p);
        return;
    }
    uint32_t g = a->next++;
    tally_request_init(&a->sub);
    a->sub.op = a->parent->op;
    a->sub.merchant = 0;
    a->sub.done = repl_all_done;
    repl_submit(a->r, g, &a->sub);
}

void repl_submit_all(repl *r, tally_request *req)
{
    repl_all *a = calloc(1, sizeof(*a));
    if (!a) {
        req->res.status = -ENOMEM;
        req->done(req);
        return;
    }
    a->parent = req;
    a->r = r;
    snprintf(a->message, sizeof(a->message), "ok");
    repl_all_next(a);
}

const cluster_map *repl_map_acquire(repl *r) { return cluster_map_acquire(r->c); }
void repl_map_release(repl *r, const cluster_map *m) { cluster_map_release(r->c, m); }
uint32_t repl_self(const repl *r) { return r->self; }

/* ---- figures ----------------------------------------------------------------------- */

uint32_t repl_groups(repl *r, repl_group_info *out, uint32_t cap)
{
    uint32_t n = 0;
    const cluster_map *m = cluster_map_acquire(r->c);
    for (uint32_t g = 0; g < r->group_count && n < cap; g++) {
        repl_group *gr = r->groups[g];
        if (!gr)
            continue;
        repl_group_info *in = &out[n++];
        int leader = cluster_group_leader(m, g);
        *in = (repl_group_info){
            .group = g, .role = atomic_load(&gr->role), .epoch = atomic_load(&gr->epoch),
            .durable_seq = atomic_load(&gr->durable), .durable_epoch = atomic_load(&gr->durable_epoch),
            .replicated_seq = atomic_load(&gr->replicated), .commit_seq = atomic_load(&gr->commit),
            .lag = atomic_load(&gr->lag), .replicas = atomic_load(&gr->streaming),
        };
        if (leader >= 0)
            snprintf(in->leader, sizeof(in->leader), "%s", m->nodes[leader].id);
        tally *t = repl_engine_get(gr);
        if (t) {
            in->open = true;
            uint64_t sum = 0;
            uint64_t seq = log_durable_seq(tally_replica_log(t));
            in->durable_seq = seq;
            if (seq && log_checksum_at(tally_replica_log(t), seq, &sum) == 0)
                in->chain = sum;
            repl_engine_put(gr);
        }
    }
    cluster_map_release(r->c, m);
    return n;
}

int repl_group_stats(repl *r, uint32_t g, tally_shard_stats *out)
{
    repl_group *gr = g < r->group_count ? r->groups[g] : NULL;
    tally *t = gr ? repl_engine_get(gr) : NULL;
    if (t == NULL)
        return -ENOENT;
    int rc = tally_shard_stats_get(t, 0, out);
    repl_engine_put(gr);
    return rc;
}


/* ---- the secret -------------------------------------------------------------------- */

static int repl_secret_zk(const char *zk_hosts, const char *name, uint8_t *out, size_t cap,
                          size_t *len)
{
    zk *z = NULL;
    int rc = zk_open(&(zk_options){.hosts = zk_hosts}, &z);
    if (rc == 0)
        rc = zk_wait_connected(z, 10000);
    char path[LIMIT_ZK_PATH_BYTES_MAX];
    snprintf(path, sizeof(path), "/tally/%s/secret", name);
    uint8_t fresh[32];
    char hex[65];
    if (rc == 0) {
        rc = repl_nonce(fresh);
        rc = rc == 0 ? repl_nonce(fresh + 16) : rc;
    }
    for (int i = 0; rc == 0 && i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", fresh[i]);
    /* The first node makes it; every other reads the same one. */
    if (rc == 0) {
        rc = zk_create(z, path, hex, 64, ZK_PERSISTENT, NULL, 0);
        rc = rc == -EEXIST ? 0 : rc;
    }
    if (rc == 0)
        rc = zk_get(z, path, false, out, cap, len, NULL);
    zk_close(z);
    return rc;
}

int repl_secret_load(const char *path, const char *zk_hosts, const char *name, uint8_t *out,
                     size_t cap, size_t *len)
{
    int rc = 0;
    if (path == NULL) {
        rc = repl_secret_zk(zk_hosts, name, out, cap, len);
    } else {
        FILE *f = fopen(path, "rb");
        if (!f)
            return -errno;
        *len = fread(out, 1, cap, f);
        bool more = fgetc(f) != EOF;
        fclose(f);
        if (more)
            return -EINVAL;
        while (*len > 0 && (out[*len - 1] == '\n' || out[*len - 1] == '\r'))
            (*len)--;
    }
    if (rc == 0 && (*len == 0 || *len > REPL_SECRET_BYTES_MAX))
        rc = -EINVAL;
    return rc;
}

/* ---- open / close ------------------------------------------------------------------ */

static int repl_group_new(repl *r, const cluster_map *m, uint32_t g)
{
    repl_group *gr = calloc(1, sizeof(*gr));
    if (!gr)
        return -ENOMEM;
    gr->r = r;
    gr->g = g;
    gr->member = cluster_member_index(&m->groups[g], r->self);
    snprintf(gr->dir, sizeof(gr->dir), "%s/group-%" PRIu32, r->dir, g);
    pthread_rwlock_init(&gr->lock, NULL);
    pthread_mutex_init(&gr->mu, NULL);
    atomic_store(&gr->leader_node, -1);
    gr->fwake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    r->groups[g] = gr;
    return gr->fwake_fd < 0 ? -errno : 0;
}

static void repl_group_free(repl_group *gr)
{
    if (!gr)
        return;
    repl_follow_stop(gr);
    if (gr->t)
        repl_engine_close(gr);
    for (int i = 0; i < REPL_CHUNKS; i++)
        free(gr->chunks[i].buf);
    if (gr->fwake_fd >= 0)
        close(gr->fwake_fd);
    pthread_rwlock_destroy(&gr->lock);
    pthread_mutex_destroy(&gr->mu);
    free(gr);
}

/* The groups this node is a member of, each engine open. */
static int repl_open_groups(repl *r)
{
    const cluster_map *m = cluster_map_acquire(r->c);
    r->group_count = m->group_count;
    int rc = 0;
    for (uint32_t g = 0; g < m->group_count && rc == 0; g++)
        if (cluster_member_index(&m->groups[g], r->self) >= 0)
            rc = repl_group_new(r, m, g);
    uint16_t port = m->nodes[r->self].repl_port;
    cluster_map_release(r->c, m);
    if (rc == 0 && mkdir(r->dir, 0755) < 0 && errno != EEXIST)
        rc = -errno;
    for (uint32_t g = 0; g < r->group_count && rc == 0; g++) {
        repl_group *gr = r->groups[g];
        /* A group that cannot open is left closed: its replica thread
         * starts it over from its leader. */
        if (gr && repl_engine_open(gr, 0, 0, 0) < 0)
            repl_say(r, 1, "group %" PRIu32 ": starts closed; it is rebuilt from its leader", g);
    }
    if (rc == 0)
        rc = sock_listen(r->bind, port, 64, &r->listen_fd, NULL);
    if (rc < 0)
        repl_say(r, 2, "replication port %u on %s: %s", port, r->bind, tally_strerror(rc));
    return rc;
}

/* The map's entry for this node must be the address clients are sent to
 * (before anything is opened: another node's directory stays untouched). */
static int repl_check_advertise(repl *r, const char *advertise)
{
    if (!advertise)
        return 0;
    const cluster_map *m = cluster_map_acquire(r->c);
    const cluster_node *n = &m->nodes[r->self];
    char have[LIMIT_CLUSTER_HOST_BYTES_MAX + 8];
    snprintf(have, sizeof(have), "%s:%u", n->host, n->port);
    cluster_map_release(r->c, m);
    if (strcmp(have, advertise) == 0)
        return 0;
    repl_say(r, 2, "--advertise %s, but the cluster's map gives node %s as %s", advertise,
             r->node_id, have);
    return -EADDRNOTAVAIL;
}

int repl_open(const repl_options *o, repl **out)
{
    repl *r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    r->o = *o;
    snprintf(r->zk_hosts, sizeof(r->zk_hosts), "%s", o->zk_hosts ? o->zk_hosts : "");
    snprintf(r->name, sizeof(r->name), "%s", o->name ? o->name : "");
    snprintf(r->node_id, sizeof(r->node_id), "%s", o->node_id ? o->node_id : "");
    r->o.zk_hosts = r->zk_hosts;
    r->o.name = r->name;
    r->o.node_id = r->node_id;
    r->o.advertise = NULL; /* checked at open only */
    snprintf(r->dir, sizeof(r->dir), "%s", o->dir);
    snprintf(r->bind, sizeof(r->bind), "%s", o->repl_bind ? o->repl_bind : "127.0.0.1");
    r->o.dir = r->dir;
    r->o.repl_bind = r->bind;
    r->listen_fd = -1;
    r->secret_len = o->secret_len < sizeof(r->secret) ? o->secret_len : sizeof(r->secret);
    memcpy(r->secret, o->secret, r->secret_len);
    r->o.secret = r->secret;
    pthread_mutex_init(&r->mu, NULL);
    clock_cond_init(&r->cv);
    r->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    cluster_options co = {.zk_hosts = r->zk_hosts, .name = r->name, .node_id = r->node_id,
                          .session_timeout_ms = o->session_timeout_ms, .event = repl_event,
                          .event_ctx = r, .log = o->log, .log_ctx = o->log_ctx};
    int rc = r->stop_fd < 0 ? -errno : cluster_open(&co, &r->c);
    if (rc == 0) {
        r->self = cluster_self(r->c);
        rc = repl_check_advertise(r, o->advertise);
    }
    if (rc == 0)
        rc = repl_open_groups(r);
    if (rc == 0)
        r->listening = pthread_create(&r->listen_thread, NULL, repl_listen_main, r) == 0;
    if (rc == 0)
        r->managing = pthread_create(&r->mgr_thread, NULL, repl_mgr_main, r) == 0;
    if (rc == 0 && (!r->listening || !r->managing))
        rc = -EAGAIN;
    if (rc < 0) {
        repl_close(r);
        return rc;
    }
    *out = r;
    return 0;
}

void repl_close(repl *r)
{
    if (!r)
        return;
    pthread_mutex_lock(&r->mu);
    r->stop = true;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
    if (r->stop_fd >= 0)
        repl_ring(r->stop_fd);
    if (r->managing)
        pthread_join(r->mgr_thread, NULL);
    if (r->listening)
        pthread_join(r->listen_thread, NULL);
    repl_reap_peers(r, true);
    for (uint32_t g = 0; g < r->group_count; g++)
        if (r->groups[g])
            repl_follow_stop(r->groups[g]);
    /* Engines before the cluster (their shards ask it about leases), each
     * out of the events' sight first: the cluster's thread still runs. */
    for (uint32_t g = 0; g < r->group_count; g++) {
        pthread_mutex_lock(&r->mu);
        repl_group *gr = r->groups[g];
        r->groups[g] = NULL;
        pthread_mutex_unlock(&r->mu);
        repl_group_free(gr);
    }
    cluster_close(r->c);
    if (r->listen_fd >= 0)
        close(r->listen_fd);
    if (r->stop_fd >= 0)
        close(r->stop_fd);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r);
}
