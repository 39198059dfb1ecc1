/*
 * sqlite.c — the SQLite peer: the points-v1 operations as SQL on one
 * connection, WAL journal, synchronous=FULL (every commit fsyncs the WAL),
 * one transaction per operation or `--batch K` operations per transaction.
 *
 * Per write, the same work as tally's: look the id up (idempotency), read
 * the balance, refuse a short redeem and remember the refusal under its id,
 * or update the balance and insert the entry, which the history index
 * (merchant, account, seq) also covers.
 */
#include <sqlite3.h>
#include <stdint.h>

#include "peer.h"

typedef struct sqlite_peer {
    sqlite3 *db;
    sqlite3_stmt *find_id;
    sqlite3_stmt *get_balance;
    sqlite3_stmt *put_balance;
    sqlite3_stmt *put_entry;
    uint64_t seq;
} sqlite_peer;

static const char sqlite_schema[] =
    "PRAGMA journal_mode=WAL;"
    "PRAGMA synchronous=FULL;"
    "CREATE TABLE IF NOT EXISTS accounts(merchant INTEGER, account INTEGER,"
    "  available INTEGER NOT NULL, held INTEGER NOT NULL DEFAULT 0,"
    "  PRIMARY KEY(merchant, account)) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS entries(merchant INTEGER, id TEXT, kind TEXT,"
    "  account INTEGER, points INTEGER, balance INTEGER, ts INTEGER, seq INTEGER,"
    "  PRIMARY KEY(merchant, id)) WITHOUT ROWID;"
    "CREATE INDEX IF NOT EXISTS history ON entries(merchant, account, seq);";

static int sqlite_exec(sqlite_peer *p, const char *sql)
{
    return sqlite3_exec(p->db, sql, NULL, NULL, NULL) == SQLITE_OK ? 0 : -1;
}

static int sqlite_begin(void *ctx)
{
    return sqlite_exec(ctx, "BEGIN IMMEDIATE");
}

static int sqlite_commit(void *ctx)
{
    return sqlite_exec(ctx, "COMMIT");
}

static const char *sqlite_error(void *ctx)
{
    sqlite_peer *p = ctx;
    return sqlite3_errmsg(p->db);
}

static int sqlite_step_done(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? PEER_OK : PEER_ERROR;
}

static int sqlite_put_entry(sqlite_peer *p, const workload_op *op, const char *kind,
                            int64_t change, int64_t balance)
{
    sqlite3_stmt *st = p->put_entry;
    sqlite3_bind_int64(st, 1, (int64_t)op->merchant);
    sqlite3_bind_text(st, 2, op->id, op->id_len, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, kind, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, (int64_t)op->account);
    sqlite3_bind_int64(st, 5, change);
    sqlite3_bind_int64(st, 6, balance);
    sqlite3_bind_int64(st, 7, (int64_t)time(NULL) * 1000);
    sqlite3_bind_int64(st, 8, (int64_t)++p->seq);
    return sqlite_step_done(st);
}

static int sqlite_apply(void *ctx, const workload_op *op)
{
    sqlite_peer *p = ctx;
    sqlite3_stmt *st = p->find_id;
    sqlite3_bind_int64(st, 1, (int64_t)op->merchant);
    sqlite3_bind_text(st, 2, op->id, op->id_len, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc == SQLITE_ROW)
        return PEER_OK; /* a replay: the stored answer stands */
    if (rc != SQLITE_DONE)
        return PEER_ERROR;
    st = p->get_balance;
    sqlite3_bind_int64(st, 1, (int64_t)op->merchant);
    sqlite3_bind_int64(st, 2, (int64_t)op->account);
    rc = sqlite3_step(st);
    int64_t available = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    sqlite3_reset(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return PEER_ERROR;
    int64_t change = op->kind == WORKLOAD_OP_EARN ? op->points : -op->points;
    if (available + change < 0)
        return sqlite_put_entry(p, op, "refused", 0, available) == PEER_OK ? PEER_REFUSED
                                                                          : PEER_ERROR;
    st = p->put_balance;
    sqlite3_bind_int64(st, 1, (int64_t)op->merchant);
    sqlite3_bind_int64(st, 2, (int64_t)op->account);
    sqlite3_bind_int64(st, 3, available + change);
    if (sqlite_step_done(st) != PEER_OK)
        return PEER_ERROR;
    const char *kind = op->kind == WORKLOAD_OP_EARN ? "earn" : "redeem";
    return sqlite_put_entry(p, op, kind, change, available + change);
}

static int sqlite_prepare(sqlite_peer *p)
{
    static const char *const sql[4] = {
        "SELECT kind FROM entries WHERE merchant = ?1 AND id = ?2",
        "SELECT available FROM accounts WHERE merchant = ?1 AND account = ?2",
        "INSERT INTO accounts(merchant, account, available) VALUES(?1, ?2, ?3)"
        " ON CONFLICT(merchant, account) DO UPDATE SET available = excluded.available",
        "INSERT INTO entries VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    };
    sqlite3_stmt **out[4] = {&p->find_id, &p->get_balance, &p->put_balance, &p->put_entry};
    for (int i = 0; i < 4; i++)
        if (sqlite3_prepare_v2(p->db, sql[i], -1, out[i], NULL) != SQLITE_OK)
            return -1;
    return 0;
}

/* Reads a pragma back as text: what SQLite really runs with, for the
 * report ("wal", "2" = FULL). */
static void sqlite_setting(sqlite_peer *p, report_run *r, const char *pragma)
{
    char sql[64];
    snprintf(sql, sizeof(sql), "PRAGMA %s", pragma);
    sqlite3_stmt *st;
    const char *v = NULL;
    if (sqlite3_prepare_v2(p->db, sql, -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        v = (const char *)sqlite3_column_text(st, 0);
    report_setting_add(r, pragma, v ? v : "?");
    sqlite3_finalize(st);
}

int main(int argc, char **argv)
{
    peer_options o;
    peer_parse(argc, argv, &o, "SQLite peer: WAL, synchronous=FULL");
    report_run r = {.server_cpu_s = -1};
    snprintf(r.system, sizeof(r.system), "sqlite");
    if (peer_check_disk(o.path, &r) != 0)
        return 1;
    sqlite_peer p = {0};
    if (sqlite3_open(o.path, &p.db) != SQLITE_OK || sqlite_exec(&p, sqlite_schema) != 0 ||
        sqlite_prepare(&p) != 0) {
        fprintf(stderr, "peer-sqlite: %s: %s\n", o.path, sqlite3_errmsg(p.db));
        return 1;
    }
    static const peer_backend backend = {sqlite_begin, sqlite_apply, sqlite_commit, sqlite_error};
    sqlite_setting(&p, &r, "journal_mode");
    sqlite_setting(&p, &r, "synchronous");
    sqlite_setting(&p, &r, "fullfsync");
    snprintf(r.label, sizeof(r.label), "WAL, synchronous=FULL, %u op(s) per txn", o.batch);
    int rc = peer_run(&o, &backend, &p, &r);
    sqlite3_finalize(p.find_id);
    sqlite3_finalize(p.get_balance);
    sqlite3_finalize(p.put_balance);
    sqlite3_finalize(p.put_entry);
    sqlite3_close(p.db);
    return rc;
}
