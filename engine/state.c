/*
 * state.c — LMDB behind a typed table API (state.h).  The only module
 * that includes lmdb.h.
 *
 * Durability (DESIGN-NOTES §1): the environment is opened with LMDB's
 * default, fully synced commits — never MDB_NOSYNC, MDB_NOMETASYNC or
 * MDB_MAPASYNC, which can leave a database that a power loss corrupts.
 * Commits are rare (checkpoints), so their flushes do not matter; the log
 * makes each batch durable.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <lmdb.h>

#include "checksum.h"
#include "state.h"
#include "tally.h"

/* ---- types -------------------------------------------------------------- */

static const char *const state_names[STATE_TABLES] = {
    "meta", "accounts", "lots", "expiry", "ids", "history",
    "refs", "holds_due", "acct_holds", "merchants", "liability", "pending",
};

struct state {
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi[STATE_TABLES];
    char error[160];
};

struct state_cursor {
    state *s;
    int table;
    MDB_cursor *cur;
};

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

/* Checks a stored value and strips its checksum: 0, or TALLY_ECORRUPT with
 * the place in s->error. */
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

/* ---- lifecycle ---------------------------------------------------------- */

static int state_begin(state *s)
{
    int rc = mdb_txn_begin(s->env, NULL, 0, &s->txn);
    if (rc != 0) {
        s->txn = NULL;
        return state_errs(s, rc);
    }
    return 0;
}

int state_open(const char *dir, uint64_t map_bytes, state **out)
{
    if (mkdir(dir, 0755) < 0 && errno != EEXIST)
        return -errno;
    state *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    int rc = mdb_env_create(&s->env);
    if (rc == 0)
        rc = mdb_env_set_maxdbs(s->env, STATE_TABLES);
    if (rc == 0)
        rc = mdb_env_set_mapsize(s->env, (size_t)map_bytes);
    /* MDB_NOTLS: snapshot copies run their read transaction on another
     * thread while the writer's transaction stays open. */
    if (rc == 0)
        rc = mdb_env_open(s->env, dir, MDB_NOTLS, 0644);
    if (rc == 0)
        rc = mdb_txn_begin(s->env, NULL, 0, &s->txn);
    for (int i = 0; rc == 0 && i < STATE_TABLES; i++)
        rc = mdb_dbi_open(s->txn, state_names[i], MDB_CREATE, &s->dbi[i]);
    if (rc == 0) {
        /* Make the tables exist on disk so a copy always has them. */
        rc = mdb_txn_commit(s->txn);
        s->txn = NULL;
    }
    if (rc != 0) {
        int err = state_err(rc);
        state_close(s);
        return err;
    }
    *out = s;
    return 0;
}

void state_close(state *s)
{
    if (!s)
        return;
    if (s->txn)
        mdb_txn_abort(s->txn);
    if (s->env)
        mdb_env_close(s->env);
    free(s);
}

/* The write transaction begins lazily, on the thread that first uses it:
 * LMDB's writer lock is a mutex that the thread which took it must
 * release, so a transaction begun on the opening thread cannot be
 * committed by the shard thread. */
static int state_txn(state *s)
{
    return s->txn ? 0 : state_begin(s);
}

int state_commit(state *s)
{
    int rc = state_txn(s);
    if (rc < 0)
        return rc;
    rc = mdb_txn_commit(s->txn);
    s->txn = NULL;
    return state_errs(s, rc);
}

int state_abort(state *s)
{
    if (s->txn)
        mdb_txn_abort(s->txn);
    s->txn = NULL;
    return 0;
}

/* ---- get / put / del ---------------------------------------------------- */

int state_get(state *s, int table, const void *key, size_t key_len, const void **val,
              size_t *val_len)
{
    int trc = state_txn(s);
    if (trc < 0)
        return trc;
    MDB_val k = {.mv_size = key_len, .mv_data = (void *)key}, v;
    int rc = mdb_get(s->txn, s->dbi[table], &k, &v);
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
    int trc = state_txn(s);
    if (trc < 0)
        return trc;
    MDB_val k = {.mv_size = key_len, .mv_data = (void *)key};
    /* MDB_RESERVE: LMDB hands out the space, the value and its checksum
     * are written straight into the page. */
    MDB_val v = {.mv_size = val_len + STATE_CHECKSUM_BYTES};
    int rc = mdb_put(s->txn, s->dbi[table], &k, &v, MDB_RESERVE);
    if (rc != 0)
        return state_errs(s, rc);
    uint8_t *p = v.mv_data;
    if (val_len)
        memcpy(p, val, val_len);
    state_put64(p + val_len, state_sum(table, key, key_len, val, val_len));
    return 0;
}

int state_del(state *s, int table, const void *key, size_t key_len)
{
    int trc = state_txn(s);
    if (trc < 0)
        return trc;
    MDB_val k = {.mv_size = key_len, .mv_data = (void *)key};
    int rc = mdb_del(s->txn, s->dbi[table], &k, NULL);
    if (rc == MDB_NOTFOUND)
        return 1;
    return state_errs(s, rc);
}

/* ---- cursors ------------------------------------------------------------ */

int state_cursor_open(state *s, int table, state_cursor **out)
{
    int trc = state_txn(s);
    if (trc < 0)
        return trc;
    state_cursor *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->s = s;
    c->table = table;
    int rc = mdb_cursor_open(s->txn, s->dbi[table], &c->cur);
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

static int state_cursor_get(state_cursor *c, MDB_val *k, MDB_cursor_op op, const void **ko,
                            size_t *kl, const void **vo, size_t *vl)
{
    MDB_val v;
    int rc = mdb_cursor_get(c->cur, k, &v, op);
    if (rc == MDB_NOTFOUND)
        return 1;
    if (rc != 0)
        return state_errs(c->s, rc);
    rc = state_check(c->s, c->table, k, &v);
    if (rc < 0)
        return rc;
    *ko = k->mv_data;
    *kl = k->mv_size;
    *vo = v.mv_data;
    *vl = v.mv_size;
    return 0;
}

int state_cursor_seek(state_cursor *c, const void *key, size_t key_len, const void **k,
                      size_t *k_len, const void **v, size_t *v_len)
{
    MDB_val kk = {.mv_size = key_len, .mv_data = (void *)key};
    return state_cursor_get(c, &kk, key_len ? MDB_SET_RANGE : MDB_FIRST, k, k_len, v, v_len);
}

int state_cursor_step(state_cursor *c, int dir, const void **k, size_t *k_len, const void **v,
                      size_t *v_len)
{
    MDB_val kk;
    return state_cursor_get(c, &kk, dir > 0 ? MDB_NEXT : MDB_PREV, k, k_len, v, v_len);
}

int state_cursor_last(state_cursor *c, const void **k, size_t *k_len, const void **v,
                      size_t *v_len)
{
    MDB_val kk;
    return state_cursor_get(c, &kk, MDB_LAST, k, k_len, v, v_len);
}

/* ---- compare, copy ------------------------------------------------------ */

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
    if (state_txn(a) < 0 || state_txn(b) < 0)
        return TALLY_EFAILED;
    MDB_cursor *ca, *cb;
    if (mdb_cursor_open(a->txn, a->dbi[t], &ca) != 0)
        return TALLY_EFAILED;
    if (mdb_cursor_open(b->txn, b->dbi[t], &cb) != 0) {
        mdb_cursor_close(ca);
        return TALLY_EFAILED;
    }
    MDB_val ka, va, kb, vb;
    int ra = mdb_cursor_get(ca, &ka, &va, MDB_FIRST), rb = mdb_cursor_get(cb, &kb, &vb, MDB_FIRST);
    int rc = 0;
    while (ra == 0 || rb == 0) {
        bool same_key = ra == 0 && rb == 0 && ka.mv_size == kb.mv_size &&
                        memcmp(ka.mv_data, kb.mv_data, ka.mv_size) == 0;
        if (!same_key || va.mv_size != vb.mv_size ||
            memcmp(va.mv_data, vb.mv_data, va.mv_size) != 0) {
            char hex[80];
            MDB_val *k = ra == 0 ? &ka : &kb;
            state_hex(k->mv_data, k->mv_size, hex, sizeof(hex));
            snprintf(msg, cap, "state differs from the replay of the log: table %s, key %s (%s)",
                     state_names[t], hex,
                     !same_key ? (ra != 0 ? "missing in state" : "missing in replay")
                               : "different value");
            rc = TALLY_ECORRUPT;
            break;
        }
        ra = mdb_cursor_get(ca, &ka, &va, MDB_NEXT);
        rb = mdb_cursor_get(cb, &kb, &vb, MDB_NEXT);
    }
    mdb_cursor_close(ca);
    mdb_cursor_close(cb);
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
