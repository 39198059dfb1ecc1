/*
 * fuzz_test.c — the committed fuzz corpora (tests/fuzz/corpus/) replayed
 * through both fuzz targets, built without libFuzzer by make
 * ($TALLY_BUILD/fuzz-replay-*, tests/fuzz/replay.c) with this build's
 * sanitizers: a change to the RESP parser or the record decoder that
 * breaks an invariant on any seed fails make test, with no clang or
 * fuzzing time in CI (make fuzz does the fuzzing).
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tallyd_util.h"

/* Regular files in dir. */
static int fz_files(const char *dir)
{
    DIR *d = opendir(dir);
    cr_assert_not_null(d, "%s", dir);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        struct stat st;
        n += fstatat(dirfd(d), de->d_name, &st, 0) == 0 && S_ISREG(st.st_mode);
    }
    closedir(d);
    return n;
}

/* Every input of corpus/<name> through fuzz-replay-<name>: exit 0, and it
 * says it replayed every file. */
static void fz_replay(const char *name)
{
    char dir[4200], cmd[8600], out[4096], want[64];
    snprintf(dir, sizeof(dir), "%s/tests/fuzz/corpus/%s", td_source_dir(), name);
    int files = fz_files(dir);
    cr_assert_geq(files, 10, "the %s corpus has its seeds (%d)", name, files);
    snprintf(cmd, sizeof(cmd), "'%s/fuzz-replay-%s' '%s'", getenv("TALLY_BUILD"), name, dir);
    int rc = td_run(cmd, out, sizeof(out));
    cr_assert_eq(rc, 0, "%s: exit %d: %s", cmd, rc, out);
    snprintf(want, sizeof(want), "replayed %d inputs\n", files);
    cr_assert_not_null(strstr(out, want), "%s: %s (want %s)", cmd, out, want);
}

Test(fuzz, every_seed_of_the_resp_corpus_holds_the_parser_invariants)
{
    fz_replay("resp");
}

Test(fuzz, every_seed_of_the_record_corpus_holds_the_decoder_invariants)
{
    fz_replay("record");
}

/* tally-bench checks its own modules (histogram, RESP scanner and encoder,
 * workloads, report): run by make test, so CI does. */
Test(bench, tally_bench_selftest_passes)
{
    char cmd[4200], out[16384];
    snprintf(cmd, sizeof(cmd), "'%s/tally-bench' selftest", getenv("TALLY_BUILD"));
    int rc = td_run(cmd, out, sizeof(out));
    cr_assert_eq(rc, 0, "tally-bench selftest: exit %d: %s", rc, out);
    cr_assert_not_null(strstr(out, " passed, 0 failed"), "%s", out);
}
