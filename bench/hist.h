/*
 * hist.h — a log-linear latency histogram in the manner of HdrHistogram:
 * fixed memory, O(1) record, three significant digits.
 *
 * Values (nanoseconds, or any unsigned unit) below 2048 get a bucket each;
 * above, every power-of-two range [2^k, 2^(k+1)) is cut into 1024 equal
 * sub-buckets, so a bucket is at most 1/1024 (< 0.1 %) of its value wide.
 * Values up to 2^40 (about 18 minutes in ns) are kept; larger ones are
 * clamped to the top bucket, and the exact maximum is kept separately.
 */
#ifndef TALLY_BENCH_HIST_H
#define TALLY_BENCH_HIST_H

#include <stdint.h>

/* Sub-buckets per power of two: 2^10 gives three significant digits. */
#define HIST_SUB_BITS 10
#define HIST_SUB_COUNT (1u << HIST_SUB_BITS)
/* Highest power of two kept (values are clamped below 2^HIST_VALUE_BITS). */
#define HIST_VALUE_BITS 40
#define HIST_BUCKET_COUNT ((HIST_VALUE_BITS - HIST_SUB_BITS) * HIST_SUB_COUNT + HIST_SUB_COUNT)

typedef struct hist {
    uint64_t count;
    uint64_t min;
    uint64_t max;
    double sum;
    uint64_t buckets[HIST_BUCKET_COUNT];
} hist;

/* Empties h (its buckets stay allocated by the caller). */
void hist_reset(hist *h);
/* Adds one value. */
void hist_record(hist *h, uint64_t value);
/* Adds every value of src to dst. */
void hist_merge(hist *dst, const hist *src);
/* The smallest recorded value v such that at least q (0..1) of all values
 * are <= v, reported as the highest value of its bucket (never lower than
 * the truth, at most 0.1 % higher); q >= 1 gives the exact maximum.  0 when
 * h is empty. */
uint64_t hist_quantile(const hist *h, double q);
/* Mean of the recorded values, 0 when empty. */
double hist_mean(const hist *h);

#endif
