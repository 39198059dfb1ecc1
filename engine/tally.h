/*
 * tally.h — the public engine API: a sharded, durable points ledger.
 *
 * Lifecycle: tally_open() → tally_submit()/tally_call() → tally_close().
 * A request is a caller-owned struct; the engine fills its result and calls
 * its done() callback exactly once, on a shard thread, and only when every
 * write the result reflects is on stable storage (SPEC §4).  Until done()
 * runs the caller must not touch the request.
 *
 * Errors are 0 or negative: -errno for OS errors, TALLY_E* for ours;
 * tally_strerror() names both.
 */
#ifndef TALLY_TALLY_H
#define TALLY_TALLY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "limits.h"

/* ---- error codes: a reserved negative range, below every -errno -------- */

enum {
    TALLY_EBASE = -10000,
    TALLY_EINSUFFICIENT = -10001, /* -INSUFFICIENT: not enough available */
    TALLY_ENOTFOUND = -10002,     /* -NOTFOUND: referenced entry missing */
    TALLY_ECONFLICT = -10003,     /* -CONFLICT: id used by another request */
    TALLY_EINVALID = -10004,      /* -INVALID: bad amount/id/kind/state */
    TALLY_ESYNTAX = -10005,       /* -ERR: malformed request */
    TALLY_ECORRUPT = -10006,      /* log or state corrupt: shard refused */
    TALLY_EFAILED = -10007,       /* shard stopped taking writes (I/O) */
    TALLY_EFORMAT = -10008,       /* unknown on-disk format or version */
    TALLY_ESHARDS = -10009,       /* --shards differs from the manifest */
    TALLY_ELOCKED = -10010,       /* data directory in use by another */
    TALLY_ECLOSED = -10011,       /* engine is shutting down */
    TALLY_ETOOBIG = -10012,       /* request exceeds an engine limit */
    TALLY_EARCHIVED = -10013,     /* the record lies before the retained log */
    TALLY_ETRYAGAIN = -10014,     /* -TRYAGAIN: not acknowledged in a cluster (no
                                   * replica confirmed it, or leadership lost) */
    TALLY_ELAST = -10015,
};

/* Names an error code: "-INSUFFICIENT" style codes map to their text,
 * -errno to strerror().  Never NULL; the string is static. */
const char *tally_strerror(int err);
/* The RESP error code word for an error: "INSUFFICIENT", "NOTFOUND",
 * "CONFLICT", "INVALID", "TRYAGAIN" or "ERR". */
const char *tally_error_code(int err);

/* ---- data model --------------------------------------------------------- */

enum tally_kind {
    TALLY_KIND_NONE = 0,
    TALLY_KIND_EARN,
    TALLY_KIND_REDEEM,
    TALLY_KIND_HOLD,
    TALLY_KIND_CAPTURE,
    TALLY_KIND_VOID,
    TALLY_KIND_REVERSE,
    TALLY_KIND_ADJUST,
    TALLY_KIND_EXPIRE,
    TALLY_KIND_TRANSFER,  /* points moved between two accounts of a merchant */
    TALLY_KIND_AVAILABLE, /* pending points became spendable (~avail:ID) */
    TALLY_KIND_COUNT,     /* numbers are on disk: append only */
};
/* "earn", "redeem", ... ; "" for NONE or out of range. */
const char *tally_kind_name(int kind);

enum tally_op {
    TALLY_OP_NONE = 0,
    /* writes: each carries an id and produces one entry (or a refusal) */
    TALLY_OP_EARN,
    TALLY_OP_REDEEM,
    TALLY_OP_HOLD,
    TALLY_OP_CAPTURE,
    TALLY_OP_VOID,
    TALLY_OP_REVERSE,
    TALLY_OP_ADJUST,
    TALLY_OP_TRANSFER,
    /* reads */
    TALLY_OP_BALANCE,
    TALLY_OP_ENTRY,
    TALLY_OP_HISTORY,
    TALLY_OP_MERCHANT,
    TALLY_OP_LIABILITY,
    /* admin: merchant 0 means every shard */
    TALLY_OP_VERIFY,
    TALLY_OP_SNAPSHOT,
    /* FOLLOW (SPEC §8): merchant m's durable entries after a cursor, or
     * every merchant's (merchant 0: FOLLOW *); read off the shard threads */
    TALLY_OP_FOLLOW,
    /* EXEC: a MULTI's queued requests (cmds) for one merchant, run back to
     * back in one batch, one log group: all or nothing */
    TALLY_OP_EXEC,
    TALLY_OP_COUNT,
};
bool tally_op_is_write(int op);

/* Request flags: which optional arguments were given. */
enum {
    TALLY_REQ_POINTS = 1u << 0,       /* CAPTURE/REVERSE POINTS n given */
    TALLY_REQ_EXPIRES = 1u << 1,      /* EXPIRES given */
    TALLY_REQ_AVAILABLE_AT = 1u << 2, /* AVAILABLE_AT given */
    TALLY_REQ_TIMEOUT = 1u << 3,      /* HOLD TIMEOUT given */
    TALLY_REQ_MEMO = 1u << 4,         /* MEMO given (may be empty) */
    TALLY_REQ_BEFORE = 1u << 5,       /* HISTORY BEFORE given */
    TALLY_REQ_ALL = 1u << 6,          /* TRANSFER ALL */
    TALLY_REQ_BLOCK = 1u << 7,        /* FOLLOW BLOCK ms given */
};

/* One ledger entry as clients see it (SPEC §1). */
typedef struct tally_entry {
    uint64_t seq;
    uint64_t ts_ms;
    uint64_t merchant;
    uint64_t account;
    uint64_t account2; /* TRANSFER: the other account; else 0 */
    int64_t points;   /* signed change to the available balance */
    int64_t amount;   /* the operation's own size (earned, redeemed, held, ...) */
    int64_t balance;  /* available after */
    int64_t held;     /* held after */
    int64_t pending;  /* pending after */
    uint64_t expires; /* unix s, 0 = never */
    uint8_t kind;     /* enum tally_kind */
    bool imported;    /* loaded by `tally import` */
    /* The request as it was given (for `tally dump` and import, which
     * must replay it exactly): */
    uint64_t available_at; /* EARN AVAILABLE_AT, unix s; 0 none */
    uint64_t timeout_s;    /* HOLD TIMEOUT as given; 0 none */
    int64_t req_points;    /* the points argument as given (CAPTURE/REVERSE POINTS n, or 0) */
    uint32_t req_flags;    /* TALLY_REQ_* */
    uint8_t id_len;
    uint8_t ref_len;
    uint8_t memo_len;
    char id[LIMIT_ENGINE_ID_BYTES_MAX];
    char ref[LIMIT_ENGINE_ID_BYTES_MAX];
    char memo[LIMIT_MEMO_BYTES_MAX];
} tally_entry;

/* One line of an import (tally_import_add): an entry as `tally dump`
 * writes it (export.h reads the text).  e.seq is the source's and is not
 * kept.  `have` says which of the checked fields the line gave: the
 * others are worked out by applying the line. */
enum {
    TALLY_HAVE_POINTS = 1u << 0,
    TALLY_HAVE_AMOUNT = 1u << 1,
    TALLY_HAVE_BALANCE = 1u << 2,
    TALLY_HAVE_HELD = 1u << 3,
    TALLY_HAVE_PENDING = 1u << 4,
    TALLY_HAVE_ARG_POINTS = 1u << 5, /* e.req_points is the request's points argument */
    TALLY_HAVE_GIVEN = 1u << 6,      /* e.req_flags says which options the request had */
    TALLY_HAVE_SEQ = 1u << 7,
};
typedef struct tally_import_item {
    tally_entry e;
    int refused;   /* 0, or a remembered refusal's code (TALLY_EINSUFFICIENT, ...) */
    uint32_t have; /* TALLY_HAVE_* */
    uint64_t line; /* the caller's number for it (its line): errors name it */
} tally_import_item;

/* How an entry moves its account's held and pending points, from its
 * kind, points and amount alone (available moves by points): what lets an
 * auditor rebuild every balance from HISTORY (docs/REFERENCE.md, "Reading
 * an account's history"). */
void tally_entry_moves(const tally_entry *e, int64_t *held, int64_t *pending);

typedef struct tally_balance {
    int64_t available;
    int64_t held;
    int64_t pending;
    int64_t earned;
    int64_t redeemed;
    int64_t expired;
    uint64_t next_expiry; /* unix s of the soonest-expiring lot, 0 if none */
    int64_t expiring;     /* points in it */
} tally_balance;

typedef struct tally_merchant {
    int64_t accounts;
    int64_t outstanding; /* Σ available + held + pending */
    int64_t earned;
    int64_t redeemed;
    int64_t expired;
    int64_t entries;
} tally_merchant;

/* One LIABILITY row: points outstanding in lots expiring in a UTC month. */
typedef struct tally_liability_row {
    int32_t year;  /* 0 for "never" */
    int32_t month; /* 1..12, 0 for "never" */
    int64_t points;
} tally_liability_row;

typedef struct tally_result {
    int status;        /* 0 or a TALLY_E* / -errno code */
    char message[160]; /* error text without the code word; "" on success */
    bool found;        /* ENTRY: false means nil */
    bool replayed;     /* write answered from the idempotency index */
    tally_entry entry; /* writes, ENTRY */
    tally_balance balance;
    tally_merchant merchant;
    /* HISTORY entries (newest first) or LIABILITY rows (month order,
     * "never" last): allocated by the engine, freed by tally_result_free. */
    tally_entry *items;
    uint32_t items_count;
    tally_liability_row *rows;
    uint32_t rows_count;
    /* FOLLOW m: the cursor to pass as AFTER next time (FOLLOW * writes
     * its cursors into the request's) */
    uint64_t cursor;
} tally_result;

typedef struct tally_request tally_request;
typedef void (*tally_done_fn)(tally_request *req);

struct tally_request {
    /* in: the command, already parsed (see tally_request_* helpers) */
    uint8_t op; /* enum tally_op */
    uint8_t id_len, ref_len, memo_len;
    uint32_t flags; /* TALLY_REQ_* */
    uint64_t merchant;
    uint64_t account;
    uint64_t account2;     /* TRANSFER: the receiving account */
    int64_t points;        /* amount (ADJUST: signed); POINTS n for capture */
    uint64_t expires;      /* unix s */
    uint64_t available_at; /* unix s */
    uint64_t timeout_s;    /* HOLD */
    uint64_t before_seq;   /* HISTORY BEFORE */
    uint32_t limit;        /* HISTORY LIMIT, FOLLOW COUNT (0 = default) */
    uint64_t after_seq;    /* FOLLOW m AFTER (0: from the start) */
    uint64_t block_ms;     /* FOLLOW BLOCK ms (with TALLY_REQ_BLOCK; 0: no limit) */
    /* Arrays the request owns (malloc'd by the caller, freed by
     * tally_request_release):
     * FOLLOW *: one cursor per shard (tally_shard_count), the seq after
     * which to read, replaced by the next cursors when it completes;
     * EXEC: the queued requests, each checked and for req->merchant,
     * answered in their own res when the EXEC completes. */
    uint64_t *cursors;
    uint32_t cursors_count;
    tally_request *cmds;
    uint32_t cmds_count;
    char id[LIMIT_ENGINE_ID_BYTES_MAX];
    char ref[LIMIT_ENGINE_ID_BYTES_MAX]; /* hold_id / entry_id, or ENTRY id */
    char memo[LIMIT_MEMO_BYTES_MAX];
    /* out */
    tally_result res;
    /* caller's */
    tally_done_fn done;
    void *user;
    /* engine-private */
    tally_request *next_;
    void *engine_;
};

/* Zeroes a request (and frees a previous result). */
void tally_request_init(tally_request *req);
/* Makes a request (never submitted, or completed and its result freed)
 * ready to be filled again, clearing only what the filling relies on: the
 * fixed fields before id[] and the result's status, flags and pointers —
 * the id/ref/memo bytes are used up to their lengths, and an answer
 * overwrites the entry, balance or totals it returns.  For hot paths
 * (the server resets one per command); tally_request_init otherwise. */
void tally_request_reset(tally_request *req);
/* Frees items/rows of a result; safe to call twice. */
void tally_result_free(tally_result *res);
/* Frees everything a request owns: its result, FOLLOW *'s cursors and
 * EXEC's queued requests (released in turn); safe to call twice. */
void tally_request_release(tally_request *req);
/* Sets req's outcome to the error code with a message (printf format);
 * returns code. */
int tally_fail(tally_request *req, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Checks what can be checked without the ledger: amounts in range, id
 * syntax (1..64 printable, no leading '~' for writes), LIMIT range, option
 * combinations.  Returns 0 or TALLY_EINVALID/TALLY_ESYNTAX and writes a
 * message into res.  Such a request records nothing. */
int tally_request_check(tally_request *req);

/* ---- engine ------------------------------------------------------------- */

enum tally_sync { TALLY_SYNC_ALWAYS = 0, TALLY_SYNC_NONE = 1 };

/* What happens to log segments a snapshot fully covers (snapshot.h). */
enum tally_retention {
    TALLY_RETAIN_KEEP = 0,    /* keep every segment (the default) */
    TALLY_RETAIN_DELETE = 1,  /* delete them */
    TALLY_RETAIN_ARCHIVE = 2, /* move them into archive_dir/shard-NNN/ */
};

struct os_ops; /* os.h: the I/O seam for fault injection */

/* Engine time source in unix milliseconds; the engine never lets a shard's
 * time go backwards whatever this returns. */
typedef uint64_t (*tally_clock_fn)(void *ctx);

/* Progress and warnings (recovery, torn tails, failures); level 0 = info,
 * 1 = warning, 2 = error.  May be called from any thread. */
typedef void (*tally_log_fn)(void *ctx, int level, const char *msg);

/* A shard group's engine in a cluster (repl.h): one shard, whose log a
 * leader ships to its replicas.  While the shard leads (tally_replica_lead),
 * requests are answered only up to the seq tally_replica_ack() allows and
 * while may_ack() says so; no checkpoint passes tally_replica_commit();
 * a replica's shard writes nothing of its own (no expiry sweep) and takes
 * its leader's records through tally_replica_append(). */
typedef struct tally_replica {
    bool (*may_ack)(void *ctx);                  /* the lease holds (shard thread) */
    /* After every flush (shard thread): the durable seq and the epoch of
     * the record there. */
    void (*on_durable)(void *ctx, uint64_t seq, uint32_t epoch);
    void *ctx;
    uint64_t cut_after;  /* at open: drop the log after this seq (0: keep) */
    uint64_t first_seq;  /* a new log starts here, chained to first_prev (0: 1) */
    uint64_t first_prev;
} tally_replica;

typedef struct tally_options {
    const char *dir;   /* data directory, created if missing */
    uint32_t shards;   /* 0 = manifest's, or CPU count when creating */
    int sync;          /* enum tally_sync */
    uint32_t segment_bytes;   /* 0 = LIMIT_SEGMENT_BYTES_DEFAULT */
    uint32_t checkpoint_ms;   /* 0 = default */
    uint32_t checkpoint_entries; /* 0 = default */
    uint64_t state_map_bytes; /* 0 = default */
    const struct os_ops *os;  /* NULL = the real OS */
    tally_clock_fn clock;     /* NULL = CLOCK_REALTIME */
    void *clock_ctx;
    tally_log_fn log;         /* NULL = stderr */
    void *log_ctx;
    bool read_only;           /* offline tools: open without writing */
    /* Snapshots: taken by SNAPSHOT, and every so many records or ms per
     * shard (0: not by that measure). */
    uint64_t snapshot_every_records;
    uint64_t snapshot_every_ms;
    int retention;            /* enum tally_retention */
    const char *archive_dir;  /* TALLY_RETAIN_ARCHIVE */
    /* Tools that write (tally import): open writable but start no shard
     * threads; requests cannot be submitted. */
    bool offline;
    /* Cluster mode: a shard group's engine (one shard); copied. */
    const tally_replica *replica;
} tally_options;

typedef struct tally tally;

/* Opens (creating if needed) the data directory, recovers every shard
 * (replays the log after each shard's checkpoint, truncates a torn tail and
 * reports it) and starts one writer thread per shard.  A shard whose
 * acknowledged data is corrupt is opened refused: its requests fail with
 * TALLY_ECORRUPT, the others serve.  Errors: TALLY_ESHARDS, TALLY_ELOCKED,
 * TALLY_EFORMAT, -errno. */
int tally_open(const tally_options *opts, tally **out);

/* Stops accepting, finishes and answers every submitted request, writes a
 * final checkpoint, joins the threads and frees everything.  NULL is ok. */
void tally_close(tally *t);

/* Queues a request for its merchant's shard.  Never blocks on I/O.  done()
 * is called once, on a shard thread, when the result is durable.  A request
 * refused by tally_request_check() is completed at once (done() called
 * before this returns).  Returns 0; the outcome is in req->res. */
void tally_submit(tally *t, tally_request *req);

/* FOLLOW requests do not go to a shard thread: a feed thread reads the
 * durable logs (log.h allows it), answers at once with what it found,
 * or — with TALLY_REQ_BLOCK, when it found nothing up to the end of the
 * durable log — keeps the request until an entry of its merchant (any
 * merchant for FOLLOW *) becomes durable or block_ms pass.  A waiting
 * request costs the shards nothing but one flag test per batch while
 * anyone waits on them.  tally_wake answers a waiting (or not yet
 * answered) FOLLOW at once with what it has — [cursor, no entries] — for
 * a client that left or a server that stops; done() may run before it
 * returns, on the calling thread.  A request already answered is left
 * alone: call it only for requests whose done() has not been seen. */
void tally_wake(tally *t, tally_request *req);

/* FOLLOW *'s cursor as text: one seq per shard, opaque to clients, with
 * a checksum so that a damaged or invented one is refused.  format
 * writes at most TALLY_CURSOR_BYTES_MAX bytes and a NUL; parse takes
 * "0" (every shard from the start) or what format wrote for `shards`
 * shards: 0, or TALLY_ESYNTAX with why in msg.  (Base64url of a version
 * byte, the shard count and the seqs as LEB128 varints, and 32 bits of
 * their XXH3-64.) */
#define TALLY_CURSOR_BYTES_MAX (((3 + LIMIT_SHARDS_MAX * 10 + 4) * 4 + 2) / 3 + 1)
static_assert(TALLY_CURSOR_BYTES_MAX <= LIMIT_BULK_BYTES_MAX,
              "a FOLLOW * cursor always fits in one argument");
size_t tally_cursor_format(const uint64_t *seqs, uint32_t shards, char *out, size_t cap);
int tally_cursor_parse(const char *text, size_t len, uint32_t shards, uint64_t *seqs, char *msg,
                       size_t cap);

/* Submits and waits: for tools, tests and the engine benchmark.  Returns
 * req->res.status.  req->done must be NULL (it is used internally). */
int tally_call(tally *t, tally_request *req);

/* Offline check (a tally opened read_only): every shard's log checksums
 * and chain, the state's consistency, and that a fresh replay of the whole
 * log gives exactly the stored state.  Progress goes to opts.log.  0, or
 * TALLY_ECORRUPT with the first fault in msg. */
int tally_verify_full(tally *t, char *msg, size_t cap);

/* Offline (read_only) scan of one shard's durable log in seq order, after
 * after_seq (or from the first record retention kept): fn gets each entry
 * (refusal=false) or remembered refusal
 * (refusal=true, e->kind is the refused write's kind, *status its code).
 * A non-zero return from fn stops the scan and is returned.  Errors:
 * -EINVAL (not read_only, bad shard), TALLY_ECORRUPT (a bad record). */
typedef int (*tally_scan_fn)(void *ctx, const tally_entry *e, bool refusal, int status);
int tally_scan(tally *t, uint32_t shard, uint64_t after_seq, tally_scan_fn fn, void *ctx);
/* Every shard's retained log at once, merged by time: the oldest entry
 * next (ties to the lower shard), each shard's own order kept.  What
 * `tally dump` writes: an import reads it with every shard busy. */
int tally_scan_all(tally *t, tally_scan_fn fn, void *ctx);

uint32_t tally_shard_count(const tally *t);
uint32_t tally_shard_of(const tally *t, uint64_t merchant);

/* A histogram in power-of-two buckets (the engine's durations in
 * microseconds, batch sizes in records): counts[i] holds the observations
 * v with 2^(i-1) < v <= 2^i (counts[0]: v <= 1), the last bucket every v
 * above 2^(TALLY_HIST_BUCKETS-2).  Buckets are not cumulative; sum is the
 * total of the observations, their count the total of the buckets.  A
 * bucket is found with one count-leading-zeros, so observing costs an
 * increment or two on any path. */
#define TALLY_HIST_BUCKETS 32
typedef struct tally_hist {
    uint64_t counts[TALLY_HIST_BUCKETS];
    uint64_t sum;
} tally_hist;

/* The bucket of v (see tally_hist). */
static inline uint32_t tally_hist_bucket(uint64_t v)
{
    if (v <= 1)
        return 0;
    uint32_t i = 64u - (uint32_t)__builtin_clzll(v - 1);
    return i < TALLY_HIST_BUCKETS - 1 ? i : TALLY_HIST_BUCKETS - 1;
}

/* Counters for INFO, /metrics and the benchmarks; read without stopping
 * writers (each field on its own: a histogram read while a flush completes
 * may miss that flush in one field and have it in another). */
typedef struct tally_shard_stats {
    uint64_t seq;            /* last seq assigned */
    uint64_t durable_seq;    /* last seq on stable storage */
    uint64_t checkpoint_seq; /* last seq in LMDB */
    uint64_t entries;        /* entries + refusals written since open */
    uint64_t batches;        /* flushes completed since open */
    uint64_t batch_entries_max;
    uint64_t flush_us_total;
    uint64_t flush_us_max;
    uint64_t checkpoints;
    uint64_t checkpoint_us_total; /* LMDB commit time */
    uint64_t checkpoint_us_max;
    uint64_t checkpoint_stall_us_max; /* requests held back for a checkpoint */
    uint64_t log_bytes;
    uint64_t sweep_entries;  /* engine-written expire/void entries */
    uint64_t sweep_chunks;   /* sweep turns that wrote entries (each one chunk) */
    uint64_t sweep_chunk_entries_max; /* most entries one turn wrote (<= LIMIT_SWEEP_CHUNK) */
    uint64_t log_first_seq;  /* first seq still in the log (retention) */
    uint64_t snapshot_seq;   /* seq of the newest snapshot, 0: none */
    uint64_t snapshot_bytes;
    uint64_t snapshots;      /* taken since open */
    uint64_t snapshot_ms_last; /* how long the last one took */
    uint64_t snapshot_created_ms; /* unix ms the newest snapshot was taken, 0: none */
    tally_hist flush_us;      /* per batch: submit to write+flush completed */
    tally_hist batch_records; /* per batch: records it holds */
    tally_hist checkpoint_us; /* per checkpoint: start to commit completed */
    uint64_t checkpoint_bytes; /* bytes checkpoints wrote (LMDB, id index runs) */
    /* Anonymous memory the shard's state holds: its in-memory layers
     * (state_memory_bytes), the id index's memtables, and its runs' filters. */
    uint64_t memory_layers, memory_id_tables, memory_id_filters;
    int status;              /* 0, TALLY_EFAILED or TALLY_ECORRUPT */
    char status_message[160];
    /* Cluster mode (opts.replica): */
    uint64_t durable_epoch;   /* epoch of the last durable record */
    uint64_t replicated_seq;  /* a leader answers requests up to here */
    uint64_t commit_seq;      /* checkpoints may reach here */
    uint64_t repl_lag;        /* records its followers lack (tally_replica_lag) */
    bool leads;               /* tally_replica_lead(true) */
} tally_shard_stats;
int tally_shard_stats_get(tally *t, uint32_t shard, tally_shard_stats *out);

/* ---- cluster mode (opts.replica; repl.h) ---------------------------------------
 *
 * The engine of one shard group: one shard.  Any thread may call these. */

/* Leads with `epoch` (its records carry it; writes are taken; the expiry
 * sweep runs), or follows (writes are refused with TALLY_ETRYAGAIN,
 * nothing of its own is written: records come through
 * tally_replica_append).  Following answers every request still waiting
 * to be acknowledged TALLY_ETRYAGAIN: leadership was lost before a
 * replica confirmed it, so its outcome is unknown to the client. */
void tally_replica_lead(tally *t, bool lead, uint32_t epoch);
/* While leading: requests whose records are all at or below seq may be
 * answered (once durable and while may_ack() holds).  Only moves up. */
void tally_replica_ack(tally *t, uint64_t seq);
/* Checkpoints may reflect records up to seq (no further: a replica may
 * have to drop what follows).  Only moves up. */
void tally_replica_commit(tally *t, uint64_t seq);
/* may_ack() may have changed: look again at the requests waiting. */
void tally_replica_kick(tally *t);
/* The records its followers lack, for INFO and /metrics. */
void tally_replica_lag(tally *t, uint64_t records);
/* No replica can confirm for now: the requests waiting for one are
 * answered TALLY_ETRYAGAIN (they are durable here; a retry with the same
 * id is answered from them once a replica confirms again). */
void tally_replica_expire(tally *t);

/* Records of its leader for a following shard: buf[0, len) holds whole
 * encoded records (at most LIMIT_REPL_CHUNK_BYTES, plus one record) that
 * continue its log and end at the end of a write, none of an epoch
 * above `epoch` or below the log's last.  They are appended as they are,
 * applied by the replay path, and req.done(&req) is called once they
 * are durable (req.res.status 0), or with an error and nothing appended
 * (TALLY_ECORRUPT: they do not continue the log; TALLY_ETRYAGAIN: the
 * shard leads).  buf must stay valid until then. */
typedef struct tally_replica_chunk {
    tally_request req; /* done and user are the caller's */
    const uint8_t *buf;
    size_t len;
    uint32_t epoch;
    uint64_t last_seq; /* out: the last seq appended */
    struct tally_replica_chunk *next_;
} tally_replica_chunk;
void tally_replica_append(tally *t, tally_replica_chunk *c);

/* The shard's log (stable while the engine is open), for the leader's
 * senders and the replicas' handshake (log.h: durable records are read
 * from any thread). */
struct log_t *tally_replica_log(tally *t);

/* ---- import (SPEC §8; a tally opened `offline`) ------------------------------
 *
 * tally_import_begin checkpoints and snapshots every shard and writes
 * DIR/IMPORT naming where each shard's log stood: while that file exists
 * the import is uncommitted, and any open of the directory (tallyd, or a
 * rerun) undoes it — cuts the logs back and restores the snapshots.
 * tally_import_add applies one line at its own time, marked imported: an
 * id already there with the same request is skipped, anything that
 * differs (another request, other balances than the line says, a rule of
 * the ledger) is an error and the import can only be aborted.
 * tally_import_commit flushes and checkpoints every shard, reads every
 * imported record back and checks the state of every merchant it touched,
 * then removes DIR/IMPORT: all shards' entries become visible at once.
 * Progress goes to opts.log. */
typedef struct tally_import tally_import;
typedef struct tally_import_stats {
    uint64_t lines;   /* items added */
    uint64_t applied; /* written */
    uint64_t present; /* already there (a rerun) or checked (a transfer's receiver) */
    uint64_t records; /* log records written, engine entries included */
    uint32_t merchants;
} tally_import_stats;
int tally_import_begin(tally *t, tally_import **out, char *msg, size_t cap);
/* Hands the item to its shard's worker (one thread per CPU, each owning
 * some shards, applying their items in order).  0, or the first error of
 * any item so far with msg naming its line and id (TALLY_ECONFLICT,
 * TALLY_EINVALID, a refusal's TALLY_E*, -errno): only abort is left. */
int tally_import_add(tally_import *im, const tally_import_item *it, char *msg, size_t cap);
/* Commits and frees im. */
int tally_import_commit(tally_import *im, tally_import_stats *out, char *msg, size_t cap);
/* Undoes everything the import wrote, and frees im. */
int tally_import_abort(tally_import *im);

#endif
