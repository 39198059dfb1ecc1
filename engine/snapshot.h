/*
 * snapshot.h — compacted copies of a shard's state (SPEC §5 "Snapshot
 * compaction"), each tagged with the log seq it reflects.
 *
 * A snapshot is LMDB's compacting copy of the shard's last checkpoint,
 * taken from a read transaction on its own thread (the shard's writer goes
 * on), in SHARD/snapshots/:
 *
 *   snap-SSSSSSSSSSSSSSSSSSSS.mdb    the copy (a one-file LMDB environment)
 *   snap-SSSSSSSSSSSSSSSSSSSS.ids/   hard links of the id index's run files
 *                                    its manifest (in the copy) names
 *   snap-SSSSSSSSSSSSSSSSSSSS.meta   text, one "name value" per line:
 *                                    tally-snapshot 1 / shard N / seq S /
 *                                    bytes B / xxh3 X (of the .mdb) /
 *                                    created_ms T / check C (XXH3 of the
 *                                    lines before it)
 *
 * Publication is atomic: all are written under .tmp names and flushed,
 * the .ids and .mdb are renamed, then the .meta — the meta is the commit
 * point.  Run files are immutable, so linking them costs no copy.  A
 * crash at any moment leaves the previous snapshots usable and at most
 * leftovers without a meta, which snapshot_list() removes.  What a
 * snapshot allows: log segments it fully covers may be dropped (log.h
 * log_retain), and a lost or corrupt state is rebuilt from it plus the
 * retained log (shard.c).
 */
#ifndef TALLY_SNAPSHOT_H
#define TALLY_SNAPSHOT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ids.h"
#include "os.h"
#include "state.h"

/* Published snapshots kept per shard: the newest is the one used; the one
 * before it is there in case the newest turns out damaged. */
#define SNAPSHOT_KEEP 2
/* The most a listing returns. */
#define SNAPSHOT_LIST_MAX 64

typedef struct snapshot_info {
    uint64_t seq;        /* last log seq the state reflects */
    uint64_t ids_seq;    /* its id index holds every id up to this seq: a rebuild
                          * from it replays the log from here (<= seq) */
    uint64_t bytes;      /* size of the .mdb file */
    uint64_t checksum;   /* XXH3-64 of the .mdb file */
    uint64_t created_ms; /* unix ms */
    uint32_t shard;
    char path[4200];     /* the .mdb file */
} snapshot_info;

/* Writes and publishes a snapshot of st's last committed state, with the
 * runs of the id index x its manifest names, into dir (created if
 * missing) for shard `shard`.  Runs on any thread.  *out on success.
 * Errors: -errno (disk full, I/O), TALLY_ECORRUPT. */
int snapshot_write(state *st, ids *x, const os_ops *os, const char *dir, uint32_t shard,
                   snapshot_info *out);

/* The published snapshots in dir, newest first, at most cap, each with a
 * consistent meta and an .mdb of the stated size (the file's checksum is
 * checked by snapshot_check).  Unless read_only, removes leftovers of
 * unfinished snapshots.  A missing dir is an empty list. */
int snapshot_list(const char *dir, bool read_only, snapshot_info *out, uint32_t cap,
                  uint32_t *count);

/* Reads the whole .mdb and compares its checksum and its own seq with the
 * meta: 0, or TALLY_ECORRUPT with what differs in msg. */
int snapshot_check(const snapshot_info *s, char *msg, size_t cap);

/* Makes state_dir/data.mdb a copy of the snapshot and links its id
 * index's runs into state_dir/ids (state_dir created; anything there
 * replaced), flushed. */
int snapshot_restore(const snapshot_info *s, const os_ops *os, const char *state_dir);

/* Deletes published snapshots beyond the newest `keep`. */
int snapshot_prune(const char *dir, const os_ops *os, uint32_t keep);
/* Deletes the snapshot at seq, if there is one (an import's undo). */
int snapshot_remove(const char *dir, const os_ops *os, uint64_t seq);

#endif
