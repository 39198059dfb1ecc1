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

#endif
