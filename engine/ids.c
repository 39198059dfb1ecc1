/*
 * ids.c — a shard's idempotency index as an append-friendly LSM tree (the
 * run file and manifest formats are the byte tables atop ids.h).
 *
 * Layers, lowest first: little-endian helpers; the memtable (an
 * open-addressing hash table in anonymous mappings); the filter and block
 * geometry; reading a run (open, check, look up); writing a run (one
 * streaming writer for flushes and merges); the set of runs and the files
 * behind it; merging; the manifest; the public functions.
 *
 * Merge policy: size-tiered.  A run's tier is floor(log4(keys /
 * flush_keys)); when a tier holds IDS_MERGE_FANIN (4) runs, its 4 smallest
 * are merged into one, which lands at least one tier up (each input holds
 * >= 4^t flush_keys).  So a key is written once by its flush and at most
 * once per tier it climbs: bytes written <= keys * ~25.7 B * (1 +
 * floor(log4(keys / flush_keys))) — 3 copies at 10M keys and 2^18-key
 * flushes (the scale test measures 2.9), 5 at 100M.  Only runs smaller
 * than flush_keys (forced flushes) can be merged twice within tier 0.  A
 * leveled tree would search fewer runs but rewrite each key ~fanout times
 * per level; the usual price of size tiers — obsolete versions taking
 * space — does not exist here, since a key is inserted once and never
 * changed or deleted.  Searching ~3 runs per tier costs an absent key one
 * filter line each (~0.16% false positives per run at 16 bits a key).
 *
 * Pacing: merges run on the module's own thread at nice IDS_MERGE_NICE_
 * DEFAULT (a tenth of a core the writer wants, all of an idle one) and the
 * lowest best-effort I/O priority, fdatasync every IDS_SYNC_BYTES so dirty
 * pages never pile up in front of the log's flushes, and one merge at a
 * time.  If merges still fall behind, ids_freeze refuses at IDS_RUNS_MAX
 * runs and the memtable fills to its bound, where ids_put refuses: the
 * writer then waits, as it waits for a slow commit.
 *
 * Threads and locking: ids.lock guards the run bookkeeping (mapped[], the
 * flags of each run, the flush and merge hand-offs, counters).  The owner
 * alone changes set[] (under the lock) and reads it without; the active
 * memtable is the owner's alone; the frozen memtable is read-only while a
 * committer may read it.  Run contents are immutable and mapped until no
 * manifest, lookup or merge can need them.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bytes.h"
#include "checksum.h"
#include "ids.h"
#include "limits.h"
#include "tally.h"

/* ---- constants ------------------------------------------------------------ */

#define IDS_VERSION 1u
#define IDS_MANIFEST_VERSION 1u
#define IDS_MAGIC "TALLYIDS"
#define IDS_FOOTER_MAGIC "TALLYEND"
#define IDS_MANIFEST_MAGIC "TALLYIDM"
#define IDS_HEADER_SUM_OFF 120u    /* the header's checksum covers [0, 120) */
#define IDS_FOOTER_BYTES 16u
#define IDS_FENCE_BYTES 16u
#define IDS_BLOCK_SUM_OFF (IDS_BLOCK_BYTES - 8u)
#define IDS_BLOCK_TRAILER_OFF (IDS_BLOCK_BYTES - IDS_BLOCK_TRAILER_BYTES)
#define IDS_LINE_SUM_OFF (IDS_FILTER_LINE_BITS / 8u)
#define IDS_MANIFEST_FIXED_BYTES 32u
#define IDS_MANIFEST_RUN_BYTES 24u
/* "ids-" + 16 hex digits + ".run" + NUL, rounded up. */
#define IDS_NAME_BYTES 32u
#define IDS_PATH_BYTES 4096u
#define IDS_MSG_BYTES 512u
/* The writer's buffers: blocks, fences and filter lines are three
 * sequential streams, each written in pieces of this many. */
#define IDS_WRITE_BLOCKS 64u
#define IDS_WRITE_FENCES 4096u
#define IDS_WRITE_LINES 1024u
/* A merge input is read ahead this many blocks at a time. */
#define IDS_READAHEAD_BLOCKS 256u
/* The smallest memtable, in slots. */
#define IDS_TABLE_SLOTS_MIN 64u
/* The flush's bucket sort: at most 2^16 buckets by the key's top bits;
 * a bucket longer than IDS_SORT_SHORT (only crafted ids make one) is
 * heap-sorted, so no input makes the sort quadratic. */
#define IDS_SORT_BUCKET_BITS_MAX 16u
#define IDS_SORT_SHORT 32u

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "run files are little-endian");
static_assert(IDS_MANIFEST_BYTES_MAX ==
                  IDS_MANIFEST_FIXED_BYTES + IDS_MANIFEST_RUN_BYTES * IDS_RUNS_MAX + 8,
              "the manifest bound matches its layout");
static_assert(IDS_BLOCK_TRAILER_OFF == IDS_BLOCK_ENTRIES * IDS_ENTRY_BYTES,
              "the trailer follows the entries");
static_assert(IDS_WRITE_BLOCKS * IDS_BLOCK_BYTES <= IDS_SYNC_BYTES,
              "a buffer of blocks is written between two syncs");

/* ---- types ------------------------------------------------------------------ */

/* A memtable slot and a sorted entry; value 0 marks an empty slot. */
typedef struct ids_entry {
    uint64_t hi, lo, value;
} ids_entry;
static_assert(sizeof(ids_entry) == IDS_ENTRY_BYTES, "an entry in memory is one on disk");

typedef struct ids_table {
    ids_entry *slots; /* mask + 1 slots, an anonymous mapping */
    uint64_t mask;
    uint64_t count;
} ids_table;

/* Where a run's parts lie, from its key count and filter size. */
typedef struct ids_geometry {
    uint64_t count;
    uint32_t block_count;
    uint32_t filter_lines;
    uint32_t filter_probes;
    uint64_t fences_off;
    uint64_t filter_off;
    uint64_t file_bytes;
} ids_geometry;

typedef struct ids_run {
    ids_geometry g;
    uint64_t number;
    uint64_t header_sum;
    ids_key min, max;
    const uint8_t *map; /* the whole file, read-only, shared */
    /* A copy of the file's filter in anonymous memory, checked against the
     * header when the run was opened: what a new id probes never waits for
     * a disk read, however much of the file the page cache dropped. */
    uint8_t *filter;
    char name[IDS_NAME_BYTES];
    /* Under ids.lock. */
    bool in_set;       /* searched by lookups */
    bool in_committed; /* named by the last committed manifest */
    bool in_proposal;  /* named by the manifest handed out last */
    bool proposed;     /* named by a manifest since the last commit */
    bool merging;      /* an input of the running or finished merge */
} ids_run;

enum ids_flush_state {
    IDS_FLUSH_IDLE = 0, /* no frozen memtable */
    IDS_FLUSH_PENDING,  /* frozen, not yet written */
    IDS_FLUSH_RUNNING,  /* a committer is writing it */
    IDS_FLUSH_DONE,     /* written: ids.flushed */
    IDS_FLUSH_FAILED,   /* writing failed: ids_abort drops it */
};

struct ids {
    /* Set by ids_open, then read-only. */
    const os_ops *os;
    char dir[IDS_PATH_BYTES];
    uint64_t flush_keys;
    uint64_t memtable_keys;
    uint64_t memtable_keys_max;
    uint64_t seed; /* keys the memtable's hash: crafted ids cannot pile up */
    uint32_t filter_bits;
    int merge_nice;
    bool read_only;

    /* The owner's. */
    ids_table active;
    ids_table frozen;
    bool has_frozen;
    ids_run *set[IDS_RUNS_MAX]; /* largest first; changed under lock */
    uint32_t set_count;
    uint64_t false_positives;
    char err[IDS_MSG_BYTES];

    /* The committer's. */
    char flush_err[IDS_MSG_BYTES];

    /* Under lock. */
    pthread_mutex_t lock;
    pthread_cond_t merge_cv; /* wakes the merge thread: the set changed */
    pthread_cond_t done_cv;  /* a flush or merge finished */
    ids_run *mapped[IDS_MAPPED_MAX];
    uint32_t mapped_count;
    uint64_t frozen_seq;
    uint64_t committed_seq;
    uint64_t proposal_seq;
    uint64_t next_number;
    bool has_proposal;
    bool proposal_flushed; /* the proposal names the flushed run */
    enum ids_flush_state flush;
    ids_run *flushed;
    uint32_t link_pins; /* ids_link calls running: no removals meanwhile */
    ids_run *merge_out; /* finished, waiting for ids_poll */
    bool merge_running;
    bool merge_stop;
    bool merge_failed;
    int merge_rc; /* reported once by ids_poll */
    char merge_err[IDS_MSG_BYTES];
    uint64_t bytes_written;
    uint64_t flushes;
    uint64_t merges;
    uint64_t merge_keys;
    atomic_bool merge_cancel;
    pthread_t thread;
    bool thread_started;
};

/* ---- small helpers ---------------------------------------------------------- */

static inline ids_key ids_key_at(const uint8_t *p)
{
    return (ids_key){bytes_get_le64(p), bytes_get_le64(p + 8)};
}

static inline void ids_key_put(uint8_t *p, ids_key k)
{
    bytes_put_le64(p, k.hi);
    bytes_put_le64(p + 8, k.lo);
}

static inline bool ids_key_lt(ids_key a, ids_key b)
{
    return a.hi < b.hi || (a.hi == b.hi && a.lo < b.lo);
}

static inline bool ids_key_eq(ids_key a, ids_key b) { return a.hi == b.hi && a.lo == b.lo; }

/* Writes a message and returns err: every fault is reported in one line. */
static int ids_say(char *msg, size_t cap, int err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int ids_say(char *msg, size_t cap, int err, const char *fmt, ...)
{
    if (msg && cap > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, cap, fmt, ap);
        va_end(ap);
    }
    return err;
}

static void ids_name(char *out, uint64_t number, const char *ext)
{
    snprintf(out, IDS_NAME_BYTES, "ids-%016" PRIx64 ".%s", number, ext);
}

static void ids_path(char *out, const char *dir, const char *name)
{
    int n = snprintf(out, IDS_PATH_BYTES, "%s/%s", dir, name);
    assert(n > 0 && (size_t)n < IDS_PATH_BYTES); /* ids_open bounds the dir */
}

/* Tables and buffers are anonymous memory from os_map_anon (given back
 * when dropped, so the index's memory does not grow with its history);
 * runs are mapped from their files. */
static void ids_unmap(const void *p, size_t bytes)
{
    if (p)
        munmap((void *)p, bytes);
}

/* ---- memtable: open addressing, linear probing, keyed hash ------------------ */

static inline uint64_t ids_home(uint64_t seed, ids_key k)
{
    uint64_t h = k.hi ^ seed;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h ^ k.lo;
}

/* Slots for keys at the 1/2 load the table grows at: a power of two.
 * Half, not three quarters: almost every lookup is of a new id, a miss,
 * and linear probing's misses walk (1 + 1/(1-load)^2)/2 slots — 2.5 at
 * one half, 8.5 at three quarters (measured: 5.7% of tallyd's CPU in this
 * probe at 3/4). */
static uint64_t ids_table_slots_for(uint64_t keys)
{
    uint64_t slots = IDS_TABLE_SLOTS_MIN;
    while (slots / 2 < keys)
        slots *= 2;
    return slots;
}

static size_t ids_table_bytes(const ids_table *t)
{
    return t->slots ? (size_t)(t->mask + 1) * sizeof(ids_entry) : 0;
}

static int ids_table_init(ids_table *t, uint64_t keys)
{
    uint64_t slots = ids_table_slots_for(keys);
    /* Populated at once: a lookup (a read: the shared zero page) then an
     * insert (a write: copy on write) would take two faults per page
     * (measured: 6% of tallyd's CPU in page faults). */
    size_t bytes = (size_t)slots * sizeof(ids_entry);
    ids_entry *p = os_map_anon(bytes, true);
    if (!p)
        return -ENOMEM;
    *t = (ids_table){.slots = p, .mask = slots - 1, .count = 0};
    return 0;
}

static void ids_table_free(ids_table *t)
{
    os_unmap_anon(t->slots, ids_table_bytes(t));
    *t = (ids_table){0};
}

/* Empties a table without allocating. */
static void ids_table_clear(ids_table *t)
{
    assert(t->slots);
    memset(t->slots, 0, ids_table_bytes(t)); /* stays populated (see ids_table_init) */
    t->count = 0;
}

static void ids_table_insert(ids_table *t, uint64_t seed, ids_key k, uint64_t value)
{
    assert(value != 0);
    assert((t->count + 1) * 4 <= (t->mask + 1) * 3);
    uint64_t i = ids_home(seed, k) & t->mask;
    while (t->slots[i].value != 0) {
        assert(!(t->slots[i].hi == k.hi && t->slots[i].lo == k.lo)); /* unique forever */
        i = (i + 1) & t->mask;
    }
    t->slots[i] = (ids_entry){k.hi, k.lo, value};
    t->count++;
}

static bool ids_table_get(const ids_table *t, uint64_t seed, ids_key k, uint64_t *value)
{
    if (t->count == 0)
        return false;
    for (uint64_t i = ids_home(seed, k) & t->mask; t->slots[i].value != 0;
         i = (i + 1) & t->mask) {
        if (t->slots[i].hi == k.hi && t->slots[i].lo == k.lo) {
            *value = t->slots[i].value;
            return true;
        }
    }
    return false;
}

static int ids_table_grow(ids_table *t, uint64_t seed)
{
    ids_table bigger;
    int rc = ids_table_init(&bigger, (t->mask + 1) * 2 / 2);
    if (rc < 0)
        return rc;
    assert(bigger.mask == t->mask * 2 + 1);
    for (uint64_t i = 0; i <= t->mask; i++)
        if (t->slots[i].value != 0)
            ids_table_insert(&bigger, seed, (ids_key){t->slots[i].hi, t->slots[i].lo},
                             t->slots[i].value);
    assert(bigger.count == t->count);
    ids_table_free(t);
    *t = bigger;
    return 0;
}

/* ---- sorting the frozen memtable for its flush -------------------------------- */

static void ids_sift_down(ids_entry *a, size_t root, size_t n)
{
    for (;;) {
        size_t child = 2 * root + 1;
        if (child >= n)
            return;
        if (child + 1 < n && ids_key_lt((ids_key){a[child].hi, a[child].lo},
                                        (ids_key){a[child + 1].hi, a[child + 1].lo}))
            child++;
        if (!ids_key_lt((ids_key){a[root].hi, a[root].lo}, (ids_key){a[child].hi, a[child].lo}))
            return;
        ids_entry tmp = a[root];
        a[root] = a[child];
        a[child] = tmp;
        root = child;
    }
}

static void ids_sort_range(ids_entry *a, size_t n)
{
    if (n <= IDS_SORT_SHORT) {
        for (size_t i = 1; i < n; i++) {
            ids_entry e = a[i];
            size_t j = i;
            for (; j > 0 && ids_key_lt((ids_key){e.hi, e.lo}, (ids_key){a[j - 1].hi, a[j - 1].lo});
                 j--)
                a[j] = a[j - 1];
            a[j] = e;
        }
        return;
    }
    for (size_t i = n / 2; i-- > 0;)
        ids_sift_down(a, i, n);
    for (size_t end = n - 1; end > 0; end--) {
        ids_entry tmp = a[0];
        a[0] = a[end];
        a[end] = tmp;
        ids_sift_down(a, 0, end);
    }
}

/* The table's entries in key order, in a fresh mapping of *bytes: a bucket
 * sort by the keys' top bits (uniform hashes: a few keys a bucket), each
 * bucket then sorted on its own.  The table is only read (the owner keeps
 * searching it meanwhile). */
static int ids_table_sorted(const ids_table *t, ids_entry **out, size_t *bytes)
{
    assert(t->count > 0);
    uint32_t bits = 1;
    while (bits < IDS_SORT_BUCKET_BITS_MAX && (1ull << (bits + 1)) <= t->count)
        bits++;
    size_t buckets = (size_t)1 << bits;
    size_t len = (size_t)t->count * sizeof(ids_entry) + (buckets + 1) * sizeof(uint64_t);
    ids_entry *a = os_map_anon(len, false);
    if (!a)
        return -ENOMEM;
    uint64_t *start = (uint64_t *)(a + t->count);
    for (uint64_t i = 0; i <= t->mask; i++)
        if (t->slots[i].value != 0)
            start[(t->slots[i].hi >> (64 - bits)) + 1]++;
    for (size_t b = 0; b < buckets; b++)
        start[b + 1] += start[b];
    assert(start[buckets] == t->count);
    for (uint64_t i = 0; i <= t->mask; i++)
        if (t->slots[i].value != 0)
            a[start[t->slots[i].hi >> (64 - bits)]++] = t->slots[i];
    /* start[b] is now the end of bucket b, the start of b + 1. */
    for (size_t b = 0, from = 0; b < buckets; from = start[b++])
        ids_sort_range(a + from, start[b] - from);
    *out = a;
    *bytes = len;
    return 0;
}

/* ---- filter and geometry ------------------------------------------------------- */

static inline uint64_t ids_filter_line(uint64_t hi, uint32_t lines)
{
    return (uint64_t)(((unsigned __int128)hi * lines) >> 64);
}

static inline uint32_t ids_filter_bit(uint64_t lo, uint32_t probe)
{
    uint32_t a = (uint32_t)lo, b = (uint32_t)(lo >> 32) | 1u;
    return (uint32_t)(((uint64_t)(uint32_t)(a + probe * b) * IDS_FILTER_LINE_BITS) >> 32);
}

static void ids_filter_set(uint8_t *line, uint64_t lo, uint32_t probes)
{
    for (uint32_t p = 0; p < probes; p++) {
        uint32_t bit = ids_filter_bit(lo, p);
        line[bit / 8] |= (uint8_t)(1u << (bit % 8));
    }
}

static bool ids_filter_has(const uint8_t *line, uint64_t lo, uint32_t probes)
{
    for (uint32_t p = 0; p < probes; p++) {
        uint32_t bit = ids_filter_bit(lo, p);
        if (!(line[bit / 8] & (1u << (bit % 8))))
            return false;
    }
    return true;
}

static inline uint32_t ids_line_sum(const uint8_t *line, uint64_t j)
{
    return (uint32_t)checksum64(line, IDS_LINE_SUM_OFF, j);
}

static uint32_t ids_filter_lines_for(uint64_t count, uint32_t bits_per_key)
{
    uint64_t lines = (count * bits_per_key + IDS_FILTER_LINE_BITS - 1) / IDS_FILTER_LINE_BITS;
    return (uint32_t)(lines ? lines : 1);
}

/* Bits set per key: bits_per_key * ln 2 minimises false positives. */
static uint32_t ids_filter_probes_for(uint32_t bits_per_key)
{
    uint32_t k = (bits_per_key * 693u + 500u) / 1000u;
    return k < 1 ? 1 : k > IDS_FILTER_PROBES_MAX ? IDS_FILTER_PROBES_MAX : k;
}

static ids_geometry ids_geometry_of(uint64_t count, uint32_t filter_lines, uint32_t probes)
{
    ids_geometry g = {.count = count, .filter_lines = filter_lines, .filter_probes = probes};
    g.block_count = (uint32_t)((count + IDS_BLOCK_ENTRIES - 1) / IDS_BLOCK_ENTRIES);
    g.fences_off = (uint64_t)IDS_BLOCK_BYTES * (1 + (uint64_t)g.block_count);
    uint64_t fences_end = g.fences_off + (uint64_t)IDS_FENCE_BYTES * g.block_count;
    g.filter_off = (fences_end + IDS_FILTER_LINE_BYTES - 1) / IDS_FILTER_LINE_BYTES *
                   IDS_FILTER_LINE_BYTES;
    g.file_bytes = g.filter_off + (uint64_t)IDS_FILTER_LINE_BYTES * filter_lines +
                   IDS_FOOTER_BYTES;
    return g;
}

/* ---- reading a run ------------------------------------------------------------- */

static const uint8_t *ids_block_at(const ids_run *r, uint32_t i)
{
    assert(i < r->g.block_count);
    return r->map + (uint64_t)IDS_BLOCK_BYTES * (1 + (uint64_t)i);
}

static inline ids_key ids_fence(const ids_run *r, uint32_t i)
{
    return ids_key_at(r->map + r->g.fences_off + (uint64_t)IDS_FENCE_BYTES * i);
}

/* Checks block i (checksum, then its trailer against its place) and
 * returns its entry count. */
static int ids_block_check(const char *dir, const ids_run *r, uint32_t i, uint32_t *count,
                           char *msg, size_t cap)
{
    const uint8_t *b = ids_block_at(r, i);
    if (checksum64(b, IDS_BLOCK_SUM_OFF, 0) != bytes_get_le64(b + IDS_BLOCK_SUM_OFF))
        return ids_say(msg, cap, TALLY_ECORRUPT, "ids run %s/%s: block %" PRIu32
                       " fails its checksum", dir, r->name, i);
    const uint8_t *t = b + IDS_BLOCK_TRAILER_OFF;
    uint32_t n = bytes_get_le32(t + 16);
    uint64_t want = i + 1 < r->g.block_count
                        ? IDS_BLOCK_ENTRIES
                        : r->g.count - (uint64_t)i * IDS_BLOCK_ENTRIES;
    if (n != want || bytes_get_le32(t + 20) != i || bytes_get_le64(t + 24) != r->number)
        return ids_say(msg, cap, TALLY_ECORRUPT, "ids run %s/%s: block %" PRIu32
                       " is not where it belongs (count %" PRIu32 ", index %" PRIu32 ")",
                       dir, r->name, i, n, bytes_get_le32(t + 20));
    *count = n;
    return 0;
}

/* The block that holds key if any: the last whose fence is <= key.  The
 * caller knows min <= key, so block 0 qualifies. */
static uint32_t ids_fence_find(const ids_run *r, ids_key key)
{
    uint32_t lo = 0, hi = r->g.block_count; /* answer in [lo, hi) */
    while (hi - lo > 1) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (ids_key_lt(key, ids_fence(r, mid)))
            hi = mid;
        else
            lo = mid;
    }
    return lo;
}

/* Looks key up in run r.  The filter line is checked only when it says
 * "absent": a damaged line that says "maybe" costs a block read, and the
 * block is checked.  Fences are checked against the block they led to. */
static int ids_run_get(ids *x, const ids_run *r, ids_key key, uint64_t *value)
{
    if (ids_key_lt(key, r->min) || ids_key_lt(r->max, key))
        return IDS_ABSENT;
    uint64_t j = ids_filter_line(key.hi, r->g.filter_lines);
    const uint8_t *line = r->filter + j * IDS_FILTER_LINE_BYTES;
    if (!ids_filter_has(line, key.lo, r->g.filter_probes)) {
        if (ids_line_sum(line, j) != bytes_get_le32(line + IDS_LINE_SUM_OFF))
            return ids_say(x->err, sizeof(x->err), TALLY_ECORRUPT, "ids run %s/%s: filter "
                           "line %" PRIu64 " fails its checksum", x->dir, r->name, j);
        return IDS_ABSENT;
    }
    uint32_t i = ids_fence_find(r, key), n;
    int rc = ids_block_check(x->dir, r, i, &n, x->err, sizeof(x->err));
    if (rc < 0)
        return rc;
    const uint8_t *b = ids_block_at(r, i);
    if (!ids_key_eq(ids_key_at(b), ids_fence(r, i)) ||
        (i + 1 < r->g.block_count && !ids_key_lt(key, ids_key_at(b + IDS_BLOCK_TRAILER_OFF))))
        return ids_say(x->err, sizeof(x->err), TALLY_ECORRUPT, "ids run %s/%s: fence %" PRIu32
                       " does not match block %" PRIu32, x->dir, r->name, i, i);
    uint32_t lo = 0, hi = n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        ids_key k = ids_key_at(b + (size_t)mid * IDS_ENTRY_BYTES);
        if (ids_key_eq(k, key)) {
            *value = bytes_get_le64(b + (size_t)mid * IDS_ENTRY_BYTES + 16);
            assert(*value != 0);
            return 0;
        }
        if (ids_key_lt(k, key))
            lo = mid + 1;
        else
            hi = mid;
    }
    x->false_positives++;
    return IDS_ABSENT;
}

/* Decodes and checks a run's header and footer against the file size and
 * what the manifest says (number, count, header_sum; count 0: unknown). */
static int ids_header_check(ids_run *r, uint64_t size, uint64_t count, uint64_t header_sum,
                            const char *path, char *msg, size_t cap)
{
    const uint8_t *h = r->map;
    if (memcmp(h, IDS_MAGIC, 8) != 0)
        return ids_say(msg, cap, TALLY_ECORRUPT, "ids run %s: not a run file", path);
    if (bytes_get_le32(h + 8) != IDS_VERSION)
        return ids_say(msg, cap, TALLY_EFORMAT, "ids run %s: version %" PRIu32 " unknown",
                       path, bytes_get_le32(h + 8));
    r->header_sum = bytes_get_le64(h + IDS_HEADER_SUM_OFF);
    if (checksum64(h, IDS_HEADER_SUM_OFF, 0) != r->header_sum)
        return ids_say(msg, cap, TALLY_ECORRUPT, "ids run %s: header fails its checksum", path);
    uint64_t n = bytes_get_le64(h + 24);
    uint32_t lines = bytes_get_le32(h + 40), probes = bytes_get_le32(h + 44);
    r->g = ids_geometry_of(n, lines, probes);
    r->min = ids_key_at(h + 72);
    r->max = ids_key_at(h + 88);
    bool ok = bytes_get_le32(h + 12) == IDS_BLOCK_BYTES && bytes_get_le64(h + 16) == r->number &&
              n >= 1 && n <= IDS_RUN_KEYS_MAX && bytes_get_le32(h + 32) == r->g.block_count &&
              bytes_get_le32(h + 36) == IDS_BLOCK_ENTRIES && lines >= 1 && probes >= 1 &&
              probes <= IDS_FILTER_PROBES_MAX && bytes_get_le64(h + 48) == r->g.fences_off &&
              bytes_get_le64(h + 56) == r->g.filter_off && bytes_get_le64(h + 64) == r->g.file_bytes &&
              !ids_key_lt(r->max, r->min);
    if (!ok)
        return ids_say(msg, cap, TALLY_ECORRUPT, "ids run %s: header fields disagree", path);
    if (size != r->g.file_bytes)
        return ids_say(msg, cap, TALLY_ECORRUPT, "ids run %s: %" PRIu64 " bytes, header says %"
                       PRIu64, path, size, r->g.file_bytes);
    const uint8_t *f = h + size - IDS_FOOTER_BYTES;
    if (memcmp(f, IDS_FOOTER_MAGIC, 8) != 0 || bytes_get_le64(f + 8) != r->header_sum)
        return ids_say(msg, cap, TALLY_ECORRUPT, "ids run %s: footer does not match", path);
    if (count != 0 && (count != n || header_sum != r->header_sum))
        return ids_say(msg, cap, TALLY_ECORRUPT, "ids run %s: not the run the manifest names",
                       path);
    return 0;
}

static size_t ids_filter_bytes(const ids_run *r)
{
    return (size_t)IDS_FILTER_LINE_BYTES * r->g.filter_lines;
}

/* Checks the fence array and a filter (the file's, or the copy of it)
 * against the header's checksums. */
static int ids_sums_check(const ids_run *r, const uint8_t *filter, const char *path, char *msg,
                          size_t cap)
{
    const uint8_t *h = r->map;
    uint64_t fences = checksum64(r->map + r->g.fences_off,
                                 (size_t)IDS_FENCE_BYTES * r->g.block_count, 0);
    if (fences != bytes_get_le64(h + 104))
        return ids_say(msg, cap, TALLY_ECORRUPT, "ids run %s: fences fail their checksum", path);
    if (checksum64(filter, ids_filter_bytes(r), 0) != bytes_get_le64(h + 112))
        return ids_say(msg, cap, TALLY_ECORRUPT, "ids run %s: filter fails its checksum", path);
    return 0;
}

/* Reads the run's filter into anonymous memory (r->filter) with large
 * sequential reads: one pass at open instead of a page fault per 4 KiB
 * of the mapping (MADV_RANDOM: no read-ahead) when the page cache does
 * not hold the file — a restart after a reboot. */
static int ids_filter_load(const ids *x, ids_run *r, int fd, const char *path, char *msg,
                           size_t cap)
{
    size_t len = ids_filter_bytes(r);
    r->filter = os_map_anon(len, false);
    if (!r->filter)
        return ids_say(msg, cap, -ENOMEM, "ids run %s: no memory for its filter (%zu bytes)",
                       path, len);
    for (size_t at = 0; at < len;) {
        ssize_t n = x->os->pread(x->os->ctx, fd, r->filter + at, len - at, r->g.filter_off + at);
        if (n <= 0)
            return ids_say(msg, cap, n < 0 ? (int)n : TALLY_ECORRUPT,
                           "ids run %s: reading its filter: %s", path,
                           n < 0 ? strerror((int)-n) : "the file ends early");
        at += (size_t)n;
    }
    return 0;
}

static void ids_run_free(ids_run *r)
{
    if (!r)
        return;
    os_unmap_anon(r->filter, ids_filter_bytes(r));
    ids_unmap(r->map, r->g.file_bytes);
    free(r);
}

/* Maps run file `number` of dir and checks everything but its data blocks
 * (count, header_sum: what the manifest says; count 0 when it says nothing). */
static int ids_run_open(const ids *x, uint64_t number, uint64_t count, uint64_t header_sum,
                        ids_run **out, char *msg, size_t cap)
{
    ids_run *r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    r->number = number;
    ids_name(r->name, number, "run");
    char path[IDS_PATH_BYTES];
    ids_path(path, x->dir, r->name);
    int fd = x->os->open(x->os->ctx, path, O_RDONLY, 0);
    if (fd < 0) {
        free(r);
        return ids_say(msg, cap, fd, "ids run %s: open: %s", path, strerror(-fd));
    }
    struct stat st;
    int rc = fstat(fd, &st) < 0 ? -errno : 0;
    uint64_t size = rc == 0 ? (uint64_t)st.st_size : 0;
    if (rc == 0 && size < IDS_BLOCK_BYTES + IDS_FOOTER_BYTES)
        rc = ids_say(msg, cap, TALLY_ECORRUPT, "ids run %s: %" PRIu64 " bytes is too short",
                     path, size);
    if (rc == 0) {
        void *m = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
        rc = m == MAP_FAILED ? -errno : 0;
        if (rc == 0) {
            r->map = m;
            r->g.file_bytes = size; /* what to unmap until the header says it */
            madvise(m, size, MADV_RANDOM);
        }
    }
    if (rc == 0)
        rc = ids_header_check(r, size, count, header_sum, path, msg, cap);
    if (rc == 0)
        rc = ids_filter_load(x, r, fd, path, msg, cap);
    x->os->close(x->os->ctx, fd);
    if (rc == 0)
        rc = ids_sums_check(r, r->filter, path, msg, cap);
    if (rc < 0) {
        if (r->filter)
            os_unmap_anon(r->filter, ids_filter_bytes(r));
        if (r->map)
            ids_unmap(r->map, size);
        free(r);
        return rc;
    }
    *out = r;
    return 0;
}

/* ---- writing a run: three sequential streams, then the header --------------- */

typedef struct ids_writer {
    ids *x;
    ids_geometry g;
    uint64_t number;
    int fd;
    char path[IDS_PATH_BYTES]; /* the .tmp name until renamed */
    uint8_t *buf;              /* blocks | fences | lines, one mapping */
    size_t buf_bytes;
    uint8_t *fence_buf, *line_buf;
    uint64_t added;
    uint32_t block_fill;      /* entries in the block being filled */
    uint32_t blocks_buffered; /* sealed blocks before it in buf */
    uint64_t blocks_written;
    uint32_t fences_buffered;
    uint64_t fences_written;
    uint64_t line_base; /* the first filter line in line_buf */
    ids_key min, last;
    checksum_stream *fences_cs, *filter_cs;
    uint64_t bytes_written, bytes_unsynced;
    const atomic_bool *cancel;
    char *msg;
    size_t cap;
} ids_writer;

static int ids_write_at(ids_writer *w, const void *p, size_t len, uint64_t off)
{
    const os_ops *os = w->x->os;
    int rc = os_pwrite_all(os, w->fd, p, len, off);
    if (rc < 0)
        return ids_say(w->msg, w->cap, rc, "%s: write: %s", w->path, strerror(-rc));
    w->bytes_written += len;
    w->bytes_unsynced += len;
    if (w->bytes_unsynced >= IDS_SYNC_BYTES) {
        w->bytes_unsynced = 0;
        rc = os->fdatasync(os->ctx, w->fd);
        if (rc < 0)
            return ids_say(w->msg, w->cap, rc, "%s: fdatasync: %s", w->path, strerror(-rc));
    }
    return 0;
}

static int ids_write_blocks(ids_writer *w)
{
    if (w->cancel && atomic_load_explicit(w->cancel, memory_order_relaxed))
        return -ECANCELED;
    size_t len = (size_t)w->blocks_buffered * IDS_BLOCK_BYTES;
    int rc = ids_write_at(w, w->buf, len, (uint64_t)IDS_BLOCK_BYTES * (1 + w->blocks_written));
    w->blocks_written += w->blocks_buffered;
    w->blocks_buffered = 0;
    memset(w->buf, 0, len); /* unused entries of a last block are zero */
    return rc;
}

static int ids_write_fences(ids_writer *w)
{
    size_t len = (size_t)w->fences_buffered * IDS_FENCE_BYTES;
    checksum_stream_update(w->fences_cs, w->fence_buf, len);
    int rc = ids_write_at(w, w->fence_buf, len,
                          w->g.fences_off + w->fences_written * IDS_FENCE_BYTES);
    w->fences_written += w->fences_buffered;
    w->fences_buffered = 0;
    return rc;
}

/* Seals and writes the buffered filter lines; the next ones start empty. */
static int ids_write_lines(ids_writer *w)
{
    assert(w->line_base < w->g.filter_lines);
    uint64_t n = w->g.filter_lines - w->line_base;
    n = n < IDS_WRITE_LINES ? n : IDS_WRITE_LINES;
    for (uint64_t j = 0; j < n; j++) {
        uint8_t *line = w->line_buf + j * IDS_FILTER_LINE_BYTES;
        bytes_put_le32(line + IDS_LINE_SUM_OFF, ids_line_sum(line, w->line_base + j));
    }
    size_t len = (size_t)n * IDS_FILTER_LINE_BYTES;
    checksum_stream_update(w->filter_cs, w->line_buf, len);
    int rc = ids_write_at(w, w->line_buf, len,
                          w->g.filter_off + w->line_base * IDS_FILTER_LINE_BYTES);
    w->line_base += IDS_WRITE_LINES;
    memset(w->line_buf, 0, (size_t)IDS_WRITE_LINES * IDS_FILTER_LINE_BYTES);
    return rc;
}

/* Seals the block being filled; next is the following block's first key. */
static void ids_seal_block(ids_writer *w, ids_key next)
{
    uint8_t *b = w->buf + (size_t)w->blocks_buffered * IDS_BLOCK_BYTES;
    uint8_t *t = b + IDS_BLOCK_TRAILER_OFF;
    assert(w->block_fill >= 1 && w->block_fill <= IDS_BLOCK_ENTRIES);
    ids_key_put(t, next);
    bytes_put_le32(t + 16, w->block_fill);
    bytes_put_le32(t + 20, (uint32_t)(w->blocks_written + w->blocks_buffered));
    bytes_put_le64(t + 24, w->number);
    bytes_put_le64(b + IDS_BLOCK_SUM_OFF, checksum64(b, IDS_BLOCK_SUM_OFF, 0));
    w->blocks_buffered++;
    w->block_fill = 0;
}

static void ids_writer_drop(ids_writer *w)
{
    const os_ops *os = w->x->os;
    if (w->fd >= 0) {
        os->close(os->ctx, w->fd);
        os->unlink(os->ctx, w->path); /* a .tmp: nothing names it */
    }
    os_unmap_anon(w->buf, w->buf_bytes);
    checksum_stream_free(w->fences_cs);
    checksum_stream_free(w->filter_cs);
    w->fd = -1;
    w->buf = NULL;
    w->fences_cs = w->filter_cs = NULL;
}

/* Starts run file `number` of count keys under its .tmp name. */
static int ids_writer_begin(ids_writer *w, ids *x, uint64_t number, uint64_t count,
                            const atomic_bool *cancel, char *msg, size_t cap)
{
    assert(count >= 1 && count <= IDS_RUN_KEYS_MAX);
    *w = (ids_writer){.x = x, .number = number, .fd = -1, .cancel = cancel, .msg = msg,
                      .cap = cap};
    w->g = ids_geometry_of(count, ids_filter_lines_for(count, x->filter_bits),
                           ids_filter_probes_for(x->filter_bits));
    w->buf_bytes = (size_t)IDS_WRITE_BLOCKS * IDS_BLOCK_BYTES +
                   (size_t)IDS_WRITE_FENCES * IDS_FENCE_BYTES +
                   (size_t)IDS_WRITE_LINES * IDS_FILTER_LINE_BYTES;
    w->buf = os_map_anon(w->buf_bytes, false);
    w->fences_cs = checksum_stream_new();
    w->filter_cs = checksum_stream_new();
    if (!w->buf || !w->fences_cs || !w->filter_cs) {
        ids_writer_drop(w);
        return ids_say(msg, cap, -ENOMEM, "ids: no memory for a run writer");
    }
    w->fence_buf = w->buf + (size_t)IDS_WRITE_BLOCKS * IDS_BLOCK_BYTES;
    w->line_buf = w->fence_buf + (size_t)IDS_WRITE_FENCES * IDS_FENCE_BYTES;
    char name[IDS_NAME_BYTES];
    ids_name(name, number, "tmp");
    ids_path(w->path, x->dir, name);
    int fd = x->os->open(x->os->ctx, w->path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        ids_writer_drop(w);
        return ids_say(msg, cap, fd, "%s: create: %s", w->path, strerror(-fd));
    }
    w->fd = fd;
    return 0;
}

/* Appends the next key (strictly above the last one) and its value. */
static int ids_writer_add(ids_writer *w, ids_key key, uint64_t value)
{
    assert(w->added < w->g.count);
    assert(w->added == 0 || ids_key_lt(w->last, key));
    assert(value != 0);
    int rc = 0;
    if (w->block_fill == IDS_BLOCK_ENTRIES) {
        ids_seal_block(w, key);
        if (w->blocks_buffered == IDS_WRITE_BLOCKS && (rc = ids_write_blocks(w)) < 0)
            return rc;
    }
    if (w->block_fill == 0) {
        ids_key_put(w->fence_buf + (size_t)w->fences_buffered * IDS_FENCE_BYTES, key);
        if (++w->fences_buffered == IDS_WRITE_FENCES && (rc = ids_write_fences(w)) < 0)
            return rc;
    }
    uint8_t *e = w->buf + (size_t)w->blocks_buffered * IDS_BLOCK_BYTES +
                 (size_t)w->block_fill++ * IDS_ENTRY_BYTES;
    ids_key_put(e, key);
    bytes_put_le64(e + 16, value);
    uint64_t j = ids_filter_line(key.hi, w->g.filter_lines);
    while (j >= w->line_base + IDS_WRITE_LINES)
        if ((rc = ids_write_lines(w)) < 0)
            return rc;
    ids_filter_set(w->line_buf + (j - w->line_base) * IDS_FILTER_LINE_BYTES, key.lo,
                   w->g.filter_probes);
    if (w->added++ == 0)
        w->min = key;
    w->last = key;
    return 0;
}

static void ids_header_encode(const ids_writer *w, uint8_t *h, uint64_t fences_sum,
                              uint64_t filter_sum)
{
    memcpy(h, IDS_MAGIC, 8);
    bytes_put_le32(h + 8, IDS_VERSION);
    bytes_put_le32(h + 12, IDS_BLOCK_BYTES);
    bytes_put_le64(h + 16, w->number);
    bytes_put_le64(h + 24, w->g.count);
    bytes_put_le32(h + 32, w->g.block_count);
    bytes_put_le32(h + 36, IDS_BLOCK_ENTRIES);
    bytes_put_le32(h + 40, w->g.filter_lines);
    bytes_put_le32(h + 44, w->g.filter_probes);
    bytes_put_le64(h + 48, w->g.fences_off);
    bytes_put_le64(h + 56, w->g.filter_off);
    bytes_put_le64(h + 64, w->g.file_bytes);
    ids_key_put(h + 72, w->min);
    ids_key_put(h + 88, w->last);
    bytes_put_le64(h + 104, fences_sum);
    bytes_put_le64(h + 112, filter_sum);
    bytes_put_le64(h + IDS_HEADER_SUM_OFF, checksum64(h, IDS_HEADER_SUM_OFF, 0));
}

/* Writes the rest, the header and the footer; flushes the file, renames it
 * to its .run name, flushes the directory; then maps it as ids_open would.
 * On failure the .tmp is removed. */
static int ids_writer_end(ids_writer *w, ids_run **out)
{
    assert(w->added == w->g.count);
    ids_seal_block(w, (ids_key){0, 0});
    int rc = ids_write_blocks(w);
    if (rc == 0 && w->fences_buffered > 0)
        rc = ids_write_fences(w);
    while (rc == 0 && w->line_base < w->g.filter_lines)
        rc = ids_write_lines(w);
    assert(rc < 0 || (w->blocks_written == w->g.block_count &&
                      w->fences_written == w->g.block_count));
    uint8_t head[IDS_HEADER_SUM_OFF + 8] = {0}, foot[IDS_FOOTER_BYTES];
    ids_header_encode(w, head, checksum_stream_digest(w->fences_cs),
                      checksum_stream_digest(w->filter_cs));
    memcpy(foot, IDS_FOOTER_MAGIC, 8);
    bytes_put_le64(foot + 8, bytes_get_le64(head + IDS_HEADER_SUM_OFF));
    if (rc == 0)
        rc = ids_write_at(w, head, sizeof(head), 0);
    if (rc == 0)
        rc = ids_write_at(w, foot, sizeof(foot), w->g.file_bytes - IDS_FOOTER_BYTES);
    const os_ops *os = w->x->os;
    if (rc == 0 && (rc = os->fdatasync(os->ctx, w->fd)) < 0)
        ids_say(w->msg, w->cap, rc, "%s: fdatasync: %s", w->path, strerror(-rc));
    char name[IDS_NAME_BYTES], path[IDS_PATH_BYTES];
    ids_name(name, w->number, "run");
    ids_path(path, w->x->dir, name);
    if (rc == 0 && (rc = os->rename(os->ctx, w->path, path)) < 0)
        ids_say(w->msg, w->cap, rc, "%s: rename: %s", w->path, strerror(-rc));
    if (rc < 0) {
        ids_writer_drop(w);
        return rc;
    }
    os->close(os->ctx, w->fd);
    w->fd = -1;
    ids_writer_drop(w);
    rc = os->fsync_dir(os->ctx, w->x->dir);
    if (rc < 0)
        ids_say(w->msg, w->cap, rc, "%s: fsync: %s", w->x->dir, strerror(-rc));
    if (rc == 0)
        rc = ids_run_open(w->x, w->number, w->g.count, bytes_get_le64(head + IDS_HEADER_SUM_OFF),
                          out, w->msg, w->cap);
    if (rc < 0)
        os->unlink(os->ctx, path); /* not named by any manifest yet */
    return rc;
}

/* ---- the set of runs and the files behind it (under lock) ------------------- */

static int ids_mapped_add(ids *x, ids_run *r)
{
    if (x->mapped_count == IDS_MAPPED_MAX)
        return -EMFILE;
    x->mapped[x->mapped_count++] = r;
    return 0;
}

/* Adds r to the searched runs, keeping them largest first: a present key
 * is most likely in the largest run. */
static void ids_set_insert(ids *x, ids_run *r)
{
    assert(x->set_count < IDS_RUNS_MAX);
    assert(!r->in_set);
    uint32_t i = x->set_count;
    while (i > 0 && x->set[i - 1]->g.count < r->g.count) {
        x->set[i] = x->set[i - 1];
        i--;
    }
    x->set[i] = r;
    x->set_count++;
    r->in_set = true;
}

static void ids_set_remove(ids *x, ids_run *r)
{
    assert(r->in_set);
    uint32_t i = 0;
    while (x->set[i] != r)
        i++;
    memmove(&x->set[i], &x->set[i + 1], (x->set_count - i - 1) * sizeof(x->set[0]));
    x->set_count--;
    r->in_set = false;
}

/* Removes the files and mappings nothing can need any more: not searched,
 * not named by the committed manifest nor by one handed out since, not
 * an input or output of a merge, not the flush's.  Returns the first
 * removal's error (that file stays; ids_open removes it). */
static int ids_collect(ids *x)
{
    if (x->link_pins > 0)
        return 0; /* ids_link is reading names: the next collect removes */
    int first = 0;
    uint32_t k = 0;
    for (uint32_t i = 0; i < x->mapped_count; i++) {
        ids_run *r = x->mapped[i];
        if (r->in_set || r->in_committed || r->in_proposal || r->proposed || r->merging ||
            r == x->flushed || r == x->merge_out) {
            x->mapped[k++] = r;
            continue;
        }
        char path[IDS_PATH_BYTES];
        ids_path(path, x->dir, r->name);
        int rc = x->os->unlink(x->os->ctx, path);
        if (rc < 0 && rc != -ENOENT && first == 0)
            first = ids_say(x->err, sizeof(x->err), rc, "%s: unlink: %s", path, strerror(-rc));
        ids_run_free(r);
    }
    x->mapped_count = k;
    return first;
}

/* ---- merging ------------------------------------------------------------------- */

static uint32_t ids_tier(uint64_t count, uint64_t base)
{
    uint32_t t = 0;
    for (uint64_t c = count / base; c >= IDS_MERGE_FANIN; c /= IDS_MERGE_FANIN)
        t++;
    return t;
}

/* Under lock: the next merge's inputs — the lowest tier holding FANIN
 * runs, its FANIN smallest.  false: nothing to do. */
static bool ids_merge_choose(const ids *x, ids_run **in)
{
    /* While a cancel is pending, a new merge would only be cancelled too
     * (and ids_abort would wait for merge after merge). */
    if (x->merge_failed || x->merge_out || x->merge_running || x->merge_stop ||
        atomic_load(&x->merge_cancel) || x->mapped_count == IDS_MAPPED_MAX)
        return false;
    for (uint32_t tier = 0; tier < 64; tier++) {
        uint32_t n = 0;
        uint64_t keys = 0;
        /* The set is largest first: walk it from its end for the smallest. */
        for (uint32_t i = x->set_count; i-- > 0 && n < IDS_MERGE_FANIN;) {
            if (ids_tier(x->set[i]->g.count, x->flush_keys) != tier)
                continue;
            in[n++] = x->set[i];
            keys += x->set[i]->g.count;
        }
        if (n == IDS_MERGE_FANIN && keys <= IDS_RUN_KEYS_MAX)
            return true;
    }
    return false;
}

/* A merge's read position in one input run; every block is checked as it
 * is reached, so a merge never copies damage into a new run. */
typedef struct ids_cursor {
    const ids_run *r;
    uint32_t block;
    uint32_t pos, fill;
    const uint8_t *b;
} ids_cursor;

static int ids_cursor_load(const ids *x, ids_cursor *c, char *msg, size_t cap)
{
    if (c->block % IDS_READAHEAD_BLOCKS == 0) {
        uint32_t n = c->r->g.block_count - c->block;
        n = n < IDS_READAHEAD_BLOCKS ? n : IDS_READAHEAD_BLOCKS;
        madvise((void *)ids_block_at(c->r, c->block), (size_t)n * IDS_BLOCK_BYTES,
                MADV_WILLNEED);
    }
    c->pos = 0;
    c->b = ids_block_at(c->r, c->block);
    return ids_block_check(x->dir, c->r, c->block, &c->fill, msg, cap);
}

static inline ids_key ids_cursor_key(const ids_cursor *c)
{
    return ids_key_at(c->b + (size_t)c->pos * IDS_ENTRY_BYTES);
}

/* Writes the merge of n runs as run `number`. */
static int ids_merge_runs(ids *x, ids_run *const *in, uint32_t n, uint64_t number,
                          ids_run **out, uint64_t *written, char *msg, size_t cap)
{
    ids_cursor cur[IDS_MERGE_FANIN];
    uint64_t count = 0;
    int rc = 0;
    for (uint32_t i = 0; i < n && rc == 0; i++) {
        cur[i] = (ids_cursor){.r = in[i]};
        count += in[i]->g.count;
        rc = ids_cursor_load(x, &cur[i], msg, cap);
    }
    ids_writer w;
    if (rc == 0)
        rc = ids_writer_begin(&w, x, number, count, &x->merge_cancel, msg, cap);
    if (rc < 0)
        return rc;
    uint32_t live = n;
    while (live > 0 && rc == 0) {
        uint32_t m = 0;
        for (uint32_t i = 1; i < live; i++)
            if (ids_key_lt(ids_cursor_key(&cur[i]), ids_cursor_key(&cur[m])))
                m = i;
        ids_key k = ids_cursor_key(&cur[m]);
        if (w.added > 0 && !ids_key_lt(w.last, k)) {
            rc = ids_say(msg, cap, TALLY_ECORRUPT, "ids runs %s/%s and others: key %016"
                         PRIx64 "%016" PRIx64 " twice", x->dir, cur[m].r->name, k.hi, k.lo);
            break;
        }
        rc = ids_writer_add(&w, k, bytes_get_le64(cur[m].b + (size_t)cur[m].pos * IDS_ENTRY_BYTES +
                                           16));
        if (rc == 0 && ++cur[m].pos == cur[m].fill) {
            if (++cur[m].block < cur[m].r->g.block_count)
                rc = ids_cursor_load(x, &cur[m], msg, cap);
            else
                cur[m] = cur[--live];
        }
    }
    *written = w.bytes_written;
    if (rc < 0) {
        ids_writer_drop(&w);
        return rc;
    }
    return ids_writer_end(&w, out);
}

/* Under lock, after a merge ended: hands its output to ids_poll or drops
 * it, and frees its inputs for the next merge when it is dropped. */
static void ids_merge_ended(ids *x, ids_run **in, ids_run *out, int rc, const char *msg)
{
    if (rc == 0 && (atomic_load(&x->merge_cancel) || x->merge_stop))
        rc = -ECANCELED;
    if (rc == 0 && (rc = ids_mapped_add(x, out)) < 0)
        ids_say(x->merge_err, sizeof(x->merge_err), rc, "ids: too many run files");
    if (rc == 0) {
        x->merge_out = out;
        return;
    }
    if (out) {
        char path[IDS_PATH_BYTES];
        ids_path(path, x->dir, out->name);
        x->os->unlink(x->os->ctx, path); /* never named by a manifest */
        ids_run_free(out);
    }
    for (uint32_t i = 0; i < IDS_MERGE_FANIN; i++)
        in[i]->merging = false;
    if (rc != -ECANCELED) {
        x->merge_failed = true;
        x->merge_rc = rc;
        if (msg[0])
            snprintf(x->merge_err, sizeof(x->merge_err), "%s", msg);
    }
}

static void *ids_merge_main(void *arg)
{
    ids *x = arg;
    os_thread_lower_priority(x->merge_nice);
    pthread_mutex_lock(&x->lock);
    while (!x->merge_stop) {
        ids_run *in[IDS_MERGE_FANIN];
        if (!ids_merge_choose(x, in)) {
            pthread_cond_wait(&x->merge_cv, &x->lock);
            continue;
        }
        for (uint32_t i = 0; i < IDS_MERGE_FANIN; i++)
            in[i]->merging = true;
        uint64_t number = x->next_number++;
        x->merge_running = true;
        pthread_mutex_unlock(&x->lock);
        ids_run *out = NULL;
        uint64_t written = 0;
        char msg[IDS_MSG_BYTES] = "";
        int rc = ids_merge_runs(x, in, IDS_MERGE_FANIN, number, &out, &written, msg,
                                sizeof(msg));
        pthread_mutex_lock(&x->lock);
        x->merge_running = false;
        x->bytes_written += written;
        ids_merge_ended(x, in, out, rc, msg);
        pthread_cond_broadcast(&x->done_cv);
    }
    pthread_mutex_unlock(&x->lock);
    return NULL;
}

/* Under lock: waits until no merge runs.  cancel: ask it to stop first. */
static void ids_merge_quiesce(ids *x, bool cancel)
{
    if (cancel)
        atomic_store(&x->merge_cancel, true);
    while (x->merge_running)
        pthread_cond_wait(&x->done_cv, &x->lock);
    atomic_store(&x->merge_cancel, false);
}

/* ---- the manifest ---------------------------------------------------------------- */

typedef struct ids_manifest_run {
    uint64_t number, count, header_sum;
} ids_manifest_run;

typedef struct ids_manifest_blob {
    uint64_t covered_seq, next_number;
    uint32_t run_count;
    ids_manifest_run runs[IDS_RUNS_MAX];
} ids_manifest_blob;

static size_t ids_manifest_bytes(uint32_t run_count)
{
    return IDS_MANIFEST_FIXED_BYTES + (size_t)IDS_MANIFEST_RUN_BYTES * run_count + 8;
}

static void ids_manifest_encode(const ids_manifest_blob *m, uint8_t *p)
{
    assert(m->run_count <= IDS_RUNS_MAX);
    memcpy(p, IDS_MANIFEST_MAGIC, 8);
    bytes_put_le32(p + 8, IDS_MANIFEST_VERSION);
    bytes_put_le32(p + 12, m->run_count);
    bytes_put_le64(p + 16, m->covered_seq);
    bytes_put_le64(p + 24, m->next_number);
    uint8_t *q = p + IDS_MANIFEST_FIXED_BYTES;
    for (uint32_t i = 0; i < m->run_count; i++, q += IDS_MANIFEST_RUN_BYTES) {
        assert(m->runs[i].number < m->next_number);
        bytes_put_le64(q, m->runs[i].number);
        bytes_put_le64(q + 8, m->runs[i].count);
        bytes_put_le64(q + 16, m->runs[i].header_sum);
    }
    bytes_put_le64(q, checksum64(p, (size_t)(q - p), 0));
}

static int ids_manifest_decode(const void *buf, size_t len, ids_manifest_blob *m, char *msg,
                               size_t cap)
{
    const uint8_t *p = buf;
    *m = (ids_manifest_blob){.next_number = 1};
    if (!buf || len == 0)
        return 0; /* an empty index */
    if (len < ids_manifest_bytes(0) || memcmp(p, IDS_MANIFEST_MAGIC, 8) != 0)
        return ids_say(msg, cap, TALLY_ECORRUPT, "ids manifest: not a manifest");
    if (bytes_get_le32(p + 8) != IDS_MANIFEST_VERSION)
        return ids_say(msg, cap, TALLY_EFORMAT, "ids manifest: version %" PRIu32 " unknown",
                       bytes_get_le32(p + 8));
    m->run_count = bytes_get_le32(p + 12);
    if (m->run_count > IDS_RUNS_MAX || len != ids_manifest_bytes(m->run_count) ||
        checksum64(p, len - 8, 0) != bytes_get_le64(p + len - 8))
        return ids_say(msg, cap, TALLY_ECORRUPT, "ids manifest: fails its checksum");
    m->covered_seq = bytes_get_le64(p + 16);
    m->next_number = bytes_get_le64(p + 24);
    const uint8_t *q = p + IDS_MANIFEST_FIXED_BYTES;
    for (uint32_t i = 0; i < m->run_count; i++, q += IDS_MANIFEST_RUN_BYTES) {
        m->runs[i] = (ids_manifest_run){bytes_get_le64(q), bytes_get_le64(q + 8), bytes_get_le64(q + 16)};
        bool dup = false;
        for (uint32_t j = 0; j < i; j++)
            dup |= m->runs[j].number == m->runs[i].number;
        if (dup || m->runs[i].number >= m->next_number || m->runs[i].count == 0)
            return ids_say(msg, cap, TALLY_ECORRUPT, "ids manifest: run %" PRIu32 " is bad", i);
    }
    return 0;
}

/* ---- opening: runs, leftovers ------------------------------------------------------ */

/* A run file's number from its name ("ids-<16 hex>.run" or ".tmp"). */
static bool ids_parse_name(const char *name, uint64_t *number)
{
    if (strlen(name) != 24 || strncmp(name, "ids-", 4) != 0 ||
        (strcmp(name + 20, ".run") != 0 && strcmp(name + 20, ".tmp") != 0))
        return false;
    uint64_t n = 0;
    for (int i = 4; i < 20; i++) {
        char c = name[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0)
            return false;
        n = n << 4 | (uint64_t)d;
    }
    *number = n;
    return true;
}

static bool ids_names_run(const ids_manifest_blob *m, uint64_t number, const char *name)
{
    if (strcmp(name + 20, ".run") != 0)
        return false;
    for (uint32_t i = 0; i < m->run_count; i++)
        if (m->runs[i].number == number)
            return true;
    return false;
}

/* Removes the index files of dir the manifest does not name, and keeps new
 * numbers above every number found. */
static int ids_remove_leftovers(ids *x, const ids_manifest_blob *m, char *msg, size_t cap)
{
    DIR *d = opendir(x->dir);
    if (!d)
        return ids_say(msg, cap, -errno, "%s: %s", x->dir, strerror(errno));
    int rc = 0;
    uint32_t removed = 0;
    struct dirent *e;
    while (rc == 0 && (e = readdir(d)) != NULL) {
        uint64_t number;
        if (!ids_parse_name(e->d_name, &number))
            continue;
        if (number >= x->next_number)
            x->next_number = number + 1;
        if (ids_names_run(m, number, e->d_name))
            continue;
        char path[IDS_PATH_BYTES];
        ids_path(path, x->dir, e->d_name);
        rc = x->os->unlink(x->os->ctx, path);
        if (rc < 0)
            ids_say(msg, cap, rc, "%s: unlink: %s", path, strerror(-rc));
        removed++;
    }
    closedir(d);
    if (rc == 0 && removed > 0 && (rc = x->os->fsync_dir(x->os->ctx, x->dir)) < 0)
        ids_say(msg, cap, rc, "%s: fsync: %s", x->dir, strerror(-rc));
    return rc;
}

static int ids_options_apply(ids *x, const ids_options *o)
{
    if (!o->dir || strlen(o->dir) + IDS_NAME_BYTES + 2 > IDS_PATH_BYTES)
        return -EINVAL;
    snprintf(x->dir, sizeof(x->dir), "%s", o->dir);
    x->os = o->os ? o->os : os_default();
    x->flush_keys = o->flush_keys ? o->flush_keys : IDS_FLUSH_KEYS_DEFAULT;
    x->memtable_keys = o->memtable_keys ? o->memtable_keys : x->flush_keys / 4;
    x->memtable_keys_max = o->memtable_keys_max ? o->memtable_keys_max : 4 * x->flush_keys;
    x->filter_bits = o->filter_bits_per_key ? o->filter_bits_per_key : IDS_FILTER_BITS_DEFAULT;
    x->merge_nice = o->merge_nice ? o->merge_nice : IDS_MERGE_NICE_DEFAULT;
    x->read_only = o->read_only;
    if (x->memtable_keys_max > IDS_MEMTABLE_KEYS_LIMIT || x->flush_keys > x->memtable_keys_max ||
        x->memtable_keys > x->memtable_keys_max || x->filter_bits < IDS_FILTER_BITS_MIN ||
        x->filter_bits > IDS_FILTER_BITS_MAX)
        return -EINVAL;
    if (getrandom(&x->seed, sizeof(x->seed), 0) != sizeof(x->seed))
        x->seed = (uint64_t)time(NULL) * 0x9e3779b97f4a7c15ull ^ (uint64_t)(uintptr_t)x;
    return 0;
}

/* Maps the runs the manifest names as the committed, searched set. */
static int ids_open_runs(ids *x, const ids_manifest_blob *m, char *msg, size_t cap)
{
    for (uint32_t i = 0; i < m->run_count; i++) {
        ids_run *r;
        int rc = ids_run_open(x, m->runs[i].number, m->runs[i].count, m->runs[i].header_sum, &r,
                              msg, cap);
        if (rc < 0)
            return rc;
        rc = ids_mapped_add(x, r);
        assert(rc == 0); /* IDS_RUNS_MAX < IDS_MAPPED_MAX */
        r->in_committed = true;
        ids_set_insert(x, r);
    }
    x->committed_seq = m->covered_seq;
    x->next_number = m->next_number;
    return 0;
}

/* ---- public ------------------------------------------------------------------------ */

ids_key ids_key_of(uint64_t merchant, const char *id, size_t len)
{
    assert(len >= 1 && len <= LIMIT_ENGINE_ID_BYTES_MAX);
    uint8_t buf[8 + LIMIT_ENGINE_ID_BYTES_MAX], h[16];
    bytes_put_le64(buf, merchant);
    memcpy(buf + 8, id, len);
    checksum128(buf, 8 + len, h);
    /* checksum128 writes big-endian, high half first */
    return (ids_key){bytes_get_be64(h), bytes_get_be64(h + 8)};
}

int ids_open(const ids_options *o, const void *manifest, size_t len, ids **out)
{
    char msg[IDS_MSG_BYTES] = "";
    ids *x = calloc(1, sizeof(*x));
    if (!x)
        return -ENOMEM;
    pthread_mutex_init(&x->lock, NULL);
    pthread_cond_init(&x->merge_cv, NULL);
    pthread_cond_init(&x->done_cv, NULL);
    int rc = ids_options_apply(x, o);
    if (rc < 0)
        ids_say(msg, sizeof(msg), rc, "ids: bad options");
    if (rc == 0 && !x->read_only && mkdir(x->dir, 0755) < 0 && errno != EEXIST)
        rc = ids_say(msg, sizeof(msg), -errno, "%s: mkdir: %s", x->dir, strerror(errno));
    ids_manifest_blob m;
    if (rc == 0)
        rc = ids_manifest_decode(manifest, len, &m, msg, sizeof(msg));
    if (rc == 0)
        rc = ids_open_runs(x, &m, msg, sizeof(msg));
    if (rc == 0 && !x->read_only)
        rc = ids_remove_leftovers(x, &m, msg, sizeof(msg));
    if (rc == 0 && (rc = ids_table_init(&x->active, x->memtable_keys)) < 0)
        ids_say(msg, sizeof(msg), rc, "ids: no memory for the memtable");
    if (rc == 0 && !x->read_only) {
        rc = -pthread_create(&x->thread, NULL, ids_merge_main, x);
        x->thread_started = rc == 0;
    }
    if (rc < 0) {
        if (o->error && o->error_cap > 0)
            snprintf(o->error, o->error_cap, "%s", msg);
        ids_close(x);
        return rc;
    }
    *out = x;
    return 0;
}

void ids_close(ids *x)
{
    if (!x)
        return;
    pthread_mutex_lock(&x->lock);
    x->merge_stop = true;
    atomic_store(&x->merge_cancel, true);
    pthread_cond_broadcast(&x->merge_cv);
    while (x->flush == IDS_FLUSH_RUNNING)
        pthread_cond_wait(&x->done_cv, &x->lock);
    pthread_mutex_unlock(&x->lock);
    if (x->thread_started)
        pthread_join(x->thread, NULL);
    /* Files stay: ids_open keeps what the committed manifest names and
     * removes the rest. */
    for (uint32_t i = 0; i < x->mapped_count; i++)
        ids_run_free(x->mapped[i]);
    ids_table_free(&x->active);
    ids_table_free(&x->frozen);
    pthread_cond_destroy(&x->done_cv);
    pthread_cond_destroy(&x->merge_cv);
    pthread_mutex_destroy(&x->lock);
    free(x);
}

int ids_put(ids *x, ids_key key, uint64_t value)
{
    /* A read-only index takes puts too: an offline tool replays the log's
     * tail into memory (nothing is ever written). */
    assert(value != 0);
    ids_table *t = &x->active;
    if (t->count >= x->memtable_keys_max)
        return -ENOBUFS;
    if ((t->count + 1) * 2 > (t->mask + 1)) {
        int rc = ids_table_grow(t, x->seed);
        if (rc < 0)
            return rc;
    }
    ids_table_insert(t, x->seed, key, value);
    return 0;
}

int ids_get(ids *x, ids_key key, uint64_t *value)
{
    if (ids_table_get(&x->active, x->seed, key, value))
        return 0;
    if (x->has_frozen && ids_table_get(&x->frozen, x->seed, key, value))
        return 0;
    for (uint32_t i = 0; i < x->set_count; i++) {
        int rc = ids_run_get(x, x->set[i], key, value);
        if (rc != IDS_ABSENT)
            return rc;
    }
    return IDS_ABSENT;
}

void ids_prefetch(const ids *x, ids_key key, bool lookup)
{
    /* The lines ids_get reads first for a key absent from every layer
     * (the common case, a new id): the memtables' home slots and each
     * run's filter line.  Each is a likely cache miss once the index
     * outgrows the caches; asked for a few requests ahead, they overlap. */
    const ids_table *t = &x->active;
    __builtin_prefetch(&t->slots[ids_home(x->seed, key) & t->mask]);
    if (x->has_frozen)
        __builtin_prefetch(&x->frozen.slots[ids_home(x->seed, key) & x->frozen.mask]);
    for (uint32_t i = 0; lookup && i < x->set_count; i++) {
        const ids_run *r = x->set[i];
        uint64_t j = ids_filter_line(key.hi, r->g.filter_lines);
        __builtin_prefetch(r->filter + j * IDS_FILTER_LINE_BYTES);
    }
}

int ids_freeze(ids *x, uint64_t seq, bool force)
{
    assert(!x->read_only);
    if (x->has_frozen)
        return -EBUSY;
    if (x->active.count == 0 || (x->active.count < x->flush_keys && !force))
        return 0;
    if (x->set_count >= IDS_RUNS_MAX)
        return -EAGAIN;
    /* The next memtable starts as big as this one grew, up to flush_keys:
     * the next stretch of writes holds about as many ids, and growing
     * again from memtable_keys would zero and rehash three tables per
     * flush (ids_table_insert, rehashes included: 3.8% of a rebuild's CPU
     * before, 1.9% after).  Not beyond: one that grew past it
     * (commits that lagged, a replay's longer stretches) would keep its
     * memory for good. */
    ids_table fresh;
    uint64_t keys = (x->active.mask + 1) / 2;
    keys = keys < x->flush_keys ? keys : x->flush_keys;
    int rc = ids_table_init(&fresh, keys > x->memtable_keys ? keys : x->memtable_keys);
    if (rc < 0)
        return rc;
    pthread_mutex_lock(&x->lock);
    assert(x->flush == IDS_FLUSH_IDLE);
    assert(seq >= x->committed_seq);
    x->frozen = x->active;
    x->frozen_seq = seq;
    x->has_frozen = true;
    x->flush = IDS_FLUSH_PENDING;
    pthread_mutex_unlock(&x->lock);
    x->active = fresh;
    return 1;
}

/* Writes n sorted entries as run `number` (the flush's writer). */
static int ids_write_sorted(ids *x, uint64_t number, const ids_entry *a, uint64_t n,
                            ids_run **out, uint64_t *written)
{
    ids_writer w;
    int rc = ids_writer_begin(&w, x, number, n, NULL, x->flush_err, sizeof(x->flush_err));
    if (rc < 0)
        return rc;
    for (uint64_t i = 0; rc == 0 && i < n; i++)
        rc = ids_writer_add(&w, (ids_key){a[i].hi, a[i].lo}, a[i].value);
    if (rc == 0)
        rc = ids_writer_end(&w, out);
    else
        ids_writer_drop(&w);
    *written = w.bytes_written;
    return rc;
}

int ids_flush_frozen(ids *x)
{
    pthread_mutex_lock(&x->lock);
    if (x->flush != IDS_FLUSH_PENDING) {
        pthread_mutex_unlock(&x->lock);
        return 0;
    }
    x->flush = IDS_FLUSH_RUNNING;
    uint64_t number = x->next_number++;
    pthread_mutex_unlock(&x->lock);
    x->flush_err[0] = '\0';
    ids_entry *sorted = NULL;
    size_t sorted_bytes = 0;
    ids_run *r = NULL;
    uint64_t written = 0;
    int rc = ids_table_sorted(&x->frozen, &sorted, &sorted_bytes);
    if (rc < 0)
        ids_say(x->flush_err, sizeof(x->flush_err), rc, "ids: no memory to sort a flush");
    else
        rc = ids_write_sorted(x, number, sorted, x->frozen.count, &r, &written);
    os_unmap_anon(sorted, sorted_bytes);
    pthread_mutex_lock(&x->lock);
    x->bytes_written += written;
    if (rc == 0 && (rc = ids_mapped_add(x, r)) < 0) {
        char path[IDS_PATH_BYTES];
        ids_path(path, x->dir, r->name);
        x->os->unlink(x->os->ctx, path);
        ids_run_free(r);
        ids_say(x->flush_err, sizeof(x->flush_err), rc, "ids: too many run files");
    }
    x->flush = rc == 0 ? IDS_FLUSH_DONE : IDS_FLUSH_FAILED;
    x->flushed = rc == 0 ? r : NULL;
    x->flushes += rc == 0;
    pthread_cond_broadcast(&x->done_cv);
    pthread_mutex_unlock(&x->lock);
    return rc;
}

int ids_manifest(ids *x, void *buf, size_t cap, size_t *len)
{
    pthread_mutex_lock(&x->lock);
    assert(x->flush != IDS_FLUSH_RUNNING);
    ids_manifest_blob m = {.covered_seq = x->committed_seq, .next_number = x->next_number};
    ids_run *named[IDS_RUNS_MAX];
    for (uint32_t i = 0; i < x->set_count; i++)
        named[m.run_count++] = x->set[i];
    bool flushed = x->flush == IDS_FLUSH_DONE;
    if (flushed) {
        assert(m.run_count < IDS_RUNS_MAX); /* ids_freeze left room */
        named[m.run_count++] = x->flushed;
        m.covered_seq = x->frozen_seq;
    }
    size_t bytes = ids_manifest_bytes(m.run_count);
    if (cap < bytes) {
        pthread_mutex_unlock(&x->lock);
        return -ERANGE;
    }
    for (uint32_t i = 0; i < x->mapped_count; i++)
        x->mapped[i]->in_proposal = false;
    for (uint32_t i = 0; i < m.run_count; i++) {
        m.runs[i] = (ids_manifest_run){named[i]->number, named[i]->g.count,
                                       named[i]->header_sum};
        named[i]->in_proposal = named[i]->proposed = true;
    }
    ids_manifest_encode(&m, buf);
    x->has_proposal = true;
    x->proposal_flushed = flushed;
    x->proposal_seq = m.covered_seq;
    pthread_mutex_unlock(&x->lock);
    *len = bytes;
    return 0;
}

int ids_commit_done(ids *x, int rc)
{
    assert(!x->read_only);
    if (rc != 0) {
        ids_abort(x);
        return 0;
    }
    bool drop_frozen = false;
    pthread_mutex_lock(&x->lock);
    assert(x->has_proposal);
    for (uint32_t i = 0; i < x->mapped_count; i++) {
        ids_run *r = x->mapped[i];
        r->in_committed = r->in_proposal;
        r->in_proposal = false;
        r->proposed = false; /* this commit supersedes every manifest before it */
    }
    x->committed_seq = x->proposal_seq;
    if (x->proposal_flushed) {
        assert(x->flush == IDS_FLUSH_DONE);
        ids_set_insert(x, x->flushed);
        x->flushed = NULL;
        x->flush = IDS_FLUSH_IDLE;
        drop_frozen = true;
    }
    x->has_proposal = false;
    int out = ids_collect(x);
    pthread_cond_signal(&x->merge_cv);
    pthread_mutex_unlock(&x->lock);
    if (drop_frozen) {
        /* The frozen table's keys are in the run now: unlocked is fine, as
         * only the owner reads it once the flush is done. */
        x->has_frozen = false;
        ids_table_free(&x->frozen);
    }
    return out;
}

void ids_abort(ids *x)
{
    assert(!x->read_only);
    pthread_mutex_lock(&x->lock);
    while (x->flush == IDS_FLUSH_RUNNING)
        pthread_cond_wait(&x->done_cv, &x->lock);
    /* A merge of committed runs stays valid (they are searched again
     * below); one that read an uncommitted run is dropped. */
    bool committed_inputs = true;
    for (uint32_t i = 0; i < x->mapped_count; i++)
        committed_inputs &= !x->mapped[i]->merging || x->mapped[i]->in_committed;
    if (!committed_inputs) {
        ids_merge_quiesce(x, true);
        if (x->merge_out) {
            for (uint32_t i = 0; i < x->mapped_count; i++)
                x->mapped[i]->merging = false;
            x->merge_out = NULL; /* never proposed: collected below */
        }
    }
    x->flushed = NULL; /* kept by collect if a manifest named it */
    x->flush = IDS_FLUSH_IDLE;
    x->has_proposal = false;
    x->set_count = 0;
    for (uint32_t i = 0; i < x->mapped_count; i++) {
        ids_run *r = x->mapped[i];
        r->in_proposal = false;
        r->in_set = false;
        if (r->in_committed)
            ids_set_insert(x, r);
    }
    ids_collect(x);
    pthread_cond_signal(&x->merge_cv);
    pthread_mutex_unlock(&x->lock);
    if (x->has_frozen) {
        x->has_frozen = false;
        ids_table_free(&x->frozen);
    }
    ids_table_clear(&x->active);
}

int ids_poll(ids *x)
{
    if (x->read_only)
        return 0;
    pthread_mutex_lock(&x->lock);
    ids_run *out = x->merge_out;
    if (out) {
        for (uint32_t i = x->set_count; i-- > 0;)
            if (x->set[i]->merging) {
                x->set[i]->merging = false;
                ids_set_remove(x, x->set[i]);
            }
        ids_set_insert(x, out);
        x->merge_out = NULL;
        x->merges++;
        x->merge_keys += out->g.count;
        ids_collect(x);
        pthread_cond_signal(&x->merge_cv);
    }
    int rc = x->merge_rc;
    x->merge_rc = 0;
    if (rc < 0)
        snprintf(x->err, sizeof(x->err), "%s", x->merge_err);
    pthread_mutex_unlock(&x->lock);
    return rc;
}

int ids_wait_merges(ids *x)
{
    if (x->read_only)
        return 0;
    int rc = 0;
    pthread_mutex_lock(&x->lock);
    for (;;) {
        if (x->merge_out || x->merge_rc) {
            pthread_mutex_unlock(&x->lock);
            int prc = ids_poll(x);
            rc = rc ? rc : prc;
            pthread_mutex_lock(&x->lock);
            continue;
        }
        ids_run *in[IDS_MERGE_FANIN];
        if (!x->merge_running && !ids_merge_choose(x, in))
            break;
        pthread_cond_signal(&x->merge_cv);
        pthread_cond_wait(&x->done_cv, &x->lock);
    }
    pthread_mutex_unlock(&x->lock);
    return rc;
}

uint64_t ids_covered_seq(const ids *x) { return x->committed_seq; }

int ids_manifest_covered(const void *manifest, size_t len, uint64_t *seq)
{
    ids_manifest_blob m;
    int rc = ids_manifest_decode(manifest, len, &m, NULL, 0);
    if (rc == 0)
        *seq = m.covered_seq;
    return rc;
}

int ids_link_files(const os_ops *os, const char *src_dir, const void *manifest, size_t len,
                   const char *dest_dir)
{
    os = os ? os : os_default();
    ids_manifest_blob m;
    int rc = ids_manifest_decode(manifest, len, &m, NULL, 0);
    for (uint32_t i = 0; rc == 0 && i < m.run_count; i++) {
        char name[IDS_NAME_BYTES], tmp_name[IDS_NAME_BYTES];
        char src[IDS_PATH_BYTES], dest[IDS_PATH_BYTES], tmp[IDS_PATH_BYTES];
        ids_name(name, m.runs[i].number, "run");
        ids_name(tmp_name, m.runs[i].number, "tmp");
        ids_path(src, src_dir, name);
        ids_path(dest, dest_dir, name);
        ids_path(tmp, dest_dir, tmp_name);
        struct stat a, b;
        if (stat(src, &a) < 0) {
            rc = -errno;
            break;
        }
        if (stat(dest, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino)
            continue; /* already this file */
        /* Through a .tmp name: a file of that name is replaced whole. */
        os->unlink(os->ctx, tmp);
        rc = link(src, tmp) < 0 ? -errno : 0;
        if (rc == 0)
            rc = os->rename(os->ctx, tmp, dest);
    }
    if (rc == 0)
        rc = os->fsync_dir(os->ctx, dest_dir);
    return rc;
}

int ids_link(ids *x, const void *manifest, size_t len, const char *dest_dir)
{
    pthread_mutex_lock(&x->lock);
    x->link_pins++;
    pthread_mutex_unlock(&x->lock);
    int rc = ids_link_files(x->os, x->dir, manifest, len, dest_dir);
    pthread_mutex_lock(&x->lock);
    assert(x->link_pins > 0);
    x->link_pins--;
    pthread_mutex_unlock(&x->lock);
    return rc;
}

/* Every block of r in order: checksums, trailers, fences, key order, and
 * that the filter holds every key. */
static int ids_verify_run(const ids *x, const ids_run *r, char *msg, size_t cap)
{
    char path[IDS_PATH_BYTES];
    ids_path(path, x->dir, r->name);
    /* The file's filter, and the copy lookups read. */
    int rc = ids_sums_check(r, r->map + r->g.filter_off, path, msg, cap);
    if (rc == 0 && memcmp(r->filter, r->map + r->g.filter_off, ids_filter_bytes(r)) != 0)
        rc = ids_say(msg, cap, TALLY_ECORRUPT, "ids run %s: the filter in memory differs "
                     "from the file's", path);
    ids_key last = {0, 0};
    uint64_t seen = 0;
    for (uint32_t i = 0; rc == 0 && i < r->g.block_count; i++) {
        uint32_t n;
        if ((rc = ids_block_check(x->dir, r, i, &n, msg, cap)) < 0)
            break;
        const uint8_t *b = ids_block_at(r, i);
        bool ok = ids_key_eq(ids_key_at(b), ids_fence(r, i)) &&
                  (i + 1 == r->g.block_count ||
                   ids_key_eq(ids_key_at(b + IDS_BLOCK_TRAILER_OFF), ids_fence(r, i + 1)));
        for (uint32_t e = 0; ok && e < n; e++, seen++) {
            ids_key k = ids_key_at(b + (size_t)e * IDS_ENTRY_BYTES);
            uint64_t j = ids_filter_line(k.hi, r->g.filter_lines);
            const uint8_t *line = r->map + r->g.filter_off + j * IDS_FILTER_LINE_BYTES;
            ok = (seen == 0 ? ids_key_eq(k, r->min) : ids_key_lt(last, k)) &&
                 bytes_get_le64(b + (size_t)e * IDS_ENTRY_BYTES + 16) != 0 &&
                 ids_filter_has(line, k.lo, r->g.filter_probes);
            last = k;
        }
        if (!ok)
            rc = ids_say(msg, cap, TALLY_ECORRUPT, "ids run %s: block %" PRIu32 " disagrees "
                         "with its fences, order or filter", path, i);
    }
    if (rc == 0 && (seen != r->g.count || !ids_key_eq(last, r->max)))
        rc = ids_say(msg, cap, TALLY_ECORRUPT, "ids run %s: keys disagree with the header",
                     path);
    return rc;
}

int ids_verify(ids *x, char *msg, size_t cap)
{
    for (uint32_t i = 0; i < x->set_count; i++) {
        int rc = ids_verify_run(x, x->set[i], msg, cap);
        if (rc < 0)
            return rc;
    }
    return 0;
}

void ids_stats(ids *x, ids_stats_t *out)
{
    ids_stats_t s = {.memtable_keys = x->active.count,
                     .frozen_keys = x->has_frozen ? x->frozen.count : 0,
                     .run_count = x->set_count,
                     .memtable_bytes = ids_table_bytes(&x->active) +
                                       (x->has_frozen ? ids_table_bytes(&x->frozen) : 0),
                     .filter_false_positives = x->false_positives};
    for (uint32_t i = 0; i < x->set_count; i++)
        s.run_keys += x->set[i]->g.count;
    pthread_mutex_lock(&x->lock);
    s.mapped_count = x->mapped_count;
    for (uint32_t i = 0; i < x->mapped_count; i++) {
        s.disk_bytes += x->mapped[i]->g.file_bytes;
        s.filter_bytes += ids_filter_bytes(x->mapped[i]);
    }
    s.bytes_written = x->bytes_written;
    s.flushes = x->flushes;
    s.merges = x->merges;
    s.merge_keys = x->merge_keys;
    pthread_mutex_unlock(&x->lock);
    *out = s;
}

const char *ids_error(const ids *x) { return x->err; }

const char *ids_flush_error(const ids *x) { return x->flush_err; }
