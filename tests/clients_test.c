/*
 * clients_test.c — real client libraries against a real tallyd with an
 * auth file: ioredis (npm, installed by make test into tests/clients/) and
 * redis-py (Debian's python3-redis), each with its default options and a
 * merchant token.  Both call INFO or AUTH at connect; INFO must answer a
 * merchant token without the server's internals (process, data directory,
 * other tenants' shard figures).  Their transactions — redis-py's default
 * pipeline() and ioredis' multi() — run as one EXEC (SPEC §8).
 */
#include <criterion/criterion.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tallyd_util.h"

static td srv;

static void up(void)
{
    td_init(&srv, "cli");
    td_write_auth(&srv, "shop-1 1\nshop-3 3\nroot *\n");
    td_start(&srv, NULL);
}

static void down(void)
{
    td_stop(&srv);
    td_cleanup(&srv);
}

/* What a merchant token's INFO must not show, and what it must. */
static void assert_tenant_info(const char *out)
{
    cr_assert_not_null(strstr(out, "redis_version"), "%s", out);
    const char *hidden[] = {"process_id", "\"dir\"", "dir:", "shard0", "records",
                            "connected_clients", "shards"};
    for (size_t i = 0; i < sizeof(hidden) / sizeof(hidden[0]); i++)
        cr_assert_null(strstr(out, hidden[i]), "a merchant token sees '%s': %s", hidden[i],
                       out);
    cr_assert_null(strstr(out, srv.dir), "a merchant token sees the data directory: %s", out);
}

/* Runs tests/clients/<script> with ioredis (node) or redis-py (Debian's
 * python3), port and token as its arguments; asserts it exited 0. */
static void run_client(const char *script, const char *token, char *out, size_t cap)
{
    char path[600], module[600], cmd[1400];
    bool node = strstr(script, ".js") != NULL;
    snprintf(path, sizeof(path), "%s/tests/clients/%s", td_source_dir(), script);
    snprintf(module, sizeof(module), "%s/tests/clients/node_modules/ioredis", td_source_dir());
    struct stat st;
    if (node && (stat(module, &st) != 0 || td_run("command -v node", out, cap) != 0))
        td_cannot_run("ioredis is not installed (make test installs it with npm)");
    /* Debian's interpreter: python3-redis installs there, whatever else
     * is first in PATH. */
    if (!node && td_run("/usr/bin/python3 -c 'import redis'", out, cap) != 0)
        td_cannot_run("redis-py is not installed (Debian package python3-redis): %s", out);
    snprintf(cmd, sizeof(cmd), "%s %s %u %s", node ? "node" : "/usr/bin/python3", path, srv.port,
             token);
    int rc = td_run(cmd, out, cap);
    cr_assert_eq(rc, 0, "%s failed: %s", script, out);
}

Test(clients, ioredis_connects_with_a_merchant_token_and_default_options, .init = up,
     .fini = down, .timeout = 120)
{
    char out[16384];
    run_client("ioredis_merchant.js", "shop-1", out, sizeof(out));
    cr_assert_not_null(strstr(out, "\"entry\":[\"id\",\"io-1\",\"kind\",\"earn\""), "%s", out);
    cr_assert_not_null(strstr(out, "\"balance\":[\"available\",10,"), "%s", out);
    cr_assert_not_null(strstr(out, "\"noperm\":\"NOPERM token not allowed for merchant 3\""),
                       "%s", out);
    assert_tenant_info(out);
}

Test(clients, redis_py_connects_with_a_merchant_token_and_default_options, .init = up,
     .fini = down, .timeout = 120)
{
    char out[16384];
    run_client("redis_py_merchant.py", "shop-1", out, sizeof(out));
    cr_assert_not_null(strstr(out, "\"entry\": [\"id\", \"py-1\", \"kind\", \"earn\""), "%s",
                       out);
    cr_assert_not_null(strstr(out, "\"balance\": [\"available\", 10,"), "%s", out);
    cr_assert_not_null(strstr(out, "\"noperm\": \"token not allowed for merchant 3\""), "%s",
                       out);
    assert_tenant_info(out);
}

/* The EXEC's entries took consecutive seqs, its read saw them, and a
 * transaction naming two merchants applied nothing. */
static void assert_transaction(const char *out)
{
    long long s1 = 0, s2 = 0, balance = 0;
    const char *p = strstr(out, "\"seqs\": [");
    if (!p)
        p = strstr(out, "\"seqs\":[");
    cr_assert_not_null(p, "%s", out);
    p = strchr(p, '[');
    cr_assert(sscanf(p, "[%lld, %lld]", &s1, &s2) == 2 || sscanf(p, "[%lld,%lld]", &s1, &s2) == 2,
              "%s", out);
    cr_assert_eq(s2, s1 + 1, "the EXEC's writes are back to back: %s", out);
    const char *b = strstr(out, "\"balance\":");
    cr_assert_not_null(b, "%s", out);
    balance = atoll(b + 10 + (b[10] == ' '));
    cr_assert_eq(balance, 70, "the read in the EXEC saw both writes: %s", out);
    cr_assert_not_null(strstr(out, "CROSSSLOT"), "two merchants in one transaction: %s", out);
    cr_assert(strstr(out, "\"applied\": false") || strstr(out, "\"applied\":false"),
              "an aborted transaction applied something: %s", out);
}

Test(clients, redis_py_default_pipeline_is_one_exec, .init = up, .fini = down, .timeout = 120)
{
    char out[16384];
    run_client("redis_py_pipeline.py", "root", out, sizeof(out));
    assert_transaction(out);
}

Test(clients, ioredis_multi_is_one_exec, .init = up, .fini = down, .timeout = 120)
{
    char out[16384];
    run_client("ioredis_multi.js", "root", out, sizeof(out));
    cr_assert_not_null(strstr(out, "\"errors\":[]"), "%s", out);
    assert_transaction(out);
}
