/*
 * checksum.h — XXH3 hashing for the log chain, the id index and shard
 * placement.  The only module that includes xxhash.h.
 */
#ifndef TALLY_CHECKSUM_H
#define TALLY_CHECKSUM_H

#include <stddef.h>
#include <stdint.h>

/* XXH3-64 of len bytes with a seed. */
uint64_t checksum64(const void *data, size_t len, uint64_t seed);
/* XXH3-128 of len bytes, written as 16 bytes (high half first, big-endian
 * so keys sort the same on every machine). */
void checksum128(const void *data, size_t len, uint8_t out[16]);
/* Shard of a merchant: XXH3-64 of its 8 little-endian bytes mod shards. */
uint32_t checksum_shard(uint64_t merchant, uint32_t shards);

/* XXH3-64 over data fed in pieces (whole files).  NULL on no memory. */
typedef struct checksum_stream checksum_stream;
checksum_stream *checksum_stream_new(void);
void checksum_stream_update(checksum_stream *c, const void *data, size_t len);
uint64_t checksum_stream_digest(const checksum_stream *c);
void checksum_stream_free(checksum_stream *c);

#endif
