/*
 * lmdb.c — the raw LMDB peer: the points-v1 operations as key/value puts
 * in one environment with LMDB's default, synced commits (each commit
 * flushes the data pages, then the meta page), one transaction per
 * operation or `--batch K` operations per transaction.
 *
 * Databases (keys big-endian so they sort by merchant, then account):
 *   accounts  merchant.u64 account.u64            -> available.i64 held.i64
 *   entries   merchant.u64 id bytes                -> lmdb_entry (or a refusal)
 *   history   merchant.u64 account.u64 seq.u64     -> (empty)
 * Per write, the same work as tally's state: idempotency lookup, balance
 * read and update, the entry, the history index.
 */
#include <errno.h>
#include <lmdb.h>
#include <stdint.h>
#include <sys/stat.h>

#include "peer.h"

typedef struct lmdb_entry {
    uint8_t kind; /* 0 refused, 1 earn, 2 redeem */
    uint64_t account;
    int64_t points;
    int64_t balance;
    uint64_t ts_ms;
    uint64_t seq;
} lmdb_entry;

typedef struct lmdb_peer {
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi accounts, entries, history;
    uint64_t seq;
    int rc;
} lmdb_peer;

static void lmdb_be64(uint8_t *out, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        out[i] = (uint8_t)v;
}

static int lmdb_begin(void *ctx)
{
    lmdb_peer *p = ctx;
    p->rc = mdb_txn_begin(p->env, NULL, 0, &p->txn);
    return p->rc ? -1 : 0;
}

static int lmdb_commit(void *ctx)
{
    lmdb_peer *p = ctx;
    p->rc = mdb_txn_commit(p->txn);
    p->txn = NULL;
    return p->rc ? -1 : 0;
}

static const char *lmdb_error(void *ctx)
{
    lmdb_peer *p = ctx;
    return mdb_strerror(p->rc);
}

static int lmdb_put_entry(lmdb_peer *p, const workload_op *op, uint8_t kind, int64_t change,
                          int64_t balance)
{
    uint8_t key[8 + WORKLOAD_ID_BYTES_MAX];
    lmdb_be64(key, op->merchant);
    memcpy(key + 8, op->id, op->id_len);
    lmdb_entry e = {.kind = kind, .account = op->account, .points = change,
                    .balance = balance, .ts_ms = (uint64_t)time(NULL) * 1000, .seq = ++p->seq};
    MDB_val k = {8 + op->id_len, key}, v = {sizeof(e), &e};
    p->rc = mdb_put(p->txn, p->entries, &k, &v, 0);
    if (p->rc || kind == 0)
        return p->rc ? PEER_ERROR : PEER_REFUSED;
    uint8_t hkey[24];
    lmdb_be64(hkey, op->merchant);
    lmdb_be64(hkey + 8, op->account);
    lmdb_be64(hkey + 16, e.seq);
    MDB_val hk = {sizeof(hkey), hkey}, hv = {0, NULL};
    p->rc = mdb_put(p->txn, p->history, &hk, &hv, 0);
    return p->rc ? PEER_ERROR : PEER_OK;
}

static int lmdb_apply(void *ctx, const workload_op *op)
{
    lmdb_peer *p = ctx;
    uint8_t key[8 + WORKLOAD_ID_BYTES_MAX];
    lmdb_be64(key, op->merchant);
    memcpy(key + 8, op->id, op->id_len);
    MDB_val k = {8 + op->id_len, key}, v;
    p->rc = mdb_get(p->txn, p->entries, &k, &v);
    if (p->rc == 0)
        return PEER_OK; /* a replay: the stored answer stands */
    if (p->rc != MDB_NOTFOUND)
        return PEER_ERROR;
    uint8_t akey[16];
    lmdb_be64(akey, op->merchant);
    lmdb_be64(akey + 8, op->account);
    MDB_val ak = {sizeof(akey), akey}, av;
    int64_t bal[2] = {0, 0};
    p->rc = mdb_get(p->txn, p->accounts, &ak, &av);
    if (p->rc == 0 && av.mv_size == sizeof(bal))
        memcpy(bal, av.mv_data, sizeof(bal));
    else if (p->rc != MDB_NOTFOUND && p->rc != 0)
        return PEER_ERROR;
    int64_t change = op->kind == WORKLOAD_OP_EARN ? op->points : -op->points;
    if (bal[0] + change < 0)
        return lmdb_put_entry(p, op, 0, 0, bal[0]);
    bal[0] += change;
    av = (MDB_val){sizeof(bal), bal};
    p->rc = mdb_put(p->txn, p->accounts, &ak, &av, 0);
    if (p->rc)
        return PEER_ERROR;
    return lmdb_put_entry(p, op, op->kind == WORKLOAD_OP_EARN ? 1 : 2, change, bal[0]);
}

static int lmdb_open(lmdb_peer *p, const char *path)
{
    if (mkdir(path, 0755) != 0 && errno != EEXIST)
        return errno;
    int rc = mdb_env_create(&p->env);
    if (!rc)
        rc = mdb_env_set_maxdbs(p->env, 4);
    if (!rc)
        rc = mdb_env_set_mapsize(p->env, 64ull << 30);
    if (!rc)
        rc = mdb_env_open(p->env, path, 0, 0644); /* default flags: synced commits */
    if (!rc)
        rc = mdb_txn_begin(p->env, NULL, 0, &p->txn);
    if (!rc)
        rc = mdb_dbi_open(p->txn, "accounts", MDB_CREATE, &p->accounts);
    if (!rc)
        rc = mdb_dbi_open(p->txn, "entries", MDB_CREATE, &p->entries);
    if (!rc)
        rc = mdb_dbi_open(p->txn, "history", MDB_CREATE, &p->history);
    if (!rc)
        rc = mdb_txn_commit(p->txn);
    p->txn = NULL;
    return rc;
}

/* The environment's flags as LMDB reports them: none of the ones that
 * skip or defer a sync may be set for the figures to be durable. */
static void lmdb_settings(MDB_env *env, report_run *r)
{
    static const struct {
        unsigned flag;
        const char *name;
    } flags[] = {{MDB_NOSYNC, "MDB_NOSYNC"}, {MDB_NOMETASYNC, "MDB_NOMETASYNC"},
                 {MDB_MAPASYNC, "MDB_MAPASYNC"}, {MDB_WRITEMAP, "MDB_WRITEMAP"}};
    unsigned got = 0;
    char hex[16];
    mdb_env_get_flags(env, &got);
    snprintf(hex, sizeof(hex), "0x%x", got);
    report_setting_add(r, "env_flags", hex);
    for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++)
        report_setting_add(r, flags[i].name, got & flags[i].flag ? "on" : "off");
}

int main(int argc, char **argv)
{
    peer_options o;
    peer_parse(argc, argv, &o, "raw LMDB peer: default (synced) commits; --db is a directory");
    lmdb_peer p = {0};
    int rc = lmdb_open(&p, o.path);
    if (rc) {
        fprintf(stderr, "peer-lmdb: %s: %s\n", o.path, mdb_strerror(rc));
        return 1;
    }
    static const peer_backend backend = {lmdb_begin, lmdb_apply, lmdb_commit, lmdb_error};
    report_run r = {.server_cpu_s = -1};
    snprintf(r.system, sizeof(r.system), "lmdb");
    if (peer_check_disk(o.path, &r) != 0) {
        mdb_env_close(p.env);
        return 1;
    }
    lmdb_settings(p.env, &r);
    snprintf(r.label, sizeof(r.label), "synced commits, %u op(s) per txn", o.batch);
    rc = peer_run(&o, &backend, &p, &r);
    if (p.txn)
        mdb_txn_abort(p.txn);
    mdb_env_close(p.env);
    return rc;
}
