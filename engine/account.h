/*
 * account.h — one account's stored object: lifetime totals, open holds,
 * pending lots and spendable lots, in the state (state.h).
 *
 * The value in STATE_ACCOUNTS, keyed (merchant, account) big-endian
 * (format: ledger.c's LEDGER_FORMAT 4), is encoded, not the structs below:
 *
 *   varint mask       bit i: header field i is not 0 (16 fields)
 *   varint field...   earned, redeemed, expired, held, debt, lots_total,
 *                     pending_total, pool, transferred (zigzag), head_seq,
 *                     due_s + 1 (UINT64_MAX, none, is 0), nholds, npending,
 *                     nlots, nchunks, chunk_next — only those in the mask
 *   holds[nholds]     varint seq, zigzag amount, varint deadline_s + 1
 *   pending[npending] lots, by (available_at, seq)
 *   nchunks == 0:     lots[nlots], by (expiry, seq)
 *   nchunks >  0:     dir[nchunks], in lot order: varint id, count, the
 *                     first lot's expiry (as a lot's), first_seq
 *
 * A lot is zigzag((expiry + 1) − (the lot before's expiry + 1), from 0),
 * varint seq, zigzag remaining, varint available_at: sorted lots take ~8 bytes, a
 * typical account's value ~15 (the structs took 112 and 32 each, three
 * times the B-tree pages for a checkpoint to rewrite).  A chunk's value in
 * STATE_LOTS is its lots, encoded the same way.  Format 3 stored the
 * structs; ledger_open re-encodes such a state once (account_upgrade_v3).
 *
 * Spendable lots that expire are kept one per earn (each expires under
 * its own id) sorted soonest first; never-expiring spendable points are
 * one pool (nothing about them ever differs by lot).  A few lots live
 * inline in the account; past ACCOUNT_INLINE_MAX they move to chunks of up
 * to ACCOUNT_CHUNK_MAX in STATE_LOTS, keyed (merchant, account, chunk id),
 * so a write touches the account and at most the chunks it changes — an
 * account with 100,000 lots costs a few KiB per write, not megabytes — and
 * the account keeps each chunk's first lot in its directory.
 *
 * An account is loaded into a caller-owned `account` (its buffers grow as
 * needed and are reused: nothing is allocated per request once warm),
 * changed through these functions and saved.  Lookups of lots and chunks
 * go through the state; account_save writes the account and the chunks it
 * changed.
 */
#ifndef TALLY_ACCOUNT_H
#define TALLY_ACCOUNT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "state.h"

/* Lots inline before they move to chunks; back inline at half. */
#define ACCOUNT_INLINE_MAX 32
/* Lots per chunk before it splits in two. */
#define ACCOUNT_CHUNK_MAX 64

typedef struct account_hdr {
    int64_t earned, redeemed, expired; /* lifetime totals */
    int64_t held;          /* Σ open holds */
    int64_t debt;          /* >= 0: points owed (available below zero) */
    int64_t lots_total;    /* Σ remaining of every lot: pool, spendable, pending */
    int64_t pending_total; /* Σ remaining of pending lots */
    int64_t pool;          /* never-expiring spendable points */
    int64_t transferred;   /* received minus sent by TRANSFER */
    uint64_t head_seq;     /* the account's newest entry (its history chain) */
    uint64_t due_s;        /* the due time its STATE_DUE row has; UINT64_MAX: none */
    uint32_t nholds, npending, nlots, nchunks;
    uint32_t chunk_next; /* id of the next chunk made */
    uint32_t reserved;
} account_hdr;

typedef struct account_hold {
    uint64_t seq;
    int64_t amount;
    uint64_t deadline_s;
} account_hold;

typedef struct account_lot {
    uint64_t expkey;       /* unix s of expiry; UINT64_MAX: never */
    uint64_t seq;          /* of the entry that made it */
    int64_t remaining;     /* > 0 */
    uint64_t available_at; /* pending lots: when they become spendable; else 0 */
} account_lot;

typedef struct account_dir {
    uint32_t id;
    uint32_t count;
    uint64_t first_expkey, first_seq;
} account_dir;

typedef struct account_chunk {
    uint32_t id;
    uint32_t count;
    bool loaded; /* holds chunk `id` of the account loaded now */
    bool dirty;
    account_lot lots[ACCOUNT_CHUNK_MAX + 1];
} account_chunk;

typedef struct account {
    uint64_t m, a;
    bool exists;  /* it was stored before this load */
    account_hdr h;
    account_hold *holds;
    uint32_t holds_cap;
    account_lot *pending;
    uint32_t pending_cap;
    account_lot *inl; /* nchunks == 0 */
    uint32_t inl_cap;
    account_dir *dir; /* nchunks > 0 */
    uint32_t dir_cap;
    account_chunk **chunks; /* loaded chunks: chunks[i] for dir[i], NULL if not loaded */
    uint32_t chunks_cap;
    uint32_t *gone;   /* chunk ids to delete at save */
    uint32_t gone_count, gone_cap;
} account;

/* A position among the spendable expiring lots: (dir index, lot index). */
typedef struct account_pos {
    uint32_t c, i;
} account_pos;

/* Frees the buffers of an account (never loaded is fine). */
void account_free(account *ac);

/* Asks the CPU for what account_load(st, m, a) reads first. */
void account_prefetch(const state *st, uint64_t m, uint64_t a);
/* Its second step, a little later (state_prefetch_object). */
void account_prefetch_object(const state *st, uint64_t m, uint64_t a);

/* Loads (m, a) into ac (an absent account loads empty, exists false).
 * Errors: TALLY_ECORRUPT (a malformed value), state errors. */
int account_load(state *st, uint64_t m, uint64_t a, account *ac);
/* Writes ac and its changed chunks into the state. */
int account_save(state *st, account *ac);

/* Re-encodes every account and chunk stored in format 3 (the structs as
 * they were in memory) as format 4, into st's uncommitted layer, and says
 * how many of each.  Errors: TALLY_ECORRUPT (a malformed format-3 value),
 * state errors. */
int account_upgrade_v3(state *st, uint64_t *accounts, uint64_t *chunks);

/* ---- spendable expiring lots, soonest first -------------------------------- */

/* The first lot: 0 and *pos, *lot; STATE_ABSENT when none. */
int account_lot_first(state *st, account *ac, account_pos *pos, account_lot *lot);
/* The lot after *pos. */
int account_lot_next(state *st, account *ac, account_pos *pos, account_lot *lot);
/* Remaining of lot (expkey, seq): 0 and *remaining (0 if absent). */
int account_lot_get(state *st, account *ac, uint64_t expkey, uint64_t seq, int64_t *remaining);
/* Adds delta to lot (expkey, seq) — creating it, or removing it at 0.
 * Keeps nlots and lots_total; pool and pending lots are not here. */
int account_lot_add(state *st, account *ac, uint64_t expkey, uint64_t seq, int64_t delta);

/* ---- pending lots, by (available_at, seq) ---------------------------------- */

/* Inserts a pending lot (keeps npending, pending_total, lots_total). */
int account_pending_add(account *ac, const account_lot *lot);
/* Removes pending[i] (keeps the totals as account_pending_add). */
void account_pending_remove(account *ac, uint32_t i);
/* Index of the pending lot of seq, or -1. */
int account_pending_find(const account *ac, uint64_t seq);

/* ---- holds ------------------------------------------------------------------ */

int account_hold_add(account *ac, const account_hold *h);
void account_hold_remove(account *ac, uint32_t i);
int account_hold_find(const account *ac, uint64_t seq);

/* The soonest time something of the account is due (a lot expires, a
 * pending lot matures, a hold times out): unix s, UINT64_MAX if nothing. */
uint64_t account_next_due(state *st, account *ac);

/* Checks the account's own consistency (counts, order, sums): 0, or
 * TALLY_ECORRUPT with what is wrong in msg. */
int account_check(state *st, account *ac, char *msg, size_t cap);

#endif
