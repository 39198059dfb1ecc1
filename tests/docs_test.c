/*
 * docs_test.c — every example in README.md and docs/REFERENCE.md runs as
 * shown.  Each `redis-cli` line of a ```sh block (a leading "$ " allowed)
 * is run with sh against a fresh tallyd per document, in document order,
 * with the documents' port 7379 replaced by the test server's.  It must
 * answer without an error, or — when its comment says `# error: CODE` —
 * with exactly that error code.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tallyd_util.h"

/* Replaces the first "-p 7379" of line with the server's port and asks
 * redis-cli for its typed output ("(error) CODE ..."). */
static void docs_command(const char *line, unsigned port, char *cmd, size_t cap)
{
    const char *p = strstr(line, " -p 7379");
    cr_assert_not_null(p, "a docs example must name -p 7379: %s", line);
    cr_assert(strncmp(line, "redis-cli ", 10) == 0);
    snprintf(cmd, cap, "redis-cli --no-raw -p %u%s", port, p + 8);
}

/* Runs every example of one document; returns how many there were. */
static int docs_run(const char *relpath)
{
    char path[700];
    snprintf(path, sizeof(path), "%s/%s", td_source_dir(), relpath);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "%s", path);
    td t;
    td_init(&t, "docs");
    td_start(&t, NULL);
    char line[2048];
    int in_sh = 0, examples = 0, no = 0;
    while (fgets(line, sizeof(line), f)) {
        no++;
        line[strcspn(line, "\n")] = 0;
        if (strncmp(line, "```", 3) == 0) {
            in_sh = !in_sh && strcmp(line, "```sh") == 0;
            continue;
        }
        const char *ex = line;
        if (strncmp(ex, "$ ", 2) == 0)
            ex += 2;
        if (!in_sh || strncmp(ex, "redis-cli ", 10) != 0)
            continue;
        char cmd[2300], out[16384], code[32] = "";
        docs_command(ex, t.port, cmd, sizeof(cmd));
        const char *e = strstr(ex, "# error: ");
        if (e)
            sscanf(e + 9, "%31s", code);
        int rc = td_run(cmd, out, sizeof(out));
        cr_assert_eq(rc, 0, "%s:%d: redis-cli failed (%d): %s", relpath, no, rc, out);
        int error = strncmp(out, "(error) ", 8) == 0 || strstr(out, "\n(error) ") != NULL;
        if (code[0]) {
            char want[64];
            snprintf(want, sizeof(want), "(error) %s ", code);
            cr_assert(strncmp(out, want, strlen(want)) == 0, "%s:%d: `%s` should answer -%s: %s",
                      relpath, no, ex, code, out);
        } else {
            cr_assert(!error, "%s:%d: `%s` answered an error: %s", relpath, no, ex, out);
            cr_assert(out[0] != 0, "%s:%d: `%s` answered nothing", relpath, no, ex);
        }
        examples++;
    }
    fclose(f);
    td_stop(&t);
    td_cleanup(&t);
    return examples;
}

Test(docs, every_redis_cli_example_in_the_readme_runs_as_shown, .timeout = 120)
{
    int n = docs_run("README.md");
    cr_assert_geq(n, 4, "the README's examples were found (%d)", n);
}

Test(docs, every_redis_cli_example_in_the_reference_runs_as_shown, .timeout = 120)
{
    int n = docs_run("docs/REFERENCE.md");
    cr_assert_geq(n, 30, "the reference's examples were found (%d)", n);
}
