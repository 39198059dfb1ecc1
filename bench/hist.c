/*
 * hist.c — the log-linear latency histogram (see hist.h for the layout).
 *
 * Bucket index of a value v:
 *   v < 2 * HIST_SUB_COUNT        index = v                  (exact)
 *   otherwise, with shift = msb(v) - HIST_SUB_BITS (>= 1)
 *                                 index = shift * HIST_SUB_COUNT + (v >> shift)
 * where v >> shift lies in [HIST_SUB_COUNT, 2 * HIST_SUB_COUNT), so the
 * indexes of consecutive ranges follow each other without a gap.
 */
#include <assert.h>
#include <string.h>

#include "hist.h"

static_assert(HIST_VALUE_BITS > HIST_SUB_BITS + 1, "at least one log range");
static_assert(HIST_BUCKET_COUNT < (1u << 20), "a histogram stays small");

static uint32_t hist_index(uint64_t value)
{
    if (value >= (1ull << HIST_VALUE_BITS))
        value = (1ull << HIST_VALUE_BITS) - 1;
    if (value < 2 * HIST_SUB_COUNT)
        return (uint32_t)value;
    uint32_t msb = 63u - (uint32_t)__builtin_clzll(value);
    uint32_t shift = msb - HIST_SUB_BITS;
    uint32_t index = shift * HIST_SUB_COUNT + (uint32_t)(value >> shift);
    assert(index < HIST_BUCKET_COUNT);
    return index;
}

/* The highest value that maps to bucket index. */
static uint64_t hist_bucket_high(uint32_t index)
{
    assert(index < HIST_BUCKET_COUNT);
    if (index < 2 * HIST_SUB_COUNT)
        return index;
    uint32_t shift = index / HIST_SUB_COUNT - 1;
    uint64_t sub = index - shift * HIST_SUB_COUNT;
    return ((sub + 1) << shift) - 1;
}

void hist_reset(hist *h)
{
    memset(h, 0, sizeof(*h));
}

void hist_record(hist *h, uint64_t value)
{
    h->buckets[hist_index(value)]++;
    if (h->count == 0 || value < h->min)
        h->min = value;
    if (value > h->max)
        h->max = value;
    h->count++;
    h->sum += (double)value;
}

void hist_merge(hist *dst, const hist *src)
{
    if (src->count == 0)
        return;
    for (uint32_t i = 0; i < HIST_BUCKET_COUNT; i++)
        dst->buckets[i] += src->buckets[i];
    if (dst->count == 0 || src->min < dst->min)
        dst->min = src->min;
    if (src->max > dst->max)
        dst->max = src->max;
    dst->count += src->count;
    dst->sum += src->sum;
}

uint64_t hist_quantile(const hist *h, double q)
{
    if (h->count == 0)
        return 0;
    if (q >= 1.0)
        return h->max;
    if (q < 0.0)
        q = 0.0;
    /* Rank of the wanted value, 1-based: ceil(q * count), at least 1. */
    uint64_t rank = (uint64_t)(q * (double)h->count);
    if ((double)rank < q * (double)h->count)
        rank++;
    if (rank == 0)
        rank = 1;
    uint64_t seen = 0;
    for (uint32_t i = 0; i < HIST_BUCKET_COUNT; i++) {
        seen += h->buckets[i];
        if (seen >= rank) {
            uint64_t high = hist_bucket_high(i);
            return high < h->max ? high : h->max;
        }
    }
    return h->max;
}

double hist_mean(const hist *h)
{
    return h->count ? h->sum / (double)h->count : 0.0;
}
