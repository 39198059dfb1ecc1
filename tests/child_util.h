/*
 * child_util.h — child processes that run engine code for a test (a
 * writer to kill -9, a workload to cut at a crash point), started by
 * running the test binary again: fork, then exec of /proc/self/exe with
 * `--child NAME ARGS...`, which tests/main.c hands to the child instead
 * of to Criterion.  A fork alone is not enough: the test process has
 * threads (its engines' past ones, Criterion's), and a child forked from
 * a multithreaded process that starts threads of its own is outside what
 * ThreadSanitizer supports (it dies, or reports "dup thread" when a new
 * thread reuses the stack of one that existed only in the parent).
 */
#ifndef TALLY_TESTS_CHILD_UTIL_H
#define TALLY_TESTS_CHILD_UTIL_H

#include <sys/types.h>

/* Starts the child `name` with args (NULL-terminated), inheriting stdio
 * and every descriptor not marked close-on-exec; killed if the test
 * process dies.  Returns its pid (asserted). */
pid_t cu_spawn(const char *name, const char *const *args);

/* For tests/main.c: if argv is `PROG --child NAME ARGS...`, runs that
 * child and returns its exit status; otherwise -1. */
int cu_child_main(int argc, char **argv);

/* The children, each defined beside the test that starts it: argv holds
 * its ARGS (argc of them); the return value is its exit status. */
int crash_child_main(int argc, char **argv);
int snapshot_child_main(int argc, char **argv);
int ids_power_loss_child_main(int argc, char **argv);
int engine_life_child_main(int argc, char **argv);
int engine_tail_child_main(int argc, char **argv);

#endif
