/*
 * ledger_int.h — what the ledger's files share (SQLite's sqliteInt.h
 * pattern): the ledger struct, the execution context, state keys, and the
 * functions one concern offers the others.  Not for other modules.
 *
 *   ledger.c         lifecycle, checkpoints, execute / replay / convert
 *   ledger_emit.c    records: building, emitting (or checking in replay),
 *                    refusals, idempotency, targets, totals and liability
 *   ledger_write.c   credits, debits, holds, reversals, transfers
 *   ledger_due.c     engine entries: expiries, maturities, timed-out holds;
 *                    the sweep
 *   ledger_read.c    balance, entry, history, merchant, liability
 *   ledger_verify.c  consistency checks, state comparison
 *   ledger_import.c  one line of an import
 */
#ifndef TALLY_LEDGER_INT_H
#define TALLY_LEDGER_INT_H

#include <stdbool.h>
#include <stdint.h>

#include "account.h"
#include "bytes.h"
#include "ids.h"
#include "ledger.h"
#include "state.h"

/* The layout of the state's tables and values.  Changing either changes
 * the format: bump it (open refuses other formats). */
#define LEDGER_FORMAT 4

/* Refusal reasons: index stored in the record, so a replayed refusal
 * answers byte-identically.  Append only (format). */
enum {
    R_NONE, R_INSUFFICIENT, R_NOTFOUND, R_NOT_HOLD, R_CLOSED, R_CAPTURE_EXCEEDS,
    R_NOT_REVERSIBLE, R_OVER_REVERSAL, R_BALANCE_LIMIT, R_FRAGMENTED, R_EXPIRED,
    R_OTHER_MERCHANT, R_TRANSFER_HOLDS, R_TRANSFER_DEBT, R_ARCHIVED_TARGET,
    R_COUNT_,
};
extern const char *const ledger_reasons[R_COUNT_];

/* Merchant totals (STATE_MERCHANTS value), and the times an import
 * checks (SPEC §8: a merchant's imported entries are in ts order and older
 * than its live ones): the ts of its first live entry and of its newest
 * imported one (0: none).  ledger_merchant_add keeps them from the entry
 * emitted last; deltas leave them 0. */
typedef struct ledger_merchant {
    int64_t accounts, outstanding, earned, redeemed, expired, entries;
    uint64_t live_ts, import_ts;
} ledger_merchant;

/* A lot's id as STATE_LOT_IDS keeps it: how the lot's engine ids are
 * made.  kind LOT_ID_PLAIN: the id of the earn or adjust that made it;
 * LOT_ID_RECEIVED: "~to:ID" of a transfer, its lots named by expiry. */
enum { LOT_ID_PLAIN = 0, LOT_ID_RECEIVED = 1 };

/* One execution: the time, and where its records go (live: the log;
 * replay: compared with the log; convert: another log). */
typedef struct ledger_x {
    uint64_t ts_ms;
    bool engine_entries; /* live: write due entries of touched accounts first */
    bool legacy;         /* a record of release 1: pending lots mature silently */
    /* replay: the records this write must reproduce */
    const record *replay;
    log_loc replay_loc;
    ledger_src *src;
    bool unanswered; /* a re-run (replay, convert): nobody reads the answer */
    /* convert: records appended to this log with the original seq and time;
     * the entry or refusal made for out_seq is copied into out_got */
    log_t *out;
    uint64_t out_seq;
    record *out_got;
    bool imported;
} ledger_x;

/* The id-index key of the id hashed last: a write looks its id up, then
 * puts it (one XXH3-128 instead of two). */
typedef struct ledger_idkey {
    uint64_t merchant;
    uint8_t len; /* 0: none */
    char id[LIMIT_ENGINE_ID_BYTES_MAX];
    ids_key key;
} ledger_idkey;

struct ledger {
    ledger_options opts;
    char dir[4096];
    state *st;
    ids *ids;
    ledger_idkey idkey;
    log_t *log;
    uint64_t checkpoint_seq;
    uint64_t frozen_seq; /* a checkpoint set aside, being committed; 0: none */
    bool ids_frozen;     /* and it froze the id index's memtable */
    uint64_t delta_records;
    uint64_t last_ts_ms;
    uint32_t epoch;
    /* the record ledger_emit wrote last: its time, and whether imported */
    uint64_t emit_ts;
    bool emit_imported;
    tally_request *scratch; /* replay's request */
    account acc[3];         /* [0] the write's account, [1] a transfer's receiver,
                             * [2] engine entries and reads */
    bool acc0_loaded;       /* acc[0] is the write's account as stored (ledger_write.c) */
    record *rec;            /* scratch records: [0] the entry, [1] a second, [2] parts */
    record_alloc *allocs;   /* scratch allocation lists */
    uint32_t allocs_cap;
    record_alloc *allocs2;
    uint32_t allocs2_cap;
};

/* ---- ledger.c ------------------------------------------------------------- */

void ledger_say(ledger *l, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Big-endian keys so they sort numerically. */
static inline void ledger_be64(uint8_t *p, uint64_t v) { bytes_put_be64(p, v); }
static inline uint64_t ledger_get_be64(const uint8_t *p) { return bytes_get_be64(p); }
size_t ledger_key2(uint8_t *k, uint64_t a, uint64_t b);
size_t ledger_key3(uint8_t *k, uint64_t a, uint64_t b, uint64_t c);
uint64_t ledger_expkey(uint64_t expires); /* 0 (never) → UINT64_MAX */
bool ledger_due(uint64_t unix_s, uint64_t ts_ms);
int ledger_grow_allocs(record_alloc **v, uint32_t *cap, uint32_t n);
/* Loads an account (and, if not loaded yet, nothing else). */
int ledger_acct_load(ledger *l, account *ac, uint64_t m, uint64_t a);
/* Saves an account and keeps its STATE_DUE row at its next due time. */
int ledger_acct_save(ledger *l, account *ac);
/* An account's available points. */
int64_t ledger_available(const account *ac);
/* Whether the account's balances are within |2^62|. */
bool ledger_balance_ok(const account *ac);

/* ---- ledger_emit.c ---------------------------------------------------------- */

/* ids_key_of, remembered for the id hashed last (ledger_idkey). */
ids_key ledger_ids_key(ledger *l, uint64_t m, const char *id, size_t id_len);

/* The write op that makes entries of a kind (TALLY_OP_NONE for the
 * engine's kinds: expire, available). */
int ledger_kind_op(int kind);
/* The record of a request: every argument, so a retry can be compared. */
void ledger_record_from_request(const tally_request *q, int kind, record *r);
/* Room for `records` records of up to LIMIT_RECORD_BYTES_MAX in the filling
 * batch (live only): TALLY_ETOOBIG if the batch must be sealed first. */
int ledger_reserve(ledger *l, const ledger_x *x, uint32_t records);
/* Appends r (live), appends it to the converted log, or checks it against
 * the logged record (replay); sets r->seq, r->ts_ms and *loc; indexes its
 * id. */
int ledger_emit(ledger *l, ledger_x *x, record *r, log_loc *loc);
/* An entry with its allocations: as many as fit in r, the rest in
 * allocation parts after it. */
int ledger_emit_allocs(ledger *l, ledger_x *x, record *r, const record_alloc *al, uint32_t n,
                       log_loc *loc);
/* An entry emitted for an account: its history link (acct_prev) set
 * before, the account's head moved after. */
int ledger_emit_entry(ledger *l, ledger_x *x, record *r, account *ac, const record_alloc *al,
                      uint32_t n, log_loc *loc);
/* Emits a refusal record for the request and answers it. */
int ledger_refuse(ledger *l, ledger_x *x, tally_request *q, record *r, int code, int reason);
void ledger_answer_entry(tally_request *q, const record *r);
void ledger_answer_refusal(tally_request *q, int code, int reason);
/* A write's answer: none in a re-run (the entry's copy and the result's
 * zeroing were ~5% of a rebuild's CPU). */
static inline void ledger_answer_write(const ledger_x *x, tally_request *q, const record *r)
{
    if (!x->unanswered)
        ledger_answer_entry(q, r);
}
/* The allocations of a logged entry (its parts read too) into l->allocs2:
 * 0 and *n; TALLY_EARCHIVED if retention dropped it. */
int ledger_read_allocs(ledger *l, uint64_t seq, record *entry, uint32_t *n);
/* 0: answered from the index (q->res filled); 1: a new id; < 0 error. */
int ledger_idempotent(ledger *l, tally_request *q);
/* The entry an id names: 0 and its record (and *seq); 1 if there is no
 * such entry (or it is a remembered refusal); TALLY_EARCHIVED. */
int ledger_target(ledger *l, uint64_t m, const char *id, size_t id_len, record *out);
/* The seq an id names (entry or refusal): 0 and *seq, *refusal; 1 none. */
int ledger_id_seq(ledger *l, uint64_t m, const char *id, size_t id_len, uint64_t *seq,
                  bool *refusal);
/* Merchant totals (the stored row) and their change. */
int ledger_merchant_get(ledger *l, uint64_t m, ledger_merchant *out);
int ledger_merchant_add(ledger *l, uint64_t m, const ledger_merchant *d);
/* Liability of merchant m in the month of expkey changes by delta. */
int ledger_liability_add(ledger *l, uint64_t m, uint64_t expkey, int64_t delta);
uint64_t ledger_month(uint64_t expkey); /* yyyymm, UINT64_MAX for never */
/* A lot's id (the id STATE_LOT_IDS names for its seq, with the expiry
 * when it was received by a transfer): 0 and *len bytes in out. */
int ledger_lot_id(ledger *l, uint64_t seq, uint64_t expkey, char *out, size_t *len);
int ledger_lot_id_put(ledger *l, uint64_t seq, int kind, const char *id, size_t len);
/* "prefix" + id, with "#n" when that id is taken (a lot that expires or
 * matures again): the first free one, found through the id index. */
int ledger_engine_id(ledger *l, uint64_t m, const char *prefix, const char *id, size_t len,
                     char *out, uint8_t *out_len);

/* ---- ledger_write.c ----------------------------------------------------------- */

int ledger_write(ledger *l, ledger_x *x, tally_request *q);
/* Returns allocations [from, to) (by points, in list order) to their
 * lots, last first; liab: to the liability too. */
int ledger_return_allocs(ledger *l, account *ac, const record_alloc *al, uint32_t n,
                         int64_t from, int64_t to, bool liab);
/* Releases a hold: capture > 0 keeps that many points (CAPTURE), 0 voids
 * it.  q NULL: an engine void of a timed-out hold. */
int ledger_release(ledger *l, ledger_x *x, tally_request *q, const record *hold,
                   int64_t capture);

/* ---- ledger_due.c ---------------------------------------------------------------- */

/* Writes the engine entries due for account (m, a) by x->ts_ms, oldest
 * first, at most *budget of them (decremented); live only.  1 if more
 * are due than the budget allowed. */
int ledger_due_entries(ledger *l, ledger_x *x, uint64_t m, uint64_t a, uint32_t *budget);
/* Replays an engine entry (~exp, ~avail, ~void). */
int ledger_replay_engine(ledger *l, ledger_x *x, const record *r);
/* Release 1's pending lots matured without a record: before a legacy
 * record, the lots of its account whose time came become spendable. */
int ledger_mature_silently(ledger *l, account *ac, uint64_t ts_ms);

/* ---- ledger_read.c ---------------------------------------------------------------- */

int ledger_read(ledger *l, tally_request *q, uint64_t now_ms);

#endif
