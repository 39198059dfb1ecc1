/*
 * snapshot.c — compacted, checksummed copies of a shard's state
 * (snapshot.h: file layout and the publication protocol).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "checksum.h"
#include "snapshot.h"
#include "tally.h"

/* 2: the state of release 2 (format 3) with its id index's runs; an
 * ids_seq line. */
#define SNAPSHOT_FORMAT 2
#define SNAPSHOT_IO_BYTES (1u << 20)

/* ---- small helpers ------------------------------------------------------ */

static void snapshot_path(const char *dir, uint64_t seq, const char *suffix, char *out,
                          size_t cap)
{
    snprintf(out, cap, "%s/snap-%020" PRIu64 "%s", dir, seq, suffix);
}

static uint64_t snapshot_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int snapshot_hash_piece(void *ctx, const char *p, size_t n, uint64_t off)
{
    (void)off;
    checksum_stream_update(ctx, p, n);
    return 0;
}

/* XXH3-64 and size of a whole file. */
static int snapshot_hash_file(const char *path, uint64_t *sum, uint64_t *bytes)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    checksum_stream *cs = checksum_stream_new();
    int rc = cs ? os_read_all(fd, snapshot_hash_piece, cs, bytes) : -ENOMEM;
    if (rc == 0)
        *sum = checksum_stream_digest(cs);
    checksum_stream_free(cs);
    close(fd);
    return rc;
}

/* ---- meta ---------------------------------------------------------------- */

static int snapshot_meta_text(const snapshot_info *s, char *out, size_t cap)
{
    int n = snprintf(out, cap,
                     "tally-snapshot %d\nshard %u\nseq %" PRIu64 "\nids_seq %" PRIu64
                     "\nbytes %" PRIu64 "\nxxh3 %016" PRIx64 "\ncreated_ms %" PRIu64 "\n",
                     SNAPSHOT_FORMAT, s->shard, s->seq, s->ids_seq, s->bytes, s->checksum,
                     s->created_ms);
    uint64_t check = checksum64(out, (size_t)n, 0);
    n += snprintf(out + n, cap - (size_t)n, "check %016" PRIx64 "\n", check);
    return n;
}

/* Parses and checks a meta file into *s (path filled from dir). */
static int snapshot_meta_read(const char *dir, const char *name, snapshot_info *s)
{
    char path[4400], text[512];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t n = read(fd, text, sizeof(text) - 1);
    close(fd);
    if (n <= 0)
        return TALLY_ECORRUPT;
    text[n] = 0;
    char *check = strstr(text, "check ");
    if (!check)
        return TALLY_ECORRUPT;
    uint64_t want = 0;
    if (sscanf(check, "check %" SCNx64, &want) != 1 ||
        want != checksum64(text, (size_t)(check - text), 0))
        return TALLY_ECORRUPT;
    int format = 0;
    *s = (snapshot_info){0};
    if (sscanf(text,
               "tally-snapshot %d\nshard %u\nseq %" SCNu64 "\nids_seq %" SCNu64
               "\nbytes %" SCNu64 "\nxxh3 %" SCNx64 "\ncreated_ms %" SCNu64,
               &format, &s->shard, &s->seq, &s->ids_seq, &s->bytes, &s->checksum,
               &s->created_ms) != 7 ||
        format != SNAPSHOT_FORMAT || s->ids_seq > s->seq)
        return TALLY_ECORRUPT;
    snapshot_path(dir, s->seq, ".mdb", s->path, sizeof(s->path));
    struct stat st;
    if (stat(s->path, &st) != 0 || (uint64_t)st.st_size != s->bytes)
        return TALLY_ECORRUPT;
    return 0;
}

/* ---- write ----------------------------------------------------------------- */

/* The copy goes through a pipe: this thread hashes every piece as it
 * writes it to the file, so the file is not read back to be checksummed
 * (a third of a snapshot's I/O, and I/O is what a snapshot costs the
 * writers). */
typedef struct snapshot_sink {
    const os_ops *os;
    int in, out; /* pipe's read end, the file */
    checksum_stream *cs;
    uint64_t bytes;
    int rc;
} snapshot_sink;

static void *snapshot_sink_main(void *arg)
{
    snapshot_sink *k = arg;
    char small[4096]; /* to drain the pipe if the big buffer is not there */
    char *buf = malloc(SNAPSHOT_IO_BYTES);
    size_t cap = buf ? SNAPSHOT_IO_BYTES : sizeof(small);
    if (!buf) {
        k->rc = -ENOMEM;
        buf = small;
    }
    for (;;) {
        ssize_t n = read(k->in, buf, cap);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n < 0 && k->rc == 0)
                k->rc = -errno;
            break;
        }
        if (k->rc != 0)
            continue; /* drain, so the copy does not block on a full pipe */
        checksum_stream_update(k->cs, buf, (size_t)n);
        k->rc = os_pwrite_all(k->os, k->out, buf, (size_t)n, k->bytes);
        k->bytes += (uint64_t)n;
    }
    if (buf != small)
        free(buf);
    return NULL;
}

/* LMDB's compacting copy of the last committed state into fd, hashed on
 * the way: *sum and *bytes of what was written. */
static int snapshot_copy(state *st, const os_ops *os, int fd, uint64_t *sum, uint64_t *bytes)
{
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) < 0)
        return -errno;
    fcntl(pfd[1], F_SETPIPE_SZ, (int)SNAPSHOT_IO_BYTES); /* fewer wake-ups; best effort */
    snapshot_sink k = {.os = os, .in = pfd[0], .out = fd, .cs = checksum_stream_new()};
    pthread_t th;
    int rc = k.cs ? -pthread_create(&th, NULL, snapshot_sink_main, &k) : -ENOMEM;
    if (rc < 0) {
        checksum_stream_free(k.cs);
        close(pfd[0]);
        close(pfd[1]);
        return rc;
    }
    /* The compacting copy reads the last committed state in a read
     * transaction: the shard's writer is not stopped. */
    rc = state_copy_fd(st, pfd[1]);
    close(pfd[1]); /* end of data for the sink */
    pthread_join(th, NULL);
    close(pfd[0]);
    if (rc == 0)
        rc = k.rc;
    if (rc == 0) {
        *sum = checksum_stream_digest(k.cs);
        *bytes = k.bytes;
    }
    checksum_stream_free(k.cs);
    return rc;
}

static void snapshot_rmdir(const char *dir) { os_remove_tree(dir); }

/* The copy of the state into tmp, and the id index's runs its manifest
 * names linked into ids_tmp.  -ENOENT when a newer checkpoint removed a
 * run between the two (a merge went in): the caller tries again. */
static int snapshot_take(state *st, ids *x, const os_ops *os, const char *tmp,
                         const char *ids_tmp, snapshot_info *s)
{
    int fd = os->open(os->ctx, tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        return fd;
    int rc = snapshot_copy(st, os, fd, &s->checksum, &s->bytes);
    if (rc == 0)
        rc = os->fdatasync(os->ctx, fd);
    os->close(os->ctx, fd);
    size_t len = 0;
    if (rc == 0) {
        rc = state_file_meta(tmp, "seq", &s->seq, sizeof(s->seq), &len);
        if (rc == STATE_ABSENT)
            s->seq = 0, rc = 0;
    }
    uint8_t manifest[IDS_MANIFEST_BYTES_MAX];
    len = 0;
    if (rc == 0) {
        rc = state_file_meta(tmp, "ids", manifest, sizeof(manifest), &len);
        if (rc == STATE_ABSENT)
            len = 0, rc = 0;
    }
    s->ids_seq = 0;
    if (rc == 0 && len > 0)
        rc = ids_manifest_covered(manifest, len, &s->ids_seq);
    snapshot_rmdir(ids_tmp);
    if (rc == 0 && mkdir(ids_tmp, 0755) < 0)
        rc = -errno;
    if (rc == 0 && len > 0 && x)
        rc = ids_link(x, manifest, len, ids_tmp);
    return rc;
}

int snapshot_write(state *st, ids *x, const os_ops *os, const char *dir, uint32_t shard,
                   snapshot_info *out)
{
    if (mkdir(dir, 0755) < 0 && errno != EEXIST)
        return -errno;
    char tmp[4200], ids_tmp[4200], path[4200], ids_path[4200], meta_tmp[4200], meta[4200];
    snprintf(tmp, sizeof(tmp), "%s/snap-writing.mdb.tmp", dir);
    snprintf(ids_tmp, sizeof(ids_tmp), "%s/snap-writing.ids.tmp", dir);
    snapshot_info s = {.shard = shard, .created_ms = snapshot_now_ms()};
    int rc = -ENOENT;
    for (int attempt = 0; rc == -ENOENT && attempt < 4; attempt++)
        rc = snapshot_take(st, x, os, tmp, ids_tmp, &s);
    snapshot_path(dir, s.seq, ".mdb", path, sizeof(path));
    snapshot_path(dir, s.seq, ".ids", ids_path, sizeof(ids_path));
    snapshot_path(dir, s.seq, ".meta", meta, sizeof(meta));
    snapshot_path(dir, s.seq, ".meta.tmp", meta_tmp, sizeof(meta_tmp));
    snprintf(s.path, sizeof(s.path), "%s", path);
    if (rc == 0) {
        /* No checkpoint since the last snapshot: keep the published one. */
        snapshot_info have;
        char name[64];
        snprintf(name, sizeof(name), "snap-%020" PRIu64 ".meta", s.seq);
        if (snapshot_meta_read(dir, name, &have) == 0) {
            os->unlink(os->ctx, tmp);
            snapshot_rmdir(ids_tmp);
            *out = have;
            return 0;
        }
    }
    if (rc == 0) {
        char text[512];
        int n = snapshot_meta_text(&s, text, sizeof(text));
        int mfd = os->open(os->ctx, meta_tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        rc = mfd < 0 ? mfd : os_pwrite_all(os, mfd, text, (size_t)n, 0);
        if (mfd >= 0 && rc == 0)
            rc = os->fdatasync(os->ctx, mfd);
        if (mfd >= 0)
            os->close(os->ctx, mfd);
    }
    /* Publish: the data first, the meta last (the commit point). */
    if (rc == 0) {
        snapshot_rmdir(ids_path); /* a leftover of a crash at this seq */
        rc = os->rename(os->ctx, ids_tmp, ids_path);
    }
    if (rc == 0)
        rc = os->rename(os->ctx, tmp, path);
    if (rc == 0)
        rc = os->rename(os->ctx, meta_tmp, meta);
    if (rc == 0)
        rc = os->fsync_dir(os->ctx, dir);
    if (rc < 0) {
        os->unlink(os->ctx, tmp);
        os->unlink(os->ctx, meta_tmp);
        snapshot_rmdir(ids_tmp);
        return rc;
    }
    *out = s;
    return 0;
}

/* ---- list, check, restore, prune ----------------------------------------------- */

static int snapshot_cmp_newest(const void *a, const void *b)
{
    const snapshot_info *x = a, *y = b;
    return x->seq > y->seq ? -1 : x->seq < y->seq;
}

/* True if name is a published snapshot's meta, a leftover, or neither. */
static bool snapshot_is_leftover(const char *dir, const char *name)
{
    size_t n = strlen(name);
    if (strncmp(name, "snap-", 5) != 0)
        return false;
    if (n > 4 && strcmp(name + n - 4, ".tmp") == 0)
        return true;
    if (n > 4 && (strcmp(name + n - 4, ".mdb") == 0 || strcmp(name + n - 4, ".ids") == 0)) {
        /* A data file whose meta never got published. */
        char meta[4400];
        snprintf(meta, sizeof(meta), "%s/%.*s.meta", dir, (int)(n - 4), name);
        return access(meta, F_OK) != 0;
    }
    return false;
}

/* Removes a leftover file or runs directory. */
static void snapshot_remove_leftover(const char *path) { os_remove_tree(path); }

int snapshot_list(const char *dir, bool read_only, snapshot_info *out, uint32_t cap,
                  uint32_t *count)
{
    *count = 0;
    DIR *d = opendir(dir);
    if (!d)
        return errno == ENOENT ? 0 : -errno;
    snapshot_info *all = calloc(SNAPSHOT_LIST_MAX, sizeof(*all));
    if (!all) {
        closedir(d);
        return -ENOMEM;
    }
    uint32_t n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t len = strlen(de->d_name);
        if (!read_only && snapshot_is_leftover(dir, de->d_name)) {
            char p[4400];
            snprintf(p, sizeof(p), "%s/%s", dir, de->d_name);
            snapshot_remove_leftover(p);
            continue;
        }
        if (len > 5 && strcmp(de->d_name + len - 5, ".meta") == 0 && n < SNAPSHOT_LIST_MAX &&
            snapshot_meta_read(dir, de->d_name, &all[n]) == 0)
            n++;
    }
    closedir(d);
    qsort(all, n, sizeof(*all), snapshot_cmp_newest);
    *count = n < cap ? n : cap;
    memcpy(out, all, *count * sizeof(*out));
    free(all);
    return 0;
}

int snapshot_check(const snapshot_info *s, char *msg, size_t cap)
{
    uint64_t sum = 0, bytes = 0, seq = 0;
    int rc = snapshot_hash_file(s->path, &sum, &bytes);
    if (rc < 0) {
        snprintf(msg, cap, "snapshot seq %" PRIu64 ": cannot read %s: %s", s->seq, s->path,
                 tally_strerror(rc));
        return TALLY_ECORRUPT;
    }
    if (sum != s->checksum || bytes != s->bytes) {
        snprintf(msg, cap, "snapshot seq %" PRIu64 ": checksum mismatch (%s)", s->seq, s->path);
        return TALLY_ECORRUPT;
    }
    size_t len = 0;
    rc = state_file_meta(s->path, "seq", &seq, sizeof(seq), &len);
    if (rc != 0 || seq != s->seq) {
        snprintf(msg, cap, "snapshot seq %" PRIu64 ": its state says seq %" PRIu64, s->seq,
                 seq);
        return TALLY_ECORRUPT;
    }
    return 0;
}

/* Links the snapshot's id index runs into state_dir/ids. */
static int snapshot_restore_ids(const snapshot_info *s, const os_ops *os, const char *state_dir)
{
    uint8_t manifest[IDS_MANIFEST_BYTES_MAX];
    size_t len = 0;
    int rc = state_file_meta(s->path, "ids", manifest, sizeof(manifest), &len);
    if (rc == STATE_ABSENT)
        return 0;
    if (rc < 0)
        return rc;
    char src[4300], dst[4300];
    snprintf(src, sizeof(src), "%.*s.ids", (int)(strlen(s->path) - 4), s->path);
    snprintf(dst, sizeof(dst), "%s/ids", state_dir);
    if (mkdir(dst, 0755) < 0 && errno != EEXIST)
        return -errno;
    return ids_link_files(os, src, manifest, len, dst);
}

int snapshot_restore(const snapshot_info *s, const os_ops *os, const char *state_dir)
{
    if (mkdir(state_dir, 0755) < 0 && errno != EEXIST)
        return -errno;
    char tmp[4200], data[4200], lock[4200];
    snprintf(tmp, sizeof(tmp), "%s/data.mdb.tmp", state_dir);
    snprintf(data, sizeof(data), "%s/data.mdb", state_dir);
    snprintf(lock, sizeof(lock), "%s/lock.mdb", state_dir);
    int in = open(s->path, O_RDONLY | O_CLOEXEC);
    int rc = in < 0 ? -errno : os_copy_file(os, in, tmp);
    if (in >= 0)
        close(in);
    if (rc == 0)
        rc = snapshot_restore_ids(s, os, state_dir);
    if (rc == 0)
        rc = os->rename(os->ctx, tmp, data);
    if (rc == 0) {
        int u = os->unlink(os->ctx, lock);
        rc = u == -ENOENT ? 0 : u;
    }
    if (rc == 0)
        rc = os->fsync_dir(os->ctx, state_dir);
    if (rc < 0)
        os->unlink(os->ctx, tmp);
    return rc;
}

/* Unpublishes and deletes one (the meta first: a crash in between leaves a
 * leftover that snapshot_list removes). */
static int snapshot_delete(const char *dir, const os_ops *os, uint64_t seq)
{
    char meta[4200], mdb[4200], ids_dir[4300];
    snapshot_path(dir, seq, ".meta", meta, sizeof(meta));
    snapshot_path(dir, seq, ".mdb", mdb, sizeof(mdb));
    snapshot_path(dir, seq, ".ids", ids_dir, sizeof(ids_dir));
    int rc = os->unlink(os->ctx, meta);
    if (rc == 0)
        rc = os->unlink(os->ctx, mdb);
    if (rc == 0)
        snapshot_rmdir(ids_dir);
    return rc;
}

int snapshot_prune(const char *dir, const os_ops *os, uint32_t keep)
{
    snapshot_info *list = calloc(SNAPSHOT_LIST_MAX, sizeof(*list));
    if (!list)
        return -ENOMEM;
    uint32_t n = 0;
    int rc = snapshot_list(dir, false, list, SNAPSHOT_LIST_MAX, &n);
    for (uint32_t i = keep; rc == 0 && i < n; i++)
        rc = snapshot_delete(dir, os, list[i].seq);
    if (rc == 0 && n > keep)
        rc = os->fsync_dir(os->ctx, dir);
    free(list);
    return rc;
}

int snapshot_remove(const char *dir, const os_ops *os, uint64_t seq)
{
    char meta[4200];
    snapshot_path(dir, seq, ".meta", meta, sizeof(meta));
    if (access(meta, F_OK) != 0)
        return 0;
    int rc = snapshot_delete(dir, os, seq);
    return rc == 0 ? os->fsync_dir(os->ctx, dir) : rc;
}
