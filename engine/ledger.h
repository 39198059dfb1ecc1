/*
 * ledger.h — the loyalty semantics of one shard (SPEC §1–3), over its
 * state (state.h: accounts, chunks of lots, due times, open holds, lot
 * ids, reversals, merchant totals, liability), its id index (ids.h) and
 * its log (log.h), which is the store of entries.
 *
 * Execution is deterministic given (state, request, now_ms): recovery and
 * `tally verify` re-execute logged records with their recorded time and
 * compare the outcome with what the record says, so a divergence is found,
 * not served.  Engine-written entries (`~exp:` expiries, `~avail:`
 * maturities, `~void:` timed-out holds) are logged records of their own,
 * written by ledger_sweep() and, for the accounts a write touches, just
 * before that write's entry.
 *
 * Durability (DESIGN-NOTES §1, §5): every change goes into the state's
 * in-memory layer; the log is the write-ahead log.  A checkpoint sets the
 * layer aside as reflecting a seq (ledger_checkpoint_freeze), and a
 * committer thread writes it — every object it changed, once — into one
 * synced LMDB commit together with the id index's manifest, once that seq
 * is durable.  ledger_rollback() drops everything since the last
 * checkpoint.
 *
 * One thread (the shard's) uses a ledger; nothing here locks.
 */
#ifndef TALLY_LEDGER_H
#define TALLY_LEDGER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "log.h"
#include "record.h"
#include "tally.h"

typedef struct ledger ledger;

typedef struct ledger_options {
    const char *dir;        /* the state's directory: LMDB, and ids/ (created) */
    uint64_t map_bytes;     /* 0 = LIMIT_STATE_MAP_BYTES_DEFAULT */
    bool read_only;         /* tools: never commit, never write the id index */
    uint64_t ids_flush_keys; /* 0: default (see ledger.c) */
    const os_ops *os;       /* NULL = os_default() */
    tally_log_fn log;
    void *log_ctx;
} ledger_options;

/* Opens the state and the id index it names.  Does not replay: the caller
 * feeds the log after ledger_ids_seq() (ids only up to
 * ledger_checkpoint_seq(), whole records after it).  log may be NULL and
 * attached later.  Errors: -errno, TALLY_EFORMAT, TALLY_ECORRUPT. */
int ledger_open(const ledger_options *opts, log_t *log, ledger **out);
/* A read-only ledger over l's last checkpoint (state_view_open), for a
 * thread other than l's (VERIFY's helper): ledger_verify runs on it while
 * l goes on; it has no log and no id index, so nothing else is meant to.
 * Its ledger_checkpoint_seq() is the checkpoint it sees.  Close it with
 * ledger_close, on the thread that used it, before l. */
int ledger_view_open(ledger *l, ledger **out);
/* Gives the ledger the log it appends to and reads from. */
void ledger_attach_log(ledger *l, log_t *log);
/* Drops what is not checkpointed (call ledger_checkpoint first to keep
 * it). */
void ledger_close(ledger *l);

/* Last seq the committed state reflects (0 for a new shard). */
uint64_t ledger_checkpoint_seq(const ledger *l);
/* Every id of records up to this seq is in the id index's runs. */
uint64_t ledger_ids_seq(const ledger *l);

/* Executes one request at engine time now_ms (unix ms, non-decreasing).
 * Reads fill req->res.  Writes first check the idempotency index (a
 * repeated request is answered from its original record, res.replayed),
 * then append engine entries due for the accounts it touches, then the
 * entry (or a refusal record for -INSUFFICIENT/-NOTFOUND/-INVALID-by-
 * state) to the log's filling batch and update the state.  The request's
 * own outcome is in req->res (status 0 or a TALLY_E* code with message).
 * Returns 0, or < 0 for a failure that must stop the shard's writes (log
 * append failed, state error), or TALLY_ETOOBIG: the batch is full (the
 * request was not applied; retry it in the next batch). */
int ledger_execute(ledger *l, tally_request *req, uint64_t now_ms);
/* Asks the CPU for the memory a write of (merchant, account, id) reads
 * first (the id in the id index, the account in the state): called a few
 * writes ahead of ledger_execute or ledger_import, the cache misses of
 * consecutive writes overlap.  `lookup`: the write looks its id up (a new
 * request, an import line), not only inserts it (a replay).  No effect on
 * the ledger. */
void ledger_prefetch(const ledger *l, uint64_t merchant, uint64_t account, const char *id,
                     size_t id_len, bool lookup);
/* The second step of ledger_prefetch, half way between it and the write:
 * the account object the first step's hash slots point to. */
void ledger_prefetch_object(const ledger *l, uint64_t merchant, uint64_t account);

/* Where a replay gets the records after the one it was handed (the
 * allocation parts and group members that one write produced). */
typedef struct ledger_src {
    int (*next)(void *ctx, record *r, log_loc *loc); /* 1, 0 at the end, < 0 */
    void *ctx;
} ledger_src;

/* Re-executes the logged write that starts with record r (recovery,
 * verify) at its recorded time and checks every record it produces
 * against the log (pulling the write's further records from src).
 * TALLY_ECORRUPT (with a message via the log callback) on mismatch. */
int ledger_replay(ledger *l, const record *r, log_loc loc, ledger_src *src);
/* For records the state already reflects but the id index does not
 * (seq <= ledger_checkpoint_seq()): only indexes r's id. */
int ledger_replay_ids(ledger *l, const record *r);

/* Appends engine entries for what came due by now_ms (lots whose expiry
 * passed, pending lots that matured, holds whose timeout passed), at most
 * max of them, oldest first.  Writes how many into *count and whether more
 * are due into *more. */
int ledger_sweep(ledger *l, uint64_t now_ms, uint32_t max, uint32_t *count, bool *more);

/* The epoch written into every record from now on (repl.h: the epoch of
 * the leader's lease; 0 standalone). */
void ledger_set_epoch(ledger *l, uint32_t epoch);

/* The client's view of a logged record (ENTRY, HISTORY, dump). */
void ledger_entry_from_record(const record *r, tally_entry *e);

/* Commits everything executed so far, synced, as reflecting `seq`, on the
 * calling thread (tools, recovery, close). */
int ledger_checkpoint(ledger *l, uint64_t seq);

/* For work that owns its ledger outright (recovery's replay, a rebuild,
 * verify, import): when a checkpoint is due (changes or the id memtable
 * past their limits), sets everything executed so far aside as reflecting
 * `seq` (durable: the caller flushed) and has the committer write it while
 * the work goes on; only when the next is due before that one finished,
 * and memory is past twice the limits, does it wait.  Installs finished
 * commits and merges.  `stretch` (1 or 2) multiplies the limits on changes
 * and ids: a replay, which changes the same accounts over and over, takes
 * 2 and writes each of them half as often.  0 or a failure. */
int ledger_checkpoint_paced(ledger *l, uint64_t seq, uint32_t stretch);
/* Whether ledger_checkpoint_paced would start a checkpoint now. */
bool ledger_checkpoint_due(const ledger *l);

/* Asynchronous checkpoints (the shard thread).  ledger_checkpoint_freeze
 * sets aside everything executed so far as reflecting `seq` (-EBUSY while
 * an earlier one is set aside), the id index's memtable with it (every
 * checkpoint puts the ids up to its seq into a run); ledger_checkpoint_commit starts writing it
 * into LMDB on a committer thread — only once `seq` is durable — which
 * calls done(ctx) when finished; ledger_checkpoint_finish:
 * STATE_COMMIT_NONE, STATE_COMMIT_RUNNING, 0 done (ledger_checkpoint_seq()
 * now says seq), < 0 failed (then ledger_rollback).
 * ledger_checkpoint_frozen: one is set aside (started or not). */
int ledger_checkpoint_freeze(ledger *l, uint64_t seq);
int ledger_checkpoint_commit(ledger *l, void (*done)(void *ctx), void *ctx);
int ledger_checkpoint_finish(ledger *l);
bool ledger_checkpoint_frozen(const ledger *l);
/* The seq of the checkpoint set aside (0: none). */
uint64_t ledger_checkpoint_frozen_seq(const ledger *l);
/* Commits the checkpoint set aside, if any, and waits for it, leaving
 * what was executed after it uncommitted (a replica's shard closing: it
 * may not checkpoint past the replicated seq).  0 or < 0 (then
 * ledger_rollback). */
int ledger_checkpoint_frozen_commit(ledger *l);
/* Memory the uncheckpointed changes hold (backpressure). */
size_t ledger_pending_bytes(const ledger *l);
/* True when the id index's memtable holds `times` flushes' worth: 1, a
 * checkpoint is due; more, writes wait for the one running. */
bool ledger_ids_full(const ledger *l, uint32_t times);
/* Installs finished background work of the id index (between batches). */
void ledger_poll(ledger *l);
/* Drops everything since the last checkpoint (after a failed flush). */
void ledger_rollback(ledger *l);
/* Records executed since the last checkpoint. */
uint64_t ledger_delta_records(const ledger *l);

/* The oldest seq the state still needs from the log beyond what snapshots
 * hold: open holds (their allocations are in their records) and the ids
 * its index's runs do not hold yet.  Retention keeps it. */
int ledger_retain_floor(ledger *l, uint64_t *seq);

/* The state underneath (snapshots copy it from another thread). */
struct state;
struct state *ledger_state(ledger *l);
/* The id index's manifest of the last checkpoint, and its directory (for
 * snapshots: its run files are linked beside the state's copy). */
struct ids;
struct ids *ledger_ids(ledger *l);
/* Memory the state's layers map, the id index's memtables, its filters. */
void ledger_memory(ledger *l, uint64_t *layers, uint64_t *id_tables, uint64_t *id_filters);
/* What the state layer last found damaged ("" if nothing): tells state
 * corruption (rebuildable from the log) from other TALLY_ECORRUPT. */
const char *ledger_state_error(const ledger *l);

/* Checks the state of merchant m (0: all) for internal consistency:
 * every account's lots, pending, holds and totals add up, merchant totals
 * and liability equal the sum of their accounts.  0, or TALLY_ECORRUPT
 * with the first fault in msg. */
int ledger_verify(ledger *l, uint64_t merchant, char *msg, size_t cap);

/* Reads the log from its first retained record and checks every
 * account's history: each entry's acct_prev names the account's entry
 * before it, and its balance, held and pending follow from that entry's by
 * what it says (tally_entry_moves).  An account whose first entry
 * retention dropped is checked from its first retained one.  0, or
 * TALLY_ECORRUPT with the first break in msg. */
int ledger_verify_history(log_t *log, char *msg, size_t cap);

/* Compares two ledgers' states (live vs replayed): 0 or TALLY_ECORRUPT
 * with the first difference in msg.  For `tally verify`. */
int ledger_compare(ledger *a, ledger *b, char *msg, size_t cap);

/* Upgrade (upgrade.c): the ledger converts records of release 1 through
 * the write path into this log, keeping their seq and time. */
int ledger_convert(ledger *l, const record *v1, log_t *out);

/* Import (SPEC §8, ledger_import.c): applies one line at its own time,
 * marked imported, and checks the outcome against the line.  0 applied,
 * 1 already there (the same request, or a transfer's receiving entry its
 * sender's line wrote), or an error with msg: TALLY_ECONFLICT (the id
 * names another request), TALLY_EINVALID (the line breaks a rule or its
 * outcome differs), a refusal's code; < 0 other failures, which stop the
 * shard like a live write's. */
int ledger_import(ledger *l, const tally_import_item *it, char *msg, size_t cap);

#endif
