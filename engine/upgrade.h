/*
 * upgrade.h — moving a shard written by release 1 (log format 1, state
 * format 2) to release 2 (log format 2, state format 3, the id index),
 * in place, keeping every seq, id, entry and remembered refusal.
 *
 * Release 1's log is read and checked like recovery does (checksums, the
 * chain, a torn tail ignored and reported, corruption refused), and every
 * record is run through release 2's write path with its own seq and time
 * (ledger_convert): release 2 computes what release 1 did not store
 * (pending and amount, the account's history chain, the allocations of
 * debits) and checks that its points, balance and held equal release 1's.
 * Release 1's engine entries are kept as they were; pending points matured
 * without an entry in release 1, so records converted from it say
 * RECORD_F_LEGACY and replay the same way.
 *
 * The new shard is built beside the old one (shard-NNN.upgrade/, marked
 * UPGRADED once complete and flushed), then swapped in by renames; the old
 * one stays as shard-NNN.release1 for the operator to remove.  A crash at
 * any point leaves either the old shard (the next start begins again) or
 * a complete new one (the next start finishes the renames).
 *
 * The whole log is needed: a shard whose release-1 retention dropped
 * segments cannot be converted here (tally dump with release 1, then
 * tally import, keeps its entries).
 */
#ifndef TALLY_UPGRADE_H
#define TALLY_UPGRADE_H

#include <stdbool.h>
#include <stdint.h>

#include "os.h"
#include "tally.h"

/* Whether shard_dir (DIR/shard-NNN) holds release-1 data, or an upgrade
 * that a crash interrupted: 1 yes, 0 no, < 0 error. */
int upgrade_needed(const char *shard_dir);

/* Upgrades shard_dir in place (see above).  Progress and the outcome go
 * to log.  0, or: TALLY_ECORRUPT (release 1's log is damaged before its
 * tail, or a record converts to another outcome: msg says where),
 * TALLY_EFORMAT (retention dropped the log's start), -errno. */
int upgrade_shard(const char *shard_dir, uint32_t shard, const os_ops *os, uint64_t map_bytes,
                  tally_log_fn log, void *log_ctx, char *msg, size_t cap);

#endif
