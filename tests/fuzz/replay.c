/*
 * replay.c — a main() for a libFuzzer target without libFuzzer: feeds it
 * every file named on the command line (every regular file of a directory
 * named), once each, in name order, and says how many it replayed.  The
 * target's asserts (and, in a sanitizer build, ASan/UBSan/TSan) stop the
 * run on the first input that breaks an invariant; its exit status is then
 * non-zero.  make builds it against each target (build/fuzz-replay-*) and
 * tests/fuzz_test.c replays the committed corpora with it, so CI catches
 * a regression on any seed without clang or a fuzzing budget.
 *
 *   build/fuzz-replay-resp tests/fuzz/corpus/resp   ->  "replayed 29 inputs"
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Feeds one file to the target: 0, or -1 if it cannot be read. */
static int replay_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    size_t cap = 1 << 16, n = 0;
    uint8_t *buf = malloc(cap);
    size_t got;
    while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            uint8_t *more = realloc(buf, cap * 2);
            if (!more) {
                free(buf);
                buf = NULL;
            }
            buf = more;
            cap *= 2;
        }
    }
    int err = ferror(f) || !buf;
    fclose(f);
    if (err) {
        free(buf);
        return -1;
    }
    /* An exact-size copy, as libFuzzer hands inputs: a read past the end
     * is a heap overflow under ASan. */
    uint8_t *exact = malloc(n ? n : 1);
    if (!exact) {
        free(buf);
        return -1;
    }
    memcpy(exact, buf, n);
    free(buf);
    LLVMFuzzerTestOneInput(exact, n);
    free(exact);
    return 0;
}

static int replay_names(const struct dirent **a, const struct dirent **b)
{
    return strcmp((*a)->d_name, (*b)->d_name);
}

/* A file, or every regular file of a directory: how many were replayed,
 * or -1. */
static long replay_path(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return -1;
    if (!S_ISDIR(st.st_mode))
        return replay_file(path) == 0 ? 1 : -1;
    struct dirent **names;
    int n = scandir(path, &names, NULL, replay_names);
    if (n < 0)
        return -1;
    long done = 0;
    for (int i = 0; i < n; i++) {
        char file[4096];
        snprintf(file, sizeof(file), "%s/%s", path, names[i]->d_name);
        if (done >= 0 && stat(file, &st) == 0 && S_ISREG(st.st_mode)) {
            if (replay_file(file) == 0)
                done++;
            else
                done = -1;
        }
        free(names[i]);
    }
    free(names);
    return done;
}

int main(int argc, char **argv)
{
    long total = 0;
    for (int i = 1; i < argc; i++) {
        long n = replay_path(argv[i]);
        if (n < 0) {
            fprintf(stderr, "%s: cannot read %s\n", argv[0], argv[i]);
            return 2;
        }
        total += n;
    }
    printf("replayed %ld inputs\n", total);
    return 0;
}
