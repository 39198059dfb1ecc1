/*
 * ledger.h — the loyalty semantics of one shard (SPEC §1–3), over its
 * state (state.h, LMDB) and its log (log.h).
 *
 * Execution is deterministic given (state, request, now_ms): recovery and
 * `tally verify` re-execute logged records with their recorded time and
 * compare the outcome with what the record says, so a divergence is found,
 * not served.  Engine-written entries (`~exp:` expiries, `~void:` timed-out
 * holds) are logged records of their own, written by ledger_sweep() and,
 * for the account a write touches, just before that write's entry.
 *
 * Durability (DESIGN-NOTES §1): every change goes into one LMDB write
 * transaction (plus in-memory totals) kept open across batches; the log is
 * the write-ahead log.  ledger_checkpoint() commits it, synced, with the
 * seq it reflects — called by the shard only when every appended record is
 * durable.  ledger_rollback() drops everything since the last checkpoint.
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
    const char *dir;        /* LMDB environment directory (created) */
    uint64_t map_bytes;     /* 0 = LIMIT_STATE_MAP_BYTES_DEFAULT */
    bool read_only;
    tally_log_fn log;
    void *log_ctx;
} ledger_options;

/* Opens the state.  Does not replay: the caller iterates the log after
 * ledger_checkpoint_seq() and feeds ledger_replay().  log may be NULL and
 * attached later (the log is opened from the state's checkpoint seq).
 * Errors: -errno, TALLY_EFORMAT, TALLY_ECORRUPT. */
int ledger_open(const ledger_options *opts, log_t *log, ledger **out);
/* Gives the ledger the log it appends to and reads from. */
void ledger_attach_log(ledger *l, log_t *log);
/* Aborts an uncommitted delta (call ledger_checkpoint first to keep it). */
void ledger_close(ledger *l);

/* Last seq the committed state reflects (0 for a new shard). */
uint64_t ledger_checkpoint_seq(const ledger *l);

/* Executes one request at engine time now_ms (unix ms, non-decreasing).
 * Reads fill req->res.  Writes first check the idempotency index (a
 * repeated request is answered from its original record, res.replayed),
 * then append engine entries due for the account, then the entry (or a
 * refusal record for -INSUFFICIENT/-NOTFOUND/-INVALID-by-state) to the
 * log's filling batch and update the state.  The request's own outcome is
 * in req->res (status 0 or a TALLY_E* code with message).
 * Returns 0, or < 0 for a failure that must stop the shard's writes
 * (log append failed, LMDB error); the state is then unchanged by this
 * request only if the failure came before the first append. */
int ledger_execute(ledger *l, tally_request *req, uint64_t now_ms);

/* Re-executes a logged record (recovery, verify) at its recorded time and
 * checks the outcome (points, balance, held, error) against it.
 * TALLY_ECORRUPT (with a message via the log callback) on mismatch. */
int ledger_replay(ledger *l, const record *r, log_loc loc);

/* Appends engine entries for lots whose expiry passed and holds whose
 * timeout passed by now_ms, at most max of them, oldest first.  Writes how
 * many into *count and whether more are due into *more. */
int ledger_sweep(ledger *l, uint64_t now_ms, uint32_t max, uint32_t *count, bool *more);

/* The client's view of a logged record (ENTRY, HISTORY, dump). */
void ledger_entry_from_record(const record *r, tally_entry *e);

/* Commits everything executed so far, synced, as reflecting `seq`, on the
 * calling thread (tools, recovery, close). */
int ledger_checkpoint(ledger *l, uint64_t seq);

/* Asynchronous checkpoints (the shard thread).  ledger_checkpoint_freeze
 * sets aside everything executed so far as reflecting `seq` (-EBUSY while
 * an earlier one is set aside); ledger_checkpoint_commit starts writing it
 * into LMDB on a committer thread — only once `seq` is durable — which
 * calls done(ctx) when finished; ledger_checkpoint_finish: 1 none started,
 * 2 still running, 0 done (ledger_checkpoint_seq() now says seq), < 0
 * failed (then ledger_rollback).  ledger_checkpoint_frozen: one is set
 * aside (started or not). */
int ledger_checkpoint_freeze(ledger *l, uint64_t seq);
int ledger_checkpoint_commit(ledger *l, void (*done)(void *ctx), void *ctx);
int ledger_checkpoint_finish(ledger *l);
bool ledger_checkpoint_frozen(const ledger *l);
/* Memory the uncheckpointed changes hold (backpressure). */
size_t ledger_pending_bytes(const ledger *l);
/* Drops everything since the last checkpoint (after a failed flush). */
void ledger_rollback(ledger *l);
/* Records executed since the last checkpoint. */
uint64_t ledger_delta_records(const ledger *l);

/* The state underneath (snapshots copy it from another thread). */
struct state;
struct state *ledger_state(ledger *l);
/* What the state layer last found damaged ("" if nothing): tells state
 * corruption (rebuildable from the log) from other TALLY_ECORRUPT. */
const char *ledger_state_error(const ledger *l);

/* Checks the state of merchant m (0: all) for internal consistency:
 * every account's available + held + pending equals its lots, holds and
 * debt, lifetime totals add up, merchant totals equal the sum of their
 * accounts.  0, or TALLY_ECORRUPT with the first fault in msg. */
int ledger_verify(ledger *l, uint64_t merchant, char *msg, size_t cap);

/* Compares two ledgers' states (live vs replayed): 0 or TALLY_ECORRUPT
 * with the first difference in msg.  For `tally verify`. */
int ledger_compare(ledger *a, ledger *b, char *msg, size_t cap);

#endif
