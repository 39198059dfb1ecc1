/*
 * import.h — `tally import` (SPEC §8): entries loaded offline into a data
 * directory, all or nothing across its shards (the API is in tally.h).
 *
 * The commit protocol:
 *   1. every shard is checkpointed and snapshotted where its log stands
 *      (its base);
 *   2. DIR/IMPORT is written (flushed, renamed, the directory flushed):
 *      "tally-import 1", "shards N", "base I SEQ MADE" per shard (MADE 1:
 *      the import made that snapshot), "check X" (XXH3 of the lines
 *      before it);
 *   3. the lines are applied, each shard's log flushed and its state
 *      checkpointed as they go (memory stays bounded);
 *   4. every shard is flushed and checkpointed, the records after its base
 *      are read back (checksums, chain, every one marked imported) and the
 *      state of every merchant touched is checked;
 *   5. DIR/IMPORT is removed and the directory flushed: the commit point
 *      (then old snapshots are pruned as after any snapshot).
 * An open that finds DIR/IMPORT (tallyd, a rerun, an abort) undoes the
 * import first: each log is cut after its base, a state checkpointed past
 * it is replaced by the snapshot taken at it, and the snapshots the import
 * made are removed — the directory is as it was.
 */
#ifndef TALLY_IMPORT_H
#define TALLY_IMPORT_H

#include <stdbool.h>
#include <stdint.h>

#include "os.h"
#include "tally.h"

/* 0: no import pending; 1: one is, bases[] and made[] (shards of them)
 * filled; TALLY_EFORMAT: the file is damaged or for another shard count. */
int import_marker_read(const char *dir, uint32_t shards, uint64_t *bases, bool *made);
int import_marker_write(const os_ops *os, const char *dir, uint32_t shards,
                        const uint64_t *bases, const bool *made);
int import_marker_remove(const os_ops *os, const char *dir);

/* Opens t's shards undoing the import the marker describes (its shards
 * closed), removes the snapshots it made and then the marker. */
int import_undo(tally *t, const uint64_t *bases, const bool *made);

#endif
