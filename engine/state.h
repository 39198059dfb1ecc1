/*
 * state.h — one shard's materialised state: named tables of byte keys and
 * values, kept in LMDB (the only module that includes lmdb.h, STYLE rule 2)
 * under an in-memory layer of recent changes (DESIGN-NOTES §1).
 *
 * Writes go to the active layer (ordered, in memory).  Reads look at the
 * active layer, then at a frozen layer being committed, then at LMDB's
 * last commit through a read transaction.  A checkpoint freezes the active
 * layer and a committer thread writes it into LMDB in one synced
 * transaction (state_freeze, state_commit_frozen, state_commit_finish), so
 * the writer never waits for LMDB's page writes and flushes; or, for tools
 * and recovery, state_commit does it all on the calling thread.  LMDB on
 * disk is thus always one whole checkpoint, committed with its default
 * synced commits (never MDB_NOSYNC).
 *
 * Every stored value carries a checksum: the caller's bytes, then an
 * XXH3-64 of (table, key, value) — 8 bytes, little-endian — because LMDB
 * checks nothing it reads back.  Every read verifies it: a flipped bit in
 * data.mdb is reported as TALLY_ECORRUPT (state_error() says where), never
 * served.  (Damage to LMDB's own page structure is not covered; LMDB then
 * reports MDB_CORRUPTED / MDB_PAGE_NOTFOUND, mapped to TALLY_ECORRUPT.)
 *
 * Keys are built big-endian by the caller so that they sort by their
 * numeric fields.  Errors are -errno, TALLY_ECORRUPT (damage found) or
 * TALLY_EFAILED (another LMDB limit), -ENOSPC (map or disk full);
 * state_get's "not found" is 1.
 */
#ifndef TALLY_STATE_H
#define TALLY_STATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The tables.  Changing one's key or value layout changes the format. */
enum state_table {
    STATE_META = 0,   /* "seq" → u64 checkpoint seq */
    STATE_ACCOUNTS,   /* (m, a) → account */
    STATE_LOTS,       /* (m, a, expiry key, seq) → lot */
    STATE_EXPIRY,     /* (expires, m, a, seq) → "" : lots the sweep expires */
    STATE_IDS,        /* (m, xxh128(id)) → id_ref */
    STATE_HISTORY,    /* (m, a, seq) → log loc */
    STATE_REFS,       /* (m, seq) → state of an entry others refer to */
    STATE_HOLDS_DUE,  /* (deadline s, m, seq) → "" : open holds */
    STATE_ACCT_HOLDS, /* (m, a, seq) → deadline : open holds by account */
    STATE_MERCHANTS,  /* m → merchant totals */
    STATE_LIABILITY,  /* (m, month key) → points */
    STATE_PENDING,    /* (m, a, available_at, seq) → "" : lots not yet spendable */
    STATE_TABLES,
};

typedef struct state state;

/* Opens (creating) the environment in directory dir with a map of
 * map_bytes. */
int state_open(const char *dir, uint64_t map_bytes, state **out);
/* Waits for a running commit, drops what is not committed, closes.  NULL
 * is ok. */
void state_close(state *s);

/* Writes everything not yet committed into LMDB in one synced commit, on
 * the calling thread (waiting first for a running commit). */
int state_commit(state *s);
/* Drops the changes not committed: the active layer, and a frozen one no
 * committer took yet (a running commit is waited for and kept). */
int state_abort(state *s);

/* Asynchronous checkpoints.  state_freeze makes the active layer the
 * frozen one and starts an empty active layer (-EBUSY if a frozen layer is
 * still there).  state_commit_frozen starts a thread that writes it into
 * LMDB and commits, then calls done(ctx) from that thread.
 * state_commit_finish, on the writer's thread: 1 if no commit was started,
 * 2 if it is still running, else its outcome (0: the read view now shows
 * it and the frozen layer is gone; < 0: it failed — call state_abort). */
int state_freeze(state *s);
bool state_has_frozen(const state *s);
int state_commit_frozen(state *s, void (*done)(void *ctx), void *ctx);
int state_commit_finish(state *s);
/* Bytes the active layer holds (for backpressure). */
size_t state_active_bytes(const state *s);

/* 0 and *val and *val_len (valid until the next write), 1 if absent. */
int state_get(state *s, int table, const void *key, size_t key_len, const void **val,
              size_t *val_len);
int state_put(state *s, int table, const void *key, size_t key_len, const void *val,
              size_t val_len);
/* 0, or 1 if absent. */
int state_del(state *s, int table, const void *key, size_t key_len);

/* Cursor over a table within the open transaction. */
typedef struct state_cursor state_cursor;
int state_cursor_open(state *s, int table, state_cursor **out);
void state_cursor_close(state_cursor *c);
/* Positions at the first key >= key (or the first key if key_len is 0).
 * 0 and *k, *v: found; 1: none. */
int state_cursor_seek(state_cursor *c, const void *key, size_t key_len, const void **k,
                      size_t *k_len, const void **v, size_t *v_len);
/* Moves to the next (dir > 0) or previous (dir < 0) key; 0 or 1 (end). */
int state_cursor_step(state_cursor *c, int dir, const void **k, size_t *k_len, const void **v,
                      size_t *v_len);
/* Positions at the last key. 0 or 1 (empty). */
int state_cursor_last(state_cursor *c, const void **k, size_t *k_len, const void **v,
                      size_t *v_len);

/* Compares every table except STATE_META of two states: 0, or
 * TALLY_ECORRUPT with the first difference (table and key) in msg. */
int state_compare(state *a, state *b, char *msg, size_t cap);

/* Writes a compacted copy of the last committed state (LMDB's compacting
 * copy, from a read transaction: it does not stop the writer) into the
 * open file descriptor fd.  May run on another thread than the writer. */
int state_copy_fd(state *s, int fd);

/* Reads the checkpoint seq from the last committed state of an
 * environment file (a snapshot), opening it read-only on its own. */
int state_file_seq(const char *path, uint64_t *seq);

/* Names a table, for messages. */
const char *state_table_name(int table);

/* After TALLY_ECORRUPT: which table and key failed its checksum, or what
 * LMDB reported.  "" if nothing failed. */
const char *state_error(const state *s);

/* Bytes a stored value carries beyond the caller's (the checksum). */
#define STATE_CHECKSUM_BYTES 8

#endif
