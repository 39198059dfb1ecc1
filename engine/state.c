/*
 * state.c — a shard's tables: in-memory layers over LMDB (state.h).  The
 * only module that includes lmdb.h.
 *
 * Layers.  A layer holds the newest value (or a tombstone for a deletion)
 * of every object changed since it started, in a hash table keyed by
 * (table, key) — open addressing, linear probing, XXH3 of the key — with
 * each table's objects also on a list of their own, so a checkpoint or a
 * range scan visits one table's changes without the rest.  Objects and
 * values live in the layer's arena and go all at once; a value rewritten
 * in place when it fits (a busy account), else given a new, roomier
 * place.  There are at most two layers: the active one (the writer's) and
 * a frozen one (being committed).  A key's newest version wins: active,
 * then frozen, then LMDB as of its last commit (one read transaction,
 * renewed after each commit).  The layer committed last is kept as a
 * clean cache in front of LMDB (it says exactly what LMDB says for its
 * keys), so the objects a checkpoint wrote are read again without a
 * B-tree walk, until the next freeze recycles its memory for the new
 * active layer (state_layer_next): at most two layers' memory at once.
 *
 * Durability (DESIGN-NOTES §1): LMDB's default, fully synced commits —
 * never MDB_NOSYNC, MDB_NOMETASYNC or MDB_MAPASYNC, which can leave a
 * database that a power loss corrupts.  What reaches LMDB is always a
 * whole checkpoint the caller chose; the log makes each batch durable.
 * A commit writes each table's objects sorted by key, so each B-tree page
 * is dirtied once per checkpoint however often its objects changed
 * (DESIGN-NOTES §5: the cost of a checkpoint is the objects it touches).
 * MDB_WRITEMAP: those pages are built in data.mdb's shared map (a sparse
 * file of the map's size) and msync'd by the commit, never copied into
 * memory LMDB keeps; a page the filesystem cannot back faults, which
 * "faults in the writable map" below turns into the commit's error.
 *
 * Value checksums: every value stored in LMDB carries an XXH3-64 of
 * (table, key, value), written when a layer is committed and checked on
 * every read from LMDB.
 *
 * Threads: the writer (a shard thread) does everything but the writing of
 * a frozen layer into LMDB, which a committer thread does; the frozen
 * layer is read-only while it runs, and the writer touches nothing of the
 * committer's until state_commit_finish has joined it.  LMDB's MDB_NOTLS
 * lets the writer's read transaction live beside the committer's write
 * transaction and snapshot copies on other threads.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <lmdb.h>

#include "bytes.h"
#include "checksum.h"
#include "os.h"
#include "state.h"
#include "tally.h"

/* ---- constants and types ------------------------------------------------ */

#define STATE_ARENA_CHUNK (4u << 20) /* whole huge pages (os_map_anon) */
#define STATE_SLOTS_MIN 4096

static const char *const state_names[STATE_TABLES] = {
    "meta", "accounts", "lots", "due", "lot_ids", "holds", "reversed", "merchants", "liability",
};

/* One changed object in a layer. */
typedef struct state_entry {
    struct state_entry *next; /* its table's list */
    uint8_t *val;             /* in the arena; NULL with len 0 */
    uint32_t val_len;
    uint32_t val_cap;
    uint64_t hash;
    bool tomb; /* deleted */
    uint8_t table;
    uint8_t key_len;
    uint8_t key[];
} state_entry;

typedef struct state_chunk {
    struct state_chunk *next;
    size_t used, cap;
    uint8_t data[];
} state_chunk;

/* A slot keeps the hash beside the pointer: a probe that misses reads no
 * entry (each would be a cache miss of its own). */
typedef struct state_hslot {
    uint64_t hash;
    state_entry *e;
} state_hslot;

typedef struct state_layer {
    state_hslot *slots;
    uint32_t cap; /* power of two */
    uint32_t count;
    state_entry *lists[STATE_TABLES];
    uint32_t table_count[STATE_TABLES];
    /* Each table's entry of the smallest key: a scan that ends before it
     * skips the table's list (the sweep's look at what is due now, every
     * second, would otherwise walk every due row the layer changed). */
    const state_entry *least[STATE_TABLES];
    state_chunk *chunks;
    state_chunk *spare; /* a recycled layer's chunks, not in use yet */
    size_t bytes;       /* slots and chunks in use */
    size_t spare_bytes; /* the spare chunks' */
    uint32_t replaces; /* bit t: the layer holds every row of table t (state_replace) */
} state_layer;

/* The last LMDB reads, answered again without a B-tree walk: a write
 * reads its account twice (its due entries, then the write itself).  A
 * value pointer is good while the read view lives (view counts views). */
#define STATE_MEMO 4
#define STATE_MEMO_KEY 32
typedef struct state_memo {
    uint64_t view; /* 0: empty */
    int table;
    uint8_t key_len;
    uint8_t key[STATE_MEMO_KEY];
    const void *val; /* NULL: absent */
    size_t val_len;
} state_memo;

struct state {
    MDB_env *env;
    bool borrowed; /* state_view_open's: the env is borrowed, there are no layers */
    MDB_dbi dbi[STATE_TABLES];
    MDB_txn *rtxn; /* read view of the last commit; NULL until first use */
    uint64_t view; /* which read view rtxn is (memo) */
    state_memo memo[STATE_MEMO];
    uint32_t memo_next;
    state_layer *active;
    state_layer *frozen;
    state_layer *clean; /* the last committed layer: LMDB's values for its keys */
    /* committer */
    pthread_t thread;
    bool committing;
    _Atomic int commit_done;
    int commit_rc;
    int (*before)(void *ctx);
    void *before_ctx;
    void (*done)(void *ctx);
    void *done_ctx;
    /* state_commit_add's values: (table, key_len, val_len, key, val)... */
    uint8_t extra[STATE_EXTRA_BYTES];
    size_t extra_len;
    int broken;             /* < 0: a fault abandoned LMDB's write transaction (state_abandon) */
    char error[160];        /* the writer's: state_error() */
    char commit_error[160]; /* the committer's, into error once joined */
};

/* ---- errors ---------------------------------------------------------------- */

/* LMDB error → ours, at the module's edge (STYLE rule 5). */
static int state_err(int rc)
{
    if (rc == 0)
        return 0;
    if (rc > 0)
        return -rc; /* an errno */
    switch (rc) {
    case MDB_CORRUPTED:
    case MDB_PAGE_NOTFOUND:
    case MDB_INVALID:
    case MDB_VERSION_MISMATCH:
        return TALLY_ECORRUPT; /* the caller names the shard; LMDB's words below */
    case MDB_MAP_FULL:
        return -ENOSPC;
    default:
        return TALLY_EFAILED;
    }
}

const char *state_error(const state *s) { return s->error; }

/* state_err, remembering LMDB's own words in `error` when it reports
 * damage. */
static int state_errs_in(char *error, size_t cap, int rc)
{
    int err = state_err(rc);
    if (err == TALLY_ECORRUPT)
        snprintf(error, cap, "LMDB: %s", mdb_strerror(rc));
    return err;
}

/* The writer's (state_error): never from another thread. */
static int state_errs(state *s, int rc)
{
    return state_errs_in(s->error, sizeof(s->error), rc);
}

static void state_hex(const void *p, size_t n, char *out, size_t cap)
{
    const uint8_t *b = p;
    size_t o = 0;
    for (size_t i = 0; i < n && o + 3 < cap; i++)
        o += (size_t)snprintf(out + o, cap - o, "%02x", b[i]);
    out[o] = 0;
}

/* ---- faults in the writable map ------------------------------------------ */

/* LMDB runs with MDB_WRITEMAP: a write transaction builds its pages in
 * the shared map of data.mdb itself (a sparse file of the map's size), so
 * no page is copied into malloc'd memory — which LMDB would keep on its
 * own free list for the environment's life — and the commit's flush is
 * an msync of the pages it dirtied.  The price: a page the filesystem
 * cannot back (a hole of the sparse file on a full disk) faults with
 * SIGBUS on the writing thread, where a write() would have returned
 * ENOSPC.  (An I/O error mostly comes back from the msync as EIO: on an
 * ext4 shut down by `xfs_io -c shutdown` the pages were written and the
 * commit failed — the plain path.)
 *
 * Two defences.  Before a write transaction touches a page, state_room
 * checks that the filesystem has room for every page it may dirty: a
 * disk that is merely full fails the checkpoint cleanly with ENOSPC, and
 * the state stays usable.  What is left (the log filling the last bytes
 * meanwhile, a filesystem that faults on an I/O error) is caught by a
 * guard around every write transaction (STATE_GUARD) that turns the
 * fault into the error.  LMDB's
 * transaction is then in no state to be aborted (a fault inside mdb_put
 * leaves a cursor on the dead stack frame linked into it), so it is
 * abandoned whole: the environment is parked in state_abandoned, never
 * touched again by a write, and the state refuses every later write with
 * the fault's error (s->broken) — the shard stops taking writes, as after
 * any failed checkpoint, and a restart (a new process: LMDB's robust
 * write lock is released when its holder dies) resumes.  Nothing of the
 * transaction is durable: LMDB names a commit in its meta page last, and
 * the meta pages are never holes.  Reads of what was committed go on
 * through the read transaction.  A SIGBUS outside a guarded transaction
 * keeps the disposition it had (by default the process dies). */
static __thread sigjmp_buf *state_fault_jump;
static struct sigaction state_fault_prev;
static pthread_once_t state_fault_once = PTHREAD_ONCE_INIT;

static void state_fault_handler(int sig, siginfo_t *si, void *uc)
{
    sigjmp_buf *jump = state_fault_jump;
    if (jump) {
        state_fault_jump = NULL;
        siglongjmp(*jump, 1);
    }
    /* Not ours: the previous handler, or the previous disposition for
     * the instruction's fault again once this returns. */
    if ((state_fault_prev.sa_flags & SA_SIGINFO) && state_fault_prev.sa_sigaction) {
        state_fault_prev.sa_sigaction(sig, si, uc);
        return;
    }
    if (!(state_fault_prev.sa_flags & SA_SIGINFO) && state_fault_prev.sa_handler != SIG_DFL &&
        state_fault_prev.sa_handler != SIG_IGN) {
        state_fault_prev.sa_handler(sig);
        return;
    }
    struct sigaction dfl = {.sa_handler = SIG_DFL};
    sigemptyset(&dfl.sa_mask);
    sigaction(sig, &dfl, NULL);
}

static void state_fault_install(void)
{
    struct sigaction sa = {.sa_sigaction = state_fault_handler, .sa_flags = SA_SIGINFO};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, &state_fault_prev);
}

/* The error a fault in the map stands for: ENOSPC when the filesystem
 * has no room left, else EIO. */
static int state_fault_errno(state *s, char *error, size_t cap)
{
    mdb_filehandle_t fd;
    struct statvfs vfs;
    bool full = mdb_env_get_fd(s->env, &fd) == 0 && fstatvfs(fd, &vfs) == 0 &&
                (uint64_t)vfs.f_bavail * vfs.f_frsize < (1u << 20);
    snprintf(error, cap, "LMDB: a write into data.mdb's map faulted (SIGBUS): %s",
             full ? "the filesystem is full" : "an I/O error");
    return full ? ENOSPC : EIO;
}

/* Arms the calling thread's guard: sigsetjmp(jump, 1) returned 0 just
 * before (a macro, since sigsetjmp's frame must stay live). */
#define STATE_GUARD(jump) (sigsetjmp((jump), 1) == 0 ? (state_fault_jump = &(jump), true) : false)

static void state_guard_end(void) { state_fault_jump = NULL; }

/* Environments whose write transaction a fault abandoned: kept reachable
 * (not a leak), never closed — closing would free what the transaction
 * still points into. */
enum { STATE_ABANDONED_MAX = 64 };
static MDB_env *state_abandoned[STATE_ABANDONED_MAX];
static _Atomic unsigned state_abandoned_n;

static void state_abandon(state *s, int rc)
{
    unsigned i = atomic_fetch_add(&state_abandoned_n, 1);
    if (i < STATE_ABANDONED_MAX)
        state_abandoned[i] = s->env;
    s->broken = rc;
}

/* ---- value checksums ---------------------------------------------------- */

/* XXH3 of the value, seeded with XXH3 of (table, key): a value moved to
 * another key or table fails too. */
static uint64_t state_sum(int table, const void *key, size_t key_len, const void *val,
                          size_t val_len)
{
    return checksum64(val, val_len, checksum64(key, key_len, (uint64_t)table + 1));
}

/* Checks a value read from LMDB and strips its checksum: 0, or
 * TALLY_ECORRUPT with the place in s->error. */
static int state_check(state *s, int table, const MDB_val *k, MDB_val *v)
{
    if (v->mv_size >= STATE_CHECKSUM_BYTES) {
        size_t n = v->mv_size - STATE_CHECKSUM_BYTES;
        const uint8_t *p = v->mv_data;
        if (bytes_get_le64(p + n) == state_sum(table, k->mv_data, k->mv_size, p, n)) {
            v->mv_size = n;
            return 0;
        }
    }
    char hex[65];
    state_hex(k->mv_data, k->mv_size < 32 ? k->mv_size : 32, hex, sizeof(hex));
    snprintf(s->error, sizeof(s->error), "state table %s, key %s: checksum mismatch",
             state_names[table], hex);
    return TALLY_ECORRUPT;
}

/* Writes one value with its checksum into a write transaction. */
static int state_lmdb_put(MDB_txn *txn, MDB_dbi dbi, int table, const void *key,
                          size_t key_len, const void *val, size_t val_len, unsigned flags)
{
    MDB_val k = {.mv_size = key_len, .mv_data = (void *)key};
    /* MDB_RESERVE: LMDB hands out the space, the value and its checksum
     * are written straight into the page. */
    MDB_val v = {.mv_size = val_len + STATE_CHECKSUM_BYTES};
    int rc = mdb_put(txn, dbi, &k, &v, MDB_RESERVE | flags);
    if (rc != 0)
        return rc;
    uint8_t *p = v.mv_data;
    if (val_len)
        memcpy(p, val, val_len);
    bytes_put_le64(p + val_len, state_sum(table, key, key_len, val, val_len));
    return 0;
}

/* ---- layers: arena and hash table ------------------------------------------ */

static void *state_alloc(state_layer *l, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    state_chunk *c = l->chunks;
    if (!c || c->cap - c->used < n) {
        if (l->spare && l->spare->cap >= n) {
            /* Memory a recycled layer already touched: no page to zero. */
            c = l->spare;
            l->spare = c->next;
            l->spare_bytes -= sizeof(*c) + c->cap;
        } else {
            /* A chunk of exactly STATE_ARENA_CHUNK bytes: whole huge pages. */
            size_t size =
                sizeof(*c) + n > STATE_ARENA_CHUNK ? sizeof(*c) + n : STATE_ARENA_CHUNK;
            c = os_map_anon(size, false);
            if (!c)
                return NULL;
            c->cap = size - sizeof(*c);
        }
        c->used = 0;
        c->next = l->chunks;
        l->chunks = c;
        l->bytes += sizeof(*c) + c->cap;
    }
    void *p = c->data + c->used;
    c->used += n;
    return p;
}

/* A new layer with room for `cap` slots (a power of two): the one that
 * follows a layer is as big as it grew, since the next stretch of writes
 * changes about as many objects — growing again from the minimum would
 * rehash every object several times per checkpoint (4% of an import). */
static state_layer *state_layer_new(uint32_t cap)
{
    state_layer *l = calloc(1, sizeof(*l));
    if (!l)
        return NULL;
    l->cap = cap > STATE_SLOTS_MIN ? cap : STATE_SLOTS_MIN;
    l->slots = os_map_anon(l->cap * sizeof(*l->slots), false);
    if (!l->slots) {
        free(l);
        return NULL;
    }
    l->bytes = l->cap * sizeof(*l->slots);
    return l;
}

static void state_chunks_unmap(state_chunk *c)
{
    for (state_chunk *n; c; c = n) {
        n = c->next;
        os_unmap_anon(c, sizeof(*c) + c->cap);
    }
}

static void state_layer_free(state_layer *l)
{
    if (!l)
        return;
    state_chunks_unmap(l->chunks);
    state_chunks_unmap(l->spare);
    os_unmap_anon(l->slots, l->cap * sizeof(*l->slots));
    free(l);
}

/* A layer no longer written to keeps only the chunks it used: what it was
 * given and did not need would otherwise stay mapped for good. */
static void state_layer_seal(state_layer *l)
{
    state_chunks_unmap(l->spare);
    l->spare = NULL;
    l->spare_bytes = 0;
}

/* A new active layer of `cap` slots made of an old layer's memory (the
 * clean cache's: a stretch of writes changes about as many objects as the
 * last, so its arena is about the size needed).  Its chunks become spares
 * that state_alloc takes before mapping any; its slots are cleared.  No
 * hundreds of MB unmapped and faulted in again on the writer's thread at
 * each checkpoint, and two layers' memory instead of three during a
 * commit (points-mix, 20M entries, `tally-bench engine`: p99.9 ~275 ms ->
 * ~170 ms, peak RssAnon 1.72 -> 1.54 GB, CPU per op unchanged). */
static state_layer *state_layer_recycle(state_layer *l, uint32_t cap)
{
    cap = cap > STATE_SLOTS_MIN ? cap : STATE_SLOTS_MIN;
    /* Everything but the slots is a chunk in use: all spares now. */
    size_t spare_bytes = l->spare_bytes + l->bytes - l->cap * sizeof(*l->slots);
    if (l->cap != cap) {
        state_hslot *slots = os_map_anon(cap * sizeof(*slots), false);
        if (!slots) {
            state_layer_free(l);
            return state_layer_new(cap);
        }
        os_unmap_anon(l->slots, l->cap * sizeof(*l->slots));
        l->slots = slots;
        l->cap = cap;
    } else {
        memset(l->slots, 0, cap * sizeof(*l->slots));
    }
    state_chunk *last = l->chunks;
    if (last) {
        while (last->next)
            last = last->next;
        last->next = l->spare;
        l->spare = l->chunks;
    }
    state_chunk *spare = l->spare;
    *l = (state_layer){.slots = l->slots, .cap = cap, .spare = spare,
                       .bytes = cap * sizeof(*l->slots), .spare_bytes = spare_bytes};
    return l;
}

static int state_keycmp(const uint8_t *a, size_t an, const uint8_t *b, size_t bn)
{
    int c = memcmp(a, b, an < bn ? an : bn);
    return c ? c : (an < bn ? -1 : an > bn);
}

static uint64_t state_hash(int table, const void *key, size_t key_len)
{
    return checksum64(key, key_len, 0x9E3779B97F4A7C15ull * (uint64_t)(table + 1));
}

/* Keys of n <= STATE_KEY_BYTES_MAX bytes equal?  Word by word, inline: a
 * probe whose hash matched compares almost always equal keys, and a call
 * to memcmp per probe was ~1.5% of an import. */
static inline bool state_key_eq(const uint8_t *a, const uint8_t *b, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t x, y;
        memcpy(&x, a + i, 8);
        memcpy(&y, b + i, 8);
        if (x != y)
            return false;
    }
    for (; i < n; i++)
        if (a[i] != b[i])
            return false;
    return true;
}

/* The slot of (table, key): its entry, or the empty slot where it goes. */
static state_hslot *state_slot(const state_layer *l, int table, const void *key,
                               size_t key_len, uint64_t h)
{
    uint32_t mask = l->cap - 1;
    for (uint32_t i = (uint32_t)h & mask;; i = (i + 1) & mask) {
        state_hslot *sl = &l->slots[i];
        if (!sl->e)
            return sl;
        if (sl->hash == h) {
            const state_entry *e = sl->e;
            if (e->table == table && e->key_len == key_len && state_key_eq(e->key, key, key_len))
                return sl;
        }
    }
}

static int state_layer_grow(state_layer *l)
{
    uint32_t cap = l->cap * 2;
    state_hslot *n = os_map_anon(cap * sizeof(*n), false);
    if (!n)
        return -ENOMEM;
    for (uint32_t i = 0; i < l->cap; i++) {
        if (!l->slots[i].e)
            continue;
        uint32_t k = (uint32_t)l->slots[i].hash & (cap - 1);
        while (n[k].e)
            k = (k + 1) & (cap - 1);
        n[k] = l->slots[i];
    }
    os_unmap_anon(l->slots, l->cap * sizeof(*l->slots));
    l->bytes += (cap - l->cap) * sizeof(*n);
    l->slots = n;
    l->cap = cap;
    return 0;
}

static state_entry *state_layer_get(const state_layer *l, int table, const void *key,
                                    size_t key_len, uint64_t h)
{
    return l ? state_slot(l, table, key, key_len, h)->e : NULL;
}

/* Sets (table, key)'s version in the layer (val NULL, tomb: a deletion).
 * -ENOMEM if the arena cannot grow. */
static int state_layer_set(state_layer *l, int table, const void *key, size_t key_len,
                           uint64_t h, const void *val, size_t val_len, bool tomb)
{
    assert(key_len > 0 && key_len <= STATE_KEY_BYTES_MAX);
    assert(val_len <= UINT32_MAX / 2);
    if ((l->count + 1) * 2 > l->cap && state_layer_grow(l) < 0)
        return -ENOMEM;
    state_hslot *slot = state_slot(l, table, key, key_len, h);
    state_entry *e = slot->e;
    if (!e) {
        e = state_alloc(l, sizeof(*e) + key_len);
        if (!e)
            return -ENOMEM;
        *e = (state_entry){.hash = h, .table = (uint8_t)table, .key_len = (uint8_t)key_len};
        memcpy(e->key, key, key_len);
        e->next = l->lists[table];
        l->lists[table] = e;
        l->table_count[table]++;
        if (!l->least[table] ||
            state_keycmp(e->key, key_len, l->least[table]->key, l->least[table]->key_len) < 0)
            l->least[table] = e;
        l->count++;
        slot->hash = h;
        slot->e = e;
    }
    e->tomb = tomb;
    if (val_len > e->val_cap) {
        /* Room to grow: an account that gains lots is rewritten often. */
        size_t cap = val_len < 64 ? 64 : val_len + val_len / 2;
        uint8_t *p = state_alloc(l, cap);
        if (!p)
            return -ENOMEM;
        e->val = p;
        e->val_cap = (uint32_t)cap;
    }
    if (val_len)
        memcpy(e->val, val, val_len);
    e->val_len = (uint32_t)val_len;
    return 0;
}

/* ---- the read view ---------------------------------------------------------- */

static int state_rtxn(state *s)
{
    if (s->rtxn)
        return 0;
    s->view++;
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &s->rtxn);
    if (rc != 0) {
        s->rtxn = NULL;
        return state_errs(s, rc);
    }
    return 0;
}

/* After a commit: see it. */
static int state_renew(state *s)
{
    if (!s->rtxn)
        return 0;
    s->view++;
    mdb_txn_reset(s->rtxn);
    int rc = mdb_txn_renew(s->rtxn);
    if (rc != 0) {
        mdb_txn_abort(s->rtxn);
        s->rtxn = NULL;
        return state_errs(s, rc);
    }
    return 0;
}

/* ---- lifecycle ---------------------------------------------------------------- */

uint64_t state_used_bytes(state *s)
{
    MDB_envinfo info;
    MDB_stat st;
    if (mdb_env_info(s->env, &info) != 0 || mdb_env_stat(s->env, &st) != 0)
        return 0;
    return ((uint64_t)info.me_last_pgno + 1) * st.ms_psize;
}

int state_open(const char *dir, uint64_t map_bytes, state **out)
{
    if (mkdir(dir, 0755) < 0 && errno != EEXIST)
        return -errno;
    state *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->active = state_layer_new(STATE_SLOTS_MIN);
    int rc = s->active ? mdb_env_create(&s->env) : ENOMEM;
    if (rc == 0)
        rc = mdb_env_set_maxdbs(s->env, STATE_TABLES);
    if (rc == 0)
        rc = mdb_env_set_mapsize(s->env, (size_t)map_bytes);
    pthread_once(&state_fault_once, state_fault_install);
    /* MDB_NOTLS: read transactions are not tied to threads — the writer's
     * read view, the committer and snapshot copies live side by side.
     * MDB_WRITEMAP: see state_fault_handler. */
    if (rc == 0)
        rc = mdb_env_open(s->env, dir, MDB_NOTLS | MDB_WRITEMAP, 0644);
    MDB_txn *volatile txn = NULL;
    sigjmp_buf jump;
    if (rc == 0 && !STATE_GUARD(jump)) {
        rc = state_fault_errno(s, s->error, sizeof(s->error));
        state_abandon(s, -rc);
        txn = NULL; /* abandoned with the environment */
    } else if (rc == 0) {
        MDB_txn *begun = NULL;
        rc = mdb_txn_begin(s->env, NULL, 0, &begun);
        txn = begun;
        for (int i = 0; rc == 0 && i < STATE_TABLES; i++)
            rc = mdb_dbi_open(txn, state_names[i], MDB_CREATE, &s->dbi[i]);
        /* Make the tables exist on disk so a copy always has them. */
        if (rc == 0) {
            rc = mdb_txn_commit(txn);
            txn = NULL;
        }
        state_guard_end();
    }
    if (txn)
        mdb_txn_abort(txn);
    if (rc != 0) {
        int err = state_err(rc);
        state_close(s);
        return err;
    }
    /* Lookups read the tables at random from the first request on: the
     * kernel is asked to read the file now, in large pieces, instead of a
     * page fault at a time once requests come (a cold page cache: a
     * restart after a reboot).  Only a hint, which returns once the reads
     * are queued; not for pages in use over a quarter of the memory, which
     * would push out more than they bring.  (The file is as large as the
     * map, MDB_WRITEMAP: the pages in use end at LMDB's last page.) */
    mdb_filehandle_t fd;
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    uint64_t used = state_used_bytes(s);
    if (mdb_env_get_fd(s->env, &fd) == 0 && pages > 0 && page > 0 &&
        used <= (uint64_t)pages * (uint64_t)page / 4)
        (void)posix_fadvise(fd, 0, (off_t)used, POSIX_FADV_WILLNEED);
    *out = s;
    return 0;
}

static void state_join(state *s)
{
    if (!s->committing)
        return;
    pthread_join(s->thread, NULL);
    s->committing = false;
    if (s->commit_error[0])
        memcpy(s->error, s->commit_error, sizeof(s->error));
}

void state_close(state *s)
{
    if (!s)
        return;
    state_join(s);
    if (s->rtxn)
        mdb_txn_abort(s->rtxn);
    state_layer_free(s->active);
    state_layer_free(s->frozen);
    state_layer_free(s->clean);
    if (s->env && !s->borrowed && !s->broken)
        mdb_env_close(s->env); /* a broken one's is parked: state_abandon */
    free(s);
}

int state_view_open(state *s, state **out)
{
    state *v = calloc(1, sizeof(*v));
    if (!v)
        return -ENOMEM;
    /* The environment and its table handles never change once open. */
    v->env = s->env;
    memcpy(v->dbi, s->dbi, sizeof(v->dbi));
    v->borrowed = true;
    *out = v;
    return 0;
}

size_t state_active_bytes(const state *s) { return s->active ? s->active->bytes : 0; }

static size_t state_layer_mapped(const state_layer *l)
{
    return l ? l->bytes + l->spare_bytes : 0;
}

size_t state_memory_bytes(const state *s)
{
    return state_layer_mapped(s->active) + state_layer_mapped(s->frozen) +
           state_layer_mapped(s->clean);
}
bool state_has_frozen(const state *s) { return s->frozen != NULL; }

/* ---- commits -------------------------------------------------------------------- */

static int state_entry_cmp(const void *a, const void *b)
{
    const state_entry *x = *(state_entry *const *)a, *y = *(state_entry *const *)b;
    return state_keycmp(x->key, x->key_len, y->key, y->key_len);
}

/* An object to sort with its key's first 16 bytes beside it (big-endian,
 * zero-padded), so the sort compares in its own array and reads an
 * object's key only when those are equal — not a cache miss per compare. */
typedef struct state_sortkey {
    uint64_t k0, k1;
    const state_entry *e;
} state_sortkey;

static uint64_t state_key_word(const state_entry *e, size_t at)
{
    uint8_t b[8] = {0};
    if (e->key_len > at)
        memcpy(b, e->key + at, e->key_len - at < 8 ? e->key_len - at : 8);
    return bytes_get_be64(b);
}

static int state_sortkey_cmp(const void *a, const void *b)
{
    const state_sortkey *x = a, *y = b;
    if (x->k0 != y->k0)
        return x->k0 < y->k0 ? -1 : 1;
    if (x->k1 != y->k1)
        return x->k1 < y->k1 ? -1 : 1;
    return state_keycmp(x->e->key, x->e->key_len, y->e->key, y->e->key_len);
}

/* Sorts n objects by key: a radix sort (least significant byte first) on
 * the 16 bytes beside each, skipping the bytes every key shares (a table's
 * keys differ in a few: merchants, accounts and seqs are small numbers),
 * then each run that shares all 16 sorted by the whole key.  A checkpoint
 * sorts every object it writes — millions for an import's — and qsort's
 * ~20 compares per object through a function pointer were 5% of an
 * import's CPU.  Falls back to qsort for few objects or without memory. */
#define STATE_RADIX_MIN 512u
/* Digit d of a sort key: byte d of k1 (d < 8), else byte d - 8 of k0. */
static inline uint8_t state_digit(const state_sortkey *x, unsigned d)
{
    return (uint8_t)((d < 8 ? x->k1 : x->k0) >> (8 * (d & 7)));
}

static void state_sort(state_sortkey *v, size_t n)
{
    state_sortkey *tmp = n >= STATE_RADIX_MIN ? malloc(n * sizeof(*tmp)) : NULL;
    size_t(*count)[256] = tmp ? calloc(16, sizeof(*count)) : NULL;
    if (!count) {
        free(tmp);
        if (n > 1)
            qsort(v, n, sizeof(*v), state_sortkey_cmp);
        return;
    }
    for (size_t i = 0; i < n; i++)
        for (unsigned d = 0; d < 16; d++)
            count[d][state_digit(&v[i], d)]++;
    state_sortkey *src = v, *dst = tmp;
    for (unsigned d = 0; d < 16; d++) {
        size_t *c = count[d], at = 0;
        bool shared = false;
        for (unsigned b = 0; b < 256 && !shared; b++)
            shared = c[b] == n;
        if (shared)
            continue;
        for (unsigned b = 0; b < 256; b++) {
            size_t k = c[b];
            c[b] = at;
            at += k;
        }
        for (size_t i = 0; i < n; i++)
            dst[c[state_digit(&src[i], d)]++] = src[i];
        state_sortkey *t = src;
        src = dst;
        dst = t;
    }
    if (src != v)
        memcpy(v, src, n * sizeof(*v));
    free(count);
    free(tmp);
    for (size_t i = 0, j; i < n; i = j) {
        for (j = i + 1; j < n && v[j].k0 == v[i].k0 && v[j].k1 == v[i].k1; j++)
            ;
        if (j - i > 1)
            qsort(v + i, j - i, sizeof(*v), state_sortkey_cmp);
    }
}

/* A layer's objects sorted for a commit: per table v[t] (malloc'd), n[t]
 * of them; bytes, what their keys and values take in LMDB's pages (for
 * state_room). */
typedef struct state_sorted_layer {
    state_sortkey *v[STATE_TABLES];
    size_t n[STATE_TABLES];
    uint64_t bytes;
} state_sorted_layer;

/* Sorts every table's objects of a layer into so: one pass over the hash
 * slots, each entry prefetched a few slots ahead (independent loads the
 * CPU overlaps — walking a table's list waited for a cache miss per step;
 * so->bytes summed while each entry is in the cache anyway), then
 * state_sort per table. */
#define STATE_SORT_AHEAD 16u
static int state_sorted(const state_layer *l, state_sorted_layer *so)
{
    state_sortkey **v = so->v;
    size_t *n = so->n;
    so->bytes = 0;
    for (int t = 0; t < STATE_TABLES; t++) {
        n[t] = 0;
        v[t] = l->table_count[t] ? malloc(l->table_count[t] * sizeof(*v[t])) : NULL;
        if (l->table_count[t] && !v[t]) {
            for (int k = 0; k < t; k++)
                free(v[k]);
            return -ENOMEM;
        }
    }
    for (uint32_t i = 0; i < l->cap; i++) {
        if (i + STATE_SORT_AHEAD < l->cap && l->slots[i + STATE_SORT_AHEAD].e) {
            const uint8_t *p = (const uint8_t *)l->slots[i + STATE_SORT_AHEAD].e;
            __builtin_prefetch(p);
            __builtin_prefetch(p + 63); /* the key may cross into the next line */
        }
        const state_entry *e = l->slots[i].e;
        if (e) {
            v[e->table][n[e->table]++] =
                (state_sortkey){state_key_word(e, 0), state_key_word(e, 8), e};
            so->bytes += e->key_len + e->val_len + 16; /* LMDB's node header, roughly */
        }
    }
    for (int t = 0; t < STATE_TABLES; t++) {
        assert(n[t] == l->table_count[t]);
        state_sort(v[t], n[t]);
    }
    return 0;
}

/* Writes one table of a layer into txn, in key order (v: its n objects,
 * sorted). */
static int state_write_table(state *s, MDB_txn *txn, int t, const state_sortkey *v, size_t n)
{
    if (n == 0)
        return 0;
    int rc;
    /* Keys past the table's last are appended (MDB_APPEND: no search, pages
     * filled sequentially): the keys of tables keyed by seq (lot ids,
     * holds), and every key of a table still empty — a new directory's
     * first checkpoint, an import's. */
    MDB_val last = {0};
    bool have_last = false;
    MDB_cursor *c;
    rc = mdb_cursor_open(txn, s->dbi[t], &c);
    if (rc == 0) {
        MDB_val lv;
        int g = mdb_cursor_get(c, &last, &lv, MDB_LAST);
        have_last = g == 0;
        rc = g == 0 || g == MDB_NOTFOUND ? 0 : g;
        mdb_cursor_close(c);
    }
    bool appending = !have_last; /* the keys are sorted and unique */
    for (size_t i = 0; rc == 0 && i < n; i++) {
        /* The entry, then its value, a few objects ahead. */
        if (i + 8 < n)
            __builtin_prefetch(v[i + 8].e);
        if (i + 4 < n && v[i + 4].e->val)
            __builtin_prefetch(v[i + 4].e->val);
        const state_entry *e = v[i].e;
        if (!appending && state_keycmp(e->key, e->key_len, last.mv_data, last.mv_size) > 0)
            appending = true;
        if (e->tomb) {
            if (appending)
                continue; /* past the last key: not there */
            MDB_val k = {.mv_size = e->key_len, .mv_data = (void *)e->key};
            rc = mdb_del(txn, s->dbi[t], &k, NULL);
            if (rc == MDB_NOTFOUND)
                rc = 0;
            continue;
        }
        rc = state_lmdb_put(txn, s->dbi[t], t, e->key, e->key_len, e->val, e->val_len,
                            appending ? MDB_APPEND : 0);
    }
    return rc;
}

int state_commit_add(state *s, int table, const void *key, size_t key_len, const void *val,
                     size_t val_len)
{
    assert(table >= 0 && table < STATE_TABLES && key_len <= STATE_KEY_BYTES_MAX);
    size_t need = 3 + 4 + key_len + val_len;
    if (s->extra_len + need > sizeof(s->extra) || val_len > UINT32_MAX)
        return -ENOBUFS;
    uint8_t *p = s->extra + s->extra_len;
    p[0] = (uint8_t)table;
    p[1] = (uint8_t)key_len;
    p[2] = 0;
    uint32_t vl = (uint32_t)val_len;
    memcpy(p + 3, &vl, 4);
    memcpy(p + 7, key, key_len);
    memcpy(p + 7 + key_len, val, val_len);
    s->extra_len += need;
    return 0;
}

/* Writes state_commit_add's values into txn. */
static int state_write_extra(state *s, MDB_txn *txn)
{
    int rc = 0;
    for (size_t at = 0; rc == 0 && at < s->extra_len;) {
        const uint8_t *p = s->extra + at;
        uint32_t vl;
        memcpy(&vl, p + 3, 4);
        rc = state_lmdb_put(txn, s->dbi[p[0]], p[0], p + 7, p[1], p + 7 + p[1], vl, 0);
        at += 7 + p[1] + vl;
    }
    s->extra_len = 0;
    return rc;
}

/* Room for a write transaction (see state_fault_handler): the pages it
 * may dirty — per table, one leaf per key it writes up to the table's
 * leaves, and every branch — plus twice its keys' and values' bytes
 * (so->bytes) for the pages new keys fill half-full, and LMDB's free list of the pages it
 * frees (8 bytes a page) with a MiB to spare.  Pages on LMDB's free list
 * are backed already, so this overestimates.  0, or ENOSPC with the
 * figures in `error`. */
static int state_room(state *s, MDB_txn *txn, const state_sorted_layer *so, char *error,
                      size_t cap)
{
    const size_t *n = so->n;
    mdb_filehandle_t fd;
    struct statvfs vfs;
    MDB_stat env;
    if (mdb_env_get_fd(s->env, &fd) != 0 || fstatvfs(fd, &vfs) != 0 ||
        mdb_env_stat(s->env, &env) != 0)
        return 0; /* no figures: the guard still stands */
    uint64_t pages = 0;
    for (int t = 0; t < STATE_TABLES; t++) {
        MDB_stat st;
        if (n[t] == 0 || mdb_stat(txn, s->dbi[t], &st) != 0)
            continue;
        uint64_t leaves = st.ms_leaf_pages + st.ms_overflow_pages;
        pages += (n[t] < leaves ? n[t] : leaves) + st.ms_branch_pages;
    }
    uint64_t need = pages * (env.ms_psize + 8) + 2 * so->bytes + (1u << 20);
    uint64_t room = (uint64_t)vfs.f_bavail * vfs.f_frsize;
    if (room >= need)
        return 0;
    snprintf(error, cap,
             "LMDB: %llu KiB free beside data.mdb, and this checkpoint may need %llu KiB",
             (unsigned long long)(room >> 10), (unsigned long long)(need >> 10));
    return ENOSPC;
}

static void state_sorted_free(state_sorted_layer *so)
{
    for (int t = 0; t < STATE_TABLES; t++)
        free(so->v[t]);
}

/* Writes a layer into a new write transaction and commits it (synced).
 * LMDB's words about damage go into `error` (the committer has its own:
 * the writer may be reading s->error meanwhile). */
static int state_write_layer(state *s, const state_layer *l, char *error, size_t cap)
{
    state_sorted_layer so;
    if (state_sorted(l, &so) < 0)
        return state_errs_in(error, cap, ENOMEM);
    if (s->broken) {
        state_sorted_free(&so);
        s->extra_len = 0;
        snprintf(error, cap, "LMDB: the state stopped taking writes after a fault in its map: %s",
                 tally_strerror(s->broken));
        return s->broken;
    }
    MDB_txn *volatile txn = NULL;
    int rc;
    sigjmp_buf jump;
    if (!STATE_GUARD(jump)) {
        /* A page of the map faulted (see state_fault_handler): the
         * transaction is abandoned with its environment. */
        state_sorted_free(&so);
        s->extra_len = 0;
        rc = -state_fault_errno(s, error, cap);
        state_abandon(s, rc);
        return rc;
    }
    MDB_txn *begun = NULL;
    rc = mdb_txn_begin(s->env, NULL, 0, &begun);
    txn = begun;
    if (rc == 0)
        rc = state_room(s, txn, &so, error, cap);
    for (int t = 0; rc == 0 && t < STATE_TABLES; t++) {
        /* A table the layer replaces is emptied first, then appended to:
         * packed pages, whatever its old rows left. */
        if (l->replaces >> t & 1)
            rc = mdb_drop(txn, s->dbi[t], 0);
        if (rc == 0)
            rc = state_write_table(s, txn, t, so.v[t], so.n[t]);
    }
    if (rc == 0)
        rc = state_write_extra(s, txn);
    if (rc == 0)
        rc = mdb_txn_commit(txn);
    else if (txn)
        mdb_txn_abort(txn);
    state_guard_end();
    state_sorted_free(&so);
    return state_errs_in(error, cap, rc);
}

static void *state_committer(void *arg)
{
    state *s = arg;
    s->extra_len = 0;
    s->commit_error[0] = 0;
    s->commit_rc = s->before ? s->before(s->before_ctx) : 0;
    if (s->commit_rc == 0)
        s->commit_rc =
            state_write_layer(s, s->frozen, s->commit_error, sizeof(s->commit_error));
    atomic_store(&s->commit_done, 1);
    if (s->done)
        s->done(s->done_ctx);
    return NULL;
}

/* The layer that follows the active one.  The clean cache gives it its
 * memory: until the next commit makes a clean cache again, reads of what
 * no layer holds walk LMDB's B-tree, as they did before any checkpoint. */
static state_layer *state_layer_next(state *s)
{
    state_layer *l = s->clean ? state_layer_recycle(s->clean, s->active->cap)
                              : state_layer_new(s->active->cap);
    s->clean = NULL;
    return l;
}

int state_freeze(state *s)
{
    if (s->frozen)
        return -EBUSY;
    state_layer *fresh = state_layer_next(s);
    if (!fresh)
        return -ENOMEM;
    state_layer_seal(s->active);
    s->frozen = s->active;
    s->active = fresh;
    return 0;
}

int state_commit_frozen(state *s, int (*before)(void *ctx), void *before_ctx,
                        void (*done)(void *ctx), void *done_ctx)
{
    assert(s->frozen && !s->committing);
    s->before = before;
    s->before_ctx = before_ctx;
    s->done = done;
    s->done_ctx = done_ctx;
    atomic_store(&s->commit_done, 0);
    int rc = pthread_create(&s->thread, NULL, state_committer, s);
    if (rc != 0)
        return -rc;
    s->committing = true;
    return 0;
}

int state_commit_finish(state *s)
{
    if (!s->committing)
        return STATE_COMMIT_NONE;
    if (!atomic_load(&s->commit_done))
        return STATE_COMMIT_RUNNING;
    return state_commit_wait(s);
}

/* A layer now in LMDB becomes the clean cache (the older one goes). */
static void state_keep_clean(state *s, state_layer *l)
{
    state_layer_seal(l);
    state_layer_free(s->clean);
    s->clean = l;
}

int state_commit_wait(state *s)
{
    if (!s->committing)
        return STATE_COMMIT_NONE;
    state_join(s);
    int rc = s->commit_rc;
    if (rc == 0)
        rc = state_renew(s);
    if (rc == 0) {
        state_keep_clean(s, s->frozen);
        s->frozen = NULL;
    }
    return rc;
}

/* Starts an empty active layer in place of the current one, which is
 * kept as the clean cache if it was committed. */
static int state_empty_active(state *s, bool committed)
{
    state_layer *fresh = state_layer_next(s);
    if (!fresh)
        return -ENOMEM;
    if (committed)
        state_keep_clean(s, s->active);
    else
        state_layer_free(s->active);
    s->active = fresh;
    return 0;
}

int state_commit(state *s)
{
    /* A running commit first: its layer is older than the active one. */
    if (s->committing) {
        state_join(s);
        int rc = s->commit_rc;
        if (rc == 0)
            rc = state_renew(s);
        if (rc < 0)
            return rc;
        state_keep_clean(s, s->frozen);
        s->frozen = NULL;
    }
    if (s->frozen) {
        int rc = state_write_layer(s, s->frozen, s->error, sizeof(s->error));
        if (rc == 0)
            rc = state_renew(s);
        if (rc < 0)
            return rc;
        state_keep_clean(s, s->frozen);
        s->frozen = NULL;
    }
    int rc = state_write_layer(s, s->active, s->error, sizeof(s->error));
    if (rc == 0)
        rc = state_renew(s);
    if (rc < 0)
        return rc;
    /* The clean cache is the older layer: its keys the active one changed
     * are newer there, so it goes (its memory to the next active layer). */
    return state_empty_active(s, true);
}

void state_replace(state *s, int table)
{
    assert(table > STATE_META && table < STATE_TABLES && !s->frozen && !s->committing);
    s->active->replaces |= 1u << table;
}

int state_abort(state *s)
{
    if (s->committing) {
        state_join(s);
        if (s->commit_rc == 0)
            state_renew(s);
    }
    /* Committed or not, the frozen layer goes: what it held is in LMDB or
     * was never durable; the clean cache too, since LMDB may now be newer
     * than it. */
    state_layer_free(s->frozen);
    s->frozen = NULL;
    return state_empty_active(s, false); /* the clean cache's memory reused */
}

/* ---- get / put / del -------------------------------------------------------------- */

/* The layers' newest version of (table, key), or NULL. */
static const state_entry *state_layers_get(const state *s, int table, const void *key,
                                           size_t key_len)
{
    uint64_t h = state_hash(table, key, key_len);
    const state_entry *e = state_layer_get(s->active, table, key, key_len, h);
    if (!e)
        e = state_layer_get(s->frozen, table, key, key_len, h);
    return e ? e : state_layer_get(s->clean, table, key, key_len, h);
}

static int state_lmdb_get(state *s, int table, const void *key, size_t key_len,
                          const void **val, size_t *val_len)
{
    int rc = state_rtxn(s);
    if (rc < 0)
        return rc;
    bool memo = key_len <= STATE_MEMO_KEY;
    for (uint32_t i = 0; memo && i < STATE_MEMO; i++) {
        const state_memo *m = &s->memo[i];
        if (m->view == s->view && m->table == table && m->key_len == key_len &&
            memcmp(m->key, key, key_len) == 0) {
            if (!m->val)
                return STATE_ABSENT;
            *val = m->val;
            *val_len = m->val_len;
            return 0;
        }
    }
    MDB_val k = {.mv_size = key_len, .mv_data = (void *)key}, v;
    rc = mdb_get(s->rtxn, s->dbi[table], &k, &v);
    if (rc != 0 && rc != MDB_NOTFOUND)
        return state_errs(s, rc);
    if (rc == 0 && (rc = state_check(s, table, &k, &v)) < 0)
        return rc;
    bool absent = rc == MDB_NOTFOUND;
    if (memo) {
        state_memo *m = &s->memo[s->memo_next++ % STATE_MEMO];
        *m = (state_memo){.view = s->view, .table = table, .key_len = (uint8_t)key_len,
                          .val = absent ? NULL : v.mv_data, .val_len = absent ? 0 : v.mv_size};
        memcpy(m->key, key, key_len);
    }
    if (absent)
        return STATE_ABSENT;
    *val = v.mv_data;
    *val_len = v.mv_size;
    return 0;
}

/* The home slot of hash h in each layer a lookup reads (NULL: none). */
static void state_homes(const state *s, uint64_t h, const state_hslot *out[3])
{
    const state_layer *ls[] = {s->active, s->frozen, s->clean};
    for (size_t i = 0; i < 3; i++)
        out[i] = ls[i] ? &ls[i]->slots[(uint32_t)h & (ls[i]->cap - 1)] : NULL;
}

void state_prefetch(const state *s, int table, const void *key, size_t key_len)
{
    const state_hslot *home[3];
    state_homes(s, state_hash(table, key, key_len), home);
    for (size_t i = 0; i < 3; i++)
        if (home[i])
            __builtin_prefetch(home[i]);
}

void state_prefetch_object(const state *s, int table, const void *key, size_t key_len)
{
    uint64_t h = state_hash(table, key, key_len);
    const state_hslot *home[3];
    state_homes(s, h, home);
    /* The home slot only: a key further along its probe is rare at half
     * load.  An entry's value is allocated right behind it
     * (state_layer_set), so its first line comes along. */
    for (size_t i = 0; i < 3; i++)
        if (home[i] && home[i]->e && home[i]->hash == h) {
            __builtin_prefetch(home[i]->e);
            __builtin_prefetch((const uint8_t *)home[i]->e + 64);
        }
}

int state_get(state *s, int table, const void *key, size_t key_len, const void **val,
              size_t *val_len)
{
    assert(table >= 0 && table < STATE_TABLES);
    const state_entry *e = state_layers_get(s, table, key, key_len);
    if (e) {
        if (e->tomb)
            return STATE_ABSENT;
        *val = e->val ? e->val : (const uint8_t *)"";
        *val_len = e->val_len;
        return 0;
    }
    return state_lmdb_get(s, table, key, key_len, val, val_len);
}

int state_put(state *s, int table, const void *key, size_t key_len, const void *val,
              size_t val_len)
{
    assert(table >= 0 && table < STATE_TABLES);
    assert(!s->borrowed);
    return state_layer_set(s->active, table, key, key_len, state_hash(table, key, key_len), val,
                           val_len, false);
}

int state_del(state *s, int table, const void *key, size_t key_len)
{
    assert(!s->borrowed);
    const void *v;
    size_t vl;
    int rc = state_get(s, table, key, key_len, &v, &vl);
    if (rc != 0)
        return rc; /* STATE_ABSENT */
    return state_del_known(s, table, key, key_len);
}

int state_del_known(state *s, int table, const void *key, size_t key_len)
{
    assert(!s->borrowed);
    return state_layer_set(s->active, table, key, key_len, state_hash(table, key, key_len),
                           NULL, 0, true);
}

/* ---- ordered iteration: the merge of the layers and LMDB --------------------------- */

typedef struct state_iter {
    state *s;
    int table;
    const uint8_t *to;
    size_t to_len;
    state_entry **dirty; /* the layers' objects in range, newest version, sorted */
    size_t n, i;
    MDB_cursor *cur;
    bool lmdb_valid;
    MDB_val lk, lv;
} state_iter;

static bool state_in_range(const uint8_t *k, size_t kl, const void *from, size_t from_len,
                           const void *to, size_t to_len)
{
    return (from_len == 0 || state_keycmp(k, kl, from, from_len) >= 0) &&
           (to_len == 0 || state_keycmp(k, kl, to, to_len) < 0);
}

static int state_iter_init(state *s, int table, const void *from, size_t from_len,
                           const void *to, size_t to_len, state_iter *it)
{
    *it = (state_iter){.s = s, .table = table, .to = to, .to_len = to_len};
    int rc = state_rtxn(s);
    if (rc < 0)
        return rc;
    size_t cap = (s->active ? s->active->table_count[table] : 0) +
                 (s->frozen ? s->frozen->table_count[table] : 0);
    it->dirty = cap ? malloc(cap * sizeof(*it->dirty)) : NULL;
    if (cap && !it->dirty)
        return -ENOMEM;
    for (int i = 0; i < 2; i++) {
        const state_layer *l = i == 0 ? s->active : s->frozen;
        if (!l || (to_len && l->least[table] &&
                   state_keycmp(l->least[table]->key, l->least[table]->key_len, to, to_len) >= 0))
            continue;
        for (const state_entry *e = l->lists[table]; e; e = e->next) {
            if (!state_in_range(e->key, e->key_len, from, from_len, to, to_len))
                continue;
            /* A frozen object the active layer changed again: the newer. */
            if (i == 1 && state_layer_get(s->active, table, e->key, e->key_len, e->hash))
                continue;
            it->dirty[it->n++] = (state_entry *)e;
        }
    }
    if (it->n > 1)
        qsort(it->dirty, it->n, sizeof(*it->dirty), state_entry_cmp);
    rc = mdb_cursor_open(s->rtxn, s->dbi[table], &it->cur);
    if (rc != 0) {
        free(it->dirty);
        return state_errs(s, rc);
    }
    MDB_val k = {.mv_size = from_len, .mv_data = (void *)from};
    rc = mdb_cursor_get(it->cur, &k, &it->lv, from_len ? MDB_SET_RANGE : MDB_FIRST);
    it->lmdb_valid = rc == 0;
    if (rc == 0)
        it->lk = k;
    return rc == 0 || rc == MDB_NOTFOUND ? 0 : state_errs(s, rc);
}

static void state_iter_close(state_iter *it)
{
    if (it->cur)
        mdb_cursor_close(it->cur);
    free(it->dirty);
}

static int state_iter_lmdb_step(state_iter *it)
{
    MDB_val k;
    int rc = mdb_cursor_get(it->cur, &k, &it->lv, MDB_NEXT);
    it->lmdb_valid = rc == 0;
    if (rc == 0)
        it->lk = k;
    return rc == 0 || rc == MDB_NOTFOUND ? 0 : state_errs(it->s, rc);
}

/* 0 and the next live (key, value) in order; STATE_ABSENT at the end. */
static int state_iter_next(state_iter *it, const void **k, size_t *kl, const void **v,
                           size_t *vl)
{
    for (;;) {
        if (it->lmdb_valid && it->to_len &&
            state_keycmp(it->lk.mv_data, it->lk.mv_size, it->to, it->to_len) >= 0)
            it->lmdb_valid = false;
        const state_entry *d = it->i < it->n ? it->dirty[it->i] : NULL;
        if (!d && !it->lmdb_valid)
            return STATE_ABSENT;
        int cmp = !d ? 1
                  : !it->lmdb_valid
                      ? -1
                      : state_keycmp(d->key, d->key_len, it->lk.mv_data, it->lk.mv_size);
        if (cmp <= 0) {
            it->i++;
            if (cmp == 0) {
                int rc = state_iter_lmdb_step(it);
                if (rc < 0)
                    return rc;
            }
            if (d->tomb)
                continue;
            *k = d->key;
            *kl = d->key_len;
            *v = d->val ? d->val : (const uint8_t *)"";
            *vl = d->val_len;
            return 0;
        }
        MDB_val key = it->lk, val = it->lv;
        int rc = state_check(it->s, it->table, &key, &val);
        if (rc < 0)
            return rc;
        *k = key.mv_data;
        *kl = key.mv_size;
        *v = val.mv_data;
        *vl = val.mv_size;
        rc = state_iter_lmdb_step(it);
        return rc < 0 ? rc : 0;
    }
}

int state_scan(state *s, int table, const void *from, size_t from_len, const void *to,
               size_t to_len, state_scan_fn fn, void *ctx)
{
    state_iter it;
    int rc = state_iter_init(s, table, from, from_len, to, to_len, &it);
    const void *k, *v;
    size_t kl, vl;
    while (rc == 0 && (rc = state_iter_next(&it, &k, &kl, &v, &vl)) == 0)
        rc = fn(ctx, k, kl, v, vl);
    state_iter_close(&it);
    return rc == STATE_ABSENT ? 0 : rc;
}

/* ---- compare, copy ---------------------------------------------------------------- */

static int state_compare_table(state *a, state *b, int t, char *msg, size_t cap)
{
    state_iter ia, ib;
    int rc = state_iter_init(a, t, NULL, 0, NULL, 0, &ia);
    if (rc < 0)
        return rc;
    rc = state_iter_init(b, t, NULL, 0, NULL, 0, &ib);
    if (rc < 0) {
        state_iter_close(&ia);
        return rc;
    }
    const void *ka = NULL, *va = NULL, *kb = NULL, *vb = NULL;
    size_t kal = 0, val = 0, kbl = 0, vbl = 0;
    int ra = state_iter_next(&ia, &ka, &kal, &va, &val);
    int rb = state_iter_next(&ib, &kb, &kbl, &vb, &vbl);
    rc = 0;
    while (ra == 0 || rb == 0) {
        if (ra < 0 || rb < 0) {
            rc = ra < 0 ? ra : rb;
            break;
        }
        bool same_key = ra == 0 && rb == 0 && state_keycmp(ka, kal, kb, kbl) == 0;
        if (!same_key || val != vbl || memcmp(va, vb, val) != 0) {
            char hex[80];
            bool a_first = ra == 0 && (rb != 0 || state_keycmp(ka, kal, kb, kbl) < 0);
            state_hex(a_first ? ka : kb, a_first ? kal : kbl, hex, sizeof(hex));
            snprintf(msg, cap, "state differs from the replay of the log: table %s, key %s (%s)",
                     state_names[t], hex,
                     !same_key ? (a_first ? "missing in replay" : "missing in state")
                               : "different value");
            rc = TALLY_ECORRUPT;
            break;
        }
        ra = state_iter_next(&ia, &ka, &kal, &va, &val);
        rb = state_iter_next(&ib, &kb, &kbl, &vb, &vbl);
    }
    if (rc == 0 && (ra < 0 || rb < 0))
        rc = ra < 0 ? ra : rb;
    state_iter_close(&ia);
    state_iter_close(&ib);
    return rc;
}

int state_compare(state *a, state *b, char *msg, size_t cap)
{
    for (int t = 1; t < STATE_TABLES; t++) {
        int rc = state_compare_table(a, b, t, msg, cap);
        if (rc != 0)
            return rc;
    }
    return 0;
}

int state_copy_fd(state *s, int fd)
{
    /* Another thread (snapshots): the writer owns s->error. */
    return state_err(mdb_env_copyfd2(s->env, fd, MDB_CP_COMPACT));
}

int state_file_meta(const char *path, const char *name, void *out, size_t cap, size_t *len)
{
    MDB_env *env;
    int rc = mdb_env_create(&env);
    if (rc != 0)
        return state_err(rc);
    mdb_env_set_maxdbs(env, STATE_TABLES);
    rc = mdb_env_open(env, path, MDB_NOSUBDIR | MDB_RDONLY | MDB_NOLOCK, 0644);
    MDB_txn *txn = NULL;
    MDB_dbi dbi;
    if (rc == 0)
        rc = mdb_txn_begin(env, NULL, MDB_RDONLY, &txn);
    if (rc == 0)
        rc = mdb_dbi_open(txn, state_names[STATE_META], 0, &dbi);
    MDB_val k = {.mv_size = strlen(name), .mv_data = (void *)name}, v;
    if (rc == 0)
        rc = mdb_get(txn, dbi, &k, &v);
    int result = 0;
    if (rc == MDB_NOTFOUND) {
        result = STATE_ABSENT;
        rc = 0;
    } else if (rc == 0) {
        size_t n = v.mv_size - STATE_CHECKSUM_BYTES;
        if (v.mv_size < STATE_CHECKSUM_BYTES || n > cap ||
            bytes_get_le64((const uint8_t *)v.mv_data + n) !=
                state_sum(STATE_META, name, strlen(name), v.mv_data, n))
            rc = MDB_CORRUPTED;
        else {
            memcpy(out, v.mv_data, n);
            *len = n;
        }
    }
    if (txn)
        mdb_txn_abort(txn);
    mdb_env_close(env);
    return rc ? state_err(rc) : result;
}
