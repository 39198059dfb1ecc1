/*
 * state.c — a shard's tables: in-memory layers over LMDB (state.h).  The
 * only module that includes lmdb.h.
 *
 * Layers.  A layer holds changes (a value, or a tombstone for a deletion)
 * for every table, each table an ordered skiplist with a backward link at
 * level 0; nodes and values live in the layer's arena and go all at once.
 * There are at most two: the active layer (the writer's) and a frozen one
 * (being committed).  A key's newest version wins: active, then frozen,
 * then LMDB as of its last commit (read through one read transaction,
 * renewed after each commit).
 *
 * Durability (DESIGN-NOTES §1): LMDB's default, fully synced commits —
 * never MDB_NOSYNC, MDB_NOMETASYNC or MDB_MAPASYNC, which can leave a
 * database that a power loss corrupts.  What reaches LMDB is always a
 * whole checkpoint the caller chose; the log makes each batch durable.
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
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <lmdb.h>

#include "checksum.h"
#include "state.h"
#include "tally.h"

/* ---- constants and types ------------------------------------------------ */

#define STATE_LEVELS 20
#define STATE_ARENA_CHUNK (1u << 20)
#define STATE_TOMBSTONE UINT32_MAX

static const char *const state_names[STATE_TABLES] = {
    "meta", "accounts", "lots", "expiry", "ids", "history",
    "refs", "holds_due", "acct_holds", "merchants", "liability", "pending",
};

/* A version of a key in a layer.  val_len STATE_TOMBSTONE: deleted. */
typedef struct state_node {
    struct state_node *prev; /* level 0, backwards */
    uint8_t *val; /* in the layer's arena (NULL: empty or a tombstone) */
    uint32_t val_len;
    uint16_t key_len;
    uint8_t level;
    uint8_t *key;
    struct state_node *next[]; /* level entries */
} state_node;

typedef struct state_chunk {
    struct state_chunk *next;
    size_t used, cap;
    uint8_t data[];
} state_chunk;

typedef struct state_layer {
    state_node *head[STATE_TABLES];
    state_node *tail[STATE_TABLES];
    state_chunk *chunks;
    size_t bytes;
    uint64_t rng;
} state_layer;

struct state {
    MDB_env *env;
    MDB_dbi dbi[STATE_TABLES];
    MDB_txn *rtxn; /* read view of the last commit; NULL until first use */
    state_layer *active;
    state_layer *frozen;
    /* committer */
    pthread_t thread;
    bool committing;
    _Atomic int commit_done;
    int commit_rc;
    void (*done)(void *ctx);
    void *done_ctx;
    char error[160];
};

/* Where a cursor stands in one source: a layer node, or LMDB's. */
struct state_cursor {
    state *s;
    int table;
    MDB_cursor *cur; /* on s->rtxn */
    state_node *pos[2]; /* active, frozen: the node at or next to the key */
    bool lmdb_valid;
    MDB_val lk, lv;
    /* the current merged entry */
    bool valid;
    uint8_t key[512];
    size_t key_len;
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

const char *state_table_name(int table)
{
    return table >= 0 && table < STATE_TABLES ? state_names[table] : "?";
}

const char *state_error(const state *s) { return s->error; }

/* state_err, remembering LMDB's own words when it reports damage. */
static int state_errs(state *s, int rc)
{
    int err = state_err(rc);
    if (err == TALLY_ECORRUPT)
        snprintf(s->error, sizeof(s->error), "LMDB: %s", mdb_strerror(rc));
    return err;
}

/* ---- value checksums ---------------------------------------------------- */

static void state_put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t state_get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

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
        if (state_get64(p + n) == state_sum(table, k->mv_data, k->mv_size, p, n)) {
            v->mv_size = n;
            return 0;
        }
    }
    char hex[65] = "";
    const uint8_t *kb = k->mv_data;
    for (size_t i = 0; i < k->mv_size && i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", kb[i]);
    snprintf(s->error, sizeof(s->error), "state table %s, key %s: checksum mismatch",
             state_names[table], hex);
    return TALLY_ECORRUPT;
}

/* Writes one value with its checksum into a write transaction. */
static int state_lmdb_put(MDB_txn *txn, MDB_dbi dbi, int table, const void *key,
                          size_t key_len, const void *val, size_t val_len)
{
    MDB_val k = {.mv_size = key_len, .mv_data = (void *)key};
    /* MDB_RESERVE: LMDB hands out the space, the value and its checksum
     * are written straight into the page. */
    MDB_val v = {.mv_size = val_len + STATE_CHECKSUM_BYTES};
    int rc = mdb_put(txn, dbi, &k, &v, MDB_RESERVE);
    if (rc != 0)
        return rc;
    uint8_t *p = v.mv_data;
    if (val_len)
        memcpy(p, val, val_len);
    state_put64(p + val_len, state_sum(table, key, key_len, val, val_len));
    return 0;
}

/* ---- layers: arena and skiplists ------------------------------------------ */

static void *state_alloc(state_layer *l, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    state_chunk *c = l->chunks;
    if (!c || c->cap - c->used < n) {
        size_t cap = n > STATE_ARENA_CHUNK ? n : STATE_ARENA_CHUNK;
        c = malloc(sizeof(*c) + cap);
        if (!c)
            return NULL;
        c->cap = cap;
        c->used = 0;
        c->next = l->chunks;
        l->chunks = c;
        l->bytes += sizeof(*c) + cap;
    }
    void *p = c->data + c->used;
    c->used += n;
    return p;
}

static state_layer *state_layer_new(void)
{
    state_layer *l = calloc(1, sizeof(*l));
    if (!l)
        return NULL;
    l->rng = 0x9E3779B97F4A7C15ull;
    for (int t = 0; t < STATE_TABLES; t++) {
        l->head[t] = state_alloc(l, sizeof(state_node) + STATE_LEVELS * sizeof(state_node *));
        if (!l->head[t]) {
            for (state_chunk *c = l->chunks, *n; c; c = n) {
                n = c->next;
                free(c);
            }
            free(l);
            return NULL;
        }
        memset(l->head[t], 0, sizeof(state_node) + STATE_LEVELS * sizeof(state_node *));
        l->head[t]->level = STATE_LEVELS;
    }
    return l;
}

static void state_layer_free(state_layer *l)
{
    if (!l)
        return;
    for (state_chunk *c = l->chunks, *n; c; c = n) {
        n = c->next;
        free(c);
    }
    free(l);
}

static int state_keycmp(const uint8_t *a, size_t an, const uint8_t *b, size_t bn)
{
    int c = memcmp(a, b, an < bn ? an : bn);
    return c ? c : (an < bn ? -1 : an > bn);
}

static int state_nodecmp(const state_node *n, const void *key, size_t key_len)
{
    return state_keycmp(n->key, n->key_len, key, key_len);
}

/* The first node with a key >= key (NULL: none); update[] gets, per
 * level, the last node before it (for inserts). */
static state_node *state_find_ge(state_layer *l, int t, const void *key, size_t key_len,
                                 state_node **update)
{
    state_node *x = l->head[t];
    for (int i = STATE_LEVELS - 1; i >= 0; i--) {
        while (x->next[i] && state_nodecmp(x->next[i], key, key_len) < 0)
            x = x->next[i];
        if (update)
            update[i] = x;
    }
    return x->next[0];
}

static uint8_t state_random_level(state_layer *l)
{
    /* xorshift64*: the levels need only be random, not secret. */
    l->rng ^= l->rng >> 12;
    l->rng ^= l->rng << 25;
    l->rng ^= l->rng >> 27;
    uint64_t r = l->rng * 0x2545F4914F6CDD1Dull;
    uint8_t lv = 1;
    while (lv < STATE_LEVELS && (r & 3) == 0) {
        lv++;
        r >>= 2;
    }
    return lv;
}

/* Sets key's version in the layer (val NULL with STATE_TOMBSTONE: a
 * deletion).  -ENOMEM if the arena cannot grow. */
static int state_layer_set(state_layer *l, int t, const void *key, size_t key_len,
                           const void *val, uint32_t val_len)
{
    assert(key_len > 0 && key_len <= 511);
    state_node *update[STATE_LEVELS];
    state_node *n = state_find_ge(l, t, key, key_len, update);
    bool found = n && state_nodecmp(n, key, key_len) == 0;
    /* A key rewritten within one layer (a busy account) reuses its value's
     * bytes when the new one fits: the arena grows with keys, not writes. */
    if (found && n->val && n->val_len != STATE_TOMBSTONE && val_len != STATE_TOMBSTONE &&
        val_len <= n->val_len) {
        memmove(n->val, val, val_len);
        n->val_len = val_len;
        return 0;
    }
    uint8_t *copy = NULL;
    if (val_len != STATE_TOMBSTONE && val_len > 0) {
        copy = state_alloc(l, val_len);
        if (!copy)
            return -ENOMEM;
        memcpy(copy, val, val_len);
    }
    if (found) {
        n->val = copy;
        n->val_len = val_len;
        return 0;
    }
    uint8_t level = state_random_level(l);
    n = state_alloc(l, sizeof(state_node) + level * sizeof(state_node *) + key_len);
    if (!n)
        return -ENOMEM;
    n->level = level;
    n->key_len = (uint16_t)key_len;
    n->key = (uint8_t *)&n->next[level];
    memcpy(n->key, key, key_len);
    n->val = copy;
    n->val_len = val_len;
    for (int i = 0; i < level; i++) {
        n->next[i] = update[i]->next[i];
        update[i]->next[i] = n;
    }
    n->prev = update[0] == l->head[t] ? NULL : update[0];
    if (n->next[0])
        n->next[0]->prev = n;
    else
        l->tail[t] = n;
    return 0;
}

static state_node *state_layer_get(state_layer *l, int t, const void *key, size_t key_len)
{
    if (!l)
        return NULL;
    state_node *n = state_find_ge(l, t, key, key_len, NULL);
    return n && state_nodecmp(n, key, key_len) == 0 ? n : NULL;
}

/* ---- the read view ---------------------------------------------------------- */

static int state_rtxn(state *s)
{
    if (s->rtxn)
        return 0;
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

int state_open(const char *dir, uint64_t map_bytes, state **out)
{
    if (mkdir(dir, 0755) < 0 && errno != EEXIST)
        return -errno;
    state *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->active = state_layer_new();
    int rc = s->active ? mdb_env_create(&s->env) : ENOMEM;
    if (rc == 0)
        rc = mdb_env_set_maxdbs(s->env, STATE_TABLES);
    if (rc == 0)
        rc = mdb_env_set_mapsize(s->env, (size_t)map_bytes);
    /* MDB_NOTLS: read transactions are not tied to threads — the writer's
     * read view, the committer and snapshot copies live side by side. */
    if (rc == 0)
        rc = mdb_env_open(s->env, dir, MDB_NOTLS, 0644);
    MDB_txn *txn = NULL;
    if (rc == 0)
        rc = mdb_txn_begin(s->env, NULL, 0, &txn);
    for (int i = 0; rc == 0 && i < STATE_TABLES; i++)
        rc = mdb_dbi_open(txn, state_names[i], MDB_CREATE, &s->dbi[i]);
    /* Make the tables exist on disk so a copy always has them. */
    if (rc == 0) {
        rc = mdb_txn_commit(txn);
        txn = NULL;
    }
    if (txn)
        mdb_txn_abort(txn);
    if (rc != 0) {
        int err = state_err(rc);
        state_close(s);
        return err;
    }
    *out = s;
    return 0;
}

static void state_join(state *s)
{
    if (!s->committing)
        return;
    pthread_join(s->thread, NULL);
    s->committing = false;
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
    if (s->env)
        mdb_env_close(s->env);
    free(s);
}

size_t state_active_bytes(const state *s) { return s->active ? s->active->bytes : 0; }
bool state_has_frozen(const state *s) { return s->frozen != NULL; }

/* ---- commits -------------------------------------------------------------------- */

/* Writes a layer into a new write transaction and commits it (synced). */
static int state_write_layer(state *s, const state_layer *l)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
    if (rc != 0)
        return state_errs(s, rc);
    for (int t = 0; rc == 0 && t < STATE_TABLES; t++) {
        for (const state_node *n = l->head[t]->next[0]; rc == 0 && n; n = n->next[0]) {
            if (n->val_len == STATE_TOMBSTONE) {
                MDB_val k = {.mv_size = n->key_len, .mv_data = n->key};
                rc = mdb_del(txn, s->dbi[t], &k, NULL);
                if (rc == MDB_NOTFOUND)
                    rc = 0;
            } else {
                rc = state_lmdb_put(txn, s->dbi[t], t, n->key, n->key_len, n->val, n->val_len);
            }
        }
    }
    if (rc != 0) {
        mdb_txn_abort(txn);
        return state_errs(s, rc);
    }
    return state_errs(s, mdb_txn_commit(txn));
}

static void *state_committer(void *arg)
{
    state *s = arg;
    s->commit_rc = state_write_layer(s, s->frozen);
    atomic_store(&s->commit_done, 1);
    if (s->done)
        s->done(s->done_ctx);
    return NULL;
}

int state_freeze(state *s)
{
    if (s->frozen)
        return -EBUSY;
    state_layer *fresh = state_layer_new();
    if (!fresh)
        return -ENOMEM;
    s->frozen = s->active;
    s->active = fresh;
    return 0;
}

int state_commit_frozen(state *s, void (*done)(void *ctx), void *ctx)
{
    assert(s->frozen && !s->committing);
    s->done = done;
    s->done_ctx = ctx;
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
        return 1;
    if (!atomic_load(&s->commit_done))
        return 2;
    state_join(s);
    int rc = s->commit_rc;
    if (rc == 0)
        rc = state_renew(s);
    if (rc == 0) {
        state_layer_free(s->frozen);
        s->frozen = NULL;
    }
    return rc;
}

/* Starts an empty active layer in place of the current one. */
static int state_empty_active(state *s)
{
    state_layer *fresh = state_layer_new();
    if (!fresh)
        return -ENOMEM;
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
        state_layer_free(s->frozen);
        s->frozen = NULL;
    }
    if (s->frozen) {
        int rc = state_write_layer(s, s->frozen);
        if (rc < 0)
            return rc;
        state_layer_free(s->frozen);
        s->frozen = NULL;
    }
    int rc = state_write_layer(s, s->active);
    if (rc == 0)
        rc = state_renew(s);
    if (rc < 0)
        return rc;
    return state_empty_active(s);
}

int state_abort(state *s)
{
    if (s->committing) {
        state_join(s);
        if (s->commit_rc == 0)
            state_renew(s);
    }
    /* Committed or not, the frozen layer goes: what it held is in LMDB or
     * was never durable. */
    state_layer_free(s->frozen);
    s->frozen = NULL;
    return state_empty_active(s);
}

/* ---- get / put / del -------------------------------------------------------------- */

int state_get(state *s, int table, const void *key, size_t key_len, const void **val,
              size_t *val_len)
{
    state_node *n = state_layer_get(s->active, table, key, key_len);
    if (!n)
        n = state_layer_get(s->frozen, table, key, key_len);
    if (n) {
        if (n->val_len == STATE_TOMBSTONE)
            return 1;
        *val = n->val ? n->val : (const uint8_t *)"";
        *val_len = n->val_len;
        return 0;
    }
    int rc = state_rtxn(s);
    if (rc < 0)
        return rc;
    MDB_val k = {.mv_size = key_len, .mv_data = (void *)key}, v;
    rc = mdb_get(s->rtxn, s->dbi[table], &k, &v);
    if (rc == MDB_NOTFOUND)
        return 1;
    if (rc != 0)
        return state_errs(s, rc);
    rc = state_check(s, table, &k, &v);
    if (rc < 0)
        return rc;
    *val = v.mv_data;
    *val_len = v.mv_size;
    return 0;
}

int state_put(state *s, int table, const void *key, size_t key_len, const void *val,
              size_t val_len)
{
    assert(val_len < STATE_TOMBSTONE);
    return state_layer_set(s->active, table, key, key_len, val, (uint32_t)val_len);
}

int state_del(state *s, int table, const void *key, size_t key_len)
{
    const void *v;
    size_t vl;
    int rc = state_get(s, table, key, key_len, &v, &vl);
    if (rc != 0)
        return rc; /* 1: absent */
    return state_layer_set(s->active, table, key, key_len, NULL, STATE_TOMBSTONE);
}

/* ---- cursors: the merge of the layers and LMDB ------------------------------------ */

int state_cursor_open(state *s, int table, state_cursor **out)
{
    int rc = state_rtxn(s);
    if (rc < 0)
        return rc;
    state_cursor *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->s = s;
    c->table = table;
    rc = mdb_cursor_open(s->rtxn, s->dbi[table], &c->cur);
    if (rc != 0) {
        free(c);
        return state_errs(s, rc);
    }
    *out = c;
    return 0;
}

void state_cursor_close(state_cursor *c)
{
    if (!c)
        return;
    mdb_cursor_close(c->cur);
    free(c);
}

static state_layer *state_cursor_layer(const state_cursor *c, int i)
{
    return i == 0 ? c->s->active : c->s->frozen;
}

/* Positions every source at its first key >= key (len 0: its first). */
static int state_sources_ge(state_cursor *c, const void *key, size_t key_len)
{
    for (int i = 0; i < 2; i++) {
        state_layer *l = state_cursor_layer(c, i);
        c->pos[i] = !l ? NULL
                   : key_len ? state_find_ge(l, c->table, key, key_len, NULL)
                             : l->head[c->table]->next[0];
    }
    MDB_val k = {.mv_size = key_len, .mv_data = (void *)key};
    int rc = mdb_cursor_get(c->cur, &k, &c->lv, key_len ? MDB_SET_RANGE : MDB_FIRST);
    c->lmdb_valid = rc == 0;
    if (rc == 0)
        c->lk = k;
    return rc == 0 || rc == MDB_NOTFOUND ? 0 : state_errs(c->s, rc);
}

/* Positions every source at its last key < key (len 0: its last). */
static int state_sources_lt(state_cursor *c, const void *key, size_t key_len)
{
    for (int i = 0; i < 2; i++) {
        state_layer *l = state_cursor_layer(c, i);
        if (!l) {
            c->pos[i] = NULL;
            continue;
        }
        state_node *n = key_len ? state_find_ge(l, c->table, key, key_len, NULL) : NULL;
        c->pos[i] = n ? n->prev : l->tail[c->table];
    }
    int rc;
    MDB_val k = {.mv_size = key_len, .mv_data = (void *)key};
    if (key_len) {
        rc = mdb_cursor_get(c->cur, &k, &c->lv, MDB_SET_RANGE);
        rc = rc == 0 ? mdb_cursor_get(c->cur, &k, &c->lv, MDB_PREV)
           : rc == MDB_NOTFOUND ? mdb_cursor_get(c->cur, &k, &c->lv, MDB_LAST) : rc;
    } else {
        rc = mdb_cursor_get(c->cur, &k, &c->lv, MDB_LAST);
    }
    c->lmdb_valid = rc == 0;
    if (rc == 0)
        c->lk = k;
    return rc == 0 || rc == MDB_NOTFOUND ? 0 : state_errs(c->s, rc);
}

/* The smallest (dir > 0) or largest (dir < 0) key among the sources:
 * which sources hold it (bit 0 active, 1 frozen, 2 LMDB), or 0 if none. */
static unsigned state_sources_pick(const state_cursor *c, int dir, const uint8_t **key,
                                   size_t *key_len)
{
    unsigned who = 0;
    const uint8_t *best = NULL;
    size_t best_len = 0;
    for (int i = 0; i < 3; i++) {
        const uint8_t *k;
        size_t kl;
        if (i < 2) {
            if (!c->pos[i])
                continue;
            k = c->pos[i]->key;
            kl = c->pos[i]->key_len;
        } else {
            if (!c->lmdb_valid)
                continue;
            k = c->lk.mv_data;
            kl = c->lk.mv_size;
        }
        int cmp = best ? state_keycmp(k, kl, best, best_len) : -dir;
        if (cmp * dir < 0) {
            best = k;
            best_len = kl;
            who = 1u << i;
        } else if (cmp == 0) {
            who |= 1u << i;
        }
    }
    *key = best;
    *key_len = best_len;
    return who;
}

/* From the sources' positions, the first live entry in direction dir:
 * tombstones hide older versions, the newest version wins. */
static int state_settle(state_cursor *c, int dir, const void **k, size_t *k_len,
                        const void **v, size_t *v_len)
{
    for (;;) {
        const uint8_t *key;
        size_t key_len;
        unsigned who = state_sources_pick(c, dir, &key, &key_len);
        if (!who) {
            c->valid = false;
            return 1;
        }
        int newest = who & 1 ? 0 : who & 2 ? 1 : 2;
        bool live = newest == 2 || c->pos[newest]->val_len != STATE_TOMBSTONE;
        if (live) {
            assert(key_len <= sizeof(c->key));
            memcpy(c->key, key, key_len);
            c->key_len = key_len;
            c->valid = true;
            *k = c->key;
            *k_len = key_len;
            if (newest < 2) {
                *v = c->pos[newest]->val ? c->pos[newest]->val : (const uint8_t *)"";
                *v_len = c->pos[newest]->val_len;
                return 0;
            }
            MDB_val val = c->lv;
            int rc = state_check(c->s, c->table, &c->lk, &val);
            if (rc < 0)
                return rc;
            *v = val.mv_data;
            *v_len = val.mv_size;
            return 0;
        }
        /* Deleted: move every source past this key. */
        for (int i = 0; i < 2; i++)
            if (who & (1u << i))
                c->pos[i] = dir > 0 ? c->pos[i]->next[0] : c->pos[i]->prev;
        if (who & 4) {
            MDB_val kk;
            int rc = mdb_cursor_get(c->cur, &kk, &c->lv, dir > 0 ? MDB_NEXT : MDB_PREV);
            c->lmdb_valid = rc == 0;
            if (rc == 0)
                c->lk = kk;
            else if (rc != MDB_NOTFOUND)
                return state_errs(c->s, rc);
        }
    }
}

int state_cursor_seek(state_cursor *c, const void *key, size_t key_len, const void **k,
                      size_t *k_len, const void **v, size_t *v_len)
{
    int rc = state_sources_ge(c, key, key_len);
    return rc < 0 ? rc : state_settle(c, 1, k, k_len, v, v_len);
}

int state_cursor_step(state_cursor *c, int dir, const void **k, size_t *k_len, const void **v,
                      size_t *v_len)
{
    if (!c->valid)
        return 1;
    /* Re-position every source beside the current key: simple, and right
     * whichever way the cursor last moved. */
    uint8_t cur[512];
    size_t n = c->key_len;
    memcpy(cur, c->key, n);
    int rc;
    if (dir > 0) {
        /* The first key > cur: >= cur, then past cur itself. */
        rc = state_sources_ge(c, cur, n);
        for (int i = 0; rc == 0 && i < 2; i++)
            if (c->pos[i] && state_nodecmp(c->pos[i], cur, n) == 0)
                c->pos[i] = c->pos[i]->next[0];
        if (rc == 0 && c->lmdb_valid &&
            state_keycmp(c->lk.mv_data, c->lk.mv_size, cur, n) == 0) {
            MDB_val kk;
            int r2 = mdb_cursor_get(c->cur, &kk, &c->lv, MDB_NEXT);
            c->lmdb_valid = r2 == 0;
            if (r2 == 0)
                c->lk = kk;
            else if (r2 != MDB_NOTFOUND)
                rc = state_errs(c->s, r2);
        }
    } else {
        rc = state_sources_lt(c, cur, n);
    }
    return rc < 0 ? rc : state_settle(c, dir, k, k_len, v, v_len);
}

int state_cursor_last(state_cursor *c, const void **k, size_t *k_len, const void **v,
                      size_t *v_len)
{
    int rc = state_sources_lt(c, NULL, 0);
    return rc < 0 ? rc : state_settle(c, -1, k, k_len, v, v_len);
}

/* ---- compare, copy ---------------------------------------------------------------- */

static void state_hex(const void *p, size_t n, char *out, size_t cap)
{
    const uint8_t *b = p;
    size_t o = 0;
    for (size_t i = 0; i < n && o + 3 < cap; i++)
        o += (size_t)snprintf(out + o, cap - o, "%02x", b[i]);
    out[o] = 0;
}

static int state_compare_table(state *a, state *b, int t, char *msg, size_t cap)
{
    state_cursor *ca, *cb;
    int rc = state_cursor_open(a, t, &ca);
    if (rc < 0)
        return rc;
    rc = state_cursor_open(b, t, &cb);
    if (rc < 0) {
        state_cursor_close(ca);
        return rc;
    }
    const void *ka, *va, *kb, *vb;
    size_t kal = 0, val = 0, kbl = 0, vbl = 0;
    int ra = state_cursor_seek(ca, NULL, 0, &ka, &kal, &va, &val);
    int rb = state_cursor_seek(cb, NULL, 0, &kb, &kbl, &vb, &vbl);
    rc = 0;
    while (ra == 0 || rb == 0) {
        if (ra < 0 || rb < 0) {
            rc = ra < 0 ? ra : rb;
            break;
        }
        bool same_key = ra == 0 && rb == 0 && state_keycmp(ka, kal, kb, kbl) == 0;
        if (!same_key || val != vbl || memcmp(va, vb, val) != 0) {
            char hex[80];
            state_hex(ra == 0 ? ka : kb, ra == 0 ? kal : kbl, hex, sizeof(hex));
            snprintf(msg, cap, "state differs from the replay of the log: table %s, key %s (%s)",
                     state_names[t], hex,
                     !same_key ? (ra != 0 ? "missing in state" : "missing in replay")
                               : "different value");
            rc = TALLY_ECORRUPT;
            break;
        }
        ra = state_cursor_step(ca, 1, &ka, &kal, &va, &val);
        rb = state_cursor_step(cb, 1, &kb, &kbl, &vb, &vbl);
    }
    state_cursor_close(ca);
    state_cursor_close(cb);
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
    return state_errs(s, mdb_env_copyfd2(s->env, fd, MDB_CP_COMPACT));
}

int state_file_seq(const char *path, uint64_t *seq)
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
    MDB_val k = {.mv_size = 3, .mv_data = "seq"}, v;
    if (rc == 0)
        rc = mdb_get(txn, dbi, &k, &v);
    if (rc == 0 && v.mv_size == 8 + STATE_CHECKSUM_BYTES &&
        state_get64((const uint8_t *)v.mv_data + 8) ==
            state_sum(STATE_META, "seq", 3, v.mv_data, 8))
        memcpy(seq, v.mv_data, 8);
    else if (rc == MDB_NOTFOUND)
        *seq = 0, rc = 0;
    else if (rc == 0)
        rc = MDB_CORRUPTED;
    if (txn)
        mdb_txn_abort(txn);
    mdb_env_close(env);
    return state_err(rc);
}
