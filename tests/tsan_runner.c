/*
 * tsan_runner.c — lets Criterion's runner start under ThreadSanitizer
 * (make test SAN=thread); compiled empty otherwise.
 *
 * Criterion (through BoxFort, linked into libcriterion.so) maps the arena it
 * shares with its test workers at an address it draws with rand_r() from
 * 0x2000_0000_0000..0x7f00_0000_0000, MAP_FIXED.  ThreadSanitizer keeps most
 * of that range for its shadow and metadata and refuses a fixed mapping
 * outside application memory, so the runner stops at once ("Could not
 * initialize inheritable arena", Criterion issue #274).  This rand_r answers
 * BoxFort's draws (calls from libcriterion.so) with slots of BoxFort's 16 MiB
 * grid inside ThreadSanitizer's middle application range, above where a PIE
 * binary and its brk heap can land (0x5555_5555_4000 plus 2^28 pages of
 * ASLR, plus 32 MiB); BoxFort skips a slot in use and draws again.  Every
 * other caller gets glibc's own rand_r sequence.
 */
#if defined(__SANITIZE_THREAD__)
#include <dlfcn.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* BoxFort's grid: base 0x2000_0000_0000, step 2^24, index mask 0x3fffff. */
#define TSAN_RUNNER_BASE 0x200000000000ull
#define TSAN_RUNNER_STEP_SHIFT 24
/* 0x5660_0000_0000..0x5680_0000_0000: free, inside ThreadSanitizer's
 * application range 0x5500_0000_0000..0x5680_0000_0000. */
#define TSAN_RUNNER_FIRST 0x566000000000ull
#define TSAN_RUNNER_SLOTS ((0x568000000000ull - TSAN_RUNNER_FIRST) >> TSAN_RUNNER_STEP_SHIFT)

static int tsan_runner_from_criterion(const void *caller)
{
    Dl_info info;
    return dladdr(caller, &info) != 0 && info.dli_fname != NULL &&
           strstr(info.dli_fname, "libcriterion") != NULL;
}

int rand_r(unsigned int *seed)
{
    static atomic_uint slot;
    if (tsan_runner_from_criterion(__builtin_return_address(0))) {
        uint64_t first = (TSAN_RUNNER_FIRST - TSAN_RUNNER_BASE) >> TSAN_RUNNER_STEP_SHIFT;
        return (int)(first + atomic_fetch_add(&slot, 1) % TSAN_RUNNER_SLOTS);
    }
    /* glibc's rand_r (stdlib/rand_r.c): three steps of its LCG. */
    unsigned int next = *seed;
    int result;
    next = next * 1103515245u + 12345u;
    result = (int)((next / 65536u) % 2048u);
    next = next * 1103515245u + 12345u;
    result = (int)(((unsigned)result << 10) ^ ((next / 65536u) % 1024u));
    next = next * 1103515245u + 12345u;
    result = (int)(((unsigned)result << 10) ^ ((next / 65536u) % 1024u));
    *seed = next;
    return result;
}
#else
/* ISO C wants a translation unit to declare something. */
typedef int tsan_runner_unused;
#endif
