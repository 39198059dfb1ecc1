/*
 * bytes.h — fixed-width integers at any address in an explicit byte order:
 * little-endian in the on-disk formats (records, segments, state values),
 * big-endian in keys, so that memcmp sorts them as numbers.
 *
 * One load or store each (memcpy of the width, then a byte swap where the
 * host differs), instead of a loop over the bytes: a loop is what GCC -O2
 * leaves as eight shifts and ors, and record decoding did little else
 * (27% of an import's read-back).
 */
#ifndef TALLY_BYTES_H
#define TALLY_BYTES_H

#include <endian.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

static inline void bytes_put_le16(uint8_t *p, uint16_t v)
{
    v = htole16(v);
    memcpy(p, &v, sizeof(v));
}

static inline void bytes_put_le32(uint8_t *p, uint32_t v)
{
    v = htole32(v);
    memcpy(p, &v, sizeof(v));
}

static inline void bytes_put_le64(uint8_t *p, uint64_t v)
{
    v = htole64(v);
    memcpy(p, &v, sizeof(v));
}

static inline uint16_t bytes_get_le16(const uint8_t *p)
{
    uint16_t v;
    memcpy(&v, p, sizeof(v));
    return le16toh(v);
}

static inline uint32_t bytes_get_le32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof(v));
    return le32toh(v);
}

static inline uint64_t bytes_get_le64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof(v));
    return le64toh(v);
}

static inline void bytes_put_be64(uint8_t *p, uint64_t v)
{
    v = htobe64(v);
    memcpy(p, &v, sizeof(v));
}

static inline uint64_t bytes_get_be64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof(v));
    return be64toh(v);
}

/* LEB128 varints (record allocations, FOLLOW's cursor, state values): 7
 * bits a byte, low first, the top bit set on every byte but the last. */
#define BYTES_VARINT_MAX 10

static inline size_t bytes_put_varint(uint8_t *p, uint64_t v)
{
    size_t n = 0;
    while (v >= 0x80) {
        p[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (uint8_t)v;
    return n;
}

/* The varint at p[0, avail): its length and *v, or 0 if it runs out or
 * does not fit 64 bits. */
static inline size_t bytes_get_varint(const uint8_t *p, size_t avail, uint64_t *v)
{
    if (avail > 0 && p[0] < 0x80) {
        *v = p[0];
        return 1;
    }
    uint64_t x = 0;
    for (size_t i = 0; i < avail && i < BYTES_VARINT_MAX; i++) {
        if (i == BYTES_VARINT_MAX - 1 && p[i] > 1)
            return 0;
        x |= (uint64_t)(p[i] & 0x7f) << (7 * i);
        if (!(p[i] & 0x80)) {
            *v = x;
            return i + 1;
        }
    }
    return 0;
}

/* Signed values as varints: 0, -1, 1, -2, ... → 0, 1, 2, 3, ... */
static inline uint64_t bytes_zigzag(int64_t v)
{
    return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
}

static inline int64_t bytes_unzigzag(uint64_t v)
{
    return (int64_t)(v >> 1) ^ -(int64_t)(v & 1);
}

#endif
