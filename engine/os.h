/*
 * os.h — the I/O seam: every file system call the log makes, plus a hook
 * on every io_uring write/flush completion, go through one table so tests
 * can inject faults (EIO, ENOSPC, short writes, power loss) where libc
 * interposition cannot reach (io_uring bypasses libc).
 *
 * Functions return 0 / a count on success and -errno on failure; they
 * never leave the error in errno for the caller to find.
 * LMDB does its own I/O and is not covered (see TESTING.md for strace).
 */
#ifndef TALLY_OS_H
#define TALLY_OS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

enum os_io { OS_IO_WRITE = 1, OS_IO_FSYNC = 2 };

typedef struct os_ops {
    int (*open)(void *ctx, const char *path, int flags, int mode); /* fd */
    int (*close)(void *ctx, int fd);
    ssize_t (*pwrite)(void *ctx, int fd, const void *buf, size_t len, uint64_t off);
    ssize_t (*pread)(void *ctx, int fd, void *buf, size_t len, uint64_t off);
    int (*fdatasync)(void *ctx, int fd);
    int (*ftruncate)(void *ctx, int fd, uint64_t len);
    int (*rename)(void *ctx, const char *from, const char *to);
    int (*unlink)(void *ctx, const char *path);
    int (*fsync_dir)(void *ctx, const char *dir);
    /* Called for each io_uring completion of a log write or flush before
     * the engine looks at it: returns the result to use (res, or a fault
     * such as -EIO / -ENOSPC / a shorter count).  NULL = pass through. */
    int (*io_result)(void *ctx, enum os_io kind, int fd, uint64_t off, size_t len, int res);
    void *ctx;
} os_ops;

/* The real OS.  Static storage; never NULL. */
const os_ops *os_default(void);

/* Convenience: pwrite all of buf or fail (short writes retried; -EIO if no
 * progress). */
int os_pwrite_all(const os_ops *os, int fd, const void *buf, size_t len, uint64_t off);

/* Reads fd from its start in OS_IO_BYTES pieces (a buffer of its own, so
 * any thread may call it), handing each with its offset to each(); stops
 * at the end (0, *total = bytes read if total), at a read error (-errno)
 * or at a non-zero return of each(), which it returns. */
#define OS_IO_BYTES (1u << 20)
int os_read_all(int fd, int (*each)(void *ctx, const char *p, size_t n, uint64_t off),
                void *ctx, uint64_t *total);

/* Copies everything readable from in_fd (from offset 0) into a new file
 * `to` (created or truncated) with the seam's writes, then flushes it.
 * The file is removed again if anything fails. */
int os_copy_file(const os_ops *os, int in_fd, const char *to);

/* Writes a small file whole or not at all: text into dir/name.tmp,
 * flushed, renamed over dir/name, and dir flushed (a crash leaves the old
 * file or the new one).  Through the seam. */
int os_write_file_atomic(const os_ops *os, const char *dir, const char *name, const void *text,
                         size_t len);

/* Bytes of file pages the calling thread has dirtied for the disk since
 * it started (the kernel's per-thread I/O accounting, `write_bytes` of
 * /proc/thread-self/io): through write() or through a writable map, as
 * LMDB's MDB_WRITEMAP commits write (`wchar`, the bytes passed to write
 * calls, misses those).  A page dirtied twice before it is written back
 * counts once; tmpfs counts nothing; io_uring writes are their workers'.
 * 0 and *out, or -errno (-ENOENT on a kernel without task I/O accounting). */
int os_thread_written_bytes(uint64_t *out);

/* Lowers the calling thread's CPU priority to `nice` and its I/O priority
 * to the lowest best-effort level (Linux applies both per thread), for
 * background work beside a shard's writer: the id index's merges,
 * VERIFY's scans.  nice < 0 leaves it as it is; failures too (the work
 * still runs, at the writer's priority). */
void os_thread_lower_priority(int nice);

/* Anonymous memory for big tables and arenas (hash slots, id tables,
 * buffers), zeroed, mapped directly so that it goes back to the kernel
 * when unmapped (malloc would keep large freed chunks in its heap).  From
 * OS_HUGE_BYTES up it is aligned to that size and asks for transparent
 * huge pages (MADV_HUGEPAGE): these tables are probed at random, and with
 * 4 KiB pages nearly every probe of a big one also misses the TLB — a page
 * walk, dearer still in a virtual machine.  populate: every page faulted
 * in now (one fault each instead of a read fault on the zero page and then
 * a copy on write).  NULL if no memory. */
#define OS_HUGE_BYTES (2u << 20)
void *os_map_anon(size_t bytes, bool populate);
/* Unmaps what os_map_anon(bytes) gave (p NULL: nothing). */
void os_unmap_anon(const void *p, size_t bytes);

/* Removes a file or a directory and everything in it (temporary
 * directories, unpublished snapshots): 0 or the first -errno.  A missing
 * path is 0. */
int os_remove_tree(const char *path);

#endif
