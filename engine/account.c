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

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "format 3's values are little-endian");
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

/* ---- the value's encoding ------------------------------------------------------ */

/* Bytes an encoded value may take at most (every varint at its longest). */
#define ACCOUNT_HDR_FIELDS 16
#define ACCOUNT_HDR_BYTES_MAX (3 + ACCOUNT_HDR_FIELDS * BYTES_VARINT_MAX)
#define ACCOUNT_ITEM_BYTES_MAX (4 * BYTES_VARINT_MAX)

/* The header's fields in their encoded order, as unsigned numbers: signed
 * totals zigzagged, due_s + 1 (UINT64_MAX, none, is 0). */
static void account_hdr_fields(const account_hdr *h, uint64_t f[ACCOUNT_HDR_FIELDS])
{
    const int64_t *totals = &h->earned; /* earned .. transferred: nine int64_t */
    for (int i = 0; i < 9; i++)
        f[i] = bytes_zigzag(totals[i]);
    f[9] = h->head_seq;
    f[10] = h->due_s + 1;
    f[11] = h->nholds;
    f[12] = h->npending;
    f[13] = h->nlots;
    f[14] = h->nchunks;
    f[15] = h->chunk_next;
}
static_assert(offsetof(account_hdr, transferred) == 8 * sizeof(int64_t), "nine totals first");

/* An encoder writes at p; a decoder reads [p, end) and remembers a value
 * that ran out or overflowed. */
typedef struct account_rd {
    const uint8_t *p, *end;
    bool bad;
} account_rd;

static uint64_t account_rd_u(account_rd *r)
{
    uint64_t v = 0;
    size_t n = bytes_get_varint(r->p, (size_t)(r->end - r->p), &v);
    r->bad |= n == 0;
    r->p += n;
    return v;
}

/* Lots are sorted by expiry: each stores its expiry + 1 as the signed
 * difference from the one before (a few bytes instead of eight). */
static uint8_t *account_lot_put(uint8_t *p, const account_lot *lot, uint64_t *prev)
{
    uint64_t x = lot->expkey + 1;
    p += bytes_put_varint(p, bytes_zigzag((int64_t)(x - *prev)));
    *prev = x;
    p += bytes_put_varint(p, lot->seq);
    p += bytes_put_varint(p, bytes_zigzag(lot->remaining));
    p += bytes_put_varint(p, lot->available_at);
    return p;
}

static void account_lot_take(account_rd *r, account_lot *lot, uint64_t *prev)
{
    uint64_t x = *prev + (uint64_t)bytes_unzigzag(account_rd_u(r));
    *prev = x;
    lot->expkey = x - 1;
    lot->seq = account_rd_u(r);
    lot->remaining = bytes_unzigzag(account_rd_u(r));
    lot->available_at = account_rd_u(r);
}

/* A sorted run of lots (pending, inline, a chunk's), the first expiry's
 * difference taken from 0. */
static uint8_t *account_lots_put(uint8_t *p, const account_lot *lots, uint32_t n)
{
    uint64_t prev = 0;
    for (uint32_t i = 0; i < n; i++)
        p = account_lot_put(p, &lots[i], &prev);
    return p;
}

static void account_lots_take(account_rd *r, account_lot *lots, uint32_t n)
{
    uint64_t prev = 0;
    for (uint32_t i = 0; i < n; i++)
        account_lot_take(r, &lots[i], &prev);
}

/* The encoded length of ac's value, at most. */
static size_t account_value_max(const account_hdr *h)
{
    return ACCOUNT_HDR_BYTES_MAX + (size_t)h->nholds * 3 * BYTES_VARINT_MAX +
           ((size_t)h->npending + (h->nchunks ? h->nchunks : h->nlots)) * ACCOUNT_ITEM_BYTES_MAX;
}

/* The value (format 4): a varint mask of the header fields that are not 0,
 * those fields as varints, then each hold (seq, zigzag amount, deadline_s
 * + 1), each pending lot, then the inline lots or the chunks' directory
 * (id, count, first lot's expiry as a lot's, first_seq).  Returns its end. */
static uint8_t *account_encode(const account *ac, uint8_t *p)
{
    const account_hdr *h = &ac->h;
    uint64_t f[ACCOUNT_HDR_FIELDS], mask = 0;
    account_hdr_fields(h, f);
    for (int i = 0; i < ACCOUNT_HDR_FIELDS; i++)
        mask |= (uint64_t)(f[i] != 0) << i;
    p += bytes_put_varint(p, mask);
    for (int i = 0; i < ACCOUNT_HDR_FIELDS; i++)
        if (f[i])
            p += bytes_put_varint(p, f[i]);
    for (uint32_t i = 0; i < h->nholds; i++) {
        p += bytes_put_varint(p, ac->holds[i].seq);
        p += bytes_put_varint(p, bytes_zigzag(ac->holds[i].amount));
        p += bytes_put_varint(p, ac->holds[i].deadline_s + 1);
    }
    p = account_lots_put(p, ac->pending, h->npending);
    if (h->nchunks) {
        uint64_t prev = 0;
        for (uint32_t i = 0; i < h->nchunks; i++) {
            const account_dir *d = &ac->dir[i];
            account_lot first = {.expkey = d->first_expkey, .seq = d->first_seq};
            p += bytes_put_varint(p, d->id);
            p += bytes_put_varint(p, d->count);
            uint64_t x = first.expkey + 1;
            p += bytes_put_varint(p, bytes_zigzag((int64_t)(x - prev)));
            prev = x;
            p += bytes_put_varint(p, first.seq);
        }
    } else {
        p = account_lots_put(p, ac->inl, h->nlots);
    }
    return p;
}

/* The header of an encoded value into ac->h: 0 or TALLY_ECORRUPT (also
 * for counts the value's length cannot hold: an item takes >= 3 bytes). */
static int account_decode_hdr(account *ac, account_rd *r)
{
    uint64_t mask = account_rd_u(r), f[ACCOUNT_HDR_FIELDS];
    if (mask >> ACCOUNT_HDR_FIELDS)
        return TALLY_ECORRUPT;
    for (int i = 0; i < ACCOUNT_HDR_FIELDS; i++)
        f[i] = mask >> i & 1 ? account_rd_u(r) : 0;
    account_hdr *h = &ac->h;
    int64_t *totals = &h->earned;
    for (int i = 0; i < 9; i++)
        totals[i] = bytes_unzigzag(f[i]);
    h->head_seq = f[9];
    h->due_s = f[10] - 1;
    /* Counts of items in this value (nlots is not one when the lots are in
     * chunks: account_load bounds inline lots). */
    size_t room = (size_t)(r->end - r->p);
    for (int i = 11; i < ACCOUNT_HDR_FIELDS; i++)
        if (f[i] > UINT32_MAX || ((i == 11 || i == 12 || i == 14) && f[i] > room))
            return TALLY_ECORRUPT;
    h->nholds = (uint32_t)f[11];
    h->npending = (uint32_t)f[12];
    h->nlots = (uint32_t)f[13];
    h->nchunks = (uint32_t)f[14];
    h->chunk_next = (uint32_t)f[15];
    h->reserved = 0;
    return r->bad ? TALLY_ECORRUPT : 0;
}

static void account_decode_items(account *ac, account_rd *r)
{
    const account_hdr *h = &ac->h;
    for (uint32_t i = 0; i < h->nholds; i++) {
        ac->holds[i].seq = account_rd_u(r);
        ac->holds[i].amount = bytes_unzigzag(account_rd_u(r));
        ac->holds[i].deadline_s = account_rd_u(r) - 1;
    }
    account_lots_take(r, ac->pending, h->npending);
    if (h->nchunks) {
        uint64_t prev = 0;
        for (uint32_t i = 0; i < h->nchunks; i++) {
            account_dir *d = &ac->dir[i];
            uint64_t id = account_rd_u(r), count = account_rd_u(r);
            r->bad |= id > UINT32_MAX || count > UINT32_MAX;
            d->id = (uint32_t)id;
            d->count = (uint32_t)count;
            prev += (uint64_t)bytes_unzigzag(account_rd_u(r));
            d->first_expkey = prev - 1;
            d->first_seq = account_rd_u(r);
        }
    } else {
        account_lots_take(r, ac->inl, h->nlots);
    }
}

/* ---- load and save ------------------------------------------------------------ */

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

void account_prefetch_object(const state *st, uint64_t m, uint64_t a)
{
    uint8_t k[16];
    state_prefetch_object(st, STATE_ACCOUNTS, k, account_key(k, m, a));
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
    account_rd r = {.p = v, .end = (const uint8_t *)v + vl};
    rc = account_decode_hdr(ac, &r);
    const account_hdr *h = &ac->h;
    if (rc == 0 && ((h->nchunks == 0 && h->nlots > ACCOUNT_INLINE_MAX) ||
                    (h->nchunks > 0 && h->nlots == 0)))
        rc = TALLY_ECORRUPT;
    if (rc == 0)
        rc = account_size(ac);
    if (rc < 0)
        return rc;
    account_decode_items(ac, &r);
    return r.bad || r.p != r.end ? TALLY_ECORRUPT : 0;
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
    /* The chunk's value: its lots, encoded as an account's inline lots. */
    uint32_t n = ac->dir[c].count;
    if (n == 0 || n > ACCOUNT_CHUNK_MAX)
        return TALLY_ECORRUPT;
    account_rd r = {.p = v, .end = (const uint8_t *)v + vl};
    account_lots_take(&r, ch->lots, n);
    if (r.bad || r.p != r.end)
        return TALLY_ECORRUPT;
    ch->id = ac->dir[c].id;
    ch->count = n;
    ch->loaded = true;
    ch->dirty = false;
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
        uint8_t k[20], val[ACCOUNT_CHUNK_MAX * ACCOUNT_ITEM_BYTES_MAX];
        uint8_t *end = account_lots_put(val, ch->lots, ch->count);
        int rc = state_put(st, STATE_LOTS, k, account_chunk_key(k, ac->m, ac->a, ch->id), val,
                           (size_t)(end - val));
        if (rc < 0)
            return rc;
        ch->dirty = false;
    }
    for (uint32_t i = 0; i < ac->gone_count; i++) {
        uint8_t k[20];
        int rc =
            state_del_known(st, STATE_LOTS, k, account_chunk_key(k, ac->m, ac->a, ac->gone[i]));
        if (rc < 0)
            return rc;
    }
    ac->gone_count = 0;
    /* Built on the stack in the common case; else in a buffer of its own. */
    size_t max = account_value_max(h);
    uint8_t small[2048];
    uint8_t *buf = max <= sizeof(small) ? small : malloc(max);
    if (!buf)
        return -ENOMEM;
    size_t len = (size_t)(account_encode(ac, buf) - buf);
    assert(len <= max);
    uint8_t k[16];
    int rc = state_put(st, STATE_ACCOUNTS, k, account_key(k, ac->m, ac->a), buf, len);
    if (buf != small)
        free(buf);
    ac->exists = ac->exists || rc == 0;
    return rc;
}

/* ---- format 3 values, upgraded ----------------------------------------------------- */

/* Format 3 stored the structs as they are in memory: the header (112
 * bytes), holds (24), pending lots (32), then inline lots (32) or the
 * chunks' directory (24); a chunk's value was its lots (32 each). */
static_assert(sizeof(account_hdr) == 112 && sizeof(account_hold) == 24 &&
                  sizeof(account_lot) == 32 && sizeof(account_dir) == 24,
              "format 3's value layout");

static int account_decode_v3(account *ac, const uint8_t *v, size_t vl)
{
    if (vl < sizeof(account_hdr))
        return TALLY_ECORRUPT;
    memcpy(&ac->h, v, sizeof(ac->h));
    const account_hdr *h = &ac->h;
    size_t hold = sizeof(account_hold), lot = sizeof(account_lot), dir = sizeof(account_dir);
    size_t want = sizeof(*h) + h->nholds * hold + h->npending * lot +
                  (h->nchunks ? h->nchunks * dir : h->nlots * lot);
    if (vl != want || (h->nchunks == 0 && h->nlots > ACCOUNT_INLINE_MAX) ||
        (h->nchunks > 0 && h->nlots == 0))
        return TALLY_ECORRUPT;
    int rc = account_size(ac);
    if (rc < 0)
        return rc;
    v += sizeof(*h);
    /* An array of none may never have been allocated: no memcpy of NULL. */
    if (h->nholds)
        memcpy(ac->holds, v, h->nholds * hold);
    v += h->nholds * hold;
    if (h->npending)
        memcpy(ac->pending, v, h->npending * lot);
    v += h->npending * lot;
    if (h->nchunks)
        memcpy(ac->dir, v, h->nchunks * dir);
    else if (h->nlots)
        memcpy(ac->inl, v, h->nlots * lot);
    return 0;
}

/* What a scan re-encoded: (key length byte, key, value length, value)... */
typedef struct account_upgrade {
    int table;
    account ac;
    uint8_t *buf;
    size_t len, cap;
    uint64_t rows;
} account_upgrade;

static int account_upgrade_one(void *ctx, const void *key, size_t kl, const void *val,
                               size_t vl)
{
    account_upgrade *u = ctx;
    size_t max = u->table == STATE_ACCOUNTS ? 0 : ACCOUNT_CHUNK_MAX * ACCOUNT_ITEM_BYTES_MAX;
    int rc = 0;
    if (u->table == STATE_ACCOUNTS) {
        rc = account_decode_v3(&u->ac, val, vl);
        max = account_value_max(&u->ac.h);
    } else if (vl == 0 || vl % sizeof(account_lot) || vl / sizeof(account_lot) > ACCOUNT_CHUNK_MAX) {
        rc = TALLY_ECORRUPT;
    }
    if (rc < 0)
        return rc;
    if (kl > UINT8_MAX)
        return TALLY_ECORRUPT;
    size_t need = u->len + 1 + kl + 4 + max;
    if (need > u->cap) {
        size_t cap = u->cap ? u->cap : 1u << 20;
        while (cap < need)
            cap *= 2;
        uint8_t *b = realloc(u->buf, cap);
        if (!b)
            return -ENOMEM;
        u->buf = b;
        u->cap = cap;
    }
    uint8_t *p = u->buf + u->len;
    *p++ = (uint8_t)kl;
    memcpy(p, key, kl);
    p += kl;
    uint8_t *lenp = p, *start = p + 4, *end;
    if (u->table == STATE_ACCOUNTS) {
        end = account_encode(&u->ac, start);
    } else {
        end = start;
        uint64_t prev = 0;
        for (size_t i = 0; i < vl / sizeof(account_lot); i++) {
            account_lot lot;
            memcpy(&lot, (const uint8_t *)val + i * sizeof(lot), sizeof(lot));
            end = account_lot_put(end, &lot, &prev);
        }
    }
    bytes_put_le32(lenp, (uint32_t)(end - start));
    u->len = (size_t)(end - u->buf);
    u->rows++;
    return 0;
}

int account_upgrade_v3(state *st, uint64_t *accounts, uint64_t *chunks)
{
    account_upgrade u = {0};
    int rc = 0;
    const int tables[2] = {STATE_ACCOUNTS, STATE_LOTS};
    uint64_t *counts[2] = {accounts, chunks};
    for (int t = 0; t < 2 && rc == 0; t++) {
        u.table = tables[t];
        u.len = 0;
        u.rows = 0;
        /* Collected first: a scan must not change the state it walks. */
        rc = state_scan(st, u.table, NULL, 0, NULL, 0, account_upgrade_one, &u);
        for (size_t at = 0; rc == 0 && at < u.len;) {
            const uint8_t *k = u.buf + at + 1;
            size_t kl = u.buf[at];
            size_t vl = bytes_get_le32(k + kl);
            rc = state_put(st, u.table, k, kl, k + kl + 4, vl);
            at += 1 + kl + 4 + vl;
        }
        *counts[t] = u.rows;
        if (rc == 0)
            state_replace(st, u.table); /* written back packed */
    }
    free(u.buf);
    account_free(&u.ac);
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
