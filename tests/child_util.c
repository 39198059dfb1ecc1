/*
 * child_util.c — a test's child processes, by exec of the test binary
 * (child_util.h).
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "child_util.h"

#define CU_ARGS_MAX 16

static const struct {
    const char *name;
    int (*main)(int argc, char **argv);
} cu_children[] = {
    {"crash", crash_child_main},
    {"snapshot", snapshot_child_main},
    {"ids-power-loss", ids_power_loss_child_main},
    {"engine-life", engine_life_child_main},
    {"engine-tail", engine_tail_child_main},
};

pid_t cu_spawn(const char *name, const char *const *args)
{
    const char *argv[CU_ARGS_MAX + 4] = {"tally-tests", "--child", name};
    int argc = 3;
    for (int i = 0; args && args[i]; i++) {
        cr_assert_lt(i, CU_ARGS_MAX);
        argv[argc++] = args[i];
    }
    argv[argc] = NULL;
    /* The environment without BXFI_MAP, through which Criterion's sandbox
     * (BoxFort) finds a worker's arena: left set, the child would start
     * as a test worker.  Made before the fork, where malloc is safe. */
    size_t n = 0;
    while (environ[n])
        n++;
    char **envp = calloc(n + 1, sizeof(*envp));
    cr_assert_not_null(envp);
    for (size_t i = 0, k = 0; i < n; i++)
        if (strncmp(environ[i], "BXFI_MAP=", 9) != 0)
            envp[k++] = environ[i];
    fflush(NULL);
    pid_t parent = getpid();
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(99);
        execve("/proc/self/exe", (char *const *)argv, envp);
        _exit(98);
    }
    free(envp);
    return pid;
}

int cu_child_main(int argc, char **argv)
{
    if (argc < 3 || strcmp(argv[1], "--child") != 0)
        return -1;
    for (size_t i = 0; i < sizeof(cu_children) / sizeof(cu_children[0]); i++)
        if (strcmp(argv[2], cu_children[i].name) == 0)
            return cu_children[i].main(argc - 3, argv + 3);
    fprintf(stderr, "%s: no child named %s\n", argv[0], argv[2]);
    return 97;
}
