/*
 * feed.c — FOLLOW, the change feed (feed.h): reads of the durable logs on
 * a thread of their own, followers that wait, and FOLLOW *'s cursor text.
 *
 * Threads and locks.  The feed thread does every read.  `lock` guards the
 * inbox of new requests and the thread's sleep (a condition variable on
 * the monotonic clock); `wait_lock` guards the waiting set — the table of
 * parked followers by merchant, the FOLLOW * list, the deadline heap —
 * and each request's link to its waiter (req->engine_), so that
 * tally_wake, from the server's thread, finds a parked follower or learns
 * it is gone.  Order: lock, then wait_lock; no one holds wait_lock while
 * taking lock.  No lock is held during a read of a log.
 *
 * No lost wake-up: a shard stores its durable seq and then tests
 * watch[shard]; a parking follower raises watch[shard] and then reads the
 * durable seq again (both sequentially consistent): if a batch slipped in
 * between its read and its parking, it marks the shard pending itself.
 *
 * seen[shard]: the feed thread has looked at every record up to it for
 * wake-ups while anyone waited on the shard.  A parked follower's cursor
 * is never past it... and nothing of its merchant lies between the two,
 * or it would have been woken: so a timeout may answer the cursor
 * max(its own, seen) without reading again.
 */
#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bytes.h"
#include "checksum.h"
#include "feed.h"
#include "ledger.h"
#include "log.h"

/* ---- constants and types ------------------------------------------------ */

/* Waiting followers by merchant: a table of lists (a few thousand
 * followers at most per connection limit; lists stay short). */
#define FEED_BUCKETS 4096
/* Records of one shard the feed reads for wake-ups per turn; the rest
 * in the next turn, so one busy shard cannot hold the thread. */
#define FEED_SCAN_CHUNK 65536
/* The version byte of FOLLOW *'s cursor. */
#define FEED_CURSOR_VERSION 1
/* Its bytes before base64: version, shard count, seqs (varints), check. */
#define FEED_CURSOR_RAW_MAX (1 + 2 + LIMIT_SHARDS_MAX * 10 + 4)

static_assert((FEED_CURSOR_RAW_MAX * 4 + 2) / 3 + 1 <= TALLY_CURSOR_BYTES_MAX,
              "the cursor text fits its buffer");
static_assert((FEED_BUCKETS & (FEED_BUCKETS - 1)) == 0, "buckets are a power of two");

typedef struct feed_waiter feed_waiter;
struct feed_waiter {
    tally_request *req;
    feed_waiter *prev, *next; /* its bucket's list or the FOLLOW * list; next: ready list */
    uint64_t deadline_ms;     /* monotonic; 0: none */
    uint32_t heap_at;         /* its place in the deadline heap; UINT32_MAX: none */
    uint32_t shard;           /* FOLLOW m: its merchant's shard */
    bool parked;              /* in the waiting set (wait_lock) */
    bool cancel;              /* tally_wake came while it was not parked (wait_lock) */
};

/* One shard's place in a FOLLOW * read. */
typedef struct feed_head {
    log_iter it;
    record r;
    bool have;  /* r is the shard's next entry, not taken yet */
    bool ended; /* the shard was read to its durable end */
} feed_head;

struct feed {
    uint32_t n;
    shard *const *shards;
    pthread_t thread;
    bool started;

    pthread_mutex_t lock;
    pthread_cond_t cond;
    tally_request *inbox_head, *inbox_tail;
    bool kicked, closing;

    _Atomic uint32_t watch[LIMIT_SHARDS_MAX]; /* followers waiting on each shard */
    _Atomic bool pending[LIMIT_SHARDS_MAX];   /* durable batches not looked at */

    pthread_mutex_t wait_lock;
    feed_waiter *buckets[FEED_BUCKETS];
    feed_waiter *all; /* FOLLOW * */
    feed_waiter **heap;
    uint32_t heap_count, heap_cap;

    /* the feed thread's own */
    uint64_t seen[LIMIT_SHARDS_MAX];
    record *rec;
    feed_head *heads;
    uint64_t *touched; /* merchants whose entries a wake-up scan found */
    uint32_t touched_count, touched_cap;
    feed_waiter *ready; /* woken, to read again */
};

/* ---- small helpers ------------------------------------------------------ */

static uint64_t feed_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint32_t feed_bucket(uint64_t merchant)
{
    return (uint32_t)((merchant * 0x9E3779B97F4A7C15ull) >> 52) & (FEED_BUCKETS - 1);
}

/* The shards a request reads: [*first, *last). */
static void feed_range(const feed *f, const feed_waiter *w, uint32_t *first, uint32_t *last)
{
    bool all = w->req->merchant == 0;
    *first = all ? 0 : w->shard;
    *last = all ? f->n : w->shard + 1;
}

/* The cursor of shard s in request q. */
static uint64_t *feed_cursor(feed_waiter *w, uint32_t s)
{
    return w->req->merchant ? &w->req->after_seq : &w->req->cursors[s];
}

/* ---- the deadline heap (wait_lock) --------------------------------------- */

static void feed_heap_set(feed *f, uint32_t i, feed_waiter *w)
{
    f->heap[i] = w;
    w->heap_at = i;
}

static void feed_heap_up(feed *f, uint32_t i)
{
    feed_waiter *w = f->heap[i];
    while (i > 0 && f->heap[(i - 1) / 2]->deadline_ms > w->deadline_ms) {
        feed_heap_set(f, i, f->heap[(i - 1) / 2]);
        i = (i - 1) / 2;
    }
    feed_heap_set(f, i, w);
}

static void feed_heap_down(feed *f, uint32_t i)
{
    feed_waiter *w = f->heap[i];
    for (;;) {
        uint32_t c = 2 * i + 1;
        if (c >= f->heap_count)
            break;
        if (c + 1 < f->heap_count && f->heap[c + 1]->deadline_ms < f->heap[c]->deadline_ms)
            c++;
        if (f->heap[c]->deadline_ms >= w->deadline_ms)
            break;
        feed_heap_set(f, i, f->heap[c]);
        i = c;
    }
    feed_heap_set(f, i, w);
}

static int feed_heap_push(feed *f, feed_waiter *w)
{
    if (f->heap_count == f->heap_cap) {
        uint32_t cap = f->heap_cap ? f->heap_cap * 2 : 64;
        feed_waiter **h = realloc(f->heap, cap * sizeof(*h));
        if (!h)
            return -ENOMEM;
        f->heap = h;
        f->heap_cap = cap;
    }
    feed_heap_set(f, f->heap_count++, w);
    feed_heap_up(f, w->heap_at);
    return 0;
}

static void feed_heap_remove(feed *f, feed_waiter *w)
{
    uint32_t i = w->heap_at;
    assert(i < f->heap_count && f->heap[i] == w);
    w->heap_at = UINT32_MAX;
    feed_waiter *last = f->heap[--f->heap_count];
    if (last == w)
        return;
    feed_heap_set(f, i, last);
    feed_heap_down(f, i);
    feed_heap_up(f, last->heap_at);
}

/* ---- the waiting set (wait_lock) ------------------------------------------ */

static feed_waiter **feed_list_of(feed *f, const feed_waiter *w)
{
    return w->req->merchant ? &f->buckets[feed_bucket(w->req->merchant)] : &f->all;
}

/* Into the set: its list, the heap, and the shards' watch counts.  -ENOMEM
 * (the heap could not grow): not parked. */
static int feed_park_locked(feed *f, feed_waiter *w)
{
    if (w->deadline_ms && feed_heap_push(f, w) < 0)
        return -ENOMEM;
    feed_waiter **list = feed_list_of(f, w);
    w->prev = NULL;
    w->next = *list;
    if (*list)
        (*list)->prev = w;
    *list = w;
    uint32_t first, last;
    feed_range(f, w, &first, &last);
    for (uint32_t s = first; s < last; s++)
        if (atomic_fetch_add(&f->watch[s], 1) == 0)
            f->seen[s] = *feed_cursor(w, s);
    w->parked = true;
    return 0;
}

static void feed_unpark_locked(feed *f, feed_waiter *w)
{
    assert(w->parked);
    if (w->heap_at != UINT32_MAX)
        feed_heap_remove(f, w);
    if (w->prev)
        w->prev->next = w->next;
    else
        *feed_list_of(f, w) = w->next;
    if (w->next)
        w->next->prev = w->prev;
    w->prev = w->next = NULL;
    uint32_t first, last;
    feed_range(f, w, &first, &last);
    for (uint32_t s = first; s < last; s++) {
        uint32_t was = atomic_fetch_sub(&f->watch[s], 1);
        assert(was > 0);
        (void)was;
    }
    w->parked = false;
}

/* ---- answering -------------------------------------------------------------- */

/* Calls done() once the request no longer names its waiter. */
static void feed_answer(feed *f, feed_waiter *w)
{
    tally_request *q = w->req;
    if (q->merchant)
        q->res.cursor = q->after_seq;
    pthread_mutex_lock(&f->wait_lock);
    q->engine_ = NULL;
    pthread_mutex_unlock(&f->wait_lock);
    free(w);
    q->done(q);
}

/* A follower that stops waiting without reading again (a timeout, a
 * client gone, the feed closing): its cursor moves up to what the feed
 * has looked at on its behalf (see the top of the file).  Feed thread. */
static void feed_answer_waited(feed *f, feed_waiter *w)
{
    uint32_t first, last;
    feed_range(f, w, &first, &last);
    for (uint32_t s = first; s < last; s++)
        if (f->seen[s] > *feed_cursor(w, s))
            *feed_cursor(w, s) = f->seen[s];
    feed_answer(f, w);
}

/* ---- reading ------------------------------------------------------------------ */

/* An iterator over shard s's log after `after`, up to what FOLLOW may
 * deliver (shard_feed_seq: in a cluster, only replicated entries). */
static int feed_iter(feed *f, uint32_t s, uint64_t after, log_iter *it)
{
    uint64_t end = shard_feed_seq(f->shards[s]);
    int rc = log_iter_init(shard_log(f->shards[s]), after, it);
    if (rc == 0 && it->end_seq > end)
        it->end_seq = end;
    return rc;
}

/* Shard s can be read from `after`: 0, or the error (in q). */
static int feed_check_cursor(feed *f, tally_request *q, uint32_t s, uint64_t after)
{
    char where[32] = "";
    if (q->merchant == 0)
        snprintf(where, sizeof(where), " of shard %u", s);
    if (shard_status(f->shards[s]) == TALLY_ECORRUPT)
        return tally_fail(q, TALLY_ECORRUPT, "shard %u is refused: its data is damaged", s);
    log_t *log = shard_log(f->shards[s]);
    uint64_t durable = log_durable_seq(log), first = log_first_seq(log);
    if (after > durable)
        return tally_fail(q, TALLY_ESYNTAX, "cursor%s %llu is past the end of the log (seq %llu)",
                          where, (unsigned long long)after, (unsigned long long)durable);
    if (after + 1 < first)
        return tally_fail(q, TALLY_EARCHIVED,
                          "cursor%s %llu is before the retained log, which starts at seq %llu",
                          where, (unsigned long long)after, (unsigned long long)first);
    return 0;
}

/* An iterator's error, said in q. */
static int feed_read_error(feed *f, tally_request *q, uint32_t s, int rc, uint64_t at)
{
    if (rc == TALLY_EARCHIVED && feed_check_cursor(f, q, s, at) != 0)
        return q->res.status;
    if (rc == -ENOMEM)
        return tally_fail(q, rc, "out of memory");
    return tally_fail(q, rc, "reading shard %u's log after seq %llu: %s", s,
                      (unsigned long long)at, tally_strerror(rc));
}

/* Appends r's entry to q's result (its array grows with what is found,
 * up to want). */
static int feed_item(tally_request *q, uint32_t *cap, uint32_t want, const record *r)
{
    tally_result *res = &q->res;
    if (res->items_count == *cap) {
        uint32_t c = *cap ? (*cap * 2 < want ? *cap * 2 : want) : (want < 16 ? want : 16);
        tally_entry *n = realloc(res->items, c * sizeof(*n));
        if (!n)
            return -ENOMEM;
        res->items = n;
        *cap = c;
    }
    ledger_entry_from_record(r, &res->items[res->items_count++]);
    return 0;
}

static uint32_t feed_want(const tally_request *q)
{
    return q->limit ? q->limit : LIMIT_FOLLOW_DEFAULT;
}

/* FOLLOW m: its entries after q->after_seq, which moves past what was
 * looked at.  *at_end: nothing found up to the durable end. */
static int feed_read_one(feed *f, feed_waiter *w, bool *at_end)
{
    tally_request *q = w->req;
    int rc = feed_check_cursor(f, q, w->shard, q->after_seq);
    if (rc != 0)
        return rc;
    log_iter it;
    rc = feed_iter(f, w->shard, q->after_seq, &it);
    uint32_t budget = LIMIT_FOLLOW_SCAN_RECORDS, cap = 0, want = feed_want(q);
    log_loc loc;
    while (rc == 0 && q->res.items_count < want &&
           (rc = log_iter_next_entry(&it, q->merchant, &budget, f->rec, &loc)) == 1)
        rc = feed_item(q, &cap, want, f->rec);
    if (rc < 0)
        return feed_read_error(f, q, w->shard, rc, q->after_seq);
    if (it.seg_index != UINT32_MAX && it.last_seq > q->after_seq)
        q->after_seq = it.last_seq;
    *at_end = q->res.items_count == 0 && budget > 0;
    return 0;
}

/* The next entry of one shard for FOLLOW *. */
static int feed_head_next(feed_head *h, uint32_t *budget)
{
    log_loc loc;
    int rc = log_iter_next_entry(&h->it, 0, budget, &h->r, &loc);
    h->have = rc == 1;
    h->ended = rc == 0 && *budget > 0;
    return rc < 0 ? rc : 0;
}

/* The shard whose next entry is the oldest (ties: the lower shard), or
 * UINT32_MAX. */
static uint32_t feed_oldest(const feed *f)
{
    uint32_t pick = UINT32_MAX;
    for (uint32_t s = 0; s < f->n; s++)
        if (f->heads[s].have && (pick == UINT32_MAX || f->heads[s].r.ts_ms < f->heads[pick].r.ts_ms))
            pick = s;
    return pick;
}

/* FOLLOW *: every shard's entries after its cursor, merged by time (each
 * shard's own order kept), as `tally dump` merges them. */
static int feed_read_all(feed *f, feed_waiter *w, bool *at_end)
{
    tally_request *q = w->req;
    for (uint32_t s = 0; s < f->n; s++) {
        int rc = feed_check_cursor(f, q, s, q->cursors[s]);
        if (rc != 0)
            return rc;
    }
    uint32_t budget = LIMIT_FOLLOW_SCAN_RECORDS, cap = 0, want = feed_want(q);
    for (uint32_t s = 0; s < f->n; s++) {
        feed_head *h = &f->heads[s];
        int rc = feed_iter(f, s, q->cursors[s], &h->it);
        if (rc == 0)
            rc = feed_head_next(h, &budget);
        if (rc < 0)
            return feed_read_error(f, q, s, rc, q->cursors[s]);
    }
    uint32_t s;
    while (q->res.items_count < want && (s = feed_oldest(f)) != UINT32_MAX) {
        feed_head *h = &f->heads[s];
        int rc = feed_item(q, &cap, want, &h->r);
        if (rc == 0) {
            q->cursors[s] = h->r.seq;
            rc = feed_head_next(h, &budget);
        }
        if (rc < 0)
            return feed_read_error(f, q, s, rc, q->cursors[s]);
    }
    bool ended = true;
    for (s = 0; s < f->n; s++) {
        feed_head *h = &f->heads[s];
        /* Looked at up to its unread head, or as far as it went. */
        uint64_t upto = h->have ? h->r.seq - 1
                                : h->it.seg_index != UINT32_MAX ? h->it.last_seq : 0;
        if (upto > q->cursors[s])
            q->cursors[s] = upto;
        ended = ended && h->ended;
    }
    *at_end = q->res.items_count == 0 && ended;
    return 0;
}

/* Parks w to wait: false if it may not (tally_wake came, no memory). */
static bool feed_park(feed *f, feed_waiter *w)
{
    pthread_mutex_lock(&f->wait_lock);
    bool ok = !w->cancel && feed_park_locked(f, w) == 0;
    pthread_mutex_unlock(&f->wait_lock);
    if (!ok)
        return false;
    /* A batch that became durable after the read but before the watch
     * count went up rang no bell: look at it in this turn. */
    uint32_t first, last;
    feed_range(f, w, &first, &last);
    for (uint32_t s = first; s < last; s++)
        if (shard_feed_seq(f->shards[s]) > *feed_cursor(w, s))
            atomic_store(&f->pending[s], true);
    return true;
}

/* Reads for w's request, then answers it, or parks it if it waits (BLOCK)
 * and found nothing up to the durable end. */
static void feed_run(feed *f, feed_waiter *w)
{
    tally_request *q = w->req;
    assert(q->res.items_count == 0);
    bool at_end = false;
    int rc = q->merchant ? feed_read_one(f, w, &at_end) : feed_read_all(f, w, &at_end);
    bool wait = rc == 0 && at_end && (q->flags & TALLY_REQ_BLOCK) &&
                (w->deadline_ms == 0 || feed_mono_ms() < w->deadline_ms);
    if (wait && feed_park(f, w))
        return;
    feed_answer(f, w);
}

/* ---- wake-ups ------------------------------------------------------------------- */

static void feed_touch(feed *f, uint64_t merchant)
{
    if (f->touched_count > 0 && f->touched[f->touched_count - 1] == merchant)
        return;
    if (f->touched_count == f->touched_cap) {
        uint32_t cap = f->touched_cap ? f->touched_cap * 2 : 256;
        uint64_t *t = realloc(f->touched, cap * sizeof(*t));
        if (!t) {
            /* Without the list, wake every follower of the shard. */
            f->touched_count = UINT32_MAX;
            return;
        }
        f->touched = t;
        f->touched_cap = cap;
    }
    f->touched[f->touched_count++] = merchant;
}

/* Moves w from the waiting set to the ready list (wait_lock). */
static void feed_ready_locked(feed *f, feed_waiter *w)
{
    feed_unpark_locked(f, w);
    w->next = f->ready;
    f->ready = w;
}

/* The next woken follower (feed thread), or NULL. */
static feed_waiter *feed_ready_pop(feed *f)
{
    feed_waiter *w = f->ready;
    if (w) {
        f->ready = w->next;
        w->next = NULL;
    }
    return w;
}

/* Wakes the followers of shard s whose merchants are in f->touched (all
 * of them if `every`), and FOLLOW * if anything arrived. */
static void feed_wake_touched(feed *f, uint32_t s, bool every, bool any)
{
    pthread_mutex_lock(&f->wait_lock);
    if (every) {
        for (uint32_t b = 0; b < FEED_BUCKETS; b++)
            for (feed_waiter *w = f->buckets[b], *nx; w; w = nx) {
                nx = w->next;
                if (w->shard == s)
                    feed_ready_locked(f, w);
            }
    } else {
        for (uint32_t i = 0; i < f->touched_count; i++) {
            uint64_t m = f->touched[i];
            for (feed_waiter *w = f->buckets[feed_bucket(m)], *nx; w; w = nx) {
                nx = w->next;
                if (w->req->merchant == m)
                    feed_ready_locked(f, w);
            }
        }
    }
    while ((every || any) && f->all)
        feed_ready_locked(f, f->all);
    pthread_mutex_unlock(&f->wait_lock);
}

/* Looks at what shard s made durable since seen[s], once for all its
 * followers. */
static void feed_scan_shard(feed *f, uint32_t s)
{
    log_iter it;
    int rc = feed_iter(f, s, f->seen[s], &it);
    uint32_t budget = FEED_SCAN_CHUNK;
    bool any = false;
    log_loc loc;
    f->touched_count = 0;
    while (rc == 0 && (rc = log_iter_next_entry(&it, 0, &budget, f->rec, &loc)) == 1) {
        any = true;
        feed_touch(f, f->rec->merchant);
        rc = 0;
    }
    if (it.seg_index != UINT32_MAX && it.last_seq > f->seen[s])
        f->seen[s] = it.last_seq;
    if (rc == 0 && budget == 0)
        atomic_store(&f->pending[s], true); /* the rest in the next turn */
    /* A log that cannot be read (retention overtook it, damage): every
     * follower of the shard reads for itself and hears why. */
    bool every = rc < 0 || f->touched_count == UINT32_MAX;
    if (every || f->touched_count > 0)
        feed_wake_touched(f, s, every, any || every);
}

static void feed_scan(feed *f)
{
    for (uint32_t s = 0; s < f->n; s++) {
        if (!atomic_exchange(&f->pending[s], false))
            continue;
        if (atomic_load(&f->watch[s]) > 0)
            feed_scan_shard(f, s);
    }
    feed_waiter *w;
    while ((w = feed_ready_pop(f)) != NULL)
        feed_run(f, w);
}

/* Followers whose BLOCK ran out. */
static void feed_expire(feed *f)
{
    uint64_t now = feed_mono_ms();
    pthread_mutex_lock(&f->wait_lock);
    while (f->heap_count > 0 && f->heap[0]->deadline_ms <= now)
        feed_ready_locked(f, f->heap[0]);
    pthread_mutex_unlock(&f->wait_lock);
    feed_waiter *w;
    while ((w = feed_ready_pop(f)) != NULL)
        feed_answer_waited(f, w);
}

/* ---- the thread ------------------------------------------------------------------ */

static bool feed_pending_any(feed *f)
{
    for (uint32_t s = 0; s < f->n; s++)
        if (atomic_load_explicit(&f->pending[s], memory_order_relaxed))
            return true;
    return false;
}

static uint64_t feed_next_deadline(feed *f)
{
    pthread_mutex_lock(&f->wait_lock);
    uint64_t d = f->heap_count ? f->heap[0]->deadline_ms : 0;
    pthread_mutex_unlock(&f->wait_lock);
    return d;
}

/* Sleeps (lock held) until there is something to do; false: closing. */
static bool feed_sleep(feed *f)
{
    for (;;) {
        if (f->closing)
            return false;
        if (f->inbox_head || f->kicked || feed_pending_any(f))
            return true;
        uint64_t d = feed_next_deadline(f);
        if (d == 0) {
            pthread_cond_wait(&f->cond, &f->lock);
            continue;
        }
        if (feed_mono_ms() >= d)
            return true;
        struct timespec ts = {.tv_sec = (time_t)(d / 1000), .tv_nsec = (long)(d % 1000) * 1000000};
        pthread_cond_timedwait(&f->cond, &f->lock, &ts);
    }
}

static void *feed_main(void *arg)
{
    feed *f = arg;
    pthread_mutex_lock(&f->lock);
    while (feed_sleep(f)) {
        tally_request *q = f->inbox_head;
        f->inbox_head = f->inbox_tail = NULL;
        f->kicked = false;
        pthread_mutex_unlock(&f->lock);
        while (q) {
            tally_request *next = q->next_;
            q->next_ = NULL;
            feed_run(f, q->engine_);
            q = next;
        }
        feed_scan(f);
        feed_expire(f);
        pthread_mutex_lock(&f->lock);
    }
    pthread_mutex_unlock(&f->lock);
    return NULL;
}

/* ---- public -------------------------------------------------------------------- */

int feed_new(uint32_t shards, feed **out)
{
    assert(shards >= 1 && shards <= LIMIT_SHARDS_MAX);
    feed *f = calloc(1, sizeof(*f));
    if (!f)
        return -ENOMEM;
    f->n = shards;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&f->cond, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&f->lock, NULL);
    pthread_mutex_init(&f->wait_lock, NULL);
    *out = f;
    return 0;
}

int feed_start(feed *f, shard *const *shards)
{
    assert(!f->started);
    f->shards = shards;
    f->rec = malloc(sizeof(*f->rec));
    f->heads = calloc(f->n, sizeof(*f->heads));
    if (!f->rec || !f->heads)
        return -ENOMEM;
    int rc = pthread_create(&f->thread, NULL, feed_main, f);
    if (rc != 0)
        return -rc;
    f->started = true;
    return 0;
}

void feed_close(feed *f)
{
    if (!f)
        return;
    pthread_mutex_lock(&f->lock);
    f->closing = true;
    pthread_cond_signal(&f->cond);
    tally_request *q = f->inbox_head;
    f->inbox_head = f->inbox_tail = NULL;
    pthread_mutex_unlock(&f->lock);
    if (f->started)
        pthread_join(f->thread, NULL);
    f->started = false;
    /* What is left is answered as it stands. */
    for (tally_request *next; q; q = next) {
        next = q->next_;
        q->next_ = NULL;
        feed_answer(f, q->engine_);
    }
    for (;;) {
        pthread_mutex_lock(&f->wait_lock);
        feed_waiter *w = f->all;
        for (uint32_t b = 0; !w && b < FEED_BUCKETS; b++)
            w = f->buckets[b];
        if (w)
            feed_unpark_locked(f, w);
        pthread_mutex_unlock(&f->wait_lock);
        if (!w)
            break;
        feed_answer_waited(f, w);
    }
}

void feed_free(feed *f)
{
    if (!f)
        return;
    assert(!f->started && f->heap_count == 0);
    pthread_mutex_destroy(&f->lock);
    pthread_mutex_destroy(&f->wait_lock);
    pthread_cond_destroy(&f->cond);
    free(f->heap);
    free(f->touched);
    free(f->heads);
    free(f->rec);
    free(f);
}

void feed_submit(feed *f, tally_request *req)
{
    feed_waiter *w = calloc(1, sizeof(*w));
    if (!w) {
        tally_fail(req, -ENOMEM, "out of memory");
        req->done(req);
        return;
    }
    w->req = req;
    w->heap_at = UINT32_MAX;
    w->shard = req->merchant ? checksum_shard(req->merchant, f->n) : 0;
    if ((req->flags & TALLY_REQ_BLOCK) && req->block_ms)
        w->deadline_ms = feed_mono_ms() + req->block_ms;
    req->engine_ = w;
    req->next_ = NULL;
    pthread_mutex_lock(&f->lock);
    bool closing = f->closing;
    if (!closing) {
        if (f->inbox_tail)
            f->inbox_tail->next_ = req;
        else
            f->inbox_head = req;
        f->inbox_tail = req;
        pthread_cond_signal(&f->cond);
    }
    pthread_mutex_unlock(&f->lock);
    if (closing)
        feed_answer(f, w);
}

void feed_wake(feed *f, tally_request *req)
{
    pthread_mutex_lock(&f->wait_lock);
    feed_waiter *w = req->engine_;
    bool parked = w && w->parked;
    if (parked) {
        feed_unpark_locked(f, w);
        req->engine_ = NULL;
    } else if (w) {
        w->cancel = true; /* in the feed's hands: answered before it would park */
    }
    pthread_mutex_unlock(&f->wait_lock);
    if (!parked)
        return;
    /* Not feed_answer_waited: seen[] is the feed thread's. */
    if (req->merchant)
        req->res.cursor = req->after_seq;
    free(w);
    req->done(req);
}

void feed_notify(void *ctx, uint32_t index)
{
    feed *f = ctx;
    if (atomic_load(&f->watch[index]) == 0)
        return;
    if (atomic_exchange(&f->pending[index], true))
        return; /* rung already: the feed has not looked yet */
    pthread_mutex_lock(&f->lock);
    f->kicked = true;
    pthread_cond_signal(&f->cond);
    pthread_mutex_unlock(&f->lock);
}

/* ---- FOLLOW *'s cursor ------------------------------------------------------------ */

static const char feed_b64url[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* A varint at raw[*at, len): 0 and *v, or -1. */
static int feed_varint_get(const uint8_t *raw, size_t len, size_t *at, uint64_t *v)
{
    size_t n = *at <= len ? bytes_get_varint(raw + *at, len - *at, v) : 0;
    *at += n;
    return n ? 0 : -1;
}

static uint32_t feed_check32(const uint8_t *raw, size_t len)
{
    return (uint32_t)checksum64(raw, len, FEED_CURSOR_VERSION);
}

size_t tally_cursor_format(const uint64_t *seqs, uint32_t shards, char *out, size_t cap)
{
    assert(cap >= TALLY_CURSOR_BYTES_MAX && shards >= 1 && shards <= LIMIT_SHARDS_MAX);
    uint8_t raw[FEED_CURSOR_RAW_MAX];
    size_t n = 0;
    raw[n++] = FEED_CURSOR_VERSION;
    n += bytes_put_varint(raw + n, shards);
    for (uint32_t i = 0; i < shards; i++)
        n += bytes_put_varint(raw + n, seqs[i]);
    uint32_t sum = feed_check32(raw, n);
    for (int i = 0; i < 4; i++)
        raw[n++] = (uint8_t)(sum >> (8 * i));
    size_t k = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)raw[i] << 16 | (i + 1 < n ? (uint32_t)raw[i + 1] << 8 : 0) |
                     (i + 2 < n ? raw[i + 2] : 0);
        int chars = i + 2 < n ? 4 : i + 1 < n ? 3 : 2;
        for (int c = 0; c < chars; c++)
            out[k++] = feed_b64url[v >> (18 - 6 * c) & 63];
    }
    out[k] = 0;
    return k;
}

/* Base64url (no padding) into raw: its length, or 0 if not base64url. */
static size_t feed_unbase64(const char *s, size_t len, uint8_t *raw, size_t cap)
{
    if (len % 4 == 1 || len / 4 * 3 + 2 > cap)
        return 0;
    size_t n = 0;
    uint32_t acc = 0;
    unsigned bits = 0;
    for (size_t i = 0; i < len; i++) {
        const char *p = s[i] ? memchr(feed_b64url, s[i], 64) : NULL;
        if (!p)
            return 0;
        acc = acc << 6 | (uint32_t)(p - feed_b64url);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            raw[n++] = (uint8_t)(acc >> bits);
        }
    }
    return n;
}

int tally_cursor_parse(const char *text, size_t len, uint32_t shards, uint64_t *seqs, char *msg,
                       size_t cap)
{
    if (len == 1 && text[0] == '0') {
        memset(seqs, 0, shards * sizeof(*seqs));
        return 0;
    }
    uint8_t raw[FEED_CURSOR_RAW_MAX];
    size_t n = len <= TALLY_CURSOR_BYTES_MAX ? feed_unbase64(text, len, raw, sizeof(raw)) : 0;
    size_t at = 1;
    uint64_t count = 0;
    if (n < 6 || raw[0] != FEED_CURSOR_VERSION ||
        feed_check32(raw, n - 4) != ((uint32_t)raw[n - 4] | (uint32_t)raw[n - 3] << 8 |
                                     (uint32_t)raw[n - 2] << 16 | (uint32_t)raw[n - 1] << 24) ||
        feed_varint_get(raw, n - 4, &at, &count) != 0) {
        snprintf(msg, cap, "invalid FOLLOW * cursor: pass one that FOLLOW * answered, or 0");
        return TALLY_ESYNTAX;
    }
    if (count != shards) {
        snprintf(msg, cap, "the cursor is for %llu shards, this server has %u",
                 (unsigned long long)count, shards);
        return TALLY_ESYNTAX;
    }
    for (uint32_t i = 0; i < shards; i++)
        if (feed_varint_get(raw, n - 4, &at, &seqs[i]) != 0) {
            snprintf(msg, cap, "invalid FOLLOW * cursor: pass one that FOLLOW * answered, or 0");
            return TALLY_ESYNTAX;
        }
    if (at != n - 4) {
        snprintf(msg, cap, "invalid FOLLOW * cursor: pass one that FOLLOW * answered, or 0");
        return TALLY_ESYNTAX;
    }
    return 0;
}
