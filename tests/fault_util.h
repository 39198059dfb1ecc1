/*
 * fault_util.h — helpers for the durability tests that break things around
 * a real tallyd (SPEC §4; issue 6): filesystems made and torn down by the
 * test (ext4 in a loop image, size-limited tmpfs), a load generator whose
 * every command can be regenerated from (stream, index), a book of what
 * was acknowledged, and the checks that run against the book after a
 * crash, a power loss or an I/O failure.
 *
 * Cleanup: everything these helpers create (mounts, directories, a tallyd)
 * is registered and undone by fu_cleanup(), which every test using them
 * names as its .fini, so a failed assertion leaves nothing mounted.
 * Mounts left by a test process that was killed outright (timeout) are
 * found by the next fu_* test and removed: their paths carry the pid.
 * TALLY_FU_KEEP=1 keeps the working directories (images, data, tallyd's
 * log) for a post-mortem; the mounts are still undone.
 */
#ifndef TALLY_TESTS_FAULT_UTIL_H
#define TALLY_TESTS_FAULT_UTIL_H

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "tallyd_util.h"

/* ---- processes, files, shell --------------------------------------------- */

/* Runs a shell command (printf-style); returns its exit status, or -1. */
int fu_sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The same, asserting exit status 0 (output is shown on failure). */
void fu_sh_ok(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Skips the test unless we are root (mounts need it). */
void fu_require_root(void);
/* A fresh working directory /dev/shm/tally-fu-<pid>-<tag>-XXXXXX, removed
 * by fu_cleanup().  buf holds >= 64 bytes. */
void fu_workdir(char *buf, const char *tag);
/* Points t at a data directory and a log file chosen by the caller (the
 * log must not live on a filesystem the test breaks).  t is registered:
 * fu_cleanup() kills it if it still runs. */
void fu_td_at(td *t, const char *dir, const char *log);
/* Whole file into a malloc'd NUL-terminated buffer, or NULL. */
char *fu_read_file(const char *path, size_t *len);
/* The bytes of a sparse file up to its first hole (LMDB's data.mdb is as
 * large as its map, MDB_WRITEMAP; its pages in use come first), or NULL. */
char *fu_read_data(const char *path, size_t *len);
/* Number of lines of tallyd's log that contain every one of the given
 * strings (NULL-terminated list). */
int fu_log_count(const td *t, const char *const *needles);
/* Prints tallyd's log through cr_log_info (after a failure, for context). */
void fu_log_dump(const td *t, const char *why);
/* tallyd's anonymous resident memory in KiB (RssAnon: heap and stacks,
 * not the mapped log segments and LMDB file, which VmRSS also counts). */
long fu_rss_anon_kib(const td *t);
/* Runs "$TALLY_BUILD/tally <args>"; output (stdout+stderr) into out;
 * returns the exit status. */
int fu_tally_tool(const char *args, char *out, size_t cap);
/* The same with printf-style arguments. */
int fu_tally_toolf(char *out, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* SIGTERM, wait up to timeout_ms; returns the exit status (128+signal), or
 * -1 after a SIGKILL if it did not stop in time.  Never asserts. */
int fu_stop_any(td *t, int timeout_ms);

/* Starts argv[0] (searched in PATH) in the background with stdout and
 * stderr into log; registered: fu_cleanup() kills it.  Returns its pid. */
pid_t fu_spawn(const char *const *argv, const char *log);
/* SIGKILL and reap a process from fu_spawn. */
void fu_kill(pid_t pid);
/* Attaches strace to every thread of tallyd and makes every call of
 * `syscall` on `path` fail with `error` (e.g. "ENOSPC"): libc calls only
 * (io_uring bypasses it).  Returns once attached; fu_kill() detaches. */
pid_t fu_strace_inject(const td *t, const char *path, const char *syscall, const char *error);
/* The same for any process: strace's output into log.  `error` may carry
 * more of strace's inject= options ("EIO:when=1"). */
pid_t fu_strace_inject_pid(pid_t target, const char *log, const char *path, const char *syscall,
                           const char *error);

/* ---- filesystems ------------------------------------------------------------ */

typedef struct fu_fs {
    char base[64];   /* working directory: holds the image and mount points */
    char img[112];   /* the image file ("" for a plain tmpfs) */
    char mnt[96];    /* where the filesystem under test is mounted */
    char outer[96];  /* a size-limited tmpfs holding the image, or "" */
    bool mounted;
    bool outer_mounted;
} fu_fs;

/* ext4 in a sparse loop image of size_mb, mounted at f->mnt.  If
 * outer_mb > 0, the image lives on a tmpfs of that size (writes beyond it
 * fail under the filesystem: fsyncgate); else on /dev/shm. */
void fu_fs_ext4(fu_fs *f, const char *tag, unsigned size_mb, unsigned outer_mb);
/* A tmpfs of size (mount -o size=...) at f->mnt. */
void fu_fs_tmpfs(fu_fs *f, const char *tag, const char *size);
/* mount -o remount,size=... of the tmpfs at f->mnt (or of the outer one). */
void fu_fs_tmpfs_resize(fu_fs *f, bool outer, const char *size);
void fu_fs_mount(fu_fs *f);
void fu_fs_umount(fu_fs *f);
/* xfs_io -x -c shutdown: from now on every write and flush fails with
 * EIO and nothing not yet on the device reaches it (a power cut). */
void fu_fs_shutdown(fu_fs *f);

/* Undoes everything registered (tallyd, mounts, directories).  Safe to
 * call more than once; every test using these helpers names it .fini. */
void fu_cleanup(void);

/* ---- a RESP reply as bytes ---------------------------------------------------- */

/* Re-encodes a parsed RESP2 reply into buf (the encoding is canonical, so
 * equal bytes on the wire give equal output); returns its length. */
size_t fu_reply_bytes(const redisReply *r, char *buf, size_t cap);
uint64_t fu_reply_hash(const redisReply *r);
/* The error code word of an error reply ("INSUFFICIENT", "ERR", ...). */
bool fu_is_error(const redisReply *r, const char *code);

/* "ok", "failed" or "corrupt" for shard i from INFO shards, and its whole
 * line in line (if not NULL).  Asserts the shard is listed. */
void fu_shard_status(redisContext *c, unsigned shard, char *status, size_t cap, char *line,
                     size_t line_cap);

/* ---- the workload ------------------------------------------------------------ */

/* Kinds of generated command (index % 16 decides). */
enum fu_kind {
    FU_EARN = 1,
    FU_REDEEM,
    FU_HOLD,
    FU_CAPTURE,
    FU_REDEEM_BIG, /* always short: a remembered -INSUFFICIENT */
};

#define FU_ARGS_MAX 12

typedef struct fu_cmd {
    int argc;
    const char *argv[FU_ARGS_MAX];
    size_t argl[FU_ARGS_MAX];
    char store[FU_ARGS_MAX][136];
    int kind;
    uint64_t merchant, account;
    int64_t points; /* the amount asked */
    char id[72];
} fu_cmd;

/* Shape of the workload: merchants 1..merchants, accounts 1..accounts. */
typedef struct fu_shape {
    uint32_t merchants;
    uint32_t accounts;
    bool earn_only; /* only EARN (so balances are sums of acknowledged earns) */
    bool fat;       /* 64-byte ids and a 128-byte memo: records of ~320 bytes */
    bool refuse_only; /* only redemptions that are always short: every write is
                       * a remembered refusal (a log record, little state) */
} fu_shape;

/* Command number `index` of stream `stream` (deterministic: a retry is the
 * very same request). */
void fu_gen(const fu_shape *sh, uint32_t stream, uint32_t index, fu_cmd *out);

enum fu_state {
    FU_SENT = 0,     /* sent, no reply (the server died) */
    FU_ENTRY = 1,    /* acknowledged: an entry */
    FU_REFUSED = 2,  /* acknowledged: a remembered refusal (INSUFFICIENT...) */
    FU_FAILED = 3,   /* -ERR: outcome unknown (I/O failure) */
    FU_CONFLICT = 4, /* -CONFLICT: never expected */
};

typedef struct fu_op {
    uint32_t stream;
    uint32_t index;
    uint64_t seq;  /* FU_ENTRY: the entry's seq */
    uint64_t hash; /* FU_ENTRY / FU_REFUSED: hash of the reply bytes */
    uint8_t state;
} fu_op;

typedef struct fu_book {
    fu_shape shape;
    fu_op *ops;
    size_t count, cap;
} fu_book;

void fu_book_free(fu_book *b);

typedef struct fu_load_opts {
    uint32_t workers;      /* connections, one thread each */
    uint32_t pipeline;     /* commands per round */
    uint32_t stream_base;  /* worker w writes stream stream_base + w */
    uint32_t ops_max;      /* per worker; 0 = 200000 */
} fu_load_opts;

typedef struct fu_load fu_load;

/* Starts the workers against t (each on its own connection). */
fu_load *fu_load_start(const td *t, fu_book *b, const fu_load_opts *o);
/* Acknowledged replies so far (entries and refusals), all workers. */
long fu_load_acked(const fu_load *l);
/* -ERR replies so far. */
long fu_load_failed(const fu_load *l);
/* The first -ERR reply's text ("" if none). */
const char *fu_load_first_error(const fu_load *l);
/* Waits (up to timeout_ms) until acked >= n; returns acked. */
long fu_load_wait_acked(const fu_load *l, long n, int timeout_ms);
/* Stops the workers (they finish the round in flight or see the server
 * die), joins them and appends their operations to the book. */
void fu_load_stop(fu_load *l);

/* What fu_book_check looked at. */
typedef struct fu_check {
    long entries;   /* acknowledged entries found with their seq */
    long retries;   /* acknowledged writes retried: byte-identical */
    long refusals;  /* acknowledged refusals still refused, identically */
    long unacked;   /* unacknowledged writes resolved (all or nothing) */
    long unacked_present; /* ... of which the entry was there */
} fu_check;

/* After a restart: every acknowledged entry of streams >= stream_from is
 * there with its seq (older streams: a sample of ~4096), every retry of an
 * acknowledged write answers byte-identically, a remembered refusal stays
 * refused even once the balance would cover it, and every unacknowledged
 * write is there whole or not at all — it is then retried, and the book
 * records its answer as acknowledged.  Asserts; adds to *out. */
void fu_book_check(const td *t, fu_book *b, uint32_t stream_from, fu_check *out);

/* VERIFY on a fresh connection answers +OK (asserted). */
void fu_verify_ok(const td *t, const char *when);
/* Offline `tally verify DIR` exits 0 (asserted; tallyd must be stopped). */
void fu_tool_verify_ok(const char *dir, const char *when);

#endif
