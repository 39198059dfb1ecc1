/*
 * clock.h — the clocks the cluster's threads use: monotonic milliseconds
 * for timeouts and leases, unix milliseconds for what operators read, and
 * condition variables that wait on the monotonic clock (so that setting
 * the wall clock never stretches or cuts a wait).
 */
#ifndef TALLY_CLOCK_H
#define TALLY_CLOCK_H

#include <pthread.h>
#include <stdint.h>
#include <time.h>

static inline uint64_t clock_ms(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Milliseconds on CLOCK_MONOTONIC (never goes back). */
static inline uint64_t clock_mono_ms(void)
{
    return clock_ms(CLOCK_MONOTONIC);
}

/* Unix time in milliseconds (CLOCK_REALTIME). */
static inline uint64_t clock_unix_ms(void)
{
    return clock_ms(CLOCK_REALTIME);
}

/* A condition variable whose timed waits count CLOCK_MONOTONIC. */
static inline void clock_cond_init(pthread_cond_t *cv)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(cv, &ca);
    pthread_condattr_destroy(&ca);
}

/* The absolute CLOCK_MONOTONIC time ms from now, for
 * pthread_cond_timedwait on a clock_cond_init condition. */
static inline struct timespec clock_mono_after(uint32_t ms)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    t.tv_nsec += (long)(ms % 1000) * 1000000L;
    t.tv_sec += ms / 1000 + t.tv_nsec / 1000000000L;
    t.tv_nsec %= 1000000000L;
    return t;
}

#endif
