/*
 * account.c — an account's stored object and its lots (account.h: the
 * value's layout and why lots are chunked).
 */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "account.h"
#include "bytes.h"
#include "tally.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "account values are little-endian");
static_assert(sizeof(account_hdr) == 112, "format: the account header");
static_assert(sizeof(account_hold) == 24, "format: a hold");
static_assert(sizeof(account_lot) == 32, "format: a lot");
static_assert(sizeof(account_dir) == 24, "format: a chunk's directory entry");
static_assert(ACCOUNT_INLINE_MAX < ACCOUNT_CHUNK_MAX, "inline lots fit one chunk");

/* ---- keys and growth -------------------------------------------------------- */

static size_t account_key(uint8_t *k, uint64_t m, uint64_t a)
{
    bytes_put_be64(k, m);
    bytes_put_be64(k + 8, a);
    return 16;
}

static size_t account_chunk_key(uint8_t *k, uint64_t m, uint64_t a, uint32_t id)
{
    account_key(k, m, a);
    for (int i = 0; i < 4; i++)
        k[16 + i] = (uint8_t)(id >> (24 - 8 * i));
    return 20;
}

/* Makes *buf hold at least n items of size sz (doubling). */
static int account_grow(void **buf, uint32_t *cap, uint32_t n, size_t sz)
{
    if (n <= *cap)
        return 0;
    uint32_t c = *cap ? *cap : 8;
    while (c < n)
        c *= 2;
    void *p = realloc(*buf, (size_t)c * sz);
    if (!p)
        return -ENOMEM;
    *buf = p;
    *cap = c;
    return 0;
}

static int account_lotcmp(uint64_t e1, uint64_t s1, uint64_t e2, uint64_t s2)
{
    return e1 != e2 ? (e1 < e2 ? -1 : 1) : (s1 != s2 ? (s1 < s2 ? -1 : 1) : 0);
}

/* ---- load and save ------------------------------------------------------------ */

/* The value's parts, in order; an empty part may come from an array never
 * allocated (memcpy must not see its NULL). */
static void account_put(uint8_t **p, const void *src, size_t n)
{
    if (n)
        memcpy(*p, src, n);
    *p += n;
}

static void account_take(void *dst, const uint8_t **p, size_t n)
{
    if (n)
        memcpy(dst, *p, n);
    *p += n;
}

void account_free(account *ac)
{
    for (uint32_t i = 0; i < ac->chunks_cap; i++)
        free(ac->chunks ? ac->chunks[i] : NULL);
    free(ac->chunks);
    free(ac->holds);
    free(ac->pending);
    free(ac->inl);
    free(ac->dir);
    free(ac->gone);
    memset(ac, 0, sizeof(*ac));
}

/* Sizes the arrays for the header's counts. */
static int account_size(account *ac)
{
    const account_hdr *h = &ac->h;
    int rc = account_grow((void **)&ac->holds, &ac->holds_cap, h->nholds, sizeof(account_hold));
    if (rc == 0)
        rc = account_grow((void **)&ac->pending, &ac->pending_cap, h->npending,
                          sizeof(account_lot));
    if (rc == 0 && h->nchunks == 0)
        rc = account_grow((void **)&ac->inl, &ac->inl_cap, h->nlots + 1, sizeof(account_lot));
    if (rc == 0 && h->nchunks > 0)
        rc = account_grow((void **)&ac->dir, &ac->dir_cap, h->nchunks + 1,
                          sizeof(account_dir));
    if (rc == 0 && h->nchunks > 0) {
        uint32_t old = ac->chunks_cap;
        rc = account_grow((void **)&ac->chunks, &ac->chunks_cap, h->nchunks + 1,
                          sizeof(account_chunk *));
        if (rc == 0 && ac->chunks_cap > old)
            memset(ac->chunks + old, 0, (ac->chunks_cap - old) * sizeof(*ac->chunks));
    }
    return rc;
}

static void account_unload_chunks(account *ac)
{
    for (uint32_t i = 0; i < ac->chunks_cap; i++)
        if (ac->chunks[i])
            ac->chunks[i]->loaded = false;
    ac->gone_count = 0;
}

void account_prefetch(const state *st, uint64_t m, uint64_t a)
{
    uint8_t k[16];
    state_prefetch(st, STATE_ACCOUNTS, k, account_key(k, m, a));
}

int account_load(state *st, uint64_t m, uint64_t a, account *ac)
{
    account_unload_chunks(ac);
    ac->m = m;
    ac->a = a;
    uint8_t k[16];
    const void *v;
    size_t vl;
    int rc = state_get(st, STATE_ACCOUNTS, k, account_key(k, m, a), &v, &vl);
    if (rc < 0)
        return rc;
    ac->exists = rc == 0;
    if (rc == STATE_ABSENT) {
        ac->h = (account_hdr){.due_s = UINT64_MAX};
        return account_size(ac);
    }
    if (vl < sizeof(account_hdr))
        return TALLY_ECORRUPT;
    memcpy(&ac->h, v, sizeof(ac->h));
    const account_hdr *h = &ac->h;
    size_t want = sizeof(*h) + (size_t)h->nholds * sizeof(account_hold) +
                  (size_t)h->npending * sizeof(account_lot) +
                  (h->nchunks ? (size_t)h->nchunks * sizeof(account_dir)
                              : (size_t)h->nlots * sizeof(account_lot));
    if (vl != want || (h->nchunks == 0 && h->nlots > ACCOUNT_INLINE_MAX) ||
        (h->nchunks > 0 && h->nlots == 0))
        return TALLY_ECORRUPT;
    rc = account_size(ac);
    if (rc < 0)
        return rc;
    const uint8_t *p = (const uint8_t *)v + sizeof(*h);
    account_take(ac->holds, &p, h->nholds * sizeof(account_hold));
    account_take(ac->pending, &p, h->npending * sizeof(account_lot));
    if (h->nchunks)
        account_take(ac->dir, &p, h->nchunks * sizeof(account_dir));
    else
        account_take(ac->inl, &p, h->nlots * sizeof(account_lot));
    return 0;
}

/* Reads chunk dir[c] into ac->chunks[c] unless it is there. */
static int account_chunk_at(state *st, account *ac, uint32_t c, account_chunk **out)
{
    assert(c < ac->h.nchunks);
    account_chunk *ch = ac->chunks[c];
    if (ch && ch->loaded && ch->id == ac->dir[c].id) {
        *out = ch;
        return 0;
    }
    if (!ch) {
        ch = malloc(sizeof(*ch));
        if (!ch)
            return -ENOMEM;
        ac->chunks[c] = ch;
    }
    uint8_t k[20];
    const void *v;
    size_t vl;
    int rc = state_get(st, STATE_LOTS, k, account_chunk_key(k, ac->m, ac->a, ac->dir[c].id), &v,
                       &vl);
    if (rc == STATE_ABSENT)
        return TALLY_ECORRUPT; /* the directory names a chunk that is not there */
    if (rc < 0)
        return rc;
    uint32_t n = (uint32_t)(vl / sizeof(account_lot));
    if (vl % sizeof(account_lot) || n == 0 || n > ACCOUNT_CHUNK_MAX || n != ac->dir[c].count)
        return TALLY_ECORRUPT;
    ch->id = ac->dir[c].id;
    ch->count = n;
    ch->loaded = true;
    ch->dirty = false;
    memcpy(ch->lots, v, vl);
    *out = ch;
    return 0;
}

int account_save(state *st, account *ac)
{
    const account_hdr *h = &ac->h;
    for (uint32_t c = 0; c < h->nchunks; c++) {
        account_chunk *ch = ac->chunks[c];
        if (!ch || !ch->loaded || !ch->dirty)
            continue;
        assert(ch->count > 0 && ch->count <= ACCOUNT_CHUNK_MAX && ch->id == ac->dir[c].id);
        uint8_t k[20];
        int rc = state_put(st, STATE_LOTS, k, account_chunk_key(k, ac->m, ac->a, ch->id),
                           ch->lots, ch->count * sizeof(account_lot));
        if (rc < 0)
            return rc;
        ch->dirty = false;
    }
    for (uint32_t i = 0; i < ac->gone_count; i++) {
        uint8_t k[20];
        int rc = state_del(st, STATE_LOTS, k, account_chunk_key(k, ac->m, ac->a, ac->gone[i]));
        if (rc < 0)
            return rc;
    }
    ac->gone_count = 0;
    size_t len = sizeof(*h) + (size_t)h->nholds * sizeof(account_hold) +
                 (size_t)h->npending * sizeof(account_lot) +
                 (h->nchunks ? (size_t)h->nchunks * sizeof(account_dir)
                             : (size_t)h->nlots * sizeof(account_lot));
    /* The value is built in the inline array's spare room when it fits the
     * common case; else in a buffer of its own. */
    uint8_t small[1024];
    uint8_t *buf = len <= sizeof(small) ? small : malloc(len);
    if (!buf)
        return -ENOMEM;
    uint8_t *p = buf;
    account_put(&p, h, sizeof(*h));
    account_put(&p, ac->holds, h->nholds * sizeof(account_hold));
    account_put(&p, ac->pending, h->npending * sizeof(account_lot));
    if (h->nchunks)
        account_put(&p, ac->dir, h->nchunks * sizeof(account_dir));
    else
        account_put(&p, ac->inl, h->nlots * sizeof(account_lot));
    uint8_t k[16];
    int rc = state_put(st, STATE_ACCOUNTS, k, account_key(k, ac->m, ac->a), buf, len);
    if (buf != small)
        free(buf);
    ac->exists = ac->exists || rc == 0;
    return rc;
}

/* ---- inline lots <-> chunks ------------------------------------------------------ */

static int account_note_gone(account *ac, uint32_t id)
{
    int rc = account_grow((void **)&ac->gone, &ac->gone_cap, ac->gone_count + 1, sizeof(uint32_t));
    if (rc == 0)
        ac->gone[ac->gone_count++] = id;
    return rc;
}

/* Inserts an empty directory entry (and chunk slot) at c. */
static int account_dir_insert(account *ac, uint32_t c)
{
    account_hdr *h = &ac->h;
    uint32_t old_cap = ac->chunks_cap;
    int rc = account_grow((void **)&ac->dir, &ac->dir_cap, h->nchunks + 1, sizeof(account_dir));
    if (rc == 0)
        rc = account_grow((void **)&ac->chunks, &ac->chunks_cap, h->nchunks + 1,
                          sizeof(account_chunk *));
    if (rc < 0)
        return rc;
    if (ac->chunks_cap > old_cap)
        memset(ac->chunks + old_cap, 0, (ac->chunks_cap - old_cap) * sizeof(*ac->chunks));
    /* The slot past the end may hold a spare chunk struct: keep it. */
    account_chunk *spare = ac->chunks[h->nchunks];
    memmove(ac->dir + c + 1, ac->dir + c, (h->nchunks - c) * sizeof(*ac->dir));
    memmove(ac->chunks + c + 1, ac->chunks + c, (h->nchunks - c) * sizeof(*ac->chunks));
    ac->chunks[c] = spare;
    if (!ac->chunks[c]) {
        ac->chunks[c] = malloc(sizeof(account_chunk));
        if (!ac->chunks[c])
            return -ENOMEM;
    }
    ac->dir[c] = (account_dir){.id = h->chunk_next++};
    *ac->chunks[c] = (account_chunk){.id = ac->dir[c].id, .loaded = true, .dirty = true};
    h->nchunks++;
    return 0;
}

/* Removes directory entry c (its chunk deleted at save). */
static int account_dir_remove(account *ac, uint32_t c)
{
    account_hdr *h = &ac->h;
    int rc = account_note_gone(ac, ac->dir[c].id);
    if (rc < 0)
        return rc;
    account_chunk *ch = ac->chunks[c];
    if (ch)
        ch->loaded = false;
    memmove(ac->dir + c, ac->dir + c + 1, (h->nchunks - c - 1) * sizeof(*ac->dir));
    memmove(ac->chunks + c, ac->chunks + c + 1, (h->nchunks - c - 1) * sizeof(*ac->chunks));
    h->nchunks--;
    ac->chunks[h->nchunks] = ch; /* a spare */
    return 0;
}

static void account_dir_refresh(account *ac, uint32_t c)
{
    account_chunk *ch = ac->chunks[c];
    ac->dir[c].count = ch->count;
    ac->dir[c].first_expkey = ch->lots[0].expkey;
    ac->dir[c].first_seq = ch->lots[0].seq;
}

/* Inline lots past ACCOUNT_INLINE_MAX: into chunks of half a chunk each,
 * room for growth in every one. */
static int account_to_chunks(account *ac)
{
    account_hdr *h = &ac->h;
    assert(h->nchunks == 0);
    uint32_t n = h->nlots, per = ACCOUNT_CHUNK_MAX / 2;
    for (uint32_t from = 0, c = 0; from < n; from += per, c++) {
        int rc = account_dir_insert(ac, c);
        if (rc < 0)
            return rc;
        account_chunk *ch = ac->chunks[c];
        ch->count = n - from < per ? n - from : per;
        memcpy(ch->lots, ac->inl + from, ch->count * sizeof(account_lot));
        account_dir_refresh(ac, c);
    }
    return 0;
}

/* Few lots left in chunks: back inline. */
static int account_to_inline(state *st, account *ac)
{
    account_hdr *h = &ac->h;
    int rc = account_grow((void **)&ac->inl, &ac->inl_cap, h->nlots + 1, sizeof(account_lot));
    uint32_t n = 0;
    for (uint32_t c = 0; rc == 0 && c < h->nchunks; c++) {
        account_chunk *ch;
        rc = account_chunk_at(st, ac, c, &ch);
        if (rc == 0) {
            memcpy(ac->inl + n, ch->lots, ch->count * sizeof(account_lot));
            n += ch->count;
        }
    }
    if (rc < 0)
        return rc;
    assert(n == h->nlots);
    while (rc == 0 && h->nchunks > 0)
        rc = account_dir_remove(ac, h->nchunks - 1);
    return rc;
}

/* ---- spendable expiring lots ---------------------------------------------------- */

int account_lot_first(state *st, account *ac, account_pos *pos, account_lot *lot)
{
    *pos = (account_pos){0, 0};
    if (ac->h.nlots == 0)
        return STATE_ABSENT;
    if (ac->h.nchunks == 0) {
        *lot = ac->inl[0];
        return 0;
    }
    account_chunk *ch;
    int rc = account_chunk_at(st, ac, 0, &ch);
    if (rc == 0)
        *lot = ch->lots[0];
    return rc;
}

int account_lot_next(state *st, account *ac, account_pos *pos, account_lot *lot)
{
    if (ac->h.nchunks == 0) {
        if (pos->i + 1 >= ac->h.nlots)
            return STATE_ABSENT;
        *lot = ac->inl[++pos->i];
        return 0;
    }
    account_chunk *ch;
    int rc = account_chunk_at(st, ac, pos->c, &ch);
    if (rc < 0)
        return rc;
    if (pos->i + 1 < ch->count) {
        *lot = ch->lots[++pos->i];
        return 0;
    }
    if (pos->c + 1 >= ac->h.nchunks)
        return STATE_ABSENT;
    pos->c++;
    pos->i = 0;
    rc = account_chunk_at(st, ac, pos->c, &ch);
    if (rc == 0)
        *lot = ch->lots[0];
    return rc;
}

/* Index of the first lot >= (expkey, seq) in lots[0..n). */
static uint32_t account_lower(const account_lot *lots, uint32_t n, uint64_t expkey, uint64_t seq)
{
    uint32_t lo = 0, hi = n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (account_lotcmp(lots[mid].expkey, lots[mid].seq, expkey, seq) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* The chunk that holds (or would hold) lot (expkey, seq). */
static uint32_t account_chunk_for(const account *ac, uint64_t expkey, uint64_t seq)
{
    uint32_t lo = 0, hi = ac->h.nchunks;
    while (hi - lo > 1) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (account_lotcmp(ac->dir[mid].first_expkey, ac->dir[mid].first_seq, expkey, seq) <= 0)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

int account_lot_get(state *st, account *ac, uint64_t expkey, uint64_t seq, int64_t *remaining)
{
    *remaining = 0;
    const account_lot *lots;
    uint32_t n;
    if (ac->h.nchunks == 0) {
        lots = ac->inl;
        n = ac->h.nlots;
    } else {
        account_chunk *ch;
        int rc = account_chunk_at(st, ac, account_chunk_for(ac, expkey, seq), &ch);
        if (rc < 0)
            return rc;
        lots = ch->lots;
        n = ch->count;
    }
    uint32_t i = account_lower(lots, n, expkey, seq);
    if (i < n && lots[i].expkey == expkey && lots[i].seq == seq)
        *remaining = lots[i].remaining;
    return 0;
}

/* Adds delta to the lot at (or inserts it before) index i of lots[0..*n). */
static void account_lots_apply(account_lot *lots, uint32_t *n, uint32_t i, uint64_t expkey,
                               uint64_t seq, int64_t delta)
{
    bool found = i < *n && lots[i].expkey == expkey && lots[i].seq == seq;
    if (!found) {
        assert(delta > 0);
        memmove(lots + i + 1, lots + i, (*n - i) * sizeof(*lots));
        lots[i] = (account_lot){.expkey = expkey, .seq = seq, .remaining = delta};
        (*n)++;
        return;
    }
    lots[i].remaining += delta;
    assert(lots[i].remaining >= 0);
    if (lots[i].remaining == 0) {
        memmove(lots + i, lots + i + 1, (*n - i - 1) * sizeof(*lots));
        (*n)--;
    }
}

static int account_lot_add_chunked(state *st, account *ac, uint64_t expkey, uint64_t seq,
                                   int64_t delta)
{
    account_hdr *h = &ac->h;
    uint32_t c = account_chunk_for(ac, expkey, seq);
    account_chunk *ch;
    int rc = account_chunk_at(st, ac, c, &ch);
    if (rc < 0)
        return rc;
    uint32_t before = ch->count;
    uint32_t i = account_lower(ch->lots, ch->count, expkey, seq);
    account_lots_apply(ch->lots, &ch->count, i, expkey, seq, delta);
    ch->dirty = true;
    h->nlots = h->nlots + ch->count - before;
    if (ch->count == 0)
        return account_dir_remove(ac, c);
    account_dir_refresh(ac, c);
    if (ch->count <= ACCOUNT_CHUNK_MAX)
        return 0;
    /* Split: the upper half into a new chunk after it. */
    rc = account_dir_insert(ac, c + 1);
    if (rc < 0)
        return rc;
    ch = ac->chunks[c];
    account_chunk *nx = ac->chunks[c + 1];
    uint32_t keep = ch->count / 2;
    nx->count = ch->count - keep;
    memcpy(nx->lots, ch->lots + keep, nx->count * sizeof(account_lot));
    ch->count = keep;
    account_dir_refresh(ac, c);
    account_dir_refresh(ac, c + 1);
    return 0;
}

int account_lot_add(state *st, account *ac, uint64_t expkey, uint64_t seq, int64_t delta)
{
    account_hdr *h = &ac->h;
    assert(expkey != UINT64_MAX && seq > 0 && delta != 0);
    h->lots_total += delta;
    if (h->nchunks > 0) {
        int rc = account_lot_add_chunked(st, ac, expkey, seq, delta);
        if (rc == 0 && h->nlots <= ACCOUNT_INLINE_MAX / 2)
            rc = account_to_inline(st, ac);
        return rc;
    }
    int rc = account_grow((void **)&ac->inl, &ac->inl_cap, h->nlots + 1, sizeof(account_lot));
    if (rc < 0)
        return rc;
    uint32_t i = account_lower(ac->inl, h->nlots, expkey, seq);
    account_lots_apply(ac->inl, &h->nlots, i, expkey, seq, delta);
    return h->nlots > ACCOUNT_INLINE_MAX ? account_to_chunks(ac) : 0;
}

/* ---- pending lots ------------------------------------------------------------------ */

int account_pending_add(account *ac, const account_lot *lot)
{
    account_hdr *h = &ac->h;
    assert(lot->available_at > 0 && lot->remaining > 0);
    int rc = account_grow((void **)&ac->pending, &ac->pending_cap, h->npending + 1,
                          sizeof(account_lot));
    if (rc < 0)
        return rc;
    uint32_t i = h->npending;
    while (i > 0 && account_lotcmp(ac->pending[i - 1].available_at, ac->pending[i - 1].seq,
                                   lot->available_at, lot->seq) > 0)
        i--;
    memmove(ac->pending + i + 1, ac->pending + i, (h->npending - i) * sizeof(account_lot));
    ac->pending[i] = *lot;
    h->npending++;
    h->pending_total += lot->remaining;
    h->lots_total += lot->remaining;
    return 0;
}

void account_pending_remove(account *ac, uint32_t i)
{
    account_hdr *h = &ac->h;
    assert(i < h->npending);
    h->pending_total -= ac->pending[i].remaining;
    h->lots_total -= ac->pending[i].remaining;
    memmove(ac->pending + i, ac->pending + i + 1, (h->npending - i - 1) * sizeof(account_lot));
    h->npending--;
}

int account_pending_find(const account *ac, uint64_t seq)
{
    for (uint32_t i = 0; i < ac->h.npending; i++)
        if (ac->pending[i].seq == seq)
            return (int)i;
    return -1;
}

/* ---- holds ----------------------------------------------------------------------------- */

int account_hold_add(account *ac, const account_hold *hd)
{
    account_hdr *h = &ac->h;
    int rc = account_grow((void **)&ac->holds, &ac->holds_cap, h->nholds + 1,
                          sizeof(account_hold));
    if (rc < 0)
        return rc;
    assert(h->nholds == 0 || ac->holds[h->nholds - 1].seq < hd->seq);
    ac->holds[h->nholds++] = *hd;
    h->held += hd->amount;
    return 0;
}

void account_hold_remove(account *ac, uint32_t i)
{
    account_hdr *h = &ac->h;
    assert(i < h->nholds);
    h->held -= ac->holds[i].amount;
    memmove(ac->holds + i, ac->holds + i + 1, (h->nholds - i - 1) * sizeof(account_hold));
    h->nholds--;
}

int account_hold_find(const account *ac, uint64_t seq)
{
    for (uint32_t i = 0; i < ac->h.nholds; i++)
        if (ac->holds[i].seq == seq)
            return (int)i;
    return -1;
}

/* ---- due time, consistency ---------------------------------------------------------- */

uint64_t account_next_due(state *st, account *ac)
{
    (void)st;
    const account_hdr *h = &ac->h;
    uint64_t due = UINT64_MAX;
    if (h->nlots > 0)
        due = h->nchunks ? ac->dir[0].first_expkey : ac->inl[0].expkey;
    for (uint32_t i = 0; i < h->npending; i++) {
        if (ac->pending[i].available_at < due)
            due = ac->pending[i].available_at;
        if (ac->pending[i].expkey < due) /* a release-1 lot may expire while pending */
            due = ac->pending[i].expkey;
    }
    for (uint32_t i = 0; i < h->nholds; i++)
        if (ac->holds[i].deadline_s < due)
            due = ac->holds[i].deadline_s;
    return due;
}

int account_check(state *st, account *ac, char *msg, size_t cap)
{
    const account_hdr *h = &ac->h;
    int64_t lots = 0, pending = 0, held = 0;
    uint32_t n = 0;
    account_pos pos;
    account_lot lot, prev = {0};
    int rc;
    for (rc = account_lot_first(st, ac, &pos, &lot); rc == 0;
         rc = account_lot_next(st, ac, &pos, &lot)) {
        if (lot.remaining <= 0 || lot.expkey == UINT64_MAX || lot.available_at != 0 ||
            (n > 0 && account_lotcmp(prev.expkey, prev.seq, lot.expkey, lot.seq) >= 0)) {
            snprintf(msg, cap, "lot %u (seq %llu) out of order or empty", n,
                     (unsigned long long)lot.seq);
            return TALLY_ECORRUPT;
        }
        lots += lot.remaining;
        prev = lot;
        n++;
    }
    if (rc < 0)
        return rc;
    for (uint32_t c = 0; c < h->nchunks; c++) {
        account_chunk *ch;
        rc = account_chunk_at(st, ac, c, &ch);
        if (rc < 0)
            return rc;
        if (ch->count == 0 || ac->dir[c].first_expkey != ch->lots[0].expkey ||
            ac->dir[c].first_seq != ch->lots[0].seq) {
            snprintf(msg, cap, "chunk %u's directory entry does not match it", ac->dir[c].id);
            return TALLY_ECORRUPT;
        }
    }
    for (uint32_t i = 0; i < h->npending; i++) {
        if (ac->pending[i].remaining <= 0 || ac->pending[i].available_at == 0) {
            snprintf(msg, cap, "pending lot %u is empty", i);
            return TALLY_ECORRUPT;
        }
        pending += ac->pending[i].remaining;
    }
    for (uint32_t i = 0; i < h->nholds; i++)
        held += ac->holds[i].amount;
    if (n != h->nlots || h->pool < 0 || pending != h->pending_total || held != h->held ||
        h->lots_total != h->pool + lots + pending) {
        snprintf(msg, cap,
                 "lots %u/%u, pool %lld + lots %lld + pending %lld/%lld != %lld, held %lld/%lld",
                 n, h->nlots, (long long)h->pool, (long long)lots, (long long)pending,
                 (long long)h->pending_total, (long long)h->lots_total, (long long)held,
                 (long long)h->held);
        return TALLY_ECORRUPT;
    }
    return 0;
}
