/*
 * log.c — one shard's append-only log (format and recovery rules in log.h).
 *
 * Writing: records are encoded into the filling batch buffer; log_seal()
 * hands the buffer out as one write per segment it touches and switches to
 * the other buffer, so the next batch fills while this one flushes.
 * Records are read back through a read-only MAP_SHARED mapping of each
 * segment (the page cache is coherent with the writes), or from a batch
 * buffer while they are not written yet.  A buffer starts at
 * LIMIT_BATCH_BYTES_MAX and grows, up to LIMIT_BATCH_BYTES_HARD, only for
 * one write whose records must share a batch.
 *
 * New segments are zero-filled, not fallocate()d: fallocate leaves
 * "unwritten" extents, so the first write into each block needs an extent
 * conversion committed by the filesystem's journal — a second flush per
 * batch, and (measured: ext4 shut down mid-flush) an fdatasync that can
 * return success while the conversion was lost, the acknowledged records
 * reading back as zeros.  Overwriting written blocks needs no metadata,
 * so a batch's flush is the data alone.  Zero-filling 64 MiB takes tens
 * of milliseconds, so once a segment is half full the next one is
 * prepared by a helper thread (log-N.seg.tmp, zeroed and flushed);
 * rolling over then writes its header, flushes, renames it into place and
 * flushes the directory, so a crash never leaves a half-made segment
 * under a real name.
 *
 * Finding a record by seq: each segment keeps the offsets of every
 * LOG_SPARSE_EVERY-th entry (an array sized at open, so readers on other
 * threads can read it while the writer appends); a lookup jumps there and
 * scans at most that many records.  Segments recovery did not scan get
 * theirs on first use.  ~0.13 bytes of memory per entry.
 *
 * Threads: the writer changes the segment table (new segments, retention,
 * a failure's discard) under segs_lock held for writing; readers on other
 * threads hold it for reading while they touch a mapping.  The durable end
 * is published through atomics.
 */
#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bytes.h"
#include "checksum.h"
#include "log.h"

/* ---- constants and types ------------------------------------------------ */

#define LOG_MAGIC "TALLYSEG"
#define LOG_VERSION 2
#define LOG_HEADER_BYTES 64
/* The smallest record: what bounds the entries of a segment's sparse
 * index. */
#define LOG_RECORD_BYTES_MIN (RECORD_FIXED_BYTES + 8)

typedef struct log_segment {
    uint32_t index;
    int fd; /* -1 once no batch writes here again (log_seg_fd reopens it) */
    const uint8_t *map; /* segment_bytes, PROT_READ */
    uint64_t first_seq; /* of the first entry (part 0) starting here */
    uint64_t prev;
    /* sparse[i]: offset / 8 of the entry first_seq + i * LOG_SPARSE_EVERY */
    uint32_t *sparse;
    _Atomic uint32_t sparse_count;
    uint32_t sparse_cap;
    _Atomic bool sparse_whole; /* every entry of the segment is indexed */
} log_segment;

/* Where a batch's bytes go: buf[from, from + len) at (segment file index,
 * offset). */
typedef struct log_piece {
    uint32_t seg;
    uint64_t off;
    size_t from;
} log_piece;

typedef struct log_buf {
    uint8_t *buf;
    size_t cap;
    size_t len;
    uint32_t pieces;
    log_piece piece[LIMIT_BATCH_SEGMENTS_MAX + 1];
    uint64_t first_seq, last_seq;
    uint16_t last_part;
    uint64_t last_prev;  /* checksum of its last record */
    uint32_t end_seg;    /* write position after it */
    uint64_t end_off;
    uint64_t last_rec_at; /* buf offset of its last record */
} log_buf;

struct log_t {
    log_options opts;
    char dir[4096];
    const os_ops *os;
    uint32_t segment_bytes;
    pthread_rwlock_t segs_lock;
    pthread_mutex_t sparse_lock; /* builds of a segment's sparse index */
    log_segment **segs;
    uint32_t segs_count, segs_cap;
    int status;

    /* appended (maybe not durable) */
    uint64_t last_seq, prev, last_ts_ms, bytes;
    uint16_t last_part;
    uint32_t write_seg; /* segment file index */
    uint64_t write_off;
    bool group_open;
    uint64_t group_seq;

    /* durable: published for readers on other threads */
    _Atomic uint64_t durable_seq;
    _Atomic uint32_t durable_seg;
    uint32_t fds_below; /* segments before this index have their fd closed */
    _Atomic uint64_t durable_off;
    uint64_t durable_prev, durable_bytes;
    uint16_t durable_part;

    /* What the recovery scan read at open, every checksum verified: from
     * the start of segment scan_seg to (write_seg, write_off) as of then. */
    uint32_t scan_seg, scan_end_seg;
    uint64_t scan_end_off;

    log_buf bufs[2];
    log_buf *filling;
    log_buf *sealed; /* NULL when nothing is in flight */

    /* the next segment, zero-filled ahead by a helper thread */
    pthread_t prep_thread;
    bool prep_running;
    uint32_t prep_index;
    int prep_fd;
    int prep_rc;
};

/* ---- small helpers ------------------------------------------------------ */

static void log_say(log_t *l, int level, const char *fmt, ...)
{
    if (!l->opts.log)
        return;
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    l->opts.log(l->opts.log_ctx, level, msg);
}

static void log_path(const log_t *l, uint32_t index, const char *suffix, char *out, size_t cap)
{
    snprintf(out, cap, "%s/log-%010u.seg%s", l->dir, index, suffix);
}

static log_loc log_make_loc(uint32_t seg_index, uint64_t off)
{
    return (uint64_t)seg_index << 32 | off / 8;
}

static uint32_t log_loc_seg(log_loc loc) { return (uint32_t)(loc >> 32); }
static uint64_t log_loc_off(log_loc loc) { return (loc & 0xffffffffu) * 8; }

static const char *log_decode_reason(int rc)
{
    switch (rc) {
    case RECORD_TRUNCATED: return "record runs past the written data";
    case RECORD_BAD: return "record length or fields out of range";
    case RECORD_CHECKSUM: return "checksum mismatch";
    default: return "chain broken";
    }
}

/* The segment with file index `index`, or NULL (dropped, or not made). */
static log_segment *log_seg(const log_t *l, uint32_t index)
{
    if (l->segs_count == 0 || index < l->segs[0]->index)
        return NULL;
    uint32_t k = index - l->segs[0]->index;
    return k < l->segs_count ? l->segs[k] : NULL;
}

static log_segment *log_last_seg(const log_t *l) { return l->segs[l->segs_count - 1]; }

/* Whether r may follow the record (seq, part) whose MORE flag was `more`
 * (more < 0: unknown, at the start of a scan). */
static bool log_successor(uint64_t seq, uint16_t part, int more, const record *r)
{
    bool is_part = r->type == RECORD_ALLOC;
    if (more > 0)
        return is_part && r->seq == seq && r->part == part + 1;
    if (more == 0)
        return !is_part && r->seq == seq + 1;
    return (is_part && r->seq == seq) || (!is_part && r->seq == seq + 1);
}

/* ---- segment headers ---------------------------------------------------- */

static void log_header_encode(const log_t *l, uint32_t index, uint64_t first_seq, uint64_t prev,
                              uint8_t out[LOG_HEADER_BYTES])
{
    memset(out, 0, LOG_HEADER_BYTES);
    memcpy(out, LOG_MAGIC, 8);
    out[8] = LOG_VERSION;
    out[12] = (uint8_t)l->opts.shard;
    out[13] = (uint8_t)(l->opts.shard >> 8);
    bytes_put_le64(out + 16, index);
    bytes_put_le64(out + 24, first_seq);
    bytes_put_le64(out + 32, prev);
    bytes_put_le64(out + 56, checksum64(out, 56, 0));
}

/* 0, or TALLY_EFORMAT (not ours / other version) / TALLY_ECORRUPT. */
static int log_header_check(const log_t *l, const uint8_t *h, uint32_t index, char *why,
                            size_t cap)
{
    if (memcmp(h, LOG_MAGIC, 8) != 0) {
        snprintf(why, cap, "shard %u: segment %u: bad magic", l->opts.shard, index);
        return TALLY_ECORRUPT;
    }
    if (bytes_get_le64(h + 56) != checksum64(h, 56, 0)) {
        snprintf(why, cap, "shard %u: segment %u: header checksum mismatch", l->opts.shard,
                 index);
        return TALLY_ECORRUPT;
    }
    if (h[8] != LOG_VERSION) {
        snprintf(why, cap, "shard %u: segment %u: format version %u%s", l->opts.shard, index,
                 h[8], h[8] == 1 ? " (release 1: tallyd upgrades it at start)" : " unknown");
        return TALLY_EFORMAT;
    }
    uint32_t shard = (uint32_t)h[12] | (uint32_t)h[13] << 8;
    if (shard != l->opts.shard || bytes_get_le64(h + 16) != index) {
        snprintf(why, cap, "shard %u: segment %u: belongs to shard %u segment %llu",
                 l->opts.shard, index, shard, (unsigned long long)bytes_get_le64(h + 16));
        return TALLY_ECORRUPT;
    }
    return 0;
}

/* ---- segment table -------------------------------------------------------- */

static void log_seg_free(log_t *l, log_segment *s)
{
    if (!s)
        return;
    if (s->map)
        munmap((void *)s->map, l->segment_bytes);
    if (s->fd >= 0)
        l->os->close(l->os->ctx, s->fd);
    free(s->sparse);
    free(s);
}

static log_segment *log_seg_new(log_t *l, uint32_t index, int fd)
{
    log_segment *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->index = index;
    s->fd = fd;
    s->sparse_cap = l->segment_bytes / LOG_RECORD_BYTES_MIN / LOG_SPARSE_EVERY + 2;
    s->sparse = calloc(s->sparse_cap, sizeof(*s->sparse));
    void *m = mmap(NULL, l->segment_bytes, PROT_READ, MAP_SHARED, fd, 0);
    if (!s->sparse || m == MAP_FAILED) {
        free(s->sparse);
        free(s);
        return NULL;
    }
    s->map = m;
    return s;
}

/* A segment's file descriptor, reopened if it was closed.  A log of many
 * segments (years of them, or small ones) keeps one descriptor per
 * segment only while batches may still write there: reads go through the
 * mappings, which need no descriptor. */
static int log_seg_fd(log_t *l, log_segment *s)
{
    if (s->fd >= 0)
        return s->fd;
    char path[4200];
    log_path(l, s->index, "", path, sizeof(path));
    int fd = l->os->open(l->os->ctx, path, l->opts.read_only ? O_RDONLY : O_RDWR, 0);
    if (fd >= 0)
        s->fd = fd;
    return fd;
}

/* Closes the descriptors of segments before `index`: no batch writes there
 * again (they are before the durable end), and recovery has passed them. */
static void log_close_fds_below(log_t *l, uint32_t index)
{
    for (uint32_t i = l->fds_below; i < index; i++) {
        log_segment *s = log_seg(l, i);
        if (s && s->fd >= 0) {
            l->os->close(l->os->ctx, s->fd);
            s->fd = -1;
        }
    }
    if (index > l->fds_below)
        l->fds_below = index;
}

/* Adds a segment at the end of the table (under the write lock: readers
 * may be walking it). */
static int log_segs_push(log_t *l, log_segment *s)
{
    pthread_rwlock_wrlock(&l->segs_lock);
    int rc = 0;
    if (l->segs_count == l->segs_cap) {
        uint32_t cap = l->segs_cap ? l->segs_cap * 2 : 16;
        log_segment **n = realloc(l->segs, cap * sizeof(*n));
        if (n) {
            l->segs = n;
            l->segs_cap = cap;
        } else {
            rc = -ENOMEM;
        }
    }
    if (rc == 0)
        l->segs[l->segs_count++] = s;
    pthread_rwlock_unlock(&l->segs_lock);
    return rc;
}

/* Notes that the entry `seq` starts at off in segment s, if it is one the
 * sparse index keeps.  Only entries of s appended in order come here. */
static void log_sparse_note(log_segment *s, uint64_t seq, uint64_t off)
{
    if (seq < s->first_seq || (seq - s->first_seq) % LOG_SPARSE_EVERY != 0)
        return;
    uint64_t i = (seq - s->first_seq) / LOG_SPARSE_EVERY;
    uint32_t n = atomic_load(&s->sparse_count);
    if (i != n || n >= s->sparse_cap)
        return; /* already noted (a rescan), or not in order */
    s->sparse[n] = (uint32_t)(off / 8);
    atomic_store(&s->sparse_count, n + 1);
}

/* ---- segment files ------------------------------------------------------ */

/* Creates log-index.seg.tmp, every byte written (zeros) and flushed:
 * *fd on success. */
static int log_segment_zero(log_t *l, uint32_t index, int *fd_out)
{
    static const uint8_t zeros[1 << 16];
    char tmp[4200];
    log_path(l, index, ".tmp", tmp, sizeof(tmp));
    const os_ops *os = l->os;
    int fd = os->open(os->ctx, tmp, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        return fd;
    int rc = 0;
    for (uint64_t off = 0; rc == 0 && off < l->segment_bytes; off += sizeof(zeros))
        rc = os_pwrite_all(os, fd, zeros, sizeof(zeros), off);
    if (rc == 0)
        rc = os->fdatasync(os->ctx, fd);
    if (rc < 0) {
        os->close(os->ctx, fd);
        os->unlink(os->ctx, tmp);
        return rc;
    }
    *fd_out = fd;
    return 0;
}

static void *log_prep_main(void *arg)
{
    log_t *l = arg;
    l->prep_rc = log_segment_zero(l, l->prep_index, &l->prep_fd);
    return NULL;
}

/* Starts zero-filling segment `index` on a helper thread. */
static void log_prep_start(log_t *l, uint32_t index)
{
    if (l->prep_running || l->opts.read_only)
        return;
    l->prep_index = index;
    l->prep_fd = -1;
    l->prep_rc = 0;
    l->prep_running = pthread_create(&l->prep_thread, NULL, log_prep_main, l) == 0;
}

/* Waits for the helper; its file (if it made segment `index`) in *fd, or
 * -1. */
static void log_prep_join(log_t *l, uint32_t index, int *fd)
{
    *fd = -1;
    if (!l->prep_running)
        return;
    pthread_join(l->prep_thread, NULL);
    l->prep_running = false;
    if (l->prep_rc == 0 && l->prep_index == index)
        *fd = l->prep_fd;
    else if (l->prep_rc == 0)
        l->os->close(l->os->ctx, l->prep_fd); /* another index: its .tmp goes at next open */
}

/* Creates segment `index` starting at first_seq with chain value prev. */
static int log_segment_create(log_t *l, uint32_t index, uint64_t first_seq, uint64_t prev)
{
    char tmp[4200], path[4200];
    log_path(l, index, ".tmp", tmp, sizeof(tmp));
    log_path(l, index, "", path, sizeof(path));
    const os_ops *os = l->os;
    int fd;
    log_prep_join(l, index, &fd);
    int rc = fd >= 0 ? 0 : log_segment_zero(l, index, &fd);
    if (rc < 0)
        return rc;
    uint8_t h[LOG_HEADER_BYTES];
    log_header_encode(l, index, first_seq, prev, h);
    rc = os_pwrite_all(os, fd, h, sizeof(h), 0);
    if (rc == 0)
        rc = os->fdatasync(os->ctx, fd);
    if (rc == 0)
        rc = os->rename(os->ctx, tmp, path);
    if (rc == 0)
        rc = os->fsync_dir(os->ctx, l->dir);
    log_segment *s = rc == 0 ? log_seg_new(l, index, fd) : NULL;
    if (rc == 0 && !s)
        rc = -ENOMEM;
    if (rc == 0) {
        s->first_seq = first_seq;
        s->prev = prev;
        atomic_store(&s->sparse_whole, true); /* every entry in it is appended here */
        rc = log_segs_push(l, s);
    }
    if (rc < 0) {
        if (s)
            log_seg_free(l, s);
        else
            os->close(os->ctx, fd);
        os->unlink(os->ctx, tmp);
    }
    return rc;
}

static int log_cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Lists segment indexes in the directory, sorted; removes stale .tmp
 * files (a segment creation that crashed) unless read_only. */
static int log_list(log_t *l, uint32_t **out, uint32_t *count)
{
    DIR *d = opendir(l->dir);
    if (!d)
        return errno == ENOENT && l->opts.read_only ? 0 : -errno;
    uint32_t *v = NULL, n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        unsigned idx;
        char tail[16] = "";
        if (sscanf(de->d_name, "log-%10u.seg%15s", &idx, tail) < 1)
            continue;
        if (strcmp(tail, ".tmp") == 0) {
            if (!l->opts.read_only) {
                char p[4400];
                snprintf(p, sizeof(p), "%s/%s", l->dir, de->d_name);
                l->os->unlink(l->os->ctx, p);
            }
            continue;
        }
        if (tail[0] != 0)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            uint32_t *nv = realloc(v, cap * sizeof(*v));
            if (!nv) {
                free(v);
                closedir(d);
                return -ENOMEM;
            }
            v = nv;
        }
        v[n++] = idx;
    }
    closedir(d);
    if (n)
        qsort(v, n, sizeof(*v), log_cmp_u32);
    *out = v;
    *count = n;
    return 0;
}

static int log_segment_open(log_t *l, uint32_t index, char *why, size_t cap)
{
    char path[4200];
    log_path(l, index, "", path, sizeof(path));
    int fd = l->os->open(l->os->ctx, path, l->opts.read_only ? O_RDONLY : O_RDWR, 0);
    if (fd < 0)
        return fd;
    struct stat st;
    if (fstat(fd, &st) < 0 || (uint64_t)st.st_size != l->segment_bytes) {
        snprintf(why, cap, "shard %u: segment %u: size %lld, expected %u", l->opts.shard,
                 index, (long long)st.st_size, l->segment_bytes);
        l->os->close(l->os->ctx, fd);
        return TALLY_ECORRUPT;
    }
    log_segment *s = log_seg_new(l, index, fd);
    if (!s) {
        l->os->close(l->os->ctx, fd);
        return -ENOMEM;
    }
    int rc = log_header_check(l, s->map, index, why, cap);
    if (rc == 0) {
        s->first_seq = bytes_get_le64(s->map + 24);
        s->prev = bytes_get_le64(s->map + 32);
        rc = log_segs_push(l, s);
    }
    if (rc < 0) {
        log_seg_free(l, s);
        return rc;
    }
    /* Opening thousands of segments: only the newest keep descriptors
     * (recovery reopens one it truncates). */
    if (index >= 2)
        log_close_fds_below(l, index - 1);
    return 0;
}

int log_dir_version(const char *dir)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/log-%010u.seg", dir, 1u);
    DIR *d = opendir(dir);
    if (!d)
        return errno == ENOENT ? 0 : -errno;
    struct dirent *de;
    int version = 0;
    while (version == 0 && (de = readdir(d)) != NULL) {
        unsigned idx;
        char tail[16] = "";
        if (sscanf(de->d_name, "log-%10u.seg%15s", &idx, tail) < 1 || tail[0] != 0)
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        uint8_t h[LOG_HEADER_BYTES];
        if (fd >= 0 && pread(fd, h, sizeof(h), 0) == (ssize_t)sizeof(h) &&
            memcmp(h, LOG_MAGIC, 8) == 0)
            version = h[8];
        if (fd >= 0)
            close(fd);
    }
    closedir(d);
    return version;
}

/* ---- recovery ----------------------------------------------------------- */

/* Index in segs[] of the segment holding entry seq (the last one whose
 * first entry is at or before it). */
static uint32_t log_seg_for(const log_t *l, uint64_t seq)
{
    uint32_t lo = 0, hi = l->segs_count;
    while (hi - lo > 1) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (l->segs[mid]->first_seq <= seq)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

/* True if a record that decodes cleanly and belongs to a batch after
 * `seq` lies at or after (segs[k], off): then the damage at seq is not a
 * torn last batch but corruption of acknowledged data. */
static bool log_later_batch_follows(const log_t *l, uint32_t k, uint64_t off, uint64_t seq)
{
    for (uint32_t j = k; j < l->segs_count; j++) {
        const uint8_t *m = l->segs[j]->map;
        for (uint64_t o = j == k ? off + 8 : LOG_HEADER_BYTES;
             o + LOG_RECORD_BYTES_MIN <= l->segment_bytes; o += 8) {
            if (m[o] == 0 && m[o + 1] == 0 && m[o + 2] == 0 && m[o + 3] == 0)
                continue;
            record r;
            size_t len;
            uint64_t sum;
            if (record_decode(m + o, l->segment_bytes - o, &r, &len, &sum) == RECORD_OK &&
                r.seq - r.batch_back > seq)
                return true;
        }
    }
    return false;
}

/* True if any byte of segs[k] from off on is not zero. */
static bool log_data_after(const log_t *l, uint32_t k, uint64_t off)
{
    /* Records are 8-byte aligned and segments whole pages: eight bytes at
     * a time (a whole segment at recovery, so it matters). */
    const uint8_t *m = l->segs[k]->map;
    assert(off % 8 == 0 && l->segment_bytes % 8 == 0);
    for (uint64_t o = off; o < l->segment_bytes; o += 8) {
        uint64_t w;
        memcpy(&w, m + o, 8);
        if (w != 0)
            return true;
    }
    return false;
}

/* Zeroes segs[k] from off to its last non-zero byte, and removes every
 * later segment (they hold only the torn batch's remains), so writing
 * resumes at (segs[k], off) and the next segment is made afresh. */
static int log_zero_tail(log_t *l, uint32_t k, uint64_t off, uint64_t *zeroed)
{
    static const uint8_t zeros[4096];
    log_segment *sg = l->segs[k];
    const uint8_t *m = sg->map;
    uint64_t end = l->segment_bytes;
    while (end > off && m[end - 1] == 0)
        end--;
    for (uint64_t o = off; o < end; o += sizeof(zeros)) {
        size_t n = end - o < sizeof(zeros) ? (size_t)(end - o) : sizeof(zeros);
        int fd = log_seg_fd(l, sg);
        int rc = fd < 0 ? fd : os_pwrite_all(l->os, fd, zeros, n, o);
        if (rc < 0)
            return rc;
    }
    if (end > off) {
        int rc = l->os->fdatasync(l->os->ctx, log_seg_fd(l, sg));
        if (rc < 0)
            return rc;
        *zeroed += end - off;
    }
    /* The sparse index may name entries that are gone now. */
    while (atomic_load(&sg->sparse_count) > 0 &&
           (uint64_t)sg->sparse[atomic_load(&sg->sparse_count) - 1] * 8 >= off)
        atomic_fetch_sub(&sg->sparse_count, 1);
    while (l->segs_count > k + 1) {
        log_segment *s = log_last_seg(l);
        char path[4200];
        log_path(l, s->index, "", path, sizeof(path));
        *zeroed += l->segment_bytes;
        pthread_rwlock_wrlock(&l->segs_lock);
        l->segs_count--;
        pthread_rwlock_unlock(&l->segs_lock);
        log_seg_free(l, s);
        int rc = l->os->unlink(l->os->ctx, path);
        if (rc < 0)
            return rc;
        rc = l->os->fsync_dir(l->os->ctx, l->dir);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* The scan of recovery: where it is and what it has seen. */
typedef struct log_scan {
    uint32_t k;          /* segs[] position */
    uint64_t off;
    uint64_t seq;        /* last valid record */
    uint16_t part;
    int more;            /* its RECORD_F_MORE (-1 unknown: before the first) */
    uint64_t prev;
    uint64_t ts, bytes;
    uint16_t rflags;     /* of the last valid record */
    /* where the last entry (part 0) and the last group began */
    bool entry_seen, group_seen;
    uint64_t entry_seq, group_start;
    uint32_t entry_k, group_k;
    uint64_t entry_off, group_off, entry_bytes, group_bytes;
    uint64_t entry_prev, group_prev, entry_ts, group_ts;
} log_scan;

/* Records a valid record r of len bytes at the scan position. */
static void log_scan_take(log_t *l, log_scan *sc, const record *r, size_t len, uint64_t sum,
                          log_recovery *rec)
{
    if (r->part == 0) {
        sc->entry_seen = true;
        sc->entry_seq = r->seq;
        sc->entry_k = sc->k;
        sc->entry_off = sc->off;
        sc->entry_bytes = sc->bytes;
        sc->entry_prev = sc->prev;
        sc->entry_ts = sc->ts;
        log_sparse_note(l->segs[sc->k], r->seq, sc->off);
        if ((r->rflags & RECORD_F_GROUP) && r->group_back == 0) {
            sc->group_seen = true;
            sc->group_start = r->seq;
            sc->group_k = sc->k;
            sc->group_off = sc->off;
            sc->group_bytes = sc->bytes;
            sc->group_prev = sc->prev;
            sc->group_ts = sc->ts;
        }
    }
    sc->seq = r->seq;
    sc->part = r->part;
    sc->more = (r->rflags & RECORD_F_MORE) != 0;
    sc->rflags = r->rflags;
    sc->prev = sum;
    sc->ts = r->ts_ms > sc->ts ? r->ts_ms : sc->ts;
    sc->bytes += len;
    sc->off += len;
    rec->scanned++;
    if ((rec->scanned & 0xfffff) == 0)
        log_say(l, 0, "shard %u: recovery scanned %llu records (seq %llu)", l->opts.shard,
                (unsigned long long)rec->scanned, (unsigned long long)r->seq);
}

/* After the scan: an entry whose allocation parts or a group whose
 * records did not all land is cut whole — the valid log ends before it.
 * 1 if the scan position moved back, 0 if nothing was partial, or
 * TALLY_ECORRUPT if the partial write began before the scan (in records
 * the checkpoint trusts: a write never straddles a checkpoint). */
static int log_scan_cut_partial(log_scan *sc)
{
    bool in_group = (sc->rflags & RECORD_F_GROUP) && !(sc->rflags & RECORD_F_GROUP_END);
    if (!in_group && sc->more <= 0)
        return 0;
    if (in_group ? !sc->group_seen : !sc->entry_seen)
        return TALLY_ECORRUPT;
    sc->k = in_group ? sc->group_k : sc->entry_k;
    sc->off = in_group ? sc->group_off : sc->entry_off;
    sc->bytes = in_group ? sc->group_bytes : sc->entry_bytes;
    sc->prev = in_group ? sc->group_prev : sc->entry_prev;
    sc->ts = in_group ? sc->group_ts : sc->entry_ts;
    sc->seq = (in_group ? sc->group_start : sc->entry_seq) - 1;
    sc->part = 0;
    sc->more = 0;
    sc->rflags = 0;
    return 1;
}

/* Zeroes the log from the scan position (unless read-only) and reports
 * a torn tail at seq: what was there (`why`). */
static int log_scan_truncate(log_t *l, log_scan *sc, uint64_t seq, const char *why,
                             log_recovery *rec)
{
    rec->torn_seq = seq;
    uint64_t zeroed = 0;
    if (!l->opts.read_only) {
        int rc = log_zero_tail(l, sc->k, sc->off, &zeroed);
        if (rc < 0)
            return rc;
    }
    rec->torn_bytes = zeroed ? zeroed : 1;
    snprintf(rec->message, sizeof(rec->message),
             "shard %u: torn tail at seq %llu (segment %u offset %llu): %s; %s", l->opts.shard,
             (unsigned long long)seq, l->segs[sc->k]->index, (unsigned long long)sc->off, why,
             l->opts.read_only ? "left in place (read-only)" : "truncated");
    log_say(l, 1, "%s", rec->message);
    return 0;
}

static void log_scan_corrupt(log_t *l, const log_scan *sc, uint64_t seq, const char *why,
                             log_recovery *rec)
{
    snprintf(rec->message, sizeof(rec->message),
             "shard %u: corrupt record at seq %llu (segment %u offset %llu): %s", l->opts.shard,
             (unsigned long long)seq, l->segs[sc->k]->index, (unsigned long long)sc->off, why);
    rec->status = TALLY_ECORRUPT;
}

/* The end of the valid log was found at the scan position, the record
 * (next_seq) that should be there is not: a torn tail (zeroed, reported)
 * or corruption (refused).  `why` says what was there. */
static int log_scan_break(log_t *l, log_scan *sc, const char *why, uint64_t next_seq,
                          log_recovery *rec)
{
    /* An uncommitted import's records (and whatever tore after them) go,
     * however many batches of it follow. */
    if (l->opts.cut_seq && next_seq >= l->opts.cut_seq)
        return log_scan_truncate(l, sc, next_seq, why, rec);
    if (next_seq <= l->opts.from_seq || log_later_batch_follows(l, sc->k, sc->off, next_seq)) {
        log_scan_corrupt(l, sc, next_seq, why, rec);
        return 0;
    }
    if (log_scan_cut_partial(sc) < 0) {
        log_scan_corrupt(l, sc, next_seq, "a write cut short before the checkpoint", rec);
        return 0;
    }
    return log_scan_truncate(l, sc, next_seq, why, rec);
}

/* The clean end of the log (zeros and nothing after them): only a
 * partial group or entry before it is cut. */
static int log_scan_end(log_t *l, log_scan *sc, log_recovery *rec)
{
    uint64_t seq = sc->seq;
    int cut = log_scan_cut_partial(sc);
    if (cut < 0)
        log_scan_corrupt(l, sc, seq, "a write cut short before the checkpoint", rec);
    if (cut <= 0)
        return 0;
    return log_scan_truncate(l, sc, sc->seq + 1,
                             "the records of a group or an entry's allocation did not all land",
                             rec);
}

/* Scans from the segment holding from_seq + 1 to the end of the valid
 * log, setting the write position, and classifies the first bad record. */
static int log_recover(log_t *l, log_recovery *rec)
{
    uint32_t k = log_seg_for(l, l->opts.from_seq + 1);
    log_scan sc = {.k = k, .off = LOG_HEADER_BYTES, .seq = l->segs[k]->first_seq - 1,
                   .more = -1, .prev = l->segs[k]->prev};
    if (k > 0 && l->segs[k - 1]->first_seq > l->segs[k]->first_seq)
        return TALLY_ECORRUPT;
    if (l->segs[k]->first_seq > l->opts.from_seq + 1) {
        /* Retention dropped records the state has not seen: nothing can
         * bring the state up to date. */
        snprintf(rec->message, sizeof(rec->message),
                 "shard %u: the log starts at seq %llu (older segments dropped) but the "
                 "state reflects only seq %llu",
                 l->opts.shard, (unsigned long long)l->segs[k]->first_seq,
                 (unsigned long long)l->opts.from_seq);
        rec->status = TALLY_ECORRUPT;
    }
    int rc = 0;
    while (rec->status == 0) {
        const uint8_t *m = l->segs[sc.k]->map;
        record r;
        size_t len = 0;
        uint64_t sum = 0;
        int drc = record_decode(m + sc.off, l->segment_bytes - sc.off, &r, &len, &sum);
        bool end = drc == RECORD_END ||
                   (drc == RECORD_TRUNCATED && sc.off + 4 > l->segment_bytes);
        uint64_t next_seq = sc.more > 0 ? sc.seq : sc.seq + 1;
        if (end && sc.k + 1 < l->segs_count) {
            /* The next segment continues the chain exactly, or the log
             * breaks here.  A rollover writes the next segment's header
             * (fsynced, renamed into place) while the batch that crosses
             * into it is still being filled: a crash can leave that header
             * — and records of the same batch behind it — with this
             * segment's tail never written.  That is a torn last batch,
             * classified like any other break. */
            const log_segment *nx = l->segs[sc.k + 1];
            if (nx->first_seq == sc.seq + 1 && nx->prev == sc.prev) {
                sc.k++;
                sc.off = LOG_HEADER_BYTES;
                continue;
            }
            char why[96];
            snprintf(why, sizeof(why), "segment %u does not continue the chain", nx->index);
            rc = log_scan_break(l, &sc, why, next_seq, rec);
            break;
        }
        if (end && !log_data_after(l, sc.k, sc.off)) {
            rc = log_scan_end(l, &sc, rec); /* the clean end of the log */
            break;
        }
        bool ok = !end && drc == RECORD_OK && r.prev == sc.prev &&
                  log_successor(sc.seq, sc.part, sc.more, &r);
        if (ok && l->opts.cut_seq && r.part == 0 && r.seq >= l->opts.cut_seq) {
            rc = log_scan_break(l, &sc,
                                l->opts.cut_reason ? l->opts.cut_reason
                                                   : "an import that never committed",
                                r.seq, rec);
            break;
        }
        if (ok) {
            log_scan_take(l, &sc, &r, len, sum, rec);
            continue;
        }
        /* The first lie: torn tail or corruption (DESIGN-NOTES §7).  Zeros
         * where a record should be, with data after them, are handled as a
         * bad record: a zeroed block from a record boundary must not hide
         * the records after it. */
        rc = log_scan_break(l, &sc,
                            end                ? "zeros where a record should be"
                            : drc != RECORD_OK ? log_decode_reason(drc)
                                               : "chain broken",
                            next_seq, rec);
        break;
    }
    if (rc < 0)
        return rc;
    /* Every segment from k on was scanned from its start. */
    for (uint32_t j = k; j < l->segs_count; j++)
        atomic_store(&l->segs[j]->sparse_whole, true);
    /* Where the valid log ends (after a cut: before the partial write). */
    l->last_seq = sc.seq;
    l->prev = sc.prev;
    l->last_part = 0;
    l->last_ts_ms = sc.ts;
    l->bytes = sc.bytes;
    l->write_seg = l->segs[sc.k]->index;
    l->write_off = sc.off;
    l->durable_prev = l->prev;
    l->durable_bytes = l->bytes;
    l->durable_part = 0;
    atomic_store(&l->durable_seq, l->last_seq);
    atomic_store(&l->durable_seg, l->write_seg);
    atomic_store(&l->durable_off, l->write_off);
    l->scan_seg = l->segs[k]->index;
    l->scan_end_seg = l->write_seg;
    l->scan_end_off = l->write_off;
    rec->last_seq = l->last_seq;
    rec->last_ts_ms = sc.ts;
    l->status = rec->status;
    return 0;
}

/* ---- open / close ------------------------------------------------------- */

static int log_open_segments(log_t *l, log_recovery *rec)
{
    uint32_t *idx = NULL, n = 0;
    int rc = log_list(l, &idx, &n);
    if (rc == 0 && n > 0) {
        /* Existing segments keep the size they were made with. */
        char path[4200];
        struct stat st;
        log_path(l, idx[n - 1], "", path, sizeof(path));
        if (stat(path, &st) == 0 && st.st_size >= LIMIT_SEGMENT_BYTES_MIN)
            l->segment_bytes = (uint32_t)st.st_size;
    }
    /* Each segment's header is read below through its mapping, one page
     * fault after another: with a cold page cache (a restart after a
     * reboot) a disk read each, ~10 ms apiece on a virtual disk, seconds
     * for a big log.  Asking for every header first queues those reads
     * together.  Only a hint: a segment it cannot open is found below. */
    for (uint32_t i = 0; rc == 0 && i < n; i++) {
        char path[4200];
        log_path(l, idx[i], "", path, sizeof(path));
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            (void)posix_fadvise(fd, 0, LOG_HEADER_BYTES, POSIX_FADV_WILLNEED);
            close(fd);
        }
    }
    for (uint32_t i = 0; rc == 0 && i < n; i++) {
        if (i > 0 && idx[i] != idx[i - 1] + 1) {
            snprintf(rec->message, sizeof(rec->message), "shard %u: segment %u is missing",
                     l->opts.shard, idx[i - 1] + 1);
            rc = TALLY_ECORRUPT;
            break;
        }
        rc = log_segment_open(l, idx[i], rec->message, sizeof(rec->message));
    }
    free(idx);
    if (rc == 0 && l->segs_count == 0 && !l->opts.read_only)
        rc = log_segment_create(l, 1, l->opts.first_seq ? l->opts.first_seq : 1,
                                l->opts.first_seq ? l->opts.first_prev : 0);
    return rc;
}

static int log_buf_init(log_buf *b)
{
    b->buf = malloc(LIMIT_BATCH_BYTES_MAX);
    b->cap = b->buf ? LIMIT_BATCH_BYTES_MAX : 0;
    return b->buf ? 0 : -ENOMEM;
}

int log_open(const log_options *opts, log_t **out, log_recovery *rec)
{
    *rec = (log_recovery){0};
    log_t *l = calloc(1, sizeof(*l));
    if (!l)
        return -ENOMEM;
    l->opts = *opts;
    snprintf(l->dir, sizeof(l->dir), "%s", opts->dir);
    l->opts.dir = l->dir;
    l->os = opts->os ? opts->os : os_default();
    pthread_rwlock_init(&l->segs_lock, NULL);
    pthread_mutex_init(&l->sparse_lock, NULL);
    l->segment_bytes = opts->segment_bytes ? opts->segment_bytes : LIMIT_SEGMENT_BYTES_DEFAULT;
    if (l->segment_bytes < LIMIT_SEGMENT_BYTES_MIN || l->segment_bytes % 4096 ||
        (opts->cut_seq && opts->cut_seq <= opts->from_seq)) {
        log_close(l);
        return -EINVAL;
    }
    int rc = 0;
    if (!opts->read_only)
        for (int i = 0; i < 2 && rc == 0; i++)
            rc = log_buf_init(&l->bufs[i]);
    if (rc == 0)
        rc = log_open_segments(l, rec);
    if (rc == TALLY_ECORRUPT) {
        /* Opened refused: nothing can be read or appended. */
        rec->status = l->status = TALLY_ECORRUPT;
        rc = 0;
    } else if (rc == 0 && l->segs_count > 0) {
        rc = log_recover(l, rec);
    }
    if (rc < 0) {
        log_close(l);
        return rc;
    }
    l->filling = &l->bufs[0];
    *out = l;
    return 0;
}

void log_close(log_t *l)
{
    if (!l)
        return;
    int fd;
    log_prep_join(l, UINT32_MAX, &fd); /* its .tmp is removed at the next open */
    for (uint32_t i = 0; i < l->segs_count; i++)
        log_seg_free(l, l->segs[i]);
    free(l->segs);
    free(l->bufs[0].buf);
    free(l->bufs[1].buf);
    pthread_rwlock_destroy(&l->segs_lock);
    pthread_mutex_destroy(&l->sparse_lock);
    free(l);
}

int log_status(const log_t *l) { return l->status; }
uint64_t log_last_seq(const log_t *l) { return l->last_seq; }
uint64_t log_durable_seq(const log_t *l) { return atomic_load(&l->durable_seq); }
uint64_t log_bytes(const log_t *l) { return l->bytes; }

uint64_t log_first_seq(const log_t *l)
{
    pthread_rwlock_rdlock((pthread_rwlock_t *)&l->segs_lock);
    uint64_t v = l->segs_count ? l->segs[0]->first_seq : l->last_seq + 1;
    pthread_rwlock_unlock((pthread_rwlock_t *)&l->segs_lock);
    return v;
}


/* ---- appending ---------------------------------------------------------- */

size_t log_batch_bytes(const log_t *l) { return l->filling ? l->filling->len : 0; }

uint32_t log_batch_records(const log_t *l)
{
    if (!l->filling || l->filling->len == 0)
        return 0;
    return (uint32_t)(l->filling->last_seq - l->filling->first_seq + 1);
}

bool log_batch_room(const log_t *l, size_t bytes)
{
    return l->filling && l->filling->len + bytes <= LIMIT_BATCH_BYTES_MAX;
}

/* Makes room for `bytes` more in the filling buffer (growing it up to
 * LIMIT_BATCH_BYTES_HARD). */
static int log_buf_reserve(log_buf *b, size_t bytes)
{
    if (b->len + bytes <= b->cap)
        return 0;
    if (b->len + bytes > LIMIT_BATCH_BYTES_HARD)
        return TALLY_ETOOBIG;
    size_t cap = b->cap * 2;
    while (cap < b->len + bytes)
        cap *= 2;
    if (cap > LIMIT_BATCH_BYTES_HARD)
        cap = LIMIT_BATCH_BYTES_HARD;
    uint8_t *n = realloc(b->buf, cap);
    if (!n)
        return -ENOMEM;
    b->buf = n;
    b->cap = cap;
    return 0;
}

/* Moves the write position to a new segment for a record that does not
 * fit in the current one. */
static int log_roll(log_t *l, log_buf *b)
{
    if (b->pieces >= LIMIT_BATCH_SEGMENTS_MAX + 1)
        return TALLY_ETOOBIG;
    uint32_t index = log_last_seg(l)->index + 1;
    int rc = log_segment_create(l, index, l->last_seq + 1, l->prev);
    if (rc < 0) {
        l->status = TALLY_EFAILED;
        log_say(l, 2, "shard %u: creating segment %u failed: %s", l->opts.shard, index,
                tally_strerror(rc));
        return rc;
    }
    l->write_seg = index;
    l->write_off = LOG_HEADER_BYTES;
    if (b->len > 0)
        b->piece[b->pieces++] = (log_piece){.seg = index, .off = LOG_HEADER_BYTES, .from = b->len};
    return 0;
}

/* Makes room for a record of `size` bytes at the write position (rolling
 * to a new segment when it does not fit) and starts the batch's first
 * piece. */
static int log_place(log_t *l, log_buf *b, size_t size, uint64_t seq)
{
    int rc = log_buf_reserve(b, size);
    if (rc < 0)
        return rc;
    if (l->write_off + size > l->segment_bytes) {
        if (b->len > 0 && b->pieces >= LIMIT_BATCH_SEGMENTS_MAX)
            return TALLY_ETOOBIG;
        rc = log_roll(l, b);
        if (rc < 0)
            return rc;
    }
    if (b->len == 0) {
        b->pieces = 1;
        b->piece[0] = (log_piece){.seg = l->write_seg, .off = l->write_off, .from = 0};
        b->first_seq = seq;
    }
    return 0;
}

/* The record r of `size` bytes was written at b->len with checksum sum:
 * the batch and the log move past it. */
static void log_took(log_t *l, log_buf *b, const record *r, size_t size, uint64_t sum,
                     log_loc *loc)
{
    b->last_rec_at = b->len;
    l->prev = sum;
    *loc = log_make_loc(l->write_seg, l->write_off);
    if (r->type != RECORD_ALLOC)
        log_sparse_note(log_last_seg(l), r->seq, l->write_off);
    b->len += size;
    b->last_seq = r->seq;
    b->last_part = r->part;
    b->last_prev = l->prev;
    l->last_seq = r->seq;
    l->last_part = r->part;
    if (r->ts_ms > l->last_ts_ms)
        l->last_ts_ms = r->ts_ms;
    l->bytes += size;
    l->write_off += size;
    /* Half full: have the next segment zero-filled meanwhile. */
    if (!l->prep_running && l->write_off > l->segment_bytes / 2)
        log_prep_start(l, l->write_seg + 1);
    b->end_seg = l->write_seg;
    b->end_off = l->write_off;
}

static int log_append_at(log_t *l, record *r, uint64_t ts_ms, bool keep_ts, log_loc *loc)
{
    if (l->status != 0)
        return l->status;
    if (l->opts.read_only)
        return -EROFS;
    log_buf *b = l->filling;
    bool is_part = r->type == RECORD_ALLOC;
    assert(!is_part || l->last_seq > 0);
    r->seq = is_part ? l->last_seq : l->last_seq + 1;
    r->part = is_part ? (uint16_t)(l->last_part + 1) : 0;
    size_t size = record_size(r);
    int rc = log_place(l, b, size, r->seq);
    if (rc < 0)
        return rc;
    if (!keep_ts)
        r->ts_ms = ts_ms > l->last_ts_ms ? ts_ms : l->last_ts_ms;
    r->prev = l->prev;
    r->batch_back = (uint32_t)(r->seq - b->first_seq);
    if (l->group_open) {
        r->rflags |= RECORD_F_GROUP;
        r->group_back = (uint32_t)(r->seq - l->group_seq);
    }
    uint64_t sum = record_encode(r, b->buf + b->len);
    log_took(l, b, r, size, sum, loc);
    return 0;
}

int log_append(log_t *l, record *r, uint64_t ts_ms, log_loc *loc)
{
    return log_append_at(l, r, ts_ms, false, loc);
}

int log_append_keep_ts(log_t *l, record *r, log_loc *loc)
{
    return log_append_at(l, r, 0, true, loc);
}

void log_tail(const log_t *l, uint64_t *seq, uint16_t *part, uint64_t *sum)
{
    *seq = l->last_seq;
    *part = l->last_part;
    *sum = l->prev;
}

bool log_follows(uint64_t seq, uint16_t part, uint64_t sum, const record *r)
{
    bool next = r->type == RECORD_ALLOC ? r->seq == seq && r->part == part + 1
                                        : r->seq == seq + 1 && r->part == 0;
    return next && r->prev == sum;
}

int log_append_raw(log_t *l, const uint8_t *buf, size_t len, const record *r, log_loc *loc)
{
    if (l->status != 0)
        return l->status;
    if (l->opts.read_only)
        return -EROFS;
    assert(!l->group_open);
    if (!log_follows(l->last_seq, l->last_part, l->prev, r) || len != record_size(r) ||
        len > LIMIT_RECORD_BYTES_MAX)
        return TALLY_ECORRUPT;
    log_buf *b = l->filling;
    int rc = log_place(l, b, len, r->seq);
    if (rc < 0)
        return rc;
    memcpy(b->buf + b->len, buf, len);
    uint64_t sum = bytes_get_le64(buf + len - 8); /* the caller checked it */
    log_took(l, b, r, len, sum, loc);
    return 0;
}

void log_group_begin(log_t *l)
{
    assert(!l->group_open);
    l->group_open = true;
    l->group_seq = l->last_seq + 1;
}

bool log_group_open(const log_t *l) { return l->group_open; }

void log_group_end(log_t *l)
{
    assert(l->group_open);
    l->group_open = false;
    log_buf *b = l->filling;
    if (b->len == 0 || l->last_seq < l->group_seq)
        return; /* nothing was appended in it (or it went with a failure) */
    /* The last record learns it is the last: re-encoded in place (nothing
     * is chained to it yet). */
    uint8_t *p = b->buf + b->last_rec_at;
    record r;
    size_t len;
    uint64_t sum;
    int rc = record_decode(p, b->len - b->last_rec_at, &r, &len, &sum);
    assert(rc == RECORD_OK && r.seq == l->last_seq && (r.rflags & RECORD_F_GROUP));
    (void)rc;
    r.rflags |= RECORD_F_GROUP_END;
    l->prev = record_encode(&r, p);
    b->last_prev = l->prev;
}

void log_seal(log_t *l, log_batch *out)
{
    out->count = 0;
    out->first_seq = out->last_seq = 0;
    log_buf *b = l->filling;
    if (b->len == 0 || l->status != 0)
        return;
    assert(!l->group_open);
    /* One batch in flight at a time: the shard waits for it. */
    if (l->sealed != NULL)
        abort();
    for (uint32_t i = 0; i < b->pieces; i++) {
        size_t end = i + 1 < b->pieces ? b->piece[i + 1].from : b->len;
        log_segment *sg = log_seg(l, b->piece[i].seg);
        assert(sg && end > b->piece[i].from);
        out->io[i] = (log_io){.fd = log_seg_fd(l, sg), .buf = b->buf + b->piece[i].from,
                              .len = end - b->piece[i].from, .off = b->piece[i].off};
    }
    out->count = b->pieces;
    out->first_seq = b->first_seq;
    out->last_seq = b->last_seq;
    l->sealed = b;
    log_buf *next = b == &l->bufs[0] ? &l->bufs[1] : &l->bufs[0];
    next->len = 0;
    next->pieces = 0;
    l->filling = next;
}

void log_complete(log_t *l, int res)
{
    log_buf *b = l->sealed;
    if (!b)
        return;
    if (res < 0) {
        if (l->status == 0)
            l->status = TALLY_EFAILED;
        return; /* log_discard() drops it with the filling batch */
    }
    l->durable_prev = b->last_prev;
    l->durable_bytes += b->len;
    l->durable_part = b->last_part;
    atomic_store(&l->durable_seg, b->end_seg);
    atomic_store(&l->durable_off, b->end_off);
    atomic_store(&l->durable_seq, b->last_seq);
    b->len = 0;
    l->sealed = NULL;
    log_close_fds_below(l, b->end_seg);
}

void log_discard(log_t *l)
{
    l->last_seq = atomic_load(&l->durable_seq);
    l->last_part = l->durable_part;
    l->prev = l->durable_prev;
    l->bytes = l->durable_bytes;
    l->write_seg = atomic_load(&l->durable_seg);
    l->write_off = atomic_load(&l->durable_off);
    l->bufs[0].len = l->bufs[1].len = 0;
    l->sealed = NULL;
    l->group_open = false;
    /* Sparse entries of records that are gone. */
    for (uint32_t i = 0; i < l->segs_count; i++) {
        log_segment *sg = l->segs[i];
        while (atomic_load(&sg->sparse_count) > 0) {
            uint64_t n = atomic_load(&sg->sparse_count) - 1;
            if (sg->first_seq + n * LOG_SPARSE_EVERY <= l->last_seq)
                break;
            atomic_store(&sg->sparse_count, (uint32_t)n);
        }
    }
}

int log_write_sealed(const log_t *l, const log_batch *b)
{
    int rc = 0;
    for (uint32_t i = 0; rc == 0 && i < b->count; i++)
        rc = os_pwrite_all(l->os, b->io[i].fd, b->io[i].buf, b->io[i].len, b->io[i].off);
    for (uint32_t i = 0; rc == 0 && i < b->count; i++)
        rc = l->os->fdatasync(l->os->ctx, b->io[i].fd);
    return rc;
}

int log_flush_sync(log_t *l)
{
    log_batch b;
    log_seal(l, &b);
    int rc = l->status;
    if (rc == 0)
        rc = log_write_sealed(l, &b);
    if (b.count > 0)
        log_complete(l, rc);
    return rc;
}

/* ---- retention ---------------------------------------------------------- */

/* Moves one segment file into the archive, or deletes it. */
static int log_drop_file(log_t *l, log_segment *sg, const char *archive_dir)
{
    char path[4200];
    log_path(l, sg->index, "", path, sizeof(path));
    if (!archive_dir)
        return l->os->unlink(l->os->ctx, path);
    char dir[4200], to[4400];
    snprintf(dir, sizeof(dir), "%s/shard-%03u", archive_dir, l->opts.shard);
    if (mkdir(archive_dir, 0755) < 0 && errno != EEXIST)
        return -errno;
    if (mkdir(dir, 0755) < 0 && errno != EEXIST)
        return -errno;
    snprintf(to, sizeof(to), "%s/log-%010u.seg", dir, sg->index);
    int rc = l->os->rename(l->os->ctx, path, to);
    if (rc == -EXDEV) {
        int fd = log_seg_fd(l, sg);
        rc = fd < 0 ? fd : os_copy_file(l->os, fd, to);
        if (rc == 0)
            rc = l->os->unlink(l->os->ctx, path);
    }
    if (rc == 0)
        rc = l->os->fsync_dir(l->os->ctx, dir);
    return rc;
}

int log_retain(log_t *l, uint64_t seq, const char *archive_dir, uint32_t *dropped)
{
    *dropped = 0;
    /* Segments a batch may still touch stay: the one being written, the
     * durable end, and those of the filling and sealed batches. */
    uint32_t limit = l->write_seg < atomic_load(&l->durable_seg) ? l->write_seg
                                                                : atomic_load(&l->durable_seg);
    for (int i = 0; i < 2; i++)
        if ((l->bufs[i].len > 0 || &l->bufs[i] == l->sealed) && l->bufs[i].pieces > 0 &&
            l->bufs[i].piece[0].seg < limit)
            limit = l->bufs[i].piece[0].seg;
    uint32_t k = 0;
    while (k + 1 < l->segs_count && l->segs[k]->index < limit &&
           l->segs[k + 1]->first_seq <= seq + 1)
        k++;
    uint32_t done = 0;
    int rc = 0;
    /* Oldest first, the directory flushed after each: a power cut can
     * undo an unlink that was not flushed, and if it could undo any subset
     * of several, the next open would find a gap between segments.  One
     * at a time, what survives is always a contiguous suffix. */
    for (; done < k; done++) {
        log_segment *sg = l->segs[0];
        rc = log_drop_file(l, sg, archive_dir);
        if (rc == 0)
            rc = l->os->fsync_dir(l->os->ctx, l->dir);
        if (rc < 0)
            break;
        pthread_rwlock_wrlock(&l->segs_lock);
        memmove(l->segs, l->segs + 1, (l->segs_count - 1) * sizeof(*l->segs));
        l->segs_count--;
        pthread_rwlock_unlock(&l->segs_lock);
        log_seg_free(l, sg);
    }
    if (done > 0)
        log_say(l, 0, "shard %u: retention %s %u segment(s); the log now starts at seq %llu",
                l->opts.shard, archive_dir ? "archived" : "deleted", done,
                (unsigned long long)l->segs[0]->first_seq);
    *dropped = done;
    return rc;
}

/* ---- reading ------------------------------------------------------------ */

/* The bytes at (seg index, off): from a batch buffer if they are not
 * written yet (the writer's own reads), else from the mapping if they are
 * durable.  Called with segs_lock held for reading (or on the writer). */
static const uint8_t *log_bytes_at(const log_t *l, uint32_t seg_index, uint64_t off,
                                   size_t *avail, bool writer)
{
    /* Only the writer may look at its buffers (their pointers change
     * under other threads' feet). */
    for (int i = 0; writer && i < 2; i++) {
        const log_buf *b = i == 0 ? l->filling : l->sealed;
        if (!b || b->len == 0)
            continue;
        for (uint32_t p = 0; p < b->pieces; p++) {
            const log_piece *pc = &b->piece[p];
            size_t end = p + 1 < b->pieces ? b->piece[p + 1].from : b->len;
            if (seg_index == pc->seg && off >= pc->off && off < pc->off + (end - pc->from)) {
                *avail = end - pc->from - (off - pc->off);
                return b->buf + pc->from + (off - pc->off);
            }
        }
    }
    const log_segment *sg = log_seg(l, seg_index);
    if (!sg || off < LOG_HEADER_BYTES || off >= l->segment_bytes)
        return NULL;
    uint32_t dseg = atomic_load(&l->durable_seg);
    if (seg_index > dseg || (seg_index == dseg && off >= atomic_load(&l->durable_off)))
        return NULL; /* not durable and not in a buffer: past the end */
    *avail = l->segment_bytes - off;
    return sg->map + off;
}

/* log_read without the lock (held by the caller). */
static int log_read_locked(log_t *l, log_loc loc, record *out, bool writer)
{
    uint32_t seg_index = log_loc_seg(loc);
    if (l->segs_count > 0 && seg_index < l->segs[0]->index)
        return TALLY_EARCHIVED;
    size_t avail = 0;
    const uint8_t *p = log_bytes_at(l, seg_index, log_loc_off(loc), &avail, writer);
    if (!p)
        return TALLY_ENOTFOUND;
    size_t len;
    uint64_t sum;
    if (record_decode(p, avail, out, &len, &sum) != RECORD_OK)
        return TALLY_ECORRUPT;
    return 0;
}

int log_read(log_t *l, log_loc loc, record *out)
{
    /* The writer thread also reads its unwritten batches; other threads
     * ask only for durable records, which the mapping has. */
    pthread_rwlock_rdlock(&l->segs_lock);
    int rc = log_read_locked(l, loc, out, true);
    pthread_rwlock_unlock(&l->segs_lock);
    return rc;
}

/* Builds the sparse index of a segment recovery did not scan, from its
 * first record to the durable end (lock held for reading). */
static int log_sparse_build(log_t *l, log_segment *sg)
{
    pthread_mutex_lock(&l->sparse_lock);
    int rc = 0;
    if (!atomic_load(&sg->sparse_whole)) {
        uint64_t off = LOG_HEADER_BYTES;
        atomic_store(&sg->sparse_count, 0);
        for (;;) {
            size_t avail = 0;
            const uint8_t *p = log_bytes_at(l, sg->index, off, &avail, false);
            if (!p)
                break;
            size_t len;
            uint64_t seq;
            uint16_t part;
            int prc = record_peek(p, avail, &len, &seq, &part);
            if (prc == RECORD_END)
                break;
            if (prc != RECORD_OK) {
                rc = TALLY_ECORRUPT;
                break;
            }
            if (part == 0)
                log_sparse_note(sg, seq, off);
            off += len;
        }
        atomic_store(&sg->sparse_whole, rc == 0);
    }
    pthread_mutex_unlock(&l->sparse_lock);
    return rc;
}

/* log_find with the lock held for reading. */
/* From the sparse entry at or before seq, record by record to seq's first
 * part.  checked: each record's checksum verified on the way (else only
 * its frame: the record found is decoded, checksum and all, by whoever
 * reads it). */
static int log_walk_to(log_t *l, const log_segment *sg, uint64_t off, uint64_t seq,
                       log_loc *loc, bool writer, bool checked)
{
    for (int steps = 0; steps <= LOG_SPARSE_EVERY * 64; steps++) {
        size_t avail = 0;
        const uint8_t *p = log_bytes_at(l, sg->index, off, &avail, writer);
        if (!p)
            return TALLY_ENOTFOUND;
        record_head h;
        int prc = checked ? record_peek_head(p, avail, &h)
                          : record_peek_head_unchecked(p, avail, &h);
        if (prc == RECORD_END)
            return TALLY_ENOTFOUND;
        if (prc != RECORD_OK)
            return TALLY_ECORRUPT;
        if (h.seq == seq && h.part == 0) {
            *loc = log_make_loc(sg->index, off);
            return 0;
        }
        if (h.seq > seq)
            return TALLY_ENOTFOUND;
        off += h.len;
    }
    return TALLY_ECORRUPT; /* more parts than any entry has: the index is wrong */
}

static int log_find_locked(log_t *l, uint64_t seq, log_loc *loc, bool writer)
{
    uint64_t end = writer ? l->last_seq : atomic_load(&l->durable_seq);
    if (l->segs_count == 0 || seq == 0 || seq > end)
        return TALLY_ENOTFOUND;
    if (seq < l->segs[0]->first_seq)
        return TALLY_EARCHIVED;
    log_segment *sg = l->segs[log_seg_for(l, seq)];
    if (!atomic_load(&sg->sparse_whole)) {
        int rc = log_sparse_build(l, sg);
        if (rc < 0)
            return rc;
    }
    uint64_t i = (seq - sg->first_seq) / LOG_SPARSE_EVERY;
    uint32_t n = atomic_load(&sg->sparse_count);
    if (n == 0)
        return TALLY_ENOTFOUND;
    if (i >= n)
        i = n - 1;
    uint64_t off = (uint64_t)sg->sparse[i] * 8;
    /* Past ~16 records on average: their frames only (hashing each was
     * most of a REVERSE's or CAPTURE's lookup of its target).  Found: the
     * reader decodes it, checksum and all.  Not found or damage: walked
     * again checking every record, so damage is reported as damage. */
    int rc = log_walk_to(l, sg, off, seq, loc, writer, false);
    return rc == 0 ? 0 : log_walk_to(l, sg, off, seq, loc, writer, true);
}

int log_find(log_t *l, uint64_t seq, log_loc *loc)
{
    pthread_rwlock_rdlock(&l->segs_lock);
    int rc = log_find_locked(l, seq, loc, true);
    pthread_rwlock_unlock(&l->segs_lock);
    return rc;
}

int log_read_seq(log_t *l, uint64_t seq, record *out, log_loc *loc)
{
    pthread_rwlock_rdlock(&l->segs_lock);
    int rc = log_find_locked(l, seq, loc, true);
    if (rc == 0)
        rc = log_read_locked(l, *loc, out, true);
    pthread_rwlock_unlock(&l->segs_lock);
    return rc;
}

int log_read_next(log_t *l, log_loc *loc, const record *cur, record *out)
{
    uint32_t seg = log_loc_seg(*loc);
    uint64_t off = log_loc_off(*loc) + record_size(cur);
    pthread_rwlock_rdlock(&l->segs_lock);
    /* The next record follows in this segment, or (if it did not fit:
     * zeros there) starts the next one. */
    size_t avail = 0;
    const uint8_t *p = off + LOG_RECORD_BYTES_MIN <= l->segment_bytes
                           ? log_bytes_at(l, seg, off, &avail, true)
                           : NULL;
    bool here = p && avail >= 4 && (p[0] | p[1] | p[2] | p[3]) != 0;
    log_loc next = here ? log_make_loc(seg, off) : log_make_loc(seg + 1, LOG_HEADER_BYTES);
    int rc = log_read_locked(l, next, out, true);
    pthread_rwlock_unlock(&l->segs_lock);
    if (rc == 0)
        *loc = next;
    return rc;
}

int log_iter_init(log_t *l, uint64_t after_seq, log_iter *it)
{
    *it = (log_iter){.log = l, .seg_index = UINT32_MAX, .end_seq = log_durable_seq(l)};
    pthread_rwlock_rdlock(&l->segs_lock);
    int rc = 0;
    if (l->segs_count == 0 || after_seq >= it->end_seq) {
        pthread_rwlock_unlock(&l->segs_lock);
        return 0;
    }
    if (after_seq + 1 < l->segs[0]->first_seq) {
        pthread_rwlock_unlock(&l->segs_lock);
        return TALLY_EARCHIVED;
    }
    /* Start at the entry after_seq + 1 (its sparse slot, then scan);
     * the chain is checked from there on. */
    log_loc loc;
    rc = log_find_locked(l, after_seq + 1, &loc, false);
    if (rc == 0) {
        record r;
        rc = log_read_locked(l, loc, &r, false);
        if (rc == 0) {
            it->seg_index = log_loc_seg(loc);
            it->offset = log_loc_off(loc);
            it->prev = r.prev;
            it->last_seq = after_seq;
            it->check_chain = true;
        }
    }
    pthread_rwlock_unlock(&l->segs_lock);
    return rc == TALLY_ENOTFOUND ? 0 : rc;
}

/* The bytes of the record the iterator stands at, moving on to the next
 * segment at the zeros that end one: 1 and *p, *avail, *seg; 0 at the
 * durable end; TALLY_EARCHIVED, TALLY_ECORRUPT (a segment that does not
 * continue the chain).  segs_lock held for reading. */
static int log_iter_locate(log_t *l, log_iter *it, const uint8_t **p, size_t *avail,
                           uint32_t *seg)
{
    for (;;) {
        uint32_t dseg = atomic_load(&l->durable_seg);
        if (it->seg_index > dseg ||
            (it->seg_index == dseg && it->offset >= atomic_load(&l->durable_off)))
            return 0;
        const log_segment *s = log_seg(l, it->seg_index);
        if (!s)
            return TALLY_EARCHIVED;
        if (it->offset + 4 > l->segment_bytes || bytes_get_le32(s->map + it->offset) == 0) {
            it->seg_index++;
            it->offset = LOG_HEADER_BYTES;
            const log_segment *nx = log_seg(l, it->seg_index);
            if (nx && nx->prev != it->prev)
                return TALLY_ECORRUPT;
            continue;
        }
        *p = s->map + it->offset;
        *avail = l->segment_bytes - it->offset;
        *seg = s->index;
        return 1;
    }
}

/* The iterator moves past the record at *loc (len bytes, checksum sum). */
static void log_iter_advance(log_iter *it, size_t len, uint64_t sum, uint64_t seq, uint16_t part)
{
    it->offset += len;
    it->prev = sum;
    it->last_seq = seq;
    it->last_part = part;
}

static int log_iter_step(log_iter *it, record *r, log_loc *loc, uint8_t *raw, size_t *raw_len);

int log_iter_next(log_iter *it, record *r, log_loc *loc)
{
    return log_iter_step(it, r, loc, NULL, NULL);
}

int log_iter_next_head(log_iter *it, record_head *h)
{
    log_t *l = it->log;
    if (it->seg_index == UINT32_MAX)
        return 0;
    pthread_rwlock_rdlock(&l->segs_lock);
    const uint8_t *p = NULL;
    size_t avail = 0;
    uint32_t seg = 0;
    int rc = log_iter_locate(l, it, &p, &avail, &seg);
    if (rc == 1 && (record_peek_head(p, avail, h) != RECORD_OK || h->prev != it->prev))
        rc = TALLY_ECORRUPT;
    if (rc == 1 && h->seq > it->end_seq)
        rc = 0;
    if (rc == 1)
        log_iter_advance(it, h->len, h->checksum, h->seq, h->part);
    pthread_rwlock_unlock(&l->segs_lock);
    return rc;
}

int log_iter_next_raw(log_iter *it, record *r, uint8_t *raw, size_t *raw_len)
{
    log_loc loc;
    return log_iter_step(it, r, &loc, raw, raw_len);
}

int log_checksum_at(log_t *l, uint64_t seq, uint64_t *sum)
{
    pthread_rwlock_rdlock(&l->segs_lock);
    log_loc loc;
    int rc = log_find_locked(l, seq, &loc, false);
    size_t avail = 0, len;
    record r;
    const uint8_t *p = rc == 0 ? log_bytes_at(l, log_loc_seg(loc), log_loc_off(loc), &avail,
                                              false)
                               : NULL;
    if (rc == 0 && (!p || record_decode(p, avail, &r, &len, sum) != RECORD_OK))
        rc = TALLY_ECORRUPT;
    pthread_rwlock_unlock(&l->segs_lock);
    return rc;
}

/* One step of an iterator; with raw, the record's bytes are copied there
 * too (under the lock: the mapping may go with retention). */
static int log_iter_step(log_iter *it, record *r, log_loc *loc, uint8_t *raw, size_t *raw_len)
{
    log_t *l = it->log;
    if (it->seg_index == UINT32_MAX)
        return 0;
    pthread_rwlock_rdlock(&l->segs_lock);
    const uint8_t *p = NULL;
    size_t avail = 0, len = 0;
    uint32_t seg = 0;
    uint64_t sum = 0;
    record rr;
    int rc = log_iter_locate(l, it, &p, &avail, &seg);
    /* What the recovery scan verified, an open's replay reads at once: its
     * checksums are not computed twice (XXH3 was 3.9% of a rebuild's CPU,
     * the scan's share included). */
    bool scanned = it->scanned && it->seg_index >= l->scan_seg &&
                   (it->seg_index < l->scan_end_seg ||
                    (it->seg_index == l->scan_end_seg && it->offset < l->scan_end_off));
    if (rc == 1 && ((scanned ? record_decode_verified : record_decode)(p, avail, &rr, &len, &sum) !=
                        RECORD_OK ||
                    rr.prev != it->prev))
        rc = TALLY_ECORRUPT;
    if (rc == 1 && rr.seq > it->end_seq)
        rc = 0;
    if (rc == 1) {
        *loc = log_make_loc(seg, it->offset);
        if (raw) {
            assert(len <= LIMIT_RECORD_BYTES_MAX);
            memcpy(raw, p, len);
            *raw_len = len;
        }
        log_iter_advance(it, len, sum, rr.seq, rr.part);
        memcpy(r, &rr, offsetof(record, id));
        memcpy(r->id, rr.id, rr.id_len);
        memcpy(r->ref, rr.ref, rr.ref_len);
        memcpy(r->memo, rr.memo, rr.memo_len);
        memcpy(r->alloc, rr.alloc, rr.alloc_len);
    }
    pthread_rwlock_unlock(&l->segs_lock);
    return rc;
}

int log_iter_next_entry(log_iter *it, uint64_t merchant, uint32_t *budget, record *r,
                        log_loc *loc)
{
    log_t *l = it->log;
    if (it->seg_index == UINT32_MAX)
        return 0;
    pthread_rwlock_rdlock(&l->segs_lock);
    int rc = 0;
    while (*budget > 0) {
        const uint8_t *p = NULL;
        size_t avail = 0;
        uint32_t seg = 0;
        rc = log_iter_locate(l, it, &p, &avail, &seg);
        if (rc <= 0)
            break;
        record_head h;
        if (record_peek_head(p, avail, &h) != RECORD_OK || h.prev != it->prev) {
            rc = TALLY_ECORRUPT;
            break;
        }
        if (h.seq > it->end_seq) {
            rc = 0;
            break;
        }
        bool match = h.type == RECORD_ENTRY && h.part == 0 &&
                     (merchant == 0 || h.merchant == merchant);
        if (match) {
            size_t len;
            uint64_t sum;
            if (record_decode(p, avail, r, &len, &sum) != RECORD_OK) {
                rc = TALLY_ECORRUPT;
                break;
            }
            assert(len == h.len && sum == h.checksum);
            *loc = log_make_loc(seg, it->offset);
        } else {
            (*budget)--;
        }
        log_iter_advance(it, h.len, h.checksum, h.seq, h.part);
        if (match) {
            rc = 1;
            break;
        }
        rc = 0;
    }
    pthread_rwlock_unlock(&l->segs_lock);
    return rc;
}
