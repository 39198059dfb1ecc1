/*
 * repl_proto.h — the replication protocol between a shard group's leader
 * and its replicas (repl.h): framed messages over TCP, each encoded and
 * decoded as a pair, and the handshake's authentication.
 *
 * Frame (little-endian):
 *
 *   off  size  field
 *     0     4  len      bytes after this field: 1 + the payload's,
 *                       1..REPL_FRAME_BYTES_MAX (REPL_AUTH_BYTES_MAX
 *                       before the peer proved the secret)
 *     4     1  type     enum repl_type
 *     5     .  payload  the type's fields, in the order below
 *
 * Messages (L: the leader, F: a replica; u64 unless said):
 *
 *   HELLO    L→F  version u32, nonce[16]           first, on accept
 *   JOIN     F→L  version u32, group u32, nonce[16], mac[32],
 *                 id_len u8, id[id_len], log_epoch, last_seq, floor_seq,
 *                 probes u16, (seq, checksum) × probes
 *                 (floor_seq: its state's checkpoint — it cannot drop
 *                 records below it; UINT64_MAX: it wants a snapshot)
 *   WELCOME  L→F  mac[32], epoch, match_seq, leader_seq, snapshot u8
 *   REFUSE   either  text (the rest of the frame): why, then close
 *   SNAPFILE L→F  name_len u16, name, offset, data (the rest): a piece of
 *                 a snapshot file (names as in SHARD/snapshots/)
 *   SNAPEND  L→F  seq, ids_seq, first_seq, first_prev: the snapshot is
 *                 whole; the log starts at first_seq chained to
 *                 first_prev, and records follow from there
 *   RECORDS  L→F  epoch, commit_seq, records (the rest): whole records
 *                 as the leader's log holds them, ending at a write's end
 *   COMMIT   L→F  epoch, commit_seq, leader_seq: a heartbeat
 *   ACK      F→L  durable_seq
 *
 * Authentication: both ends hold a shared secret.  The replica proves it
 * with mac = HMAC-SHA256(secret, "tally-repl-1 join" nonce_L nonce_F
 * group id) over the leader's fresh nonce, the leader with
 * HMAC-SHA256(secret, "tally-repl-1 welcome" nonce_F nonce_L epoch) over
 * the replica's: neither accepts a peer that does not know it, and a
 * recorded handshake cannot be replayed.  The stream after it is not
 * encrypted or signed (TLS between nodes is out of scope: keep the
 * replication ports on a private network).
 *
 * Probes: the replica's (seq, checksum) at its last 16 seqs, then 32, 64…
 * below it, and at its floor; the leader answers the greatest seq where
 * its own record has the same checksum (the chain makes the logs equal up
 * to there): the replica keeps its log up to match_seq and drops the
 * rest.  No match at or above the floor sends a snapshot (SNAPFILE
 * pieces, SNAPEND, then RECORDS from its first_seq).
 */
#ifndef TALLY_REPL_PROTO_H
#define TALLY_REPL_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "limits.h"

#define REPL_VERSION 1
#define REPL_NONCE_BYTES 16
#define REPL_MAC_BYTES 32
#define REPL_SECRET_BYTES_MAX 256
#define REPL_PROBES_MAX 70
/* A frame: a chunk of records (LIMIT_REPL_CHUNK_BYTES, cut at the next
 * write's end, which a group can stretch to a batch's hard limit). */
#define REPL_FRAME_BYTES_MAX (LIMIT_BATCH_BYTES_HARD + 64)
/* Before authentication only the handshake's small frames. */
#define REPL_AUTH_BYTES_MAX 4096
/* Snapshot files travel in pieces of this size. */
#define REPL_SNAP_PIECE_BYTES (1u << 20)

static_assert(REPL_PROBES_MAX * 16 + 128 + LIMIT_CLUSTER_NODE_ID_BYTES_MAX < REPL_AUTH_BYTES_MAX,
              "a JOIN fits before authentication");

enum repl_type {
    REPL_HELLO = 1,
    REPL_JOIN,
    REPL_WELCOME,
    REPL_REFUSE,
    REPL_SNAPFILE,
    REPL_SNAPEND,
    REPL_RECORDS,
    REPL_COMMIT,
    REPL_ACK,
};

typedef struct repl_probe {
    uint64_t seq;
    uint64_t sum;
} repl_probe;

typedef struct repl_hello {
    uint32_t version;
    uint8_t nonce[REPL_NONCE_BYTES];
} repl_hello;

typedef struct repl_join {
    uint32_t version;
    uint32_t group;
    uint8_t nonce[REPL_NONCE_BYTES];
    uint8_t mac[REPL_MAC_BYTES];
    char id[LIMIT_CLUSTER_NODE_ID_BYTES_MAX + 1];
    uint64_t log_epoch;
    uint64_t last_seq;
    uint64_t floor_seq;
    uint32_t probe_count;
    repl_probe probes[REPL_PROBES_MAX];
} repl_join;

typedef struct repl_welcome {
    uint8_t mac[REPL_MAC_BYTES];
    uint64_t epoch;
    uint64_t match_seq;
    uint64_t leader_seq;
    bool snapshot;
} repl_welcome;

typedef struct repl_snapend {
    uint64_t seq, ids_seq, first_seq, first_prev;
} repl_snapend;

/* A decoded frame: its type and payload (pointing into the receive
 * buffer, valid until the next receive). */
typedef struct repl_frame {
    uint8_t type;
    const uint8_t *p;
    size_t len;
} repl_frame;

/* ---- encoding: each writes the whole frame into out (the caller's
 * buffer, of the size it asks for) and returns its length. ---------------- */

#define REPL_HEAD_BYTES 5
size_t repl_enc_hello(const repl_hello *m, uint8_t *out, size_t cap);
size_t repl_enc_join(const repl_join *m, uint8_t *out, size_t cap);
size_t repl_enc_welcome(const repl_welcome *m, uint8_t *out, size_t cap);
size_t repl_enc_refuse(const char *why, uint8_t *out, size_t cap);
size_t repl_enc_snapend(const repl_snapend *m, uint8_t *out, size_t cap);
/* Three u64s (COMMIT: epoch, commit_seq, leader_seq) or one (ACK). */
size_t repl_enc_u64s(uint8_t type, const uint64_t *v, uint32_t n, uint8_t *out, size_t cap);
/* The head of a frame whose payload is `fixed` (already encoded u64s)
 * followed by `rest` bytes the caller sends after it: RECORDS and
 * SNAPFILE, whose bulk is not copied. */
size_t repl_enc_head(uint8_t type, size_t payload_bytes, uint8_t *out);

/* ---- decoding: 0, or -EPROTO for a malformed payload (short, long, a
 * field out of range). ---------------------------------------------------- */

int repl_dec_hello(const repl_frame *f, repl_hello *m);
int repl_dec_join(const repl_frame *f, repl_join *m);
int repl_dec_welcome(const repl_frame *f, repl_welcome *m);
int repl_dec_snapend(const repl_frame *f, repl_snapend *m);
/* n u64s, then the rest as *rest (may be empty). */
int repl_dec_u64s(const repl_frame *f, uint64_t *v, uint32_t n, const uint8_t **rest,
                  size_t *rest_len);
/* SNAPFILE: the name (NUL-terminated into name[cap]), offset and data. */
int repl_dec_snapfile(const repl_frame *f, char *name, size_t cap, uint64_t *offset,
                      const uint8_t **data, size_t *len);

/* ---- authentication --------------------------------------------------------- */

/* Fresh random bytes (getrandom).  0 or -errno. */
int repl_nonce(uint8_t out[REPL_NONCE_BYTES]);
/* The JOIN's and the WELCOME's MACs (above). */
void repl_mac_join(const uint8_t *secret, size_t secret_len, const uint8_t *nonce_l,
                   const uint8_t *nonce_f, uint32_t group, const char *id,
                   uint8_t out[REPL_MAC_BYTES]);
void repl_mac_welcome(const uint8_t *secret, size_t secret_len, const uint8_t *nonce_f,
                      const uint8_t *nonce_l, uint64_t epoch, uint8_t out[REPL_MAC_BYTES]);
/* Constant-time comparison of two MACs. */
bool repl_mac_equal(const uint8_t *a, const uint8_t *b);
/* HMAC-SHA256 of data under key (tests check it against RFC 4231). */
void repl_hmac(const uint8_t *key, size_t key_len, const void *data, size_t len,
               uint8_t out[REPL_MAC_BYTES]);

/* ---- a connection's I/O (blocking, with deadlines) ----------------------------- */

/* Sends buf[0, len) whole within timeout_ms.  0, -ETIMEDOUT, -errno. */
int repl_send(int fd, const void *buf, size_t len, int timeout_ms);
/* Sends two pieces as one frame's bytes (head, then bulk) within timeout_ms. */
int repl_send2(int fd, const void *a, size_t alen, const void *b, size_t blen, int timeout_ms);

/* A receive buffer: grows to the largest frame seen, up to the limit. */
typedef struct repl_rx {
    uint8_t *buf;
    size_t cap, len, used; /* bytes held; the last frame's bytes at the front */
} repl_rx;

/* Receives one frame of at most max_bytes (REPL_AUTH_BYTES_MAX or
 * REPL_FRAME_BYTES_MAX) within timeout_ms (-1: none).  also_fd, when
 * >= 0, is polled too: if it becomes readable first, -EINTR.  0 and *f;
 * -ETIMEDOUT, -ECONNRESET (closed), -EPROTO (a length out of range or an
 * unknown type), -ENOMEM, -errno. */
int repl_recv(int fd, repl_rx *rx, size_t max_bytes, int timeout_ms, int also_fd, repl_frame *f);
void repl_rx_free(repl_rx *rx);

#endif
