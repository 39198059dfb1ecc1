/*
 * log.c — one shard's append-only log (format and recovery rules in log.h).
 *
 * Writing: records are encoded into the filling batch buffer; log_seal()
 * hands the buffer out as one write (two if the batch crossed into a new
 * segment) and switches to the other buffer, so the next batch fills while
 * this one flushes.  Records are read back through a read-only MAP_SHARED
 * mapping of each segment (the page cache is coherent with the writes), or
 * from a batch buffer while they are not written yet.
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
 * rolling over then writes
 * its header, flushes, renames it into place and flushes the directory,
 * so a crash never leaves a half-made segment under a real name.
 */
#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checksum.h"
#include "log.h"

/* ---- constants and types ------------------------------------------------ */

#define LOG_MAGIC "TALLYSEG"
#define LOG_VERSION 1
#define LOG_HEADER_BYTES 64

typedef struct log_segment {
    uint32_t index;
    int fd;
    const uint8_t *map; /* segment_bytes, PROT_READ */
    uint64_t first_seq;
    uint64_t prev;
} log_segment;

/* A batch: records contiguous in buf; in the files they start at
 * (seg, off) and, if split > 0, continue from byte split of buf at the
 * first record offset of segment seg + 1. */
typedef struct log_buf {
    uint8_t *buf;
    size_t len;
    size_t split;
    uint32_t seg; /* index into segs[] */
    uint64_t off;
    uint64_t first_seq, last_seq;
    uint64_t last_prev; /* checksum of its last record */
    uint64_t end_off;   /* write offset after it, in segment end_seg */
    uint32_t end_seg;
} log_buf;

struct log_t {
    log_options opts;
    char dir[4096];
    const os_ops *os;
    uint32_t segment_bytes;
    log_segment *segs;
    uint32_t segs_count;
    int status;

    /* appended (maybe not durable) */
    uint64_t last_seq, prev, last_ts_ms, bytes;
    uint32_t write_seg;
    uint64_t write_off;

    /* durable */
    uint64_t durable_seq, durable_prev, durable_bytes;
    uint32_t durable_seg;
    uint64_t durable_off;

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

static void log_put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t log_get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static void log_path(const log_t *l, uint32_t index, const char *suffix, char *out, size_t cap)
{
    snprintf(out, cap, "%s/log-%010u.seg%s", l->dir, index, suffix);
}

static log_loc log_make_loc(uint32_t seg_index, uint64_t off)
{
    return (uint64_t)seg_index << 32 | off / 8;
}

static const char *log_decode_reason(int rc)
{
    switch (rc) {
    case RECORD_TRUNCATED: return "record runs past the written data";
    case RECORD_BAD: return "record length or fields out of range";
    case RECORD_CHECKSUM: return "checksum mismatch";
    default: return "chain broken";
    }
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
    log_put64(out + 16, index);
    log_put64(out + 24, first_seq);
    log_put64(out + 32, prev);
    log_put64(out + 56, checksum64(out, 56, 0));
}

/* 0, or TALLY_EFORMAT (not ours / other version) / TALLY_ECORRUPT. */
static int log_header_check(const log_t *l, const uint8_t *h, uint32_t index, char *why,
                            size_t cap)
{
    if (memcmp(h, LOG_MAGIC, 8) != 0) {
        snprintf(why, cap, "shard %u: segment %u: bad magic", l->opts.shard, index);
        return TALLY_ECORRUPT;
    }
    if (log_get64(h + 56) != checksum64(h, 56, 0)) {
        snprintf(why, cap, "shard %u: segment %u: header checksum mismatch", l->opts.shard,
                 index);
        return TALLY_ECORRUPT;
    }
    if (h[8] != LOG_VERSION) {
        snprintf(why, cap, "shard %u: segment %u: format version %u unknown", l->opts.shard,
                 index, h[8]);
        return TALLY_EFORMAT;
    }
    uint32_t shard = (uint32_t)h[12] | (uint32_t)h[13] << 8;
    if (shard != l->opts.shard || log_get64(h + 16) != index) {
        snprintf(why, cap, "shard %u: segment %u: belongs to shard %u segment %llu",
                 l->opts.shard, index, shard, (unsigned long long)log_get64(h + 16));
        return TALLY_ECORRUPT;
    }
    return 0;
}

/* ---- segment files ------------------------------------------------------ */

static int log_segs_push(log_t *l, const log_segment *s)
{
    log_segment *n = realloc(l->segs, (l->segs_count + 1) * sizeof(*n));
    if (!n)
        return -ENOMEM;
    l->segs = n;
    l->segs[l->segs_count++] = *s;
    return 0;
}

static int log_map(log_t *l, int fd, const uint8_t **out)
{
    void *m = mmap(NULL, l->segment_bytes, PROT_READ, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED)
        return -errno;
    *out = m;
    return 0;
}

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
    log_segment s = {.index = index, .fd = fd, .first_seq = first_seq, .prev = prev};
    if (rc == 0)
        rc = log_map(l, fd, &s.map);
    if (rc == 0)
        rc = log_segs_push(l, &s);
    if (rc < 0) {
        if (s.map)
            munmap((void *)s.map, l->segment_bytes);
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
    log_segment s = {.index = index, .fd = fd};
    int rc = log_map(l, fd, &s.map);
    if (rc == 0)
        rc = log_header_check(l, s.map, index, why, cap);
    if (rc == 0) {
        s.first_seq = log_get64(s.map + 24);
        s.prev = log_get64(s.map + 32);
        rc = log_segs_push(l, &s);
    }
    if (rc < 0) {
        if (s.map)
            munmap((void *)s.map, l->segment_bytes);
        l->os->close(l->os->ctx, fd);
    }
    return rc;
}

/* ---- recovery ----------------------------------------------------------- */

/* Index in segs[] of the segment holding seq (the last one whose first
 * record is at or before it). */
static uint32_t log_seg_for(const log_t *l, uint64_t seq)
{
    uint32_t k = 0;
    for (uint32_t i = 0; i < l->segs_count; i++)
        if (l->segs[i].first_seq <= seq)
            k = i;
    return k;
}

/* True if a record that decodes cleanly and belongs to a batch after
 * `seq` lies at or after (seg, off): then the damage at seq is not a torn
 * last batch but corruption of acknowledged data. */
static bool log_later_batch_follows(const log_t *l, uint32_t seg, uint64_t off, uint64_t seq)
{
    for (uint32_t k = seg; k < l->segs_count; k++) {
        const uint8_t *m = l->segs[k].map;
        for (uint64_t o = k == seg ? off + 8 : LOG_HEADER_BYTES;
             o + RECORD_FIXED_BYTES + 16 <= l->segment_bytes; o += 8) {
            if (m[o] == 0 && m[o + 1] == 0 && m[o + 2] == 0 && m[o + 3] == 0)
                continue;
            record r;
            size_t len;
            uint64_t sum;
            if (record_decode(m + o, l->segment_bytes - o, &r, &len, &sum) == RECORD_OK &&
                r.batch_seq > seq)
                return true;
        }
    }
    return false;
}

/* True if any byte of segment seg after off is not zero. */
static bool log_data_after(const log_t *l, uint32_t seg, uint64_t off)
{
    /* Records are 8-byte aligned and segments whole pages: eight bytes at
     * a time (a whole segment at recovery, so it matters). */
    const uint8_t *m = l->segs[seg].map;
    assert(off % 8 == 0 && l->segment_bytes % 8 == 0);
    for (uint64_t o = off; o < l->segment_bytes; o += 8) {
        uint64_t w;
        memcpy(&w, m + o, 8);
        if (w != 0)
            return true;
    }
    return false;
}

/* Zeroes segment seg from off to its last non-zero byte, and removes every
 * later segment (they hold only the torn batch's remains), so writing
 * resumes at (seg, off) and the next segment is made afresh. */
static int log_zero_tail(log_t *l, uint32_t seg, uint64_t off, uint64_t *zeroed)
{
    static const uint8_t zeros[4096];
    const uint8_t *m = l->segs[seg].map;
    uint64_t end = l->segment_bytes;
    while (end > off && m[end - 1] == 0)
        end--;
    for (uint64_t o = off; o < end; o += sizeof(zeros)) {
        size_t n = end - o < sizeof(zeros) ? (size_t)(end - o) : sizeof(zeros);
        int rc = os_pwrite_all(l->os, l->segs[seg].fd, zeros, n, o);
        if (rc < 0)
            return rc;
    }
    if (end > off) {
        int rc = l->os->fdatasync(l->os->ctx, l->segs[seg].fd);
        if (rc < 0)
            return rc;
        *zeroed += end - off;
    }
    while (l->segs_count > seg + 1) {
        log_segment *s = &l->segs[--l->segs_count];
        char path[4200];
        log_path(l, s->index, "", path, sizeof(path));
        *zeroed += l->segment_bytes;
        munmap((void *)s->map, l->segment_bytes);
        l->os->close(l->os->ctx, s->fd);
        int rc = l->os->unlink(l->os->ctx, path);
        if (rc < 0)
            return rc;
        rc = l->os->fsync_dir(l->os->ctx, l->dir);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Scans from the segment holding from_seq + 1 to the end of the valid
 * log, setting the write position, and classifies the first bad record. */
static int log_recover(log_t *l, log_recovery *rec)
{
    uint32_t k = log_seg_for(l, l->opts.from_seq + 1);
    uint64_t expect = l->segs[k].first_seq, prev = l->segs[k].prev, off = LOG_HEADER_BYTES;
    uint64_t ts = 0, bytes = 0;
    if (k > 0 && l->segs[k - 1].first_seq > expect)
        return TALLY_ECORRUPT;
    if (expect > l->opts.from_seq + 1) {
        /* Retention dropped records the state has not seen: nothing can
         * bring the state up to date. */
        snprintf(rec->message, sizeof(rec->message),
                 "shard %u: the log starts at seq %llu (older segments dropped) but the "
                 "state reflects only seq %llu",
                 l->opts.shard, (unsigned long long)expect,
                 (unsigned long long)l->opts.from_seq);
        rec->status = TALLY_ECORRUPT;
        l->status = TALLY_ECORRUPT;
        l->last_seq = l->durable_seq = expect - 1;
        l->write_seg = l->durable_seg = k;
        l->write_off = l->durable_off = LOG_HEADER_BYTES;
        return 0;
    }
    for (;;) {
        const uint8_t *m = l->segs[k].map;
        record r;
        size_t len = 0;
        uint64_t sum = 0;
        int drc = record_decode(m + off, l->segment_bytes - off, &r, &len, &sum);
        bool end = drc == RECORD_END || (drc == RECORD_TRUNCATED && off + 4 > l->segment_bytes);
        bool chain_gap = false;
        if (end) {
            if (k + 1 < l->segs_count) {
                /* The next segment continues the chain exactly, or the log
                 * breaks here.  A rollover writes the next segment's header
                 * (fsynced, renamed into place) while the batch that crosses
                 * into it is still being filled: a crash can leave that
                 * header — and records of the same batch behind it — with
                 * this segment's tail never written.  That is a torn last
                 * batch, classified below like any other break. */
                if (l->segs[k + 1].first_seq == expect && l->segs[k + 1].prev == prev) {
                    k++;
                    off = LOG_HEADER_BYTES;
                    continue;
                }
                chain_gap = true;
            } else if (!log_data_after(l, k, off)) {
                /* Zeros where the next record should be are the end of the
                 * log only if nothing but zeros follows: otherwise records
                 * were lost there (a zeroed block from a record boundary),
                 * handled below like a bad record — a torn tail if they
                 * belonged to the last batch, corruption if a later batch
                 * follows. */
                break; /* the clean end of the log */
            }
        }
        if (!end && drc == RECORD_OK && r.seq == expect && r.prev == prev) {
            prev = sum;
            expect++;
            ts = r.ts_ms;
            bytes += len;
            off += len;
            rec->scanned++;
            if ((rec->scanned & 0xfffff) == 0)
                log_say(l, 0, "shard %u: recovery scanned %llu records (seq %llu)",
                        l->opts.shard, (unsigned long long)rec->scanned,
                        (unsigned long long)r.seq);
            continue;
        }
        /* The first lie: torn tail or corruption (DESIGN-NOTES §7). */
        char gap_why[96];
        if (chain_gap)
            snprintf(gap_why, sizeof(gap_why), "segment %u does not continue the chain",
                     l->segs[k + 1].index);
        const char *why = chain_gap          ? gap_why
                          : end              ? "zeros where a record should be"
                          : drc != RECORD_OK ? log_decode_reason(drc)
                                             : "chain broken";
        if (expect <= l->opts.from_seq || log_later_batch_follows(l, k, off, expect)) {
            snprintf(rec->message, sizeof(rec->message),
                     "shard %u: corrupt record at seq %llu (segment %u offset %llu): %s",
                     l->opts.shard, (unsigned long long)expect, l->segs[k].index,
                     (unsigned long long)off, why);
            rec->status = TALLY_ECORRUPT;
            break;
        }
        rec->torn_seq = expect;
        uint64_t zeroed = 0;
        if (!l->opts.read_only) {
            int rc = log_zero_tail(l, k, off, &zeroed);
            if (rc < 0)
                return rc;
        }
        rec->torn_bytes = zeroed ? zeroed : 1;
        snprintf(rec->message, sizeof(rec->message),
                 "shard %u: torn tail at seq %llu (segment %u offset %llu): %s; %s",
                 l->opts.shard, (unsigned long long)expect, l->segs[k].index,
                 (unsigned long long)off, why,
                 l->opts.read_only ? "left in place (read-only)" : "truncated");
        log_say(l, 1, "%s", rec->message);
        /* Later segments held only the torn batch: writing resumes here. */
        break;
    }
    l->last_seq = l->durable_seq = expect - 1;
    l->prev = l->durable_prev = prev;
    l->last_ts_ms = ts;
    l->bytes = l->durable_bytes = bytes;
    l->write_seg = l->durable_seg = k;
    l->write_off = l->durable_off = off;
    rec->last_seq = expect - 1;
    rec->last_ts_ms = ts;
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
        rc = log_segment_create(l, 1, 1, 0);
    return rc;
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
    l->segment_bytes = opts->segment_bytes ? opts->segment_bytes : LIMIT_SEGMENT_BYTES_DEFAULT;
    if (l->segment_bytes < LIMIT_SEGMENT_BYTES_MIN || l->segment_bytes % 4096) {
        free(l);
        return -EINVAL;
    }
    int rc = 0;
    if (!opts->read_only) {
        for (int i = 0; i < 2 && rc == 0; i++) {
            l->bufs[i].buf = malloc(LIMIT_BATCH_BYTES_MAX);
            if (!l->bufs[i].buf)
                rc = -ENOMEM;
        }
    }
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
    l->filling->seg = l->write_seg;
    l->filling->off = l->write_off;
    *out = l;
    return 0;
}

void log_close(log_t *l)
{
    if (!l)
        return;
    int fd;
    log_prep_join(l, UINT32_MAX, &fd); /* its .tmp is removed at the next open */
    for (uint32_t i = 0; i < l->segs_count; i++) {
        if (l->segs[i].map)
            munmap((void *)l->segs[i].map, l->segment_bytes);
        l->os->close(l->os->ctx, l->segs[i].fd);
    }
    free(l->segs);
    free(l->bufs[0].buf);
    free(l->bufs[1].buf);
    free(l);
}

int log_status(const log_t *l) { return l->status; }
uint64_t log_last_seq(const log_t *l) { return l->last_seq; }
uint64_t log_durable_seq(const log_t *l) { return l->durable_seq; }
uint64_t log_bytes(const log_t *l) { return l->bytes; }

uint64_t log_first_seq(const log_t *l)
{
    return l->segs_count ? l->segs[0].first_seq : l->last_seq + 1;
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

/* Moves the write position to a new segment for a record that does not
 * fit in the current one. */
static int log_roll(log_t *l, log_buf *b)
{
    if (b->split > 0 || (b->len > 0 && b->seg != l->write_seg))
        return TALLY_ETOOBIG; /* a batch crosses at most one boundary */
    uint32_t index = l->segs[l->segs_count - 1].index + 1;
    int rc = log_segment_create(l, index, l->last_seq + 1, l->prev);
    if (rc < 0) {
        l->status = TALLY_EFAILED;
        log_say(l, 2, "shard %u: creating segment %u failed: %s", l->opts.shard, index,
                tally_strerror(rc));
        return rc;
    }
    if (b->len > 0)
        b->split = b->len;
    else {
        b->seg = l->segs_count - 1;
        b->off = LOG_HEADER_BYTES;
    }
    l->write_seg = l->segs_count - 1;
    l->write_off = LOG_HEADER_BYTES;
    return 0;
}

int log_append(log_t *l, record *r, uint64_t ts_ms, log_loc *loc)
{
    if (l->status != 0)
        return l->status;
    if (l->opts.read_only)
        return -EROFS;
    log_buf *b = l->filling;
    size_t size = record_size(r);
    if (b->len + size > LIMIT_BATCH_BYTES_MAX)
        return TALLY_ETOOBIG;
    if (l->write_off + size > l->segment_bytes) {
        int rc = log_roll(l, b);
        if (rc < 0)
            return rc;
    }
    if (b->len == 0) {
        b->seg = l->write_seg;
        b->off = l->write_off;
        b->first_seq = l->last_seq + 1;
        b->split = 0;
    }
    r->seq = l->last_seq + 1;
    r->ts_ms = ts_ms > l->last_ts_ms ? ts_ms : l->last_ts_ms;
    r->prev = l->prev;
    r->batch_seq = b->first_seq;
    l->prev = record_encode(r, b->buf + b->len);
    *loc = log_make_loc(l->segs[l->write_seg].index, l->write_off);
    b->len += size;
    b->last_seq = r->seq;
    b->last_prev = l->prev;
    l->last_seq = r->seq;
    l->last_ts_ms = r->ts_ms;
    l->bytes += size;
    l->write_off += size;
    /* Half full: have the next segment zero-filled meanwhile. */
    if (!l->prep_running && l->write_off > l->segment_bytes / 2 &&
        l->write_seg + 1 == l->segs_count)
        log_prep_start(l, l->segs[l->write_seg].index + 1);
    b->end_seg = l->write_seg;
    b->end_off = l->write_off;
    return 0;
}

void log_seal(log_t *l, log_batch *out)
{
    *out = (log_batch){0};
    log_buf *b = l->filling;
    if (b->len == 0 || l->status != 0)
        return;
    /* One batch in flight at a time: the shard waits for it. */
    if (l->sealed != NULL)
        abort();
    size_t first = b->split ? b->split : b->len;
    out->io[0] = (log_io){.fd = l->segs[b->seg].fd, .buf = b->buf, .len = first, .off = b->off};
    out->count = 1;
    if (b->split) {
        out->io[1] = (log_io){.fd = l->segs[b->seg + 1].fd, .buf = b->buf + b->split,
                              .len = b->len - b->split, .off = LOG_HEADER_BYTES};
        out->count = 2;
    }
    out->first_seq = b->first_seq;
    out->last_seq = b->last_seq;
    l->sealed = b;
    log_buf *next = b == &l->bufs[0] ? &l->bufs[1] : &l->bufs[0];
    next->len = 0;
    next->split = 0;
    next->seg = l->write_seg;
    next->off = l->write_off;
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
    l->durable_seq = b->last_seq;
    l->durable_prev = b->last_prev;
    l->durable_seg = b->end_seg;
    l->durable_off = b->end_off;
    l->durable_bytes += b->len;
    b->len = 0;
    l->sealed = NULL;
}

void log_discard(log_t *l)
{
    l->last_seq = l->durable_seq;
    l->prev = l->durable_prev;
    l->bytes = l->durable_bytes;
    l->write_seg = l->durable_seg;
    l->write_off = l->durable_off;
    l->bufs[0].len = l->bufs[1].len = 0;
    l->sealed = NULL;
}

/* ---- retention ---------------------------------------------------------- */

/* Moves one segment file into the archive, or deletes it. */
static int log_drop_file(log_t *l, const log_segment *sg, const char *archive_dir)
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
        rc = os_copy_file(l->os, sg->fd, to);
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
    uint32_t limit = l->write_seg < l->durable_seg ? l->write_seg : l->durable_seg;
    for (int i = 0; i < 2; i++)
        if ((l->bufs[i].len > 0 || &l->bufs[i] == l->sealed) && l->bufs[i].seg < limit)
            limit = l->bufs[i].seg;
    uint32_t k = 0;
    while (k < limit && k + 1 < l->segs_count && l->segs[k + 1].first_seq <= seq + 1)
        k++;
    uint32_t done = 0;
    int rc = 0;
    /* Oldest first, the directory flushed after each: a power cut can
     * undo an unlink that was not flushed, and if it could undo any subset
     * of several, the next open would find a gap between segments.  One
     * at a time, what survives is always a contiguous suffix. */
    for (; done < k; done++) {
        log_segment *sg = &l->segs[done];
        rc = log_drop_file(l, sg, archive_dir);
        if (rc == 0)
            rc = l->os->fsync_dir(l->os->ctx, l->dir);
        if (rc < 0)
            break;
        munmap((void *)sg->map, l->segment_bytes);
        l->os->close(l->os->ctx, sg->fd);
    }
    if (done > 0) {
        memmove(l->segs, l->segs + done, (l->segs_count - done) * sizeof(*l->segs));
        l->segs_count -= done;
        l->write_seg -= done;
        l->durable_seg -= done;
        for (int i = 0; i < 2; i++) {
            l->bufs[i].seg = l->bufs[i].seg >= done ? l->bufs[i].seg - done : 0;
            l->bufs[i].end_seg = l->bufs[i].end_seg >= done ? l->bufs[i].end_seg - done : 0;
        }
        log_say(l, 0, "shard %u: retention %s %u segment(s); the log now starts at seq %llu",
                l->opts.shard, archive_dir ? "archived" : "deleted", done,
                (unsigned long long)l->segs[0].first_seq);
    }
    *dropped = done;
    return rc;
}

/* ---- reading ------------------------------------------------------------ */

/* The bytes of the record at (seg index, off): from a batch buffer if it
 * is not written yet, else from the mapping. */
static const uint8_t *log_bytes_at(const log_t *l, uint32_t seg_index, uint64_t off,
                                   size_t *avail)
{
    const log_buf *cands[2] = {l->filling, l->sealed};
    for (int i = 0; i < 2; i++) {
        const log_buf *b = cands[i];
        if (!b || b->len == 0)
            continue;
        uint32_t s0 = l->segs[b->seg].index;
        if (b->split == 0) {
            if (seg_index == s0 && off >= b->off && off < b->off + b->len) {
                *avail = b->len - (off - b->off);
                return b->buf + (off - b->off);
            }
        } else if (seg_index == s0 && off >= b->off && off < b->off + b->split) {
            *avail = b->split - (off - b->off);
            return b->buf + (off - b->off);
        } else if (seg_index == s0 + 1 && off >= LOG_HEADER_BYTES &&
                   off < LOG_HEADER_BYTES + (b->len - b->split)) {
            *avail = b->len - b->split - (off - LOG_HEADER_BYTES);
            return b->buf + b->split + (off - LOG_HEADER_BYTES);
        }
    }
    if (l->segs_count == 0)
        return NULL;
    uint32_t k = seg_index - l->segs[0].index;
    if (k >= l->segs_count || off < LOG_HEADER_BYTES || off >= l->segment_bytes)
        return NULL;
    if (k > l->durable_seg || (k == l->durable_seg && off >= l->durable_off))
        return NULL; /* not durable and not in a buffer: past the end */
    *avail = l->segment_bytes - off;
    return l->segs[k].map + off;
}

int log_read(log_t *l, log_loc loc, record *out)
{
    uint32_t seg_index = (uint32_t)(loc >> 32);
    uint64_t off = (loc & 0xffffffffu) * 8;
    if (l->segs_count > 0 && seg_index < l->segs[0].index)
        return TALLY_EARCHIVED;
    size_t avail = 0;
    const uint8_t *p = log_bytes_at(l, seg_index, off, &avail);
    if (!p)
        return TALLY_ENOTFOUND;
    size_t len;
    uint64_t sum;
    if (record_decode(p, avail, out, &len, &sum) != RECORD_OK)
        return TALLY_ECORRUPT;
    return 0;
}

int log_iter_init(log_t *l, uint64_t after_seq, log_iter *it)
{
    *it = (log_iter){.log = l, .segment = UINT32_MAX, .end_seq = l->durable_seq};
    if (l->segs_count == 0 || after_seq >= l->durable_seq)
        return 0;
    if (after_seq + 1 < l->segs[0].first_seq)
        return TALLY_EARCHIVED;
    uint32_t k = log_seg_for(l, after_seq + 1);
    it->segment = k;
    it->offset = LOG_HEADER_BYTES;
    it->prev = l->segs[k].prev;
    /* Records of this segment up to after_seq are checked and skipped. */
    for (;;) {
        log_iter probe = *it;
        record r;
        log_loc loc;
        int rc = log_iter_next(&probe, &r, &loc);
        if (rc <= 0)
            return rc;
        if (r.seq > after_seq)
            return 0;
        *it = probe;
    }
}

int log_iter_next(log_iter *it, record *r, log_loc *loc)
{
    log_t *l = it->log;
    for (;;) {
        if (it->segment == UINT32_MAX || it->segment > l->durable_seg ||
            (it->segment == l->durable_seg && it->offset >= l->durable_off))
            return 0; /* the durable end */
        const log_segment *s = &l->segs[it->segment];
        size_t len;
        uint64_t sum;
        record rr;
        int drc = it->offset + 4 <= l->segment_bytes
                      ? record_decode(s->map + it->offset, l->segment_bytes - it->offset, &rr,
                                      &len, &sum)
                      : RECORD_END;
        if (drc == RECORD_END) {
            it->segment++;
            it->offset = LOG_HEADER_BYTES;
            if (it->segment < l->segs_count && l->segs[it->segment].prev != it->prev)
                return TALLY_ECORRUPT;
            continue;
        }
        if (drc != RECORD_OK || rr.prev != it->prev)
            return TALLY_ECORRUPT;
        if (rr.seq > it->end_seq)
            return 0;
        *loc = log_make_loc(s->index, it->offset);
        it->offset += len;
        it->prev = sum;
        *r = rr;
        return 1;
    }
}
