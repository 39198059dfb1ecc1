/*
 * repl_proto.c — the replication protocol's frames and handshake
 * (repl_proto.h).  The only module that includes OpenSSL's headers
 * (STYLE rule 2): HMAC-SHA256 and a constant-time comparison.
 */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "repl_proto.h"

/* ---- little-endian writer and reader ------------------------------------------ */

typedef struct repl_w {
    uint8_t *p;
    size_t cap, len;
    bool over;
} repl_w;

static void repl_put(repl_w *w, const void *v, size_t n)
{
    if (w->len + n > w->cap) {
        w->over = true;
        return;
    }
    memcpy(w->p + w->len, v, n);
    w->len += n;
}

static void repl_put_le(repl_w *w, uint64_t v, size_t bytes)
{
    uint8_t b[8];
    for (size_t i = 0; i < bytes; i++)
        b[i] = (uint8_t)(v >> (8 * i));
    repl_put(w, b, bytes);
}

/* Starts a frame of `type`; repl_w_end writes its length. */
static repl_w repl_w_begin(uint8_t type, uint8_t *out, size_t cap)
{
    repl_w w = {.p = out, .cap = cap};
    repl_put_le(&w, 0, 4);
    repl_put_le(&w, type, 1);
    return w;
}

static size_t repl_w_end(repl_w *w)
{
    if (w->over)
        return 0;
    uint64_t body = w->len - 4;
    for (int i = 0; i < 4; i++)
        w->p[i] = (uint8_t)(body >> (8 * i));
    return w->len;
}

typedef struct repl_r {
    const uint8_t *p;
    size_t len, off;
    bool bad;
} repl_r;

static const uint8_t *repl_take(repl_r *r, size_t n)
{
    if (r->bad || r->len - r->off < n) {
        r->bad = true;
        return NULL;
    }
    const uint8_t *p = r->p + r->off;
    r->off += n;
    return p;
}

static uint64_t repl_get_le(repl_r *r, size_t bytes)
{
    const uint8_t *p = repl_take(r, bytes);
    uint64_t v = 0;
    for (size_t i = 0; p && i < bytes; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static void repl_get(repl_r *r, void *out, size_t n)
{
    const uint8_t *p = repl_take(r, n);
    if (p)
        memcpy(out, p, n);
}

/* 0 if the whole payload was read exactly, else -EPROTO. */
static int repl_r_end(const repl_r *r)
{
    return r->bad || r->off != r->len ? -EPROTO : 0;
}

/* ---- messages ------------------------------------------------------------------ */

size_t repl_enc_hello(const repl_hello *m, uint8_t *out, size_t cap)
{
    repl_w w = repl_w_begin(REPL_HELLO, out, cap);
    repl_put_le(&w, m->version, 4);
    repl_put(&w, m->nonce, REPL_NONCE_BYTES);
    return repl_w_end(&w);
}

int repl_dec_hello(const repl_frame *f, repl_hello *m)
{
    repl_r r = {.p = f->p, .len = f->len};
    m->version = (uint32_t)repl_get_le(&r, 4);
    repl_get(&r, m->nonce, REPL_NONCE_BYTES);
    return f->type == REPL_HELLO ? repl_r_end(&r) : -EPROTO;
}

size_t repl_enc_join(const repl_join *m, uint8_t *out, size_t cap)
{
    size_t id_len = strnlen(m->id, sizeof(m->id));
    if (id_len == 0 || id_len > LIMIT_CLUSTER_NODE_ID_BYTES_MAX || m->probe_count > REPL_PROBES_MAX)
        return 0;
    repl_w w = repl_w_begin(REPL_JOIN, out, cap);
    repl_put_le(&w, m->version, 4);
    repl_put_le(&w, m->group, 4);
    repl_put(&w, m->nonce, REPL_NONCE_BYTES);
    repl_put(&w, m->mac, REPL_MAC_BYTES);
    repl_put_le(&w, id_len, 1);
    repl_put(&w, m->id, id_len);
    repl_put_le(&w, m->log_epoch, 8);
    repl_put_le(&w, m->last_seq, 8);
    repl_put_le(&w, m->floor_seq, 8);
    repl_put_le(&w, m->probe_count, 2);
    for (uint32_t i = 0; i < m->probe_count; i++) {
        repl_put_le(&w, m->probes[i].seq, 8);
        repl_put_le(&w, m->probes[i].sum, 8);
    }
    return repl_w_end(&w);
}

int repl_dec_join(const repl_frame *f, repl_join *m)
{
    repl_r r = {.p = f->p, .len = f->len};
    m->version = (uint32_t)repl_get_le(&r, 4);
    m->group = (uint32_t)repl_get_le(&r, 4);
    repl_get(&r, m->nonce, REPL_NONCE_BYTES);
    repl_get(&r, m->mac, REPL_MAC_BYTES);
    size_t id_len = (size_t)repl_get_le(&r, 1);
    if (id_len == 0 || id_len > LIMIT_CLUSTER_NODE_ID_BYTES_MAX)
        return -EPROTO;
    repl_get(&r, m->id, id_len);
    m->id[id_len] = 0;
    m->log_epoch = repl_get_le(&r, 8);
    m->last_seq = repl_get_le(&r, 8);
    m->floor_seq = repl_get_le(&r, 8);
    m->probe_count = (uint32_t)repl_get_le(&r, 2);
    if (m->probe_count > REPL_PROBES_MAX)
        return -EPROTO;
    for (uint32_t i = 0; i < m->probe_count; i++) {
        m->probes[i].seq = repl_get_le(&r, 8);
        m->probes[i].sum = repl_get_le(&r, 8);
    }
    return f->type == REPL_JOIN && memchr(m->id, 0, id_len) == NULL ? repl_r_end(&r) : -EPROTO;
}

size_t repl_enc_welcome(const repl_welcome *m, uint8_t *out, size_t cap)
{
    repl_w w = repl_w_begin(REPL_WELCOME, out, cap);
    repl_put(&w, m->mac, REPL_MAC_BYTES);
    repl_put_le(&w, m->epoch, 8);
    repl_put_le(&w, m->match_seq, 8);
    repl_put_le(&w, m->leader_seq, 8);
    repl_put_le(&w, m->snapshot, 1);
    return repl_w_end(&w);
}

int repl_dec_welcome(const repl_frame *f, repl_welcome *m)
{
    repl_r r = {.p = f->p, .len = f->len};
    repl_get(&r, m->mac, REPL_MAC_BYTES);
    m->epoch = repl_get_le(&r, 8);
    m->match_seq = repl_get_le(&r, 8);
    m->leader_seq = repl_get_le(&r, 8);
    uint64_t snap = repl_get_le(&r, 1);
    m->snapshot = snap == 1;
    return f->type == REPL_WELCOME && snap <= 1 ? repl_r_end(&r) : -EPROTO;
}

size_t repl_enc_refuse(const char *why, uint8_t *out, size_t cap)
{
    repl_w w = repl_w_begin(REPL_REFUSE, out, cap);
    repl_put(&w, why, strnlen(why, 200));
    return repl_w_end(&w);
}

size_t repl_enc_snapend(const repl_snapend *m, uint8_t *out, size_t cap)
{
    uint64_t v[4] = {m->seq, m->ids_seq, m->first_seq, m->first_prev};
    return repl_enc_u64s(REPL_SNAPEND, v, 4, out, cap);
}

int repl_dec_snapend(const repl_frame *f, repl_snapend *m)
{
    uint64_t v[4];
    const uint8_t *rest;
    size_t rest_len;
    int rc = f->type == REPL_SNAPEND ? repl_dec_u64s(f, v, 4, &rest, &rest_len) : -EPROTO;
    if (rc == 0 && (rest_len != 0 || v[2] == 0 || v[1] > v[0] || v[2] > v[1] + 1))
        rc = -EPROTO; /* the log must start at or before the id index's seq + 1 */
    if (rc == 0)
        *m = (repl_snapend){.seq = v[0], .ids_seq = v[1], .first_seq = v[2], .first_prev = v[3]};
    return rc;
}

size_t repl_enc_u64s(uint8_t type, const uint64_t *v, uint32_t n, uint8_t *out, size_t cap)
{
    repl_w w = repl_w_begin(type, out, cap);
    for (uint32_t i = 0; i < n; i++)
        repl_put_le(&w, v[i], 8);
    return repl_w_end(&w);
}

int repl_dec_u64s(const repl_frame *f, uint64_t *v, uint32_t n, const uint8_t **rest,
                  size_t *rest_len)
{
    repl_r r = {.p = f->p, .len = f->len};
    for (uint32_t i = 0; i < n; i++)
        v[i] = repl_get_le(&r, 8);
    if (r.bad)
        return -EPROTO;
    *rest = f->p + r.off;
    *rest_len = f->len - r.off;
    return 0;
}

size_t repl_enc_head(uint8_t type, size_t payload_bytes, uint8_t *out)
{
    uint64_t body = payload_bytes + 1;
    for (int i = 0; i < 4; i++)
        out[i] = (uint8_t)(body >> (8 * i));
    out[4] = type;
    return REPL_HEAD_BYTES;
}

int repl_dec_snapfile(const repl_frame *f, char *name, size_t cap, uint64_t *offset,
                      const uint8_t **data, size_t *len)
{
    repl_r r = {.p = f->p, .len = f->len};
    size_t n = (size_t)repl_get_le(&r, 2);
    const uint8_t *p = repl_take(&r, n);
    *offset = repl_get_le(&r, 8);
    if (f->type != REPL_SNAPFILE || r.bad || n == 0 || n >= cap || memchr(p, 0, n))
        return -EPROTO;
    /* A file of the snapshots directory, or of one directory in it (the
     * id index's runs): never a path out of it. */
    const uint8_t *slash = memchr(p, '/', n);
    if (p[0] == '.' || (slash && (slash + 1 == p + n || slash[1] == '.' ||
                                  memchr(slash + 1, '/', (size_t)(p + n - slash - 1)))))
        return -EPROTO;
    memcpy(name, p, n);
    name[n] = 0;
    *data = f->p + r.off;
    *len = f->len - r.off;
    return 0;
}

/* ---- authentication ------------------------------------------------------------ */

int repl_nonce(uint8_t out[REPL_NONCE_BYTES])
{
    size_t got = 0;
    while (got < REPL_NONCE_BYTES) {
        ssize_t n = getrandom(out + got, REPL_NONCE_BYTES - got, 0);
        if (n < 0 && errno != EINTR)
            return -errno;
        if (n > 0)
            got += (size_t)n;
    }
    return 0;
}

void repl_hmac(const uint8_t *key, size_t key_len, const void *data, size_t len,
               uint8_t out[REPL_MAC_BYTES])
{
    unsigned int out_len = 0;
    HMAC(EVP_sha256(), key, (int)key_len, data, len, out, &out_len);
}

void repl_mac_join(const uint8_t *secret, size_t secret_len, const uint8_t *nonce_l,
                   const uint8_t *nonce_f, uint32_t group, const char *id,
                   uint8_t out[REPL_MAC_BYTES])
{
    uint8_t buf[64 + 2 * REPL_NONCE_BYTES + LIMIT_CLUSTER_NODE_ID_BYTES_MAX];
    repl_w w = {.p = buf, .cap = sizeof(buf)};
    repl_put(&w, "tally-repl-1 join", 17);
    repl_put(&w, nonce_l, REPL_NONCE_BYTES);
    repl_put(&w, nonce_f, REPL_NONCE_BYTES);
    repl_put_le(&w, group, 4);
    repl_put(&w, id, strnlen(id, LIMIT_CLUSTER_NODE_ID_BYTES_MAX));
    repl_hmac(secret, secret_len, buf, w.len, out);
}

void repl_mac_welcome(const uint8_t *secret, size_t secret_len, const uint8_t *nonce_f,
                      const uint8_t *nonce_l, uint64_t epoch, uint8_t out[REPL_MAC_BYTES])
{
    uint8_t buf[64 + 2 * REPL_NONCE_BYTES];
    repl_w w = {.p = buf, .cap = sizeof(buf)};
    repl_put(&w, "tally-repl-1 welcome", 20);
    repl_put(&w, nonce_f, REPL_NONCE_BYTES);
    repl_put(&w, nonce_l, REPL_NONCE_BYTES);
    repl_put_le(&w, epoch, 8);
    repl_hmac(secret, secret_len, buf, w.len, out);
}

bool repl_mac_equal(const uint8_t *a, const uint8_t *b)
{
    return CRYPTO_memcmp(a, b, REPL_MAC_BYTES) == 0;
}

/* ---- I/O --------------------------------------------------------------------------- */

static uint64_t repl_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Waits until fd is ready for events (or also_fd readable: -EINTR) by
 * the deadline (0: none). */
static int repl_wait(int fd, short events, int also_fd, uint64_t deadline)
{
    for (;;) {
        int left = -1;
        if (deadline) {
            uint64_t now = repl_mono_ms();
            if (now >= deadline)
                return -ETIMEDOUT;
            left = (int)(deadline - now);
        }
        struct pollfd p[2] = {{.fd = fd, .events = events}, {.fd = also_fd, .events = POLLIN}};
        int n = poll(p, also_fd >= 0 ? 2 : 1, left);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n > 0 && also_fd >= 0 && (p[1].revents & POLLIN))
            return -EINTR;
        if (n > 0)
            return 0;
    }
}

int repl_send2(int fd, const void *a, size_t alen, const void *b, size_t blen, int timeout_ms)
{
    uint64_t deadline = timeout_ms < 0 ? 0 : repl_mono_ms() + (uint64_t)timeout_ms;
    const uint8_t *parts[2] = {a, b};
    size_t lens[2] = {alen, blen};
    for (int i = 0; i < 2; i++) {
        size_t off = 0;
        while (off < lens[i]) {
            ssize_t n = send(fd, parts[i] + off, lens[i] - off, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n > 0) {
                off += (size_t)n;
                continue;
            }
            if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                return -errno;
            int rc = repl_wait(fd, POLLOUT, -1, deadline);
            if (rc < 0)
                return rc;
        }
    }
    return 0;
}

int repl_send(int fd, const void *buf, size_t len, int timeout_ms)
{
    return repl_send2(fd, buf, len, NULL, 0, timeout_ms);
}

/* Makes room for `need` bytes in rx (growing it). */
static int repl_rx_room(repl_rx *rx, size_t need)
{
    if (need <= rx->cap)
        return 0;
    size_t cap = rx->cap ? rx->cap : 65536;
    while (cap < need)
        cap *= 2;
    uint8_t *p = realloc(rx->buf, cap);
    if (!p)
        return -ENOMEM;
    rx->buf = p;
    rx->cap = cap;
    return 0;
}

int repl_recv(int fd, repl_rx *rx, size_t max_bytes, int timeout_ms, int also_fd, repl_frame *f)
{
    /* The previous frame's bytes go; what followed it moves to the front. */
    if (rx->used) {
        memmove(rx->buf, rx->buf + rx->used, rx->len - rx->used);
        rx->len -= rx->used;
        rx->used = 0;
    }
    uint64_t deadline = timeout_ms < 0 ? 0 : repl_mono_ms() + (uint64_t)timeout_ms;
    size_t need = 4;
    for (;;) {
        if (rx->len >= 4) {
            size_t body = (size_t)rx->buf[0] | (size_t)rx->buf[1] << 8 |
                          (size_t)rx->buf[2] << 16 | (size_t)rx->buf[3] << 24;
            if (body == 0 || body > max_bytes)
                return -EPROTO; /* checked before anything is allocated for it */
            need = 4 + body;
            if (rx->len >= need)
                break;
        }
        int rc = repl_rx_room(rx, need > 65536 ? need : 65536);
        if (rc < 0)
            return rc;
        ssize_t n = recv(fd, rx->buf + rx->len, rx->cap - rx->len, MSG_DONTWAIT);
        if (n > 0) {
            rx->len += (size_t)n;
            continue;
        }
        if (n == 0)
            return -ECONNRESET;
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return -errno;
        rc = repl_wait(fd, POLLIN, also_fd, deadline);
        if (rc < 0)
            return rc;
    }
    uint8_t type = rx->buf[4];
    if (type < REPL_HELLO || type > REPL_ACK)
        return -EPROTO;
    *f = (repl_frame){.type = type, .p = rx->buf + REPL_HEAD_BYTES, .len = need - REPL_HEAD_BYTES};
    rx->used = need;
    return 0;
}

void repl_rx_free(repl_rx *rx)
{
    free(rx->buf);
    *rx = (repl_rx){0};
}
