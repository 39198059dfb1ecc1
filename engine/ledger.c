/*
 * ledger.c — the loyalty semantics of one shard (ledger.h): lifecycle,
 * checkpoints, and the three ways a write runs — live, replayed from the
 * log, converted from release 1.  The other concerns are in ledger_*.c
 * (ledger_int.h lists them).
 *
 * The state (state.h) holds only what the log cannot answer cheaply:
 *   accounts   (m,a)       → account: totals, open holds, pending lots,
 *                            spendable lots (or a directory of chunks),
 *                            the newest entry (history is a chain through
 *                            the log: each entry names the account's
 *                            previous one)
 *   lots       (m,a,chunk) → up to 64 lots of an account with many
 *   due        (s,m,a)     → "": when the account next has something due
 *   lot_ids    seq         → the id of a lot that can expire or mature
 *                            (its engine entries are named after it)
 *   holds      seq         → (m,a): open holds, oldest first (retention
 *                            keeps their records: they hold allocations)
 *   reversed   (m,seq)     → points reversed so far of an earn, redeem or
 *                            capture (rows only for entries reversed)
 *   merchants  m           → totals
 *   liability  (m,month)   → points outstanding by expiry month
 *   meta       "seq", "ts", "format", "ids"
 * and the id index (ids.h): every id of every entry and remembered
 * refusal, forever.  A write touches its account, its merchant's totals
 * and liability months, and a few rows when lots with an expiry or holds
 * come and go: its cost is the objects it changes, never the ledger's
 * size (DESIGN-NOTES §5).  Entries themselves — with the allocations that
 * refunds and voids need — live in the log only.
 */
#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ledger_int.h"

/* Ids per flush of the id index's memtable: about one checkpoint's worth
 * at the default interval, so a flush is one sequential run file per
 * checkpoint. */
#define LEDGER_IDS_FLUSH_KEYS_DEFAULT (1u << 20)

/* ---- small helpers ------------------------------------------------------ */

void ledger_say(ledger *l, int level, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (l->opts.log)
        l->opts.log(l->opts.log_ctx, level, msg);
}

size_t ledger_key2(uint8_t *k, uint64_t a, uint64_t b)
{
    ledger_be64(k, a);
    ledger_be64(k + 8, b);
    return 16;
}

size_t ledger_key3(uint8_t *k, uint64_t a, uint64_t b, uint64_t c)
{
    ledger_key2(k, a, b);
    ledger_be64(k + 16, c);
    return 24;
}

uint64_t ledger_expkey(uint64_t expires) { return expires ? expires : UINT64_MAX; }

bool ledger_due(uint64_t unix_s, uint64_t ts_ms)
{
    return unix_s != 0 && unix_s != UINT64_MAX && unix_s <= ts_ms / 1000;
}

int ledger_grow_allocs(record_alloc **v, uint32_t *cap, uint32_t n)
{
    if (n <= *cap)
        return 0;
    uint32_t c = *cap ? *cap : 64;
    while (c < n)
        c *= 2;
    record_alloc *p = realloc(*v, (size_t)c * sizeof(*p));
    if (!p)
        return -ENOMEM;
    *v = p;
    *cap = c;
    return 0;
}

int ledger_acct_load(ledger *l, account *ac, uint64_t m, uint64_t a)
{
    return account_load(l->st, m, a, ac);
}

int ledger_acct_save(ledger *l, account *ac)
{
    uint64_t due = account_next_due(l->st, ac);
    if (due != ac->h.due_s) {
        uint8_t k[24];
        if (ac->h.due_s != UINT64_MAX) {
            /* The account's due_s is the row it has. */
            int rc =
                state_del_known(l->st, STATE_DUE, k, ledger_key3(k, ac->h.due_s, ac->m, ac->a));
            if (rc < 0)
                return rc;
        }
        if (due != UINT64_MAX) {
            int rc = state_put(l->st, STATE_DUE, k, ledger_key3(k, due, ac->m, ac->a), "", 0);
            if (rc < 0)
                return rc;
        }
        ac->h.due_s = due;
    }
    return account_save(l->st, ac);
}

int64_t ledger_available(const account *ac)
{
    return ac->h.lots_total - ac->h.pending_total - ac->h.debt;
}

bool ledger_balance_ok(const account *ac)
{
    int64_t av = ledger_available(ac);
    const account_hdr *h = &ac->h;
    return av <= LIMIT_BALANCE_ABS_MAX && av >= -LIMIT_BALANCE_ABS_MAX &&
           h->held <= LIMIT_BALANCE_ABS_MAX && h->lots_total <= LIMIT_BALANCE_ABS_MAX &&
           h->pending_total <= LIMIT_BALANCE_ABS_MAX && h->debt <= LIMIT_BALANCE_ABS_MAX;
}

/* ---- lifecycle ------------------------------------------------------------ */

static int ledger_meta_u64(ledger *l, const char *name, uint64_t *out, bool *present)
{
    const void *v;
    size_t vl;
    int rc = state_get(l->st, STATE_META, name, strlen(name), &v, &vl);
    if (rc < 0)
        return rc;
    if (present)
        *present = rc == 0;
    if (rc == 0 && vl == 8)
        memcpy(out, v, 8);
    else if (rc == 0)
        return TALLY_ECORRUPT;
    return 0;
}

static int ledger_open_ids(ledger *l)
{
    const void *v = NULL;
    size_t vl = 0;
    int rc = state_get(l->st, STATE_META, "ids", 3, &v, &vl);
    if (rc < 0)
        return rc;
    uint8_t manifest[IDS_MANIFEST_BYTES_MAX];
    if (rc == 0) {
        if (vl > sizeof(manifest))
            return TALLY_ECORRUPT;
        memcpy(manifest, v, vl);
    } else {
        vl = 0;
    }
    char dir[4200], why[200] = "";
    snprintf(dir, sizeof(dir), "%s/ids", l->dir);
    uint64_t flush = l->opts.ids_flush_keys ? l->opts.ids_flush_keys
                                            : LEDGER_IDS_FLUSH_KEYS_DEFAULT;
    /* Offline tools replay the whole tail into memory: no flush limit. */
    ids_options io = {.dir = dir, .os = l->opts.os, .flush_keys = flush,
                      .memtable_keys_max = l->opts.read_only ? IDS_MEMTABLE_KEYS_LIMIT : 8 * flush,
                      .read_only = l->opts.read_only, .error = why, .error_cap = sizeof(why)};
    rc = ids_open(&io, vl ? manifest : NULL, vl, &l->ids);
    if (rc < 0)
        ledger_say(l, 2, "%s: id index: %s", l->dir, why[0] ? why : tally_strerror(rc));
    return rc;
}

/* State format 3 (release 2.0) stored accounts and chunks of lots as the
 * structs are in memory; format 4 encodes them (account.c), ~3x smaller.
 * Every value is re-encoded and committed with the new format in one
 * commit: a crash before it leaves format 3, to do again.  Read-only
 * opens (offline tools) keep the re-encoded values in the uncommitted
 * layer, as they keep a replayed log tail. */
static int ledger_upgrade_format3(ledger *l)
{
    uint64_t accounts = 0, chunks = 0;
    int rc = account_upgrade_v3(l->st, &accounts, &chunks);
    if (rc == 0 && !l->opts.read_only) {
        static const uint64_t format = LEDGER_FORMAT;
        rc = state_put(l->st, STATE_META, "format", 6, &format, 8);
        if (rc == 0)
            rc = state_commit(l->st);
    }
    if (rc == 0)
        ledger_say(l, 0, "%s: state format 3 upgraded to %d (%llu accounts, %llu chunks of lots)%s",
                   l->dir, LEDGER_FORMAT, (unsigned long long)accounts,
                   (unsigned long long)chunks, l->opts.read_only ? ", in memory (read-only)" : "");
    else
        ledger_say(l, 2, "%s: upgrading state format 3 to %d: %s", l->dir, LEDGER_FORMAT,
                   state_error(l->st)[0] ? state_error(l->st) : tally_strerror(rc));
    return rc;
}

int ledger_open(const ledger_options *opts, log_t *log, ledger **out)
{
    ledger *l = calloc(1, sizeof(*l));
    if (!l)
        return -ENOMEM;
    l->opts = *opts;
    snprintf(l->dir, sizeof(l->dir), "%s", opts->dir);
    l->opts.dir = l->dir;
    l->log = log;
    l->scratch = calloc(1, sizeof(*l->scratch));
    l->rec = calloc(3, sizeof(*l->rec));
    int rc = l->scratch && l->rec ? 0 : -ENOMEM;
    if (rc == 0)
        rc = state_open(l->dir, opts->map_bytes ? opts->map_bytes : LIMIT_STATE_MAP_BYTES_DEFAULT,
                        &l->st);
    bool used = false;
    uint64_t format = 0;
    if (rc == 0)
        rc = ledger_meta_u64(l, "seq", &l->checkpoint_seq, &used);
    if (rc == 0)
        rc = ledger_meta_u64(l, "ts", &l->last_ts_ms, NULL);
    if (rc == 0)
        rc = ledger_meta_u64(l, "format", &format, NULL);
    if (rc == 0 && used && format == 3)
        rc = ledger_upgrade_format3(l);
    else if (rc == 0 && used && format != LEDGER_FORMAT) {
        ledger_say(l, 2, "%s: state format %llu, this build reads format %d", l->dir,
                   (unsigned long long)format, LEDGER_FORMAT);
        rc = TALLY_EFORMAT;
    }
    if (rc == 0)
        rc = ledger_open_ids(l);
    if (rc < 0) {
        ledger_close(l);
        return rc;
    }
    *out = l;
    return 0;
}

int ledger_view_open(ledger *l, ledger **out)
{
    ledger *v = calloc(1, sizeof(*v));
    if (!v)
        return -ENOMEM;
    v->opts = l->opts;
    v->opts.read_only = true;
    snprintf(v->dir, sizeof(v->dir), "%s", l->dir);
    v->opts.dir = v->dir;
    int rc = state_view_open(l->st, &v->st);
    if (rc == 0)
        rc = ledger_meta_u64(v, "seq", &v->checkpoint_seq, NULL);
    if (rc < 0) {
        ledger_close(v);
        return rc;
    }
    *out = v;
    return 0;
}

void ledger_attach_log(ledger *l, log_t *log) { l->log = log; }

void ledger_close(ledger *l)
{
    if (!l)
        return;
    state_close(l->st); /* first: it waits for a running commit, which uses the ids */
    ids_close(l->ids);
    for (int i = 0; i < 3; i++)
        account_free(&l->acc[i]);
    free(l->rec);
    free(l->allocs);
    free(l->allocs2);
    free(l->scratch);
    free(l);
}

uint64_t ledger_checkpoint_seq(const ledger *l) { return l->checkpoint_seq; }
uint64_t ledger_ids_seq(const ledger *l) { return ids_covered_seq(l->ids); }
struct state *ledger_state(ledger *l) { return l->st; }
struct ids *ledger_ids(ledger *l) { return l->ids; }

void ledger_memory(ledger *l, uint64_t *layers, uint64_t *id_tables, uint64_t *id_filters)
{
    ids_stats_t x = {0};
    if (l->ids)
        ids_stats(l->ids, &x);
    *layers = state_memory_bytes(l->st);
    *id_tables = x.memtable_bytes;
    *id_filters = x.filter_bytes;
}
const char *ledger_state_error(const ledger *l) { return state_error(l->st); }
uint64_t ledger_delta_records(const ledger *l) { return l->delta_records; }
size_t ledger_pending_bytes(const ledger *l) { return state_active_bytes(l->st); }

bool ledger_ids_full(const ledger *l, uint32_t times)
{
    ids_stats_t st;
    ids_stats(l->ids, &st);
    uint64_t flush = l->opts.ids_flush_keys ? l->opts.ids_flush_keys
                                            : LEDGER_IDS_FLUSH_KEYS_DEFAULT;
    return st.memtable_keys >= flush * times;
}

void ledger_poll(ledger *l)
{
    int rc = ids_poll(l->ids);
    if (rc < 0)
        ledger_say(l, 1, "id index: a merge failed (%s); lookups go on over more runs",
                   ids_error(l->ids));
}

/* ---- checkpoints ------------------------------------------------------------ */

/* The meta rows of a checkpoint at seq, into the state. */
static int ledger_checkpoint_rows(ledger *l, uint64_t seq)
{
    static const uint64_t format = LEDGER_FORMAT;
    int rc = state_put(l->st, STATE_META, "seq", 3, &seq, 8);
    if (rc == 0)
        rc = state_put(l->st, STATE_META, "ts", 2, &l->last_ts_ms, 8);
    if (rc == 0)
        rc = state_put(l->st, STATE_META, "format", 6, &format, 8);
    return rc;
}

/* On the committer thread (or the caller's, synchronously): the id
 * index's run is written, then its manifest joins the commit. */
static int ledger_before_commit(void *ctx)
{
    ledger *l = ctx;
    int rc = ids_flush_frozen(l->ids);
    uint8_t manifest[IDS_MANIFEST_BYTES_MAX];
    size_t len = 0;
    if (rc == 0)
        rc = ids_manifest(l->ids, manifest, sizeof(manifest), &len);
    if (rc == 0)
        rc = state_commit_add(l->st, STATE_META, "ids", 3, manifest, len);
    return rc;
}

/* The outcome of the asynchronous commit (finished, or waited for). */
static int ledger_commit_outcome(ledger *l, int rc)
{
    if (rc == STATE_COMMIT_NONE || rc == STATE_COMMIT_RUNNING)
        return rc;
    int drc = ids_commit_done(l->ids, rc);
    if (drc < 0 && rc == 0)
        ledger_say(l, 1, "id index: removing a merged run: %s", tally_strerror(drc));
    if (rc == 0) {
        l->checkpoint_seq = l->frozen_seq;
        l->frozen_seq = 0;
        l->ids_frozen = false;
    }
    return rc;
}

int ledger_checkpoint_frozen_commit(ledger *l)
{
    if (l->opts.read_only)
        return -EROFS;
    if (!state_has_frozen(l->st))
        return 0;
    int st = state_commit_finish(l->st);
    if (st == STATE_COMMIT_NONE) {
        int rc = state_commit_frozen(l->st, ledger_before_commit, l, NULL, NULL);
        if (rc < 0)
            return rc;
        st = STATE_COMMIT_RUNNING;
    }
    /* A commit that already ended has its outcome in st: it must reach
     * the id index (ids_commit_done) like any other, or the index keeps
     * its frozen memtable and the next freeze is refused (-EBUSY). */
    if (st == STATE_COMMIT_RUNNING)
        st = state_commit_wait(l->st);
    return ledger_commit_outcome(l, st);
}

int ledger_checkpoint(ledger *l, uint64_t seq)
{
    /* A checkpoint set aside earlier goes in first (its records are
     * durable by now: every caller has finished its batches). */
    int rc = ledger_checkpoint_frozen_commit(l);
    if (rc < 0)
        return rc;
    rc = ledger_checkpoint_rows(l, seq);
    if (rc == 0) {
        int fr = ids_freeze(l->ids, seq, true);
        if (fr == -EAGAIN) {
            /* IDS_RUNS_MAX runs: merges are behind — as after many kills in
             * a row, each start's recovery leaving a run and each merge cut
             * short.  This checkpoint (recovery, close, tools) waits for
             * them rather than fail the start. */
            fr = ids_wait_merges(l->ids);
            if (fr == 0)
                fr = ids_freeze(l->ids, seq, true);
        }
        rc = fr < 0 ? fr : 0;
    }
    /* Synchronous: the manifest goes in as a state row of its own. */
    if (rc == 0)
        rc = ids_flush_frozen(l->ids);
    uint8_t manifest[IDS_MANIFEST_BYTES_MAX];
    size_t len = 0;
    if (rc == 0)
        rc = ids_manifest(l->ids, manifest, sizeof(manifest), &len);
    if (rc == 0)
        rc = state_put(l->st, STATE_META, "ids", 3, manifest, len);
    if (rc == 0)
        rc = state_commit(l->st);
    int drc = ids_commit_done(l->ids, rc);
    if (rc < 0)
        return rc;
    if (drc < 0)
        ledger_say(l, 1, "id index: removing a merged run: %s", tally_strerror(drc));
    l->checkpoint_seq = seq;
    l->frozen_seq = 0;
    l->ids_frozen = false;
    l->delta_records = 0;
    return 0;
}

int ledger_checkpoint_freeze(ledger *l, uint64_t seq)
{
    if (state_has_frozen(l->st))
        return -EBUSY;
    /* Every checkpoint flushes the id index's memtable (it holds about a
     * checkpoint's ids): one that did not could keep growing past its
     * limit while the next commit runs, and stall the shard. */
    int rc = ledger_checkpoint_rows(l, seq);
    int fr = rc == 0 ? ids_freeze(l->ids, seq, true) : 0;
    if (fr < 0 && fr != -EAGAIN)
        rc = fr;
    if (rc == 0)
        rc = state_freeze(l->st);
    if (rc < 0)
        return rc;
    l->ids_frozen = fr == 1;
    l->frozen_seq = seq;
    l->delta_records = 0;
    return 0;
}

static bool ledger_checkpoint_due_by(const ledger *l, uint32_t stretch)
{
    return l->delta_records >= stretch * (uint64_t)LIMIT_CHECKPOINT_ENTRIES_DEFAULT ||
           ledger_ids_full(l, stretch) || ledger_pending_bytes(l) >= LIMIT_STATE_PENDING_BYTES_MAX;
}

bool ledger_checkpoint_due(const ledger *l) { return ledger_checkpoint_due_by(l, 1); }

int ledger_checkpoint_paced(ledger *l, uint64_t seq, uint32_t stretch)
{
    assert(stretch >= 1 && stretch <= 2);
    if (ledger_checkpoint_frozen(l)) {
        int rc = ledger_checkpoint_finish(l);
        if (rc == STATE_COMMIT_NONE || rc == 0)
            ledger_poll(l);
        else if (rc < 0)
            return rc;
    }
    if (!ledger_checkpoint_due_by(l, stretch) || seq <= l->checkpoint_seq)
        return 0;
    if (ledger_checkpoint_frozen(l)) {
        if (!ledger_ids_full(l, 4) && ledger_pending_bytes(l) < 2 * LIMIT_STATE_PENDING_BYTES_MAX)
            return 0; /* the running one first */
        return ledger_checkpoint(l, seq);
    }
    int rc = ledger_checkpoint_freeze(l, seq);
    if (rc == 0)
        rc = ledger_checkpoint_commit(l, NULL, NULL);
    return rc;
}

int ledger_checkpoint_commit(ledger *l, void (*done)(void *ctx), void *ctx)
{
    return state_commit_frozen(l->st, ledger_before_commit, l, done, ctx);
}

int ledger_checkpoint_finish(ledger *l)
{
    return ledger_commit_outcome(l, state_commit_finish(l->st));
}

bool ledger_checkpoint_frozen(const ledger *l) { return state_has_frozen(l->st); }

uint64_t ledger_checkpoint_frozen_seq(const ledger *l) { return l->frozen_seq; }

void ledger_set_epoch(ledger *l, uint32_t epoch) { l->epoch = epoch; }

void ledger_rollback(ledger *l)
{
    state_abort(l->st);
    ids_abort(l->ids);
    l->delta_records = 0;
    /* What LMDB holds now (a commit may have finished meanwhile). */
    l->last_ts_ms = 0;
    ledger_meta_u64(l, "ts", &l->last_ts_ms, NULL);
    ledger_meta_u64(l, "seq", &l->checkpoint_seq, NULL);
    l->frozen_seq = 0;
    l->ids_frozen = false;
}

/* state_scan callback: the first key of STATE_HOLDS, then stop. */
static int ledger_first_hold(void *ctx, const void *k, size_t kl, const void *v, size_t vl)
{
    (void)v;
    (void)vl;
    if (kl == 8)
        *(uint64_t *)ctx = ledger_get_be64(k);
    return 1;
}

int ledger_retain_floor(ledger *l, uint64_t *seq)
{
    *seq = UINT64_MAX;
    int rc = state_scan(l->st, STATE_HOLDS, NULL, 0, NULL, 0, ledger_first_hold, seq);
    /* The id index's memtable is rebuilt from the log after its runs. */
    uint64_t from = ids_covered_seq(l->ids) + 1;
    if (from < *seq)
        *seq = from;
    return rc < 0 ? rc : 0;
}

/* ---- execute, replay, convert ------------------------------------------------ */

void ledger_prefetch(const ledger *l, uint64_t merchant, uint64_t acct, const char *id,
                     size_t id_len, bool lookup)
{
    if (id_len > 0)
        ids_prefetch(l->ids, ids_key_of(merchant, id, id_len), lookup);
    if (acct != 0)
        account_prefetch(l->st, merchant, acct);
}

void ledger_prefetch_object(const ledger *l, uint64_t merchant, uint64_t acct)
{
    if (acct != 0)
        account_prefetch_object(l->st, merchant, acct);
}

int ledger_execute(ledger *l, tally_request *q, uint64_t now_ms)
{
    uint64_t ts = now_ms > l->last_ts_ms ? now_ms : l->last_ts_ms;
    if (!tally_op_is_write(q->op))
        return ledger_read(l, q, ts);
    int rc = ledger_idempotent(l, q);
    if (rc <= 0)
        return rc;
    ledger_x x = {.ts_ms = ts, .engine_entries = true};
    return ledger_write(l, &x, q);
}

/* The request a logged record came from. */
static void ledger_request_from_record(const record *r, tally_request *q)
{
    memset(q, 0, offsetof(tally_request, id));
    q->op = (uint8_t)ledger_kind_op(r->kind);
    q->merchant = r->merchant;
    q->account = r->account;
    q->account2 = r->account2;
    q->points = r->req_points;
    q->expires = r->expires;
    q->available_at = r->available_at;
    q->timeout_s = r->timeout_s;
    q->flags = r->req_flags;
    q->id_len = r->id_len;
    q->ref_len = r->ref_len;
    q->memo_len = r->memo_len;
    memcpy(q->id, r->id, r->id_len);
    memcpy(q->ref, r->ref, r->ref_len);
    memcpy(q->memo, r->memo, r->memo_len);
    /* q->res stays as it is: a re-run writes no answer (ledger_answer_write)
     * and frees what a write might have left there. */
}

static bool ledger_is_engine(const record *r)
{
    return r->id_len > 0 && r->id[0] == '~' &&
           (r->kind == TALLY_KIND_EXPIRE || r->kind == TALLY_KIND_VOID ||
            r->kind == TALLY_KIND_AVAILABLE);
}

/* Runs the write that produced r through x (replay or convert), as a
 * request on the scratch one, whose answer nobody reads. */
static int ledger_rerun(ledger *l, ledger_x *x, const record *r)
{
    x->unanswered = true;
    int rc;
    if (ledger_is_engine(r)) {
        rc = ledger_replay_engine(l, x, r);
    } else {
        ledger_request_from_record(r, l->scratch);
        rc = ledger_write(l, x, l->scratch);
        tally_result_free(&l->scratch->res);
    }
    if (rc == 0 && x->replay != NULL) {
        ledger_say(l, 2, "replay of seq %llu (%.*s) produced no record",
                   (unsigned long long)r->seq, (int)r->id_len, r->id);
        rc = TALLY_ECORRUPT;
    }
    return rc;
}

int ledger_replay(ledger *l, const record *r, log_loc loc, ledger_src *src)
{
    if (r->type == RECORD_ALLOC) {
        ledger_say(l, 2, "replay: allocation part of seq %llu without its entry",
                   (unsigned long long)r->seq);
        return TALLY_ECORRUPT;
    }
    ledger_x x = {.ts_ms = r->ts_ms, .replay = r, .replay_loc = loc, .src = src,
                  .legacy = (r->rflags & RECORD_F_LEGACY) != 0,
                  .imported = (r->rflags & RECORD_F_IMPORTED) != 0};
    if ((x.legacy || x.imported) && r->type == RECORD_REFUSAL) {
        /* Release 1 refused for reasons of its own (a debit over too many
         * lots), an import's source for its own: their refusals are kept
         * as they are, never re-decided. */
        log_loc at;
        record copy = *r;
        return ledger_emit(l, &x, &copy, &at);
    }
    return ledger_rerun(l, &x, r);
}

int ledger_replay_ids(ledger *l, const record *r)
{
    if (r->type == RECORD_ALLOC || r->id_len == 0 || r->seq <= ids_covered_seq(l->ids))
        return 0;
    ids_key k = ids_key_of(r->merchant, r->id, r->id_len);
    uint64_t v = r->seq << 1 | (r->type == RECORD_REFUSAL);
    int rc = ids_put(l->ids, k, v);
    if (r->ts_ms > l->last_ts_ms)
        l->last_ts_ms = r->ts_ms;
    return rc;
}

int ledger_convert(ledger *l, const record *v1, log_t *out)
{
    record got;
    memset(&got, 0, offsetof(record, id));
    ledger_x x = {.ts_ms = v1->ts_ms, .legacy = true, .out = out, .out_seq = v1->seq,
                  .out_got = &got};
    if (v1->type == RECORD_REFUSAL) {
        record copy = *v1;
        log_loc at;
        return ledger_emit(l, &x, &copy, &at);
    }
    int rc = ledger_rerun(l, &x, v1);
    /* The entry release 2 made of it must say what release 1 said. */
    if (rc == 0 && (log_last_seq(out) != v1->seq || got.seq != v1->seq ||
                    got.type != v1->type || got.error != v1->error ||
                    got.points != v1->points || got.balance != v1->balance ||
                    got.held != v1->held)) {
        ledger_say(l, 2,
                   "upgrade: seq %llu (%s %.*s) converts to type %u points %lld balance %lld "
                   "held %lld; release 1 said type %u points %lld balance %lld held %lld",
                   (unsigned long long)v1->seq, tally_kind_name(v1->kind), (int)v1->id_len,
                   v1->id, got.type, (long long)got.points, (long long)got.balance,
                   (long long)got.held, v1->type, (long long)v1->points,
                   (long long)v1->balance, (long long)v1->held);
        rc = TALLY_ECORRUPT;
    }
    return rc;
}
