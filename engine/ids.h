/*
 * ids.h — a shard's idempotency index: the 128-bit key of every id ever
 * written (ids_key_of) → one opaque uint64 value, as an append-friendly
 * LSM tree (issue 11).  Keys are random hashes, so a B-tree dirties a page
 * per insert; here new keys go to an in-memory hash table (the memtable),
 * which a checkpoint freezes and a committer thread writes as one sorted,
 * immutable run file, sequentially, then fsyncs.  A background thread
 * merges runs of similar size.  Runs are read through mmap (page cache,
 * not anonymous memory), except each one's blocked Bloom filter, which is
 * read into memory when the run is opened: a new id (an absent key) costs
 * no disk read but a false positive's block, and a present key costs, per
 * run, one filter line, a binary search of the fences and one 4 KiB block.
 *
 * Threads: the owner (the shard's writer) calls everything except
 * ids_flush_frozen and ids_manifest, which the caller's committer thread
 * calls; a thread of the module's own runs merges.  ids_put and ids_get
 * take no lock.
 *
 * Durability: the caller stores the blob ids_manifest returns inside its
 * own synced commit.  The run files a committed manifest names stay on disk
 * until a later committed manifest no longer names them; files no
 * committed manifest names are removed by ids_open.  A manifest says which
 * log seq its runs cover (every key of every record <= covered_seq); after
 * ids_open the caller replays the log records after it through ids_put, so
 * the log must be kept back to covered_seq (a forced freeze at shutdown and
 * at snapshots keeps that tail short).
 *
 * ---- run file ids-NNNNNNNNNNNNNNNN.run (N: its number, 16 hex digits) ----
 * Format version 1.  All integers little-endian.  Written under the name
 * ids-N.tmp, fdatasync'ed, renamed, the directory fsync'ed.
 *
 *   off   size  field
 *   header: the file's first 4096 bytes
 *     0      8  magic          "TALLYIDS"
 *     8      4  version        1
 *    12      4  block_bytes    4096 (IDS_BLOCK_BYTES)
 *    16      8  number         the file's number (as in its name)
 *    24      8  count          keys, 1..IDS_RUN_KEYS_MAX
 *    32      4  block_count    ceil(count / block_entries)
 *    36      4  block_entries  169 (IDS_BLOCK_ENTRIES): keys per full block
 *    40      4  filter_lines   64-byte filter lines, >= 1
 *    44      4  filter_probes  bits set per key, 1..IDS_FILTER_PROBES_MAX
 *    48      8  fences_off     4096 * (1 + block_count)
 *    56      8  filter_off     fences_off + 16 * block_count, rounded up to 64
 *    64      8  file_bytes     filter_off + 64 * filter_lines + 16
 *    72     16  min_key        hi, lo of the smallest key
 *    88     16  max_key        hi, lo of the largest key
 *   104      8  fences_sum     XXH3-64 (seed 0) of the fence array
 *   112      8  filter_sum     XXH3-64 (seed 0) of all filter lines
 *   120      8  header_sum     XXH3-64 (seed 0) of bytes [0, 120)
 *   128   3968  zero
 *   block i (0 <= i < block_count) at 4096 * (1 + i), 4096 bytes:
 *     0   4056  entries        169 x (hi 8, lo 8, value 8), keys strictly
 *                              increasing by (hi, lo) across the whole run;
 *                              zero after the block's count
 *  4056     16  next_key       hi, lo of block i+1's first key; zero in the
 *                              last block (a lookup checks the fence that
 *                              led it here against [first key, next_key))
 *  4072      4  count          entries in the block: 169, the last 1..169
 *  4076      4  index          i
 *  4080      8  number         the run's number
 *  4088      8  block_sum      XXH3-64 (seed 0) of bytes [0, 4088)
 *   fences at fences_off: block_count x (hi 8, lo 8), block i's first key
 *   filter at filter_off: filter_lines x 64 bytes; line j holds 480 bits
 *     (bit b: byte b/8, bit b%8) in bytes [0, 60) and, in [60, 64), the
 *     low 32 bits of XXH3-64 (seed j) of those 60 bytes, so a lookup checks
 *     the one line it reads.  A key (hi, lo) uses line (hi * filter_lines)
 *     >> 64 — monotone in hi, so a writer of sorted keys fills the lines in
 *     order with one line buffered — and, with a = lo mod 2^32, b = (lo >>
 *     32) | 1, the bits ((a + p*b mod 2^32) * 480) >> 32 for p < probes.
 *   footer at file_bytes - 16: "TALLYEND", header_sum again
 *
 * ---- manifest blob (ids_manifest), version 1, little-endian -------------
 *     0      8  magic          "TALLYIDM"
 *     8      4  version        1
 *    12      4  run_count      0..IDS_RUNS_MAX
 *    16      8  covered_seq    every key of records <= it is in these runs
 *    24      8  next_number    above every run number used so far
 *    32  24*rc  runs           number, count, header_sum of each run
 *   end      8  checksum       XXH3-64 (seed 0) of every byte before it
 */
#ifndef TALLY_IDS_H
#define TALLY_IDS_H

#include <assert.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "os.h"

/* ---- limits and format constants ---------------------------------------- */

/* One block is one page: a present-key lookup reads one page per run, and
 * a 4 KiB write is what a disk writes atomically anyway (format). */
#define IDS_BLOCK_BYTES 4096u
/* An entry: key hi, key lo, value (format). */
#define IDS_ENTRY_BYTES 24u
/* Keys per block: what fits beside the 40-byte trailer (format). */
#define IDS_BLOCK_ENTRIES 169u
#define IDS_BLOCK_TRAILER_BYTES 40u
/* A filter line is one cache line: one memory access per run per lookup;
 * 4 of its bytes check it (format). */
#define IDS_FILTER_LINE_BYTES 64u
#define IDS_FILTER_LINE_BITS 480u
#define IDS_FILTER_PROBES_MAX 16u
/* Filter bits per key (options): a false positive reads a block of the
 * run, from the disk when the page cache does not hold it (a restart after
 * a reboot, an index larger than the cache).  10 gave ~1% per run: with 7
 * runs a shard at 50M ids, 7% of new ids read a block, and the first
 * million writes after a cold restart ran at ~65k/s.  16 gives ~0.16% per
 * run for 2.1 bytes a key of memory (the filters live in memory); 4 is the
 * least that still filters, 24 the most worth its memory. */
#define IDS_FILTER_BITS_DEFAULT 16u
#define IDS_FILTER_BITS_MIN 4u
#define IDS_FILTER_BITS_MAX 24u
/* Keys in one run: the header's block and filter-line counts are 32-bit
 * (format); 2^36 keys is ~1.7 TB of run, far beyond one shard. */
#define IDS_RUN_KEYS_MAX (1ull << 36)
/* Runs searched by a lookup.  An absent key reads one filter line per run,
 * so this caps the cost of a new id (~64 cache misses); size-tiered merging
 * keeps about 3 runs per factor of 4 in size, ~15 at 100M keys.  Past it
 * (merges far behind) ids_freeze refuses and the memtable fills up. */
#define IDS_RUNS_MAX 48u
/* Run files mapped at once: the searched runs, the runs the last committed
 * manifest still names after merges replaced them, and the outputs of
 * uncommitted manifests kept until a later commit (see ids_abort). */
#define IDS_MAPPED_MAX (3u * IDS_RUNS_MAX)
/* Runs merged into one: 4 runs of a size tier make one run of the next. */
#define IDS_MERGE_FANIN 4u
/* A run writer fdatasyncs every this many bytes, so that a merge never
 * leaves gigabytes of dirty pages for one final flush to push out in
 * front of the log's fdatasync. */
#define IDS_SYNC_BYTES (8u << 20)
/* Memtable capacity (keys): its slots are anonymous memory, 24-48 bytes a
 * key at the 1/2 load it grows at; 2^26 keys is ~2-3 GiB. */
#define IDS_MEMTABLE_KEYS_LIMIT (1ull << 26)
/* Defaults: a run of 2^18 keys is ~6.5 MB; the memtable starts at a
 * quarter of that and may hold 4 flush thresholds when commits lag. */
#define IDS_FLUSH_KEYS_DEFAULT (1ull << 18)
/* The merge thread's nice value: at 10 the kernel gives it about a tenth of
 * a core the writer also wants (weights 110 : 1024) and all of an idle
 * one.  Merging costs ~50 ns per key per tier (measured: 4 x 1M keys),
 * ~0.25 µs a key over the 5 tiers of 100M keys: 2.5% of a core at 100k
 * writes/s, a quarter of that tenth. */
#define IDS_MERGE_NICE_DEFAULT 10
/* A serialized manifest is at most this long. */
#define IDS_MANIFEST_BYTES_MAX (32u + 24u * IDS_RUNS_MAX + 8u)

static_assert(IDS_BLOCK_ENTRIES * IDS_ENTRY_BYTES + IDS_BLOCK_TRAILER_BYTES == IDS_BLOCK_BYTES,
              "a block is its entries and its trailer, no gap");
static_assert((IDS_BLOCK_ENTRIES + 1) * IDS_ENTRY_BYTES + IDS_BLOCK_TRAILER_BYTES >
                  IDS_BLOCK_BYTES,
              "a block holds as many entries as fit");
static_assert(IDS_FILTER_LINE_BITS + 32 == IDS_FILTER_LINE_BYTES * 8,
              "a filter line is its bits and a 32-bit check");
static_assert(IDS_RUN_KEYS_MAX / IDS_BLOCK_ENTRIES < (1ull << 32), "block_count is 32-bit");
static_assert(IDS_RUN_KEYS_MAX * IDS_FILTER_BITS_MAX / IDS_FILTER_LINE_BITS < (1ull << 32),
              "filter_lines is 32-bit");
static_assert(IDS_MERGE_FANIN * IDS_MERGE_FANIN <= IDS_RUNS_MAX,
              "a few tiers of runs fit the searched set");

/* ---- types --------------------------------------------------------------- */

/* A key: XXH3-128 of (merchant as 8 little-endian bytes || id bytes). */
typedef struct ids_key {
    uint64_t hi, lo;
} ids_key;

/* ids_get's "not found" (LMDB's MDB_NOTFOUND, as a name). */
enum { IDS_ABSENT = 1 };

typedef struct ids_options {
    const char *dir;             /* the index's own directory; created if missing */
    const os_ops *os;            /* the I/O seam; NULL: os_default() */
    uint64_t flush_keys;         /* ids_freeze's threshold; 0: IDS_FLUSH_KEYS_DEFAULT */
    uint64_t memtable_keys;      /* initial memtable capacity; 0: flush_keys / 4 */
    uint64_t memtable_keys_max;  /* ids_put refuses past it; 0: 4 * flush_keys */
    uint32_t filter_bits_per_key; /* 0: IDS_FILTER_BITS_DEFAULT */
    int merge_nice;              /* the merge thread's nice value; 0: the default
                                  * (IDS_MERGE_NICE_DEFAULT); < 0: leave it as is */
    bool read_only;              /* tools: no files written or removed, no merges (ids_put
                                  * still fills the memtable) */
    char *error;                 /* where ids_open says why it failed (NULL: nowhere) */
    size_t error_cap;
} ids_options;

typedef struct ids_stats_t {
    uint64_t memtable_keys;   /* keys in the active memtable */
    uint64_t frozen_keys;     /* keys in the frozen memtable (0: none) */
    uint64_t run_keys;        /* keys in the searched runs */
    uint32_t run_count;       /* searched runs */
    uint32_t mapped_count;    /* run files on disk and mapped (incl. retained ones) */
    uint64_t disk_bytes;      /* bytes of those files */
    uint64_t memtable_bytes;  /* anonymous bytes the memtables hold (mapped) */
    uint64_t filter_bytes;    /* anonymous bytes of the mapped runs' filters (in memory) */
    uint64_t bytes_written;   /* by flushes and merges since open */
    uint64_t flushes;         /* run files written by ids_flush_frozen */
    uint64_t merges;          /* merges installed */
    uint64_t merge_keys;      /* keys those merges wrote */
    uint64_t filter_false_positives; /* lookups whose filter passed, block missed */
} ids_stats_t;

typedef struct ids ids;

/* ---- functions ------------------------------------------------------------ */

/* The key of id (len bytes, 1..LIMIT_ENGINE_ID_BYTES_MAX) of a merchant. */
ids_key ids_key_of(uint64_t merchant, const char *id, size_t len);

/* Opens the index in o->dir: maps the runs manifest (len bytes, as
 * ids_manifest wrote it; NULL/0: an empty index) names and checks each
 * one's header, footer, fences and filter against their checksums and the
 * manifest — not every data block, which would read the whole index at
 * every start (a lookup checks the block it reads; ids_verify checks all).
 * Unless read_only, removes the index files in dir that the manifest does
 * not name (leftovers of a crash or of uncommitted work) and starts the
 * merge thread.  Errors: TALLY_ECORRUPT (a bad manifest or run, named in
 * o->error), TALLY_EFORMAT (an unknown version), -ENOENT (a named run is
 * missing), -EINVAL (bad options), -ENOMEM, -errno. */
int ids_open(const ids_options *o, const void *manifest, size_t len, ids **out);

/* Stops the merge thread (an unfinished merge is dropped), waits for a
 * running flush, unmaps everything and frees x.  Files stay as they are:
 * the next ids_open keeps what the committed manifest names.  NULL is ok. */
void ids_close(ids *x);

/* Owner thread.  Inserts a key not in the index (ids are unique forever: a
 * key already there is a programmer error, asserted only when the active
 * memtable holds it) with value != 0.  Errors: -ENOBUFS (the memtable is
 * at memtable_keys_max: commits or merges are behind; the caller waits for
 * its commit as for any backlog), -ENOMEM (growing it failed). */
int ids_put(ids *x, ids_key key, uint64_t value);

/* Owner thread.  0 and *value if key is in the index, IDS_ABSENT if not,
 * TALLY_ECORRUPT if a block or filter line it read fails its check or
 * contradicts the fences (ids_error() names the run file and block). */
int ids_get(ids *x, ids_key key, uint64_t *value);
/* Owner thread: asks the CPU for the memory ids_get(key) will read first
 * (no effect on the index; for callers that know their next keys): the
 * memtable's home slot, and with `lookup` each run's filter line too —
 * without it, only what ids_put(key) reads (a replay puts ids it knows
 * are new: prefetching the runs' lines, a TLB miss each, was 5% of a
 * rebuild's CPU for nothing). */
void ids_prefetch(const ids *x, ids_key key, bool lookup);

/* Owner thread, at a checkpoint.  When the memtable holds >= flush_keys
 * keys (or force and it is not empty), it becomes the frozen memtable —
 * still searched by ids_get, written by ids_flush_frozen — and an empty
 * one starts; seq is the log seq it covers (all keys of records <= seq
 * are in it or in the runs).  1: frozen, 0: nothing to freeze.  Errors:
 * -EBUSY (a frozen memtable is still there), -EAGAIN (IDS_RUNS_MAX runs:
 * merges are behind), -ENOMEM. */
int ids_freeze(ids *x, uint64_t seq, bool force);

/* The caller's committer thread.  Writes the frozen memtable as a sorted
 * run file, fsynced, its directory entry too; the owner goes on putting
 * and getting meanwhile.  0 (also when nothing is frozen) or -errno / an
 * -ENOSPC / -EIO of the disk (ids_flush_error() says where); the run is
 * then not written and the caller calls ids_abort (on the owner). */
int ids_flush_frozen(ids *x);

/* The caller's committer thread, after ids_flush_frozen.  Writes into buf
 * (cap >= IDS_MANIFEST_BYTES_MAX is always enough) the manifest of the runs
 * as they will be once this flush and the merges ids_poll installed are
 * committed, and sets *len.  Errors: -ERANGE (cap too small). */
int ids_manifest(ids *x, void *buf, size_t cap, size_t *len);

/* Owner thread, after the caller's commit of the last ids_manifest.  rc 0:
 * that manifest is now the committed one — the frozen memtable it covers is
 * dropped (its run takes its place in lookups), and the run files no
 * committed manifest names any more are removed.  rc != 0: as ids_abort.
 * Returns 0, or an -errno of a removal (the file stays for ids_open). */
int ids_commit_done(ids *x, int rc);

/* Owner thread, after a failed flush or a failed commit.  Waits for a
 * running flush, drops the active and frozen memtables and the runs no
 * committed manifest names, and searches the last committed manifest's
 * runs again; a merge that read any other run is stopped and dropped (one
 * of committed runs goes on).  The caller then replays the log after
 * ids_covered_seq() through ids_put.  Files of a manifest whose commit
 * failed are kept (it may have reached the disk) until a later commit
 * succeeds.  Never fails. */
void ids_abort(ids *x);

/* Owner thread, between batches.  Installs a finished merge: lookups search
 * its output instead of its inputs (whose files stay until a committed
 * manifest no longer names them).  0, or once the error of a failed merge
 * (ids_error() says which; merges stop until the next ids_open — the index
 * still serves, with more runs). */
int ids_poll(ids *x);

/* Owner thread; tools and tests, never a writer's hot path.  Waits until
 * no merge is running or due, installing finished ones.  0 or as ids_poll. */
int ids_wait_merges(ids *x);

/* The covered_seq of the last committed (or opened) manifest. */
uint64_t ids_covered_seq(const ids *x);
/* The covered_seq a manifest blob says (a snapshot's): 0 or
 * TALLY_ECORRUPT / TALLY_EFORMAT. */
int ids_manifest_covered(const void *manifest, size_t len, uint64_t *seq);

/* Any thread.  Hard-links the run files manifest names from x's directory
 * into dest_dir (a snapshot) and fsyncs dest_dir.  While it runs, removals
 * wait for the next collection (the owner never waits for its fsync), so
 * the files of the last committed manifest are all there; an older
 * manifest's may be gone (-ENOENT).  Errors: TALLY_ECORRUPT (bad
 * manifest), -EXDEV (another file system), -errno. */
int ids_link(ids *x, const void *manifest, size_t len, const char *dest_dir);

/* No index open: the same from src_dir into dest_dir, replacing files of
 * the same name (restore a snapshot's runs into an index directory before
 * ids_open).  Errors as ids_link. */
int ids_link_files(const os_ops *os, const char *src_dir, const void *manifest, size_t len,
                   const char *dest_dir);

/* Owner thread (or a read-only index).  Checks every block of every
 * searched run — checksums, order, trailers, fences, that the filter holds
 * every key — and the fence and filter checksums.  0, or TALLY_ECORRUPT
 * with the first fault in msg. */
int ids_verify(ids *x, char *msg, size_t cap);

/* Owner thread.  Counters and sizes (see ids_stats_t). */
void ids_stats(ids *x, ids_stats_t *out);

/* Owner thread: the message of the last failure of ids_get, ids_poll or
 * ids_commit_done; "" if none.  Committer thread: ids_flush_error(), of
 * ids_flush_frozen. */
const char *ids_error(const ids *x);
const char *ids_flush_error(const ids *x);

#endif
