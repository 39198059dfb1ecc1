/*
 * upgrade.c — release 1 → release 2, one shard at a time (upgrade.h).
 *
 * Release 1's segment header is the same 64 bytes as release 2's with
 * version 1; its records are record.h's format 1 (record_decode_v1).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bytes.h"
#include "checksum.h"
#include "ledger.h"
#include "log.h"
#include "record.h"
#include "upgrade.h"

#define UPGRADE_HEADER_BYTES 64
/* Records converted per synchronous batch write. */
#define UPGRADE_BATCH_BYTES (2u << 20)

typedef struct upgrade_seg {
    uint32_t index;
    const uint8_t *map;
    size_t bytes;
    uint64_t first_seq, prev;
} upgrade_seg;

typedef struct upgrade {
    const char *dir;
    uint32_t shard;
    tally_log_fn log;
    void *log_ctx;
    upgrade_seg *segs;
    uint32_t count;
    char *msg;
    size_t cap;
} upgrade;

static void upgrade_say(const upgrade *u, int level, const char *fmt, ...)
{
    char text[400];
    va_list ap;
    va_start(ap, fmt);
    int n = snprintf(text, sizeof(text), "shard %u: upgrade: ", u->shard);
    vsnprintf(text + n, sizeof(text) - (size_t)n, fmt, ap);
    va_end(ap);
    if (u->log)
        u->log(u->log_ctx, level, text);
}

static uint64_t upgrade_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- release 1's segments ---------------------------------------------------- */

static int upgrade_cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static void upgrade_unmap(upgrade *u)
{
    for (uint32_t i = 0; i < u->count; i++)
        munmap((void *)u->segs[i].map, u->segs[i].bytes);
    free(u->segs);
    u->segs = NULL;
    u->count = 0;
}

/* Maps one segment and checks its header. */
static int upgrade_map_one(upgrade *u, uint32_t index, upgrade_seg *out)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/log-%010u.seg", u->dir, index);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct stat st;
    int rc = fstat(fd, &st) == 0 ? 0 : -errno;
    void *m = rc == 0 && st.st_size >= UPGRADE_HEADER_BYTES
                  ? mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0)
                  : MAP_FAILED;
    close(fd);
    if (m == MAP_FAILED) {
        snprintf(u->msg, u->cap, "shard %u: segment %u: cannot read it", u->shard, index);
        return rc < 0 ? rc : TALLY_ECORRUPT;
    }
    const uint8_t *h = m;
    *out = (upgrade_seg){.index = index, .map = m, .bytes = (size_t)st.st_size,
                         .first_seq = bytes_get_le64(h + 24), .prev = bytes_get_le64(h + 32)};
    uint32_t shard = (uint32_t)h[12] | (uint32_t)h[13] << 8;
    if (memcmp(h, "TALLYSEG", 8) != 0 || bytes_get_le64(h + 56) != checksum64(h, 56, 0) ||
        h[8] != 1 || shard != u->shard || bytes_get_le64(h + 16) != index) {
        snprintf(u->msg, u->cap, "shard %u: segment %u: not a release-1 segment of this shard",
                 u->shard, index);
        munmap(m, (size_t)st.st_size);
        return TALLY_ECORRUPT;
    }
    return 0;
}

static int upgrade_map(upgrade *u)
{
    DIR *d = opendir(u->dir);
    if (!d)
        return -errno;
    uint32_t *idx = NULL, n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        unsigned i;
        char tail[16] = "";
        if (sscanf(de->d_name, "log-%10u.seg%15s", &i, tail) < 1 || tail[0] != 0)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            uint32_t *v = realloc(idx, cap * sizeof(*v));
            if (!v) {
                free(idx);
                closedir(d);
                return -ENOMEM;
            }
            idx = v;
        }
        idx[n++] = i;
    }
    closedir(d);
    qsort(idx, n, sizeof(*idx), upgrade_cmp_u32);
    u->segs = calloc(n ? n : 1, sizeof(*u->segs));
    int rc = u->segs ? 0 : -ENOMEM;
    for (uint32_t i = 0; rc == 0 && i < n; i++) {
        if (i > 0 && idx[i] != idx[i - 1] + 1) {
            snprintf(u->msg, u->cap, "shard %u: segment %u is missing", u->shard, idx[i - 1] + 1);
            rc = TALLY_ECORRUPT;
            break;
        }
        rc = upgrade_map_one(u, idx[i], &u->segs[i]);
        if (rc == 0)
            u->count++;
    }
    free(idx);
    if (rc == 0 && (u->count == 0 || u->segs[0].first_seq != 1)) {
        snprintf(u->msg, u->cap,
                 "shard %u: the release-1 log starts at seq %llu (retention dropped its start): "
                 "an upgrade needs the whole log — put the archived segments back, or dump it "
                 "with release 1 and `tally import` the dump",
                 u->shard, (unsigned long long)(u->count ? u->segs[0].first_seq : 0));
        rc = TALLY_EFORMAT;
    }
    return rc;
}

/* True if a valid release-1 record of a batch after seq lies at or after
 * (k, off): damage before acknowledged data. */
static bool upgrade_later_batch(const upgrade *u, uint32_t k, size_t off, uint64_t seq)
{
    for (uint32_t j = k; j < u->count; j++) {
        const upgrade_seg *s = &u->segs[j];
        for (size_t o = j == k ? off + 8 : UPGRADE_HEADER_BYTES; o + 136 <= s->bytes; o += 8) {
            record r;
            size_t len;
            uint64_t sum;
            if (record_decode_v1(s->map + o, s->bytes - o, &r, &len, &sum) == RECORD_OK &&
                r.seq - r.batch_back > seq)
                return true;
        }
    }
    return false;
}

/* ---- conversion -------------------------------------------------------------------- */

typedef struct upgrade_out {
    log_t *log;
    ledger *ledger;
} upgrade_out;

static int upgrade_open_out(const char *dir, uint32_t shard, const os_ops *os, uint64_t map_bytes,
                            uint32_t segment_bytes, tally_log_fn log, void *log_ctx,
                            upgrade_out *out)
{
    if (mkdir(dir, 0755) < 0)
        return -errno;
    log_options lo = {.dir = dir, .shard = shard, .segment_bytes = segment_bytes, .os = os,
                      .log = log, .log_ctx = log_ctx};
    log_recovery rec;
    int rc = log_open(&lo, &out->log, &rec);
    char state[4400];
    snprintf(state, sizeof(state), "%s/state", dir);
    ledger_options o = {.dir = state, .map_bytes = map_bytes, .os = os, .log = log,
                        .log_ctx = log_ctx};
    if (rc == 0)
        rc = ledger_open(&o, out->log, &out->ledger);
    return rc;
}

/* Converts every valid record of release 1's log, in order. */
static int upgrade_convert(upgrade *u, upgrade_out *out, uint64_t *records)
{
    uint64_t expect = 1, prev = u->segs[0].prev, t0 = upgrade_mono_ms(), shown = t0;
    int rc = 0;
    for (uint32_t k = 0; k < u->count && rc == 0; k++) {
        const upgrade_seg *s = &u->segs[k];
        if (s->first_seq != expect || s->prev != prev) {
            if (upgrade_later_batch(u, k, UPGRADE_HEADER_BYTES - 8, expect - 1))
                goto corrupt;
            upgrade_say(u, 1, "segment %u does not continue the chain: a torn tail at seq %llu "
                              "is left out (never acknowledged)",
                        s->index, (unsigned long long)expect);
            break;
        }
        size_t off = UPGRADE_HEADER_BYTES;
        for (;;) {
            record r;
            size_t len;
            uint64_t sum;
            int drc = off + 4 <= s->bytes
                          ? record_decode_v1(s->map + off, s->bytes - off, &r, &len, &sum)
                          : RECORD_END;
            if (drc == RECORD_OK && r.seq == expect && r.prev == prev) {
                rc = ledger_convert(out->ledger, &r, out->log);
                if (rc < 0) {
                    snprintf(u->msg, u->cap, "shard %u: seq %llu (%.*s) does not convert",
                             u->shard, (unsigned long long)r.seq, (int)r.id_len, r.id);
                    return rc;
                }
                if (log_batch_bytes(out->log) >= UPGRADE_BATCH_BYTES &&
                    (rc = log_flush_sync(out->log)) < 0)
                    return rc;
                prev = sum;
                expect++;
                off += len;
                if (++*records % 65536 == 0 && upgrade_mono_ms() - shown > 1000) {
                    shown = upgrade_mono_ms();
                    upgrade_say(u, 0, "%llu records converted", (unsigned long long)*records);
                }
                continue;
            }
            bool zeros = drc == RECORD_END;
            if (zeros) {
                bool data = false;
                for (size_t o = off; o < s->bytes && !data; o++)
                    data = s->map[o] != 0;
                if (!data && k + 1 < u->count)
                    break; /* on to the next segment */
                if (!data)
                    goto done; /* the clean end */
            }
            if (upgrade_later_batch(u, k, off, expect - 1))
                goto corrupt;
            upgrade_say(u, 1, "torn tail at seq %llu (segment %u offset %zu) left out: it was "
                              "never acknowledged",
                        (unsigned long long)expect, s->index, off);
            goto done;
        }
    }
done:
    upgrade_say(u, 0, "%llu records converted in %.1f s", (unsigned long long)*records,
                (double)(upgrade_mono_ms() - t0) / 1000.0);
    return 0;
corrupt:
    snprintf(u->msg, u->cap,
             "shard %u: release 1's log is damaged at seq %llu with acknowledged records after "
             "it: not upgraded",
             u->shard, (unsigned long long)expect);
    return TALLY_ECORRUPT;
}

/* ---- the swap -------------------------------------------------------------------------- */

static int upgrade_fsync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) < 0 ? -errno : 0;
    close(fd);
    return rc;
}

static void upgrade_parent(const char *dir, char *out, size_t cap)
{
    snprintf(out, cap, "%s", dir);
    char *slash = strrchr(out, '/');
    if (slash)
        *slash = 0;
    else
        snprintf(out, cap, ".");
}

/* Renames a complete .upgrade into place (the old shard aside first). */
static int upgrade_swap(const char *dir, const char *work, upgrade *u)
{
    char old[4300], parent[4200];
    snprintf(old, sizeof(old), "%s.release1", dir);
    upgrade_parent(dir, parent, sizeof(parent));
    if (access(dir, F_OK) == 0 && rename(dir, old) < 0)
        return -errno;
    if (rename(work, dir) < 0)
        return -errno;
    char marker[4400];
    snprintf(marker, sizeof(marker), "%s/UPGRADED", dir);
    unlink(marker);
    int rc = upgrade_fsync_dir(parent);
    if (rc == 0)
        upgrade_say(u, 1, "done; the release-1 shard is kept in %s: remove it when satisfied",
                    old);
    return rc;
}

static int upgrade_mark(const char *work)
{
    char marker[4500];
    snprintf(marker, sizeof(marker), "%s/UPGRADED", work);
    int fd = open(marker, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) < 0 ? -errno : 0;
    close(fd);
    return rc == 0 ? upgrade_fsync_dir(work) : rc;
}

int upgrade_needed(const char *shard_dir)
{
    char work[4400];
    snprintf(work, sizeof(work), "%s.upgrade/UPGRADED", shard_dir);
    if (access(work, F_OK) == 0)
        return 1; /* a finished conversion whose swap a crash cut short */
    int v = log_dir_version(shard_dir);
    return v < 0 ? v : v == 1;
}

int upgrade_shard(const char *shard_dir, uint32_t shard, const os_ops *os, uint64_t map_bytes,
                  tally_log_fn log, void *log_ctx, char *msg, size_t cap)
{
    upgrade u = {.dir = shard_dir, .shard = shard, .log = log, .log_ctx = log_ctx, .msg = msg,
                 .cap = cap};
    msg[0] = 0;
    char work[4300], marker[4500];
    snprintf(work, sizeof(work), "%s.upgrade", shard_dir);
    snprintf(marker, sizeof(marker), "%s/UPGRADED", work);
    if (access(marker, F_OK) == 0)
        return upgrade_swap(shard_dir, work, &u);
    os_remove_tree(work); /* an unfinished one: begin again */
    int rc = upgrade_map(&u);
    if (rc < 0) {
        upgrade_unmap(&u);
        return rc;
    }
    upgrade_say(&u, 1, "release-1 data: converting %u segment(s) to release 2", u.count);
    upgrade_out out = {0};
    rc = upgrade_open_out(work, shard, os, map_bytes, (uint32_t)u.segs[0].bytes, log, log_ctx,
                          &out);
    uint64_t records = 0;
    if (rc == 0)
        rc = upgrade_convert(&u, &out, &records);
    if (rc == 0)
        rc = log_flush_sync(out.log);
    if (rc == 0)
        rc = ledger_checkpoint(out.ledger, log_last_seq(out.log));
    ledger_close(out.ledger);
    log_close(out.log);
    upgrade_unmap(&u);
    if (rc == 0)
        rc = upgrade_mark(work);
    if (rc == 0)
        rc = upgrade_swap(shard_dir, work, &u);
    if (rc < 0 && !msg[0])
        snprintf(msg, cap, "shard %u: upgrade failed: %s", shard, tally_strerror(rc));
    return rc;
}
