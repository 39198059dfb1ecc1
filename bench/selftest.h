/*
 * selftest.h — `tally-bench selftest`: checks of the histogram, the reply
 * scanner, the command encoder and the workload generator, runnable
 * without a server (the tests/ suite belongs to the engine).
 */
#ifndef TALLY_BENCH_SELFTEST_H
#define TALLY_BENCH_SELFTEST_H

/* Runs every check, prints "N passed, N failed"; returns 0 if all passed. */
int selftest_run(void);

#endif
