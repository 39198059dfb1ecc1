/*
 * checksum.c — XXH3 for the log chain, the id index and shard placement.
 * The only module that includes xxhash.h (STYLE rule 2).
 */
#include <stdlib.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "bytes.h"
#include "checksum.h"

uint64_t checksum64(const void *data, size_t len, uint64_t seed)
{
    return XXH3_64bits_withSeed(data, len, seed);
}

void checksum128(const void *data, size_t len, uint8_t out[16])
{
    XXH128_hash_t h = XXH3_128bits(data, len);
    bytes_put_be64(out, h.high64);
    bytes_put_be64(out + 8, h.low64);
}

uint32_t checksum_shard(uint64_t merchant, uint32_t shards)
{
    uint8_t le[8];
    bytes_put_le64(le, merchant);
    return (uint32_t)(XXH3_64bits(le, sizeof(le)) % shards);
}

struct checksum_stream {
    XXH3_state_t state;
};

checksum_stream *checksum_stream_new(void)
{
    checksum_stream *c = aligned_alloc(64, (sizeof(*c) + 63) / 64 * 64);
    if (c)
        XXH3_64bits_reset(&c->state);
    return c;
}

void checksum_stream_update(checksum_stream *c, const void *data, size_t len)
{
    XXH3_64bits_update(&c->state, data, len);
}

uint64_t checksum_stream_digest(const checksum_stream *c) { return XXH3_64bits_digest(&c->state); }

void checksum_stream_free(checksum_stream *c) { free(c); }
