/*
 * config.c — tallyd's command line and auth file (config.h).
 */
#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "limits.h"
#include "tally.h"

/* ---- numbers ------------------------------------------------------------ */

int config_parse_u64(const char *s, size_t len, uint64_t *out)
{
    if (len == 0)
        return -EINVAL;
    uint64_t v = 0;
    bool overflow = false;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -EINVAL;
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            overflow = true;
        else
            v = v * 10 + d;
    }
    if (overflow)
        return -ERANGE;
    *out = v;
    return 0;
}

int config_parse_retention(const char *s, int *out)
{
    static const struct {
        const char *name;
        int retention;
    } names[] = {
        {"keep", TALLY_RETAIN_KEEP},
        {"delete", TALLY_RETAIN_DELETE},
        {"archive", TALLY_RETAIN_ARCHIVE},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strcmp(s, names[i].name) == 0) {
            *out = names[i].retention;
            return 0;
        }
    return -EINVAL;
}

/* ---- command line --------------------------------------------------------- */

static const char config_usage_text[] =
    "usage: tallyd [options]\n"
    "  --dir DIR            data directory (default ./data, created if missing)\n"
    "  --port N             TCP port (default 7379)\n"
    "  --bind ADDR          address to listen on (default 127.0.0.1)\n"
    "  --shards N           shards when creating the directory (default: CPUs)\n"
    "  --sync always|none   flush every batch before acknowledging (default always);\n"
    "                       none is for benchmarks only: acknowledged writes can be lost\n"
    "  --auth-file FILE     tokens: lines `token merchant[,merchant...]` or `token *`\n"
    "  --insecure           allow a non-loopback --bind without an auth file\n"
    "  --maxclients N       connections served at once (default 10000)\n"
    "  --checkpoint-ms N    state checkpoint interval (default 30000)\n"
    "  --checkpoint-records N  ... or after this many records per shard, if sooner\n"
    "                       (default 1000000)\n"
    "  --segment-kib N      size of new log segment files, 64..1048576 (default 65536):\n"
    "                       the unit retention drops\n"
    "  --snapshot-every X   take a snapshot every X records per shard (a number), or\n"
    "                       every X seconds/minutes/hours (30s, 10m, 1h); default: only\n"
    "                       when SNAPSHOT is called\n"
    "  --retention R        log segments a snapshot covers: keep (default), delete,\n"
    "                       or archive (moved to --archive-dir)\n"
    "  --archive-dir DIR    where --retention archive moves them\n"
    "  --metrics [ADDR:]PORT  serve GET /metrics (Prometheus) over HTTP on ADDR (default\n"
    "                       127.0.0.1; [ADDR]:PORT for IPv6); a non-loopback ADDR needs\n"
    "                       --auth-file (then scrapes send an admin token as Bearer) or\n"
    "                       --insecure\n"
    "cluster mode (SPEC section 8; README \"Cluster\"):\n"
    "  --cluster ZK/NAME    join cluster NAME kept in ZooKeeper at ZK (host:port,...)\n"
    "  --node-id ID         this node's id in the cluster's map\n"
    "  --advertise HOST:PORT  the address the map gives for this node (checked)\n"
    "  --ack replicated|local  answer writes once a replica has them too (default),\n"
    "                       or after the local flush\n"
    "  --zk-session-ms N    ZooKeeper session timeout, 1000..60000 (default 6000)\n"
    "  --repl-secret FILE   the replication secret (default: the cluster's, in ZooKeeper)\n"
    "  --repl-bind ADDR     address of the replication port (default: --bind)\n"
    "  --help\n";

const char *config_usage(void) { return config_usage_text; }

void config_defaults(config *c)
{
    memset(c, 0, sizeof(*c));
    snprintf(c->dir, sizeof(c->dir), "./data");
    snprintf(c->bind, sizeof(c->bind), "127.0.0.1");
    snprintf(c->metrics_bind, sizeof(c->metrics_bind), "127.0.0.1");
    c->port = 7379;
    c->sync = TALLY_SYNC_ALWAYS;
    c->max_clients = LIMIT_CONNECTIONS_MAX;
}

static int config_number(const char *name, const char *v, uint64_t lo, uint64_t hi,
                         uint64_t *out, char *err, size_t cap)
{
    uint64_t n;
    if (config_parse_u64(v, strlen(v), &n) != 0 || n < lo || n > hi) {
        snprintf(err, cap, "%s must be an integer %llu..%llu, got '%s'", name,
                 (unsigned long long)lo, (unsigned long long)hi, v);
        return -EINVAL;
    }
    *out = n;
    return 0;
}

static int config_string(const char *name, const char *v, char *dst, size_t dst_cap, char *err,
                         size_t cap)
{
    size_t n = strlen(v);
    if (n == 0 || n >= dst_cap) {
        snprintf(err, cap, "%s must be 1..%zu bytes", name, dst_cap - 1);
        return -EINVAL;
    }
    memcpy(dst, v, n + 1);
    return 0;
}

/* --snapshot-every: a record count, or a time with s, m or h. */
static int config_every(config *c, const char *v, char *err, size_t cap)
{
    size_t n = strlen(v);
    uint64_t unit_ms = 0, x = 0;
    if (n > 1 && (v[n - 1] == 's' || v[n - 1] == 'm' || v[n - 1] == 'h'))
        unit_ms = v[n - 1] == 's' ? 1000 : v[n - 1] == 'm' ? 60000 : 3600000;
    size_t digits = unit_ms ? n - 1 : n;
    if (config_parse_u64(v, digits, &x) != 0 || x == 0 || x > 1000000000000ull) {
        snprintf(err, cap, "--snapshot-every must be a record count or a time like 30s, 10m, "
                           "1h, got '%s'", v);
        return -EINVAL;
    }
    if (unit_ms)
        c->snapshot_every_ms = x * unit_ms;
    else
        c->snapshot_every_records = x;
    return 0;
}

/* --metrics [ADDR:]PORT, [ADDR]:PORT for an IPv6 address. */
static int config_metrics(config *c, const char *v, char *err, size_t cap)
{
    const char *colon = strrchr(v, ':');
    const char *addr = v, *port = v;
    size_t addr_len = 0;
    if (colon) {
        port = colon + 1;
        addr_len = (size_t)(colon - v);
        if (v[0] == '[' && addr_len >= 2 && v[addr_len - 1] == ']') {
            addr = v + 1;
            addr_len -= 2;
        } else if (memchr(v, ':', addr_len)) {
            addr_len = 0; /* an IPv6 address without brackets: refused below */
        }
        if (addr_len == 0 || addr_len >= sizeof(c->metrics_bind)) {
            snprintf(err, cap, "--metrics must be [ADDR:]PORT ([ADDR]:PORT for IPv6), got '%s'",
                     v);
            return -EINVAL;
        }
    }
    uint64_t n;
    int rc = config_number("--metrics port", port, 1, 65535, &n, err, cap);
    if (rc < 0)
        return rc;
    if (addr_len) {
        memcpy(c->metrics_bind, addr, addr_len);
        c->metrics_bind[addr_len] = 0;
    }
    c->metrics_port = (uint16_t)n;
    return 0;
}

/* The cluster's options (each takes a value). */
static int config_cluster_option(config *c, const char *opt, const char *val, char *err,
                                 size_t cap)
{
    uint64_t n = 0;
    int rc = 0;
    if (strcmp(opt, "--cluster") == 0) {
        rc = config_string(opt, val, c->cluster, sizeof(c->cluster), err, cap);
        if (rc == 0 && (!strchr(val, '/') || strrchr(val, '/')[1] == 0 || val[0] == '/')) {
            snprintf(err, cap, "--cluster must be ZK_HOSTS/NAME (host:port,...), got '%s'", val);
            rc = -EINVAL;
        }
    } else if (strcmp(opt, "--node-id") == 0) {
        rc = config_string(opt, val, c->node_id, sizeof(c->node_id), err, cap);
    } else if (strcmp(opt, "--advertise") == 0) {
        const char *colon = strrchr(val, ':');
        rc = config_string(opt, val, c->advertise, sizeof(c->advertise), err, cap);
        if (rc == 0 && (!colon || colon == val ||
                        config_number("--advertise port", colon + 1, 1, 65535, &n, err, cap)))
            rc = -EINVAL;
        if (rc < 0 && !err[0])
            snprintf(err, cap, "--advertise must be HOST:PORT, got '%s'", val);
    } else if (strcmp(opt, "--ack") == 0) {
        c->ack_local = strcmp(val, "local") == 0;
        if (!c->ack_local && strcmp(val, "replicated") != 0) {
            snprintf(err, cap, "--ack must be replicated or local, got '%s'", val);
            rc = -EINVAL;
        }
    } else if (strcmp(opt, "--zk-session-ms") == 0) {
        rc = config_number(opt, val, LIMIT_ZK_SESSION_MS_MIN, LIMIT_ZK_SESSION_MS_MAX, &n, err,
                           cap);
        c->zk_session_ms = (uint32_t)n;
    } else if (strcmp(opt, "--repl-secret") == 0) {
        rc = config_string(opt, val, c->repl_secret, sizeof(c->repl_secret), err, cap);
    } else if (strcmp(opt, "--repl-bind") == 0) {
        rc = config_string(opt, val, c->repl_bind, sizeof(c->repl_bind), err, cap);
    } else {
        snprintf(err, cap, "unknown option %s (try --help)", opt);
        rc = -EINVAL;
    }
    return rc;
}

/* What cluster mode needs, and what it excludes. */
static int config_cluster_check(const config *c, char *err, size_t cap)
{
    bool any = c->node_id[0] || c->advertise[0] || c->ack_local || c->zk_session_ms ||
               c->repl_secret[0] || c->repl_bind[0];
    if (!c->cluster[0] && any) {
        snprintf(err, cap, "--node-id, --advertise, --ack, --zk-session-ms, --repl-secret and "
                           "--repl-bind need --cluster ZK_HOSTS/NAME");
        return -EINVAL;
    }
    if (c->cluster[0] && (!c->node_id[0] || !c->advertise[0])) {
        snprintf(err, cap, "--cluster needs --node-id ID and --advertise HOST:PORT");
        return -EINVAL;
    }
    if (c->cluster[0] && c->shards) {
        snprintf(err, cap, "--shards does not apply with --cluster: each shard group this node "
                           "serves is one shard (more groups: tally cluster create --groups)");
        return -EINVAL;
    }
    return 0;
}

/* The options that take a value: anything else that is not a flag is
 * unknown, said as such before any talk of a missing value. */
static bool config_takes_value(const char *opt)
{
    static const char *const names[] = {
        "--dir",           "--bind",          "--auth-file",          "--port",
        "--shards",        "--maxclients",    "--checkpoint-ms",      "--checkpoint-records",
        "--segment-kib",   "--snapshot-every", "--retention",         "--archive-dir",
        "--sync",          "--metrics",       "--cluster",            "--node-id",
        "--advertise",     "--ack",           "--zk-session-ms",      "--repl-secret",
        "--repl-bind",
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strcmp(opt, names[i]) == 0)
            return true;
    return false;
}

/* One option with its value; *used is how many argv slots it took. */
static int config_option(config *c, const char *opt, const char *val, int *used, char *err,
                         size_t cap)
{
    uint64_t n = 0;
    int rc = 0;
    *used = 2;
    if (strcmp(opt, "--help") == 0 || strcmp(opt, "-h") == 0) {
        c->help = true;
        *used = 1;
        return 0;
    }
    if (strcmp(opt, "--insecure") == 0) {
        c->insecure = true;
        *used = 1;
        return 0;
    }
    if (!config_takes_value(opt)) {
        snprintf(err, cap, "unknown option %s (try --help)", opt);
        return -EINVAL;
    }
    if (!val) {
        snprintf(err, cap, "%s needs a value", opt);
        return -EINVAL;
    }
    if (strcmp(opt, "--dir") == 0) {
        rc = config_string(opt, val, c->dir, sizeof(c->dir), err, cap);
    } else if (strcmp(opt, "--bind") == 0) {
        rc = config_string(opt, val, c->bind, sizeof(c->bind), err, cap);
    } else if (strcmp(opt, "--auth-file") == 0) {
        rc = config_string(opt, val, c->auth_file, sizeof(c->auth_file), err, cap);
    } else if (strcmp(opt, "--port") == 0) {
        rc = config_number(opt, val, 1, 65535, &n, err, cap);
        c->port = (uint16_t)n;
    } else if (strcmp(opt, "--shards") == 0) {
        rc = config_number(opt, val, 1, LIMIT_SHARDS_MAX, &n, err, cap);
        c->shards = (uint32_t)n;
    } else if (strcmp(opt, "--maxclients") == 0) {
        rc = config_number(opt, val, 1, LIMIT_CONNECTIONS_MAX, &n, err, cap);
        c->max_clients = (uint32_t)n;
    } else if (strcmp(opt, "--checkpoint-ms") == 0) {
        rc = config_number(opt, val, 1, 3600000, &n, err, cap);
        c->checkpoint_ms = (uint32_t)n;
    } else if (strcmp(opt, "--checkpoint-records") == 0) {
        rc = config_number(opt, val, 1, 4000000000u, &n, err, cap);
        c->checkpoint_records = (uint32_t)n;
    } else if (strcmp(opt, "--segment-kib") == 0) {
        rc = config_number(opt, val, LIMIT_SEGMENT_BYTES_MIN / 1024, 1048576, &n, err, cap);
        c->segment_bytes = (uint32_t)(n * 1024);
    } else if (strcmp(opt, "--snapshot-every") == 0) {
        rc = config_every(c, val, err, cap);
    } else if (strcmp(opt, "--retention") == 0) {
        rc = config_parse_retention(val, &c->retention);
        if (rc < 0)
            snprintf(err, cap, "--retention must be keep, delete or archive, got '%s'", val);
    } else if (strcmp(opt, "--archive-dir") == 0) {
        rc = config_string(opt, val, c->archive_dir, sizeof(c->archive_dir), err, cap);
    } else if (strcmp(opt, "--metrics") == 0) {
        rc = config_metrics(c, val, err, cap);
    } else if (strncmp(opt, "--cluster", 9) == 0 || strcmp(opt, "--node-id") == 0 ||
               strcmp(opt, "--advertise") == 0 || strcmp(opt, "--ack") == 0 ||
               strncmp(opt, "--zk-", 5) == 0 || strncmp(opt, "--repl-", 7) == 0) {
        rc = config_cluster_option(c, opt, val, err, cap);
    } else if (strcmp(opt, "--sync") == 0) {
        if (strcmp(val, "always") == 0)
            c->sync = TALLY_SYNC_ALWAYS;
        else if (strcmp(val, "none") == 0)
            c->sync = TALLY_SYNC_NONE;
        else {
            snprintf(err, cap, "--sync must be always or none, got '%s'", val);
            rc = -EINVAL;
        }
    } else {
        assert(0 && "config_takes_value() names an option config_option() does not parse");
        rc = -EINVAL;
    }
    return rc;
}

int config_parse(config *c, int argc, char **argv, char *err, size_t cap)
{
    for (int i = 1; i < argc;) {
        char opt[64];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        const char *eq = strchr(argv[i], '=');
        int used;
        int rc;
        if (eq && strncmp(argv[i], "--", 2) == 0 && (size_t)(eq - argv[i]) < sizeof(opt)) {
            /* --opt=value */
            memcpy(opt, argv[i], (size_t)(eq - argv[i]));
            opt[eq - argv[i]] = 0;
            rc = config_option(c, opt, eq + 1, &used, err, cap);
            used = 1;
        } else {
            rc = config_option(c, argv[i], val, &used, err, cap);
        }
        if (rc < 0)
            return rc;
        i += used;
    }
    if (c->retention == TALLY_RETAIN_ARCHIVE && !c->archive_dir[0]) {
        snprintf(err, cap, "--retention archive needs --archive-dir DIR");
        return -EINVAL;
    }
    return config_cluster_check(c, err, cap);
}

bool config_is_loopback(const char *addr)
{
    if (strcmp(addr, "localhost") == 0)
        return true;
    struct in_addr a4;
    if (inet_pton(AF_INET, addr, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    struct in6_addr a6;
    if (inet_pton(AF_INET6, addr, &a6) == 1)
        return memcmp(&a6, &in6addr_loopback, sizeof(a6)) == 0;
    return false;
}

/* ---- auth file ------------------------------------------------------------ */

static int config_cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int config_cmp_token(const void *a, const void *b)
{
    const config_token *x = a, *y = b;
    uint32_t n = x->token_len < y->token_len ? x->token_len : y->token_len;
    int c = memcmp(x->token, y->token, n);
    if (c != 0)
        return c;
    return x->token_len < y->token_len ? -1 : x->token_len > y->token_len;
}

void config_auth_free(config_auth *a)
{
    if (!a)
        return;
    for (uint32_t i = 0; i < a->tokens_count; i++)
        free(a->tokens[i].merchants);
    free(a->tokens);
    free(a);
}

/* Parses "m1,m2,..." into t->merchants (sorted). */
static int config_auth_merchants(config_token *t, char *list, char *err, size_t cap,
                                 unsigned line)
{
    uint32_t room = 0;
    char *save = NULL;
    for (char *p = strtok_r(list, ",", &save); p; p = strtok_r(NULL, ",", &save)) {
        uint64_t m;
        if (config_parse_u64(p, strlen(p), &m) != 0 || m == 0) {
            snprintf(err, cap, "line %u: merchant '%s' is not 1..2^64-1", line, p);
            return -EINVAL;
        }
        if (t->merchants_count == CONFIG_TOKEN_MERCHANTS_MAX) {
            snprintf(err, cap, "line %u: more than %u merchants", line,
                     CONFIG_TOKEN_MERCHANTS_MAX);
            return -EINVAL;
        }
        if (t->merchants_count == room) {
            room = room ? room * 2 : 8;
            uint64_t *n = realloc(t->merchants, room * sizeof(*n));
            if (!n)
                return -ENOMEM;
            t->merchants = n;
        }
        t->merchants[t->merchants_count++] = m;
    }
    if (t->merchants_count == 0) {
        snprintf(err, cap, "line %u: no merchants (use * for admin)", line);
        return -EINVAL;
    }
    qsort(t->merchants, t->merchants_count, sizeof(uint64_t), config_cmp_u64);
    return 0;
}

/* Parses one non-blank line into t. */
static int config_auth_line(char *line, config_token *t, char *err, size_t cap, unsigned no)
{
    char *save = NULL;
    char *tok = strtok_r(line, " \t", &save);
    char *rest = strtok_r(NULL, " \t", &save);
    char *extra = strtok_r(NULL, " \t", &save);
    if (!tok || !rest || extra) {
        snprintf(err, cap, "line %u: expected `token merchant[,merchant...]` or `token *`", no);
        return -EINVAL;
    }
    size_t n = strlen(tok);
    if (n > CONFIG_TOKEN_BYTES_MAX) {
        snprintf(err, cap, "line %u: token longer than %d bytes", no, CONFIG_TOKEN_BYTES_MAX);
        return -EINVAL;
    }
    memcpy(t->token, tok, n + 1);
    t->token_len = (uint32_t)n;
    if (strcmp(rest, "*") == 0) {
        t->admin = true;
        return 0;
    }
    return config_auth_merchants(t, rest, err, cap, no);
}

int config_auth_load(const char *path, config_auth **out, char *err, size_t cap)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        int e = errno;
        snprintf(err, cap, "%s: %s", path, strerror(e));
        return -e;
    }
    config_auth *a = calloc(1, sizeof(*a));
    if (!a) {
        fclose(f);
        return -ENOMEM;
    }
    uint32_t room = 0;
    int rc = 0;
    char *line = NULL;
    size_t line_cap = 0;
    unsigned no = 0;
    while (rc == 0 && getline(&line, &line_cap, f) >= 0) {
        no++;
        line[strcspn(line, "\r\n")] = 0;
        char *p = line + strspn(line, " \t");
        if (*p == 0 || *p == '#')
            continue;
        if (a->tokens_count == CONFIG_TOKENS_MAX) {
            snprintf(err, cap, "%s: more than %u tokens", path, CONFIG_TOKENS_MAX);
            rc = -EINVAL;
            break;
        }
        if (a->tokens_count == room) {
            room = room ? room * 2 : 16;
            config_token *n = realloc(a->tokens, room * sizeof(*n));
            if (!n) {
                rc = -ENOMEM;
                break;
            }
            a->tokens = n;
        }
        config_token *t = &a->tokens[a->tokens_count];
        memset(t, 0, sizeof(*t));
        a->tokens_count++;
        rc = config_auth_line(p, t, err, cap, no);
    }
    free(line);
    fclose(f);
    if (rc == 0 && a->tokens_count == 0) {
        snprintf(err, cap, "%s: no tokens", path);
        rc = -EINVAL;
    }
    if (rc == 0) {
        qsort(a->tokens, a->tokens_count, sizeof(*a->tokens), config_cmp_token);
        for (uint32_t i = 1; rc == 0 && i < a->tokens_count; i++)
            if (config_cmp_token(&a->tokens[i - 1], &a->tokens[i]) == 0) {
                snprintf(err, cap, "%s: a token appears twice", path);
                rc = -EINVAL;
            }
    }
    if (rc < 0) {
        config_auth_free(a);
        return rc;
    }
    *out = a;
    return 0;
}

const config_token *config_auth_find(const config_auth *a, const char *token, size_t len)
{
    if (!a || len == 0 || len > CONFIG_TOKEN_BYTES_MAX)
        return NULL;
    config_token key;
    memcpy(key.token, token, len);
    key.token_len = (uint32_t)len;
    return bsearch(&key, a->tokens, a->tokens_count, sizeof(*a->tokens), config_cmp_token);
}

bool config_token_allows(const config_token *t, uint64_t merchant)
{
    if (t->admin)
        return true;
    return bsearch(&merchant, t->merchants, t->merchants_count, sizeof(uint64_t),
                   config_cmp_u64) != NULL;
}
