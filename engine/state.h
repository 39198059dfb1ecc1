/*
 * state.h — one shard's materialised state: named tables of byte keys and
 * values, kept in LMDB (the only module that includes lmdb.h, STYLE rule 2)
 * under an in-memory layer of the objects changed since the last
 * checkpoint (DESIGN-NOTES §1, §5).
 *
 * Writes go to the active layer: a hash table of (table, key) → the
 * object's newest value (or a tombstone), so a write or a point read of a
 * changed object costs one hash lookup.  Reads look at the active layer,
 * then at a frozen layer being committed, then at LMDB's last commit
 * through a read transaction.  A checkpoint freezes the active layer and a
 * committer thread writes it into LMDB — every object once, sorted by
 * key, append-only tables with MDB_APPEND — in one synced transaction
 * (state_freeze, state_commit_frozen, state_commit_finish), so the writer
 * never waits for LMDB's page writes and flushes; or, for tools and
 * recovery, state_commit does it all on the calling thread.  LMDB on disk
 * is thus always one whole checkpoint, committed with its default synced
 * commits (never MDB_NOSYNC).
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
 * TALLY_EFAILED (another LMDB limit), -ENOSPC (map or disk full).  A value
 * returned by state_get or a scan stays valid until the next state_put,
 * state_del or commit call on that state.
 */
#ifndef TALLY_STATE_H
#define TALLY_STATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The tables.  Changing one's key or value layout changes the format
 * (ledger.c's LEDGER_FORMAT). */
enum state_table {
    STATE_META = 0,   /* "seq", "ts", "format", "ids" (the id index's manifest) */
    STATE_ACCOUNTS,   /* (m, a) → account: totals, holds, pending and inline lots */
    STATE_LOTS,       /* (m, a, chunk) → a chunk of an account's lots */
    STATE_DUE,        /* (due s, m, a) → "": accounts with something due */
    STATE_LOT_IDS,    /* seq → id of a lot that can expire or mature (append-only) */
    STATE_HOLDS,      /* seq → (m, a): open holds, oldest first (append-mostly) */
    STATE_REVERSED,   /* (m, seq) → points reversed so far of an entry */
    STATE_MERCHANTS,  /* m → merchant totals */
    STATE_LIABILITY,  /* (m, month) → points outstanding */
    STATE_TABLES,
};

/* Named results of lookups (not errors). */
enum { STATE_ABSENT = 1 };
/* state_commit_finish: no commit was started / it still runs. */
enum { STATE_COMMIT_NONE = 1, STATE_COMMIT_RUNNING = 2 };

typedef struct state state;

/* Opens (creating) the environment in directory dir with a map of
 * map_bytes. */
int state_open(const char *dir, uint64_t map_bytes, state **out);
/* The bytes of data.mdb its last commit uses (up to LMDB's last page):
 * the file itself is as large as the map, with holes (MDB_WRITEMAP). */
uint64_t state_used_bytes(state *s);
/* Waits for a running commit, drops what is not committed, closes.  NULL
 * is ok. */
void state_close(state *s);

/* A read view of what s last committed, for another thread than its
 * writer (VERIFY's helper): a state of its own over s's environment, with
 * no layers, whose reads (state_get, state_scan) go through its own read
 * transaction, begun at its first read and seeing the commit current then
 * however many follow.  Never written (asserted); state_close it (on the
 * thread that read through it) before s closes. */
int state_view_open(state *s, state **out);

/* Writes everything not yet committed into LMDB in one synced commit, on
 * the calling thread (waiting first for a running commit). */
int state_commit(state *s);
/* Says that the uncommitted changes hold every row table should have
 * (values rewritten in a new format): their commit empties the table in
 * LMDB first and writes it back packed.  Only with nothing frozen or
 * committing; reads until then still fall through to LMDB's old rows for
 * keys the changes lack. */
void state_replace(state *s, int table);
/* Drops the changes not committed: the active layer, and a frozen one no
 * committer took yet (a running commit is waited for and kept). */
int state_abort(state *s);

/* Asynchronous checkpoints.  state_freeze makes the active layer the
 * frozen one and starts an empty active layer (-EBUSY if a frozen layer is
 * still there).  state_commit_frozen starts a thread that calls
 * before(before_ctx)
 * (work that must be durable before this commit: 0 or an error that fails
 * it), writes the frozen layer into LMDB and commits, then calls
 * done(done_ctx) from that thread.  state_commit_finish, on the writer's
 * thread: STATE_COMMIT_NONE, STATE_COMMIT_RUNNING, else its outcome (0:
 * the read view now shows it and the frozen layer is gone; < 0: it failed
 * — call state_abort). */
int state_freeze(state *s);
bool state_has_frozen(const state *s);
int state_commit_frozen(state *s, int (*before)(void *ctx), void *before_ctx,
                        void (*done)(void *ctx), void *done_ctx);
/* From before() only (the committer thread): one more value written in
 * this commit — what only the committer knows (the id index's manifest
 * once its run is written).  At most STATE_EXTRA_BYTES in all. */
#define STATE_EXTRA_BYTES 8192
int state_commit_add(state *s, int table, const void *key, size_t key_len, const void *val,
                     size_t val_len);
int state_commit_finish(state *s);
/* state_commit_finish that waits for a running commit to end. */
int state_commit_wait(state *s);
/* Bytes the active layer holds (for backpressure). */
size_t state_active_bytes(const state *s);
/* Memory the layers map in all (active, frozen, clean cache, and the
 * spare chunks a recycled layer has not used yet). */
size_t state_memory_bytes(const state *s);

/* Asks the CPU for the layers' hash slots state_get(table, key) reads
 * first (no effect on the state). */
void state_prefetch(const state *s, int table, const void *key, size_t key_len);
/* The second step, some time after state_prefetch(table, key): reads the
 * slots it asked for (by now in the cache) and asks for the object each
 * one points to — a cache miss of its own that state_get would otherwise
 * wait for.  No effect on the state. */
void state_prefetch_object(const state *s, int table, const void *key, size_t key_len);
/* 0 and *val, *val_len; STATE_ABSENT. */
int state_get(state *s, int table, const void *key, size_t key_len, const void **val,
              size_t *val_len);
int state_put(state *s, int table, const void *key, size_t key_len, const void *val,
              size_t val_len);
/* 0, or STATE_ABSENT if there was nothing to delete. */
int state_del(state *s, int table, const void *key, size_t key_len);
/* Deletes a key the caller's own bookkeeping says is stored, without
 * reading it first (state_del's read is a B-tree walk for a key that no
 * layer holds); were the key absent, the deletion would change nothing. */
int state_del_known(state *s, int table, const void *key, size_t key_len);

/* Ordered iteration over the merged view (layers over LMDB) of keys in
 * [from, to) — from_len 0: from the first key; to_len 0: to the last.
 * fn(ctx, key, key_len, val, val_len) is called in key order and must not
 * change the state; a non-zero return stops the scan and is returned. */
typedef int (*state_scan_fn)(void *ctx, const void *key, size_t key_len, const void *val,
                             size_t val_len);
int state_scan(state *s, int table, const void *from, size_t from_len, const void *to,
               size_t to_len, state_scan_fn fn, void *ctx);

/* Compares every table except STATE_META of two states: 0, or
 * TALLY_ECORRUPT with the first difference (table and key) in msg. */
int state_compare(state *a, state *b, char *msg, size_t cap);

/* Writes a compacted copy of the last committed state (LMDB's compacting
 * copy, from a read transaction: it does not stop the writer) into the
 * open file descriptor fd.  May run on another thread than the writer. */
int state_copy_fd(state *s, int fd);

/* Reads a META value (e.g. "seq", "ids") from the last committed state of
 * an environment file (a snapshot), opening it read-only on its own:
 * 0 and up to cap bytes in out with *len; STATE_ABSENT. */
int state_file_meta(const char *path, const char *name, void *out, size_t cap, size_t *len);

/* After TALLY_ECORRUPT: which table and key failed its checksum, or what
 * LMDB reported.  "" if nothing failed. */
const char *state_error(const state *s);

/* Bytes a stored value carries beyond the caller's (the checksum). */
#define STATE_CHECKSUM_BYTES 8
/* The longest key any table uses. */
#define STATE_KEY_BYTES_MAX 32

#endif
