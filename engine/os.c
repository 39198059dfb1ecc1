/*
 * os.c — the real OS behind the I/O seam (os.h).  Every call returns
 * -errno on failure so callers never read errno.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "os.h"

/* ---- the real calls ----------------------------------------------------- */

static int os_real_open(void *ctx, const char *path, int flags, int mode)
{
    (void)ctx;
    int fd = open(path, flags | O_CLOEXEC, mode);
    return fd < 0 ? -errno : fd;
}

static int os_real_close(void *ctx, int fd)
{
    (void)ctx;
    return close(fd) < 0 ? -errno : 0;
}

static ssize_t os_real_pwrite(void *ctx, int fd, const void *buf, size_t len, uint64_t off)
{
    (void)ctx;
    ssize_t n;
    do
        n = pwrite(fd, buf, len, (off_t)off);
    while (n < 0 && errno == EINTR);
    return n < 0 ? -errno : n;
}

static ssize_t os_real_pread(void *ctx, int fd, void *buf, size_t len, uint64_t off)
{
    (void)ctx;
    ssize_t n;
    do
        n = pread(fd, buf, len, (off_t)off);
    while (n < 0 && errno == EINTR);
    return n < 0 ? -errno : n;
}

static int os_real_fdatasync(void *ctx, int fd)
{
    (void)ctx;
    /* Never retried on failure (fsyncgate): the caller fails the log. */
    return fdatasync(fd) < 0 ? -errno : 0;
}

static int os_real_ftruncate(void *ctx, int fd, uint64_t len)
{
    (void)ctx;
    return ftruncate(fd, (off_t)len) < 0 ? -errno : 0;
}

static int os_real_rename(void *ctx, const char *from, const char *to)
{
    (void)ctx;
    return rename(from, to) < 0 ? -errno : 0;
}

static int os_real_unlink(void *ctx, const char *path)
{
    (void)ctx;
    return unlink(path) < 0 ? -errno : 0;
}

static int os_real_fsync_dir(void *ctx, const char *dir)
{
    (void)ctx;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) < 0 ? -errno : 0;
    close(fd);
    return rc;
}

static const os_ops os_real = {
    .open = os_real_open,
    .close = os_real_close,
    .pwrite = os_real_pwrite,
    .pread = os_real_pread,
    .fdatasync = os_real_fdatasync,
    .ftruncate = os_real_ftruncate,
    .rename = os_real_rename,
    .unlink = os_real_unlink,
    .fsync_dir = os_real_fsync_dir,
    .io_result = NULL,
    .ctx = NULL,
};

/* ---- public ------------------------------------------------------------- */

const os_ops *os_default(void) { return &os_real; }

int os_pwrite_all(const os_ops *os, int fd, const void *buf, size_t len, uint64_t off)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = os->pwrite(os->ctx, fd, p, len, off);
        if (n < 0)
            return (int)n;
        if (n == 0)
            return -EIO;
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

int os_read_all(int fd, int (*each)(void *ctx, const char *p, size_t n, uint64_t off),
                void *ctx, uint64_t *total)
{
    char *buf = malloc(OS_IO_BYTES);
    int rc = buf ? 0 : -ENOMEM;
    uint64_t off = 0;
    while (rc == 0) {
        ssize_t n = pread(fd, buf, OS_IO_BYTES, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            rc = -errno;
        if (n <= 0)
            break;
        rc = each(ctx, buf, (size_t)n, off);
        off += (uint64_t)n;
    }
    free(buf);
    if (total)
        *total = off;
    return rc;
}

typedef struct os_copy_to {
    const os_ops *os;
    int fd;
} os_copy_to;

static int os_copy_piece(void *ctx, const char *p, size_t n, uint64_t off)
{
    os_copy_to *to = ctx;
    return os_pwrite_all(to->os, to->fd, p, n, off);
}

int os_write_file_atomic(const os_ops *os, const char *dir, const char *name, const void *text,
                         size_t len)
{
    char tmp[4200], path[4200];
    snprintf(tmp, sizeof(tmp), "%s/%s.tmp", dir, name);
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    int fd = os->open(os->ctx, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return fd;
    int rc = os_pwrite_all(os, fd, text, len, 0);
    if (rc == 0)
        rc = os->fdatasync(os->ctx, fd);
    os->close(os->ctx, fd);
    if (rc == 0)
        rc = os->rename(os->ctx, tmp, path);
    if (rc == 0)
        rc = os->fsync_dir(os->ctx, dir);
    return rc;
}

int os_copy_file(const os_ops *os, int in_fd, const char *to)
{
    int out = os->open(os->ctx, to, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (out < 0)
        return out;
    os_copy_to dst = {os, out};
    int rc = os_read_all(in_fd, os_copy_piece, &dst, NULL);
    if (rc == 0)
        rc = os->fdatasync(os->ctx, out);
    os->close(os->ctx, out);
    if (rc < 0)
        os->unlink(os->ctx, to);
    return rc;
}

static int os_remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    int rc = flag == FTW_DP ? rmdir(path) : unlink(path);
    return rc < 0 && errno != ENOENT ? -errno : 0;
}

void *os_map_anon(size_t bytes, bool populate)
{
    if (bytes == 0)
        return NULL;
    long sys_page = sysconf(_SC_PAGESIZE);
    size_t page = sys_page > 0 ? (size_t)sys_page : 4096;
    bool huge = bytes >= OS_HUGE_BYTES;
    /* Room to align the start to a huge page; the rest is given back. */
    size_t len = bytes + (huge ? OS_HUGE_BYTES : 0);
    uint8_t *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return NULL;
    uint8_t *p = m;
    if (huge) {
        p = (uint8_t *)(((uintptr_t)m + OS_HUGE_BYTES - 1) & ~(uintptr_t)(OS_HUGE_BYTES - 1));
        uint8_t *end = p + ((bytes + page - 1) & ~(page - 1));
        if (p > m)
            munmap(m, (size_t)(p - m));
        if (m + len > end)
            munmap(end, (size_t)(m + len - end));
        (void)madvise(p, bytes, MADV_HUGEPAGE); /* a hint: without it, small pages */
    }
    int rc = populate ? -1 : 0;
#ifdef MADV_POPULATE_WRITE
    if (populate)
        rc = madvise(p, bytes, MADV_POPULATE_WRITE); /* Linux >= 5.14 */
#endif
    for (size_t at = 0; rc != 0 && at < bytes; at += page)
        ((volatile uint8_t *)p)[at] = 0; /* as MAP_POPULATE would */
    return p;
}

void os_unmap_anon(const void *p, size_t bytes)
{
    if (p && bytes)
        munmap((void *)p, bytes);
}

int os_remove_tree(const char *path)
{
    int rc = nftw(path, os_remove_one, 16, FTW_DEPTH | FTW_PHYS);
    if (rc == -1)
        return errno == ENOENT ? 0 : -errno;
    return rc;
}

/* ---- background threads ------------------------------------------------------ */

void os_thread_lower_priority(int nice)
{
    if (nice < 0)
        return;
    pid_t tid = (pid_t)syscall(SYS_gettid);
    (void)setpriority(PRIO_PROCESS, (id_t)tid, nice);
    /* IOPRIO_WHO_PROCESS = 1, class best-effort (2) << 13, level 7: after
     * every other best-effort request, but never starved as idle is. */
    (void)syscall(SYS_ioprio_set, 1, tid, (2 << 13) | 7);
}

/* ---- accounting ------------------------------------------------------------ */

int os_thread_written_bytes(uint64_t *out)
{
    int fd = open("/proc/thread-self/io", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    char buf[512];
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    int err = n < 0 ? -errno : 0;
    close(fd);
    if (n < 0)
        return err;
    buf[n] = 0;
    /* write_bytes, not wchar: the pages a thread dirtied for the disk,
     * whether by write() or through a writable map (LMDB's MDB_WRITEMAP
     * commits call no write() for their pages). */
    const char *p = strstr(buf, "\nwrite_bytes:");
    if (!p)
        return -ENOENT;
    *out = strtoull(p + 13, NULL, 10);
    return 0;
}
