/*
 * tally.c — the offline tool (SPEC §6): works on a data directory while no
 * tallyd has it open (the directory's LOCK enforces that).
 *
 *   tally verify DIR                 checksums, chain, snapshots, state == replay
 *   tally dump DIR [--merchant m] [--refusals]   entries as JSON lines
 *   tally import DIR FILE|-         load a dump (JSON lines) or CSV, all or nothing
 *   tally stats DIR                  per-shard and per-kind counts, sizes
 *   tally snapshot DIR [--retention keep|delete|archive] [--archive-dir D]
 *   tally cluster create|status ZK_HOSTS/NAME ...   (engine/cluster_admin.h)
 *   tally follow HOST:PORT [--merchant m] [--cursor FILE] ...   (engine/follow.h: a
 *                                    client of a running tallyd, not of a directory)
 *
 * Exit status: 0 ok, 1 a fault was found (verify) or an error, 2 usage.
 */
#include <dirent.h>
#include <stdbool.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cluster_admin.h"
#include "config.h"
#include "export.h"
#include "follow.h"
#include "tally.h"

/* ---- output helpers ----------------------------------------------------- */

static uint64_t tool_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Engine reports (recovery, torn tails, verify progress) go to stderr. */
static void tool_log(void *ctx, int level, const char *msg)
{
    (void)ctx;
    static const char *names[] = {"info", "warning", "error"};
    fprintf(stderr, "tally: %s: %s\n", names[level < 0 ? 0 : level > 2 ? 2 : level], msg);
}

static int tool_open(const char *dir, tally **out)
{
    tally_options o = {.dir = dir, .read_only = true, .log = tool_log};
    int rc = tally_open(&o, out);
    if (rc < 0)
        fprintf(stderr, "tally: cannot open %s: %s\n", dir,
                rc == TALLY_ELOCKED ? "in use by a running tallyd (stop it first)"
                                    : tally_strerror(rc));
    return rc;
}

/* ---- verify ------------------------------------------------------------- */

static int tool_verify(const char *dir)
{
    tally *t;
    if (tool_open(dir, &t) < 0)
        return 1;
    uint64_t t0 = tool_mono_ms();
    int bad = 0;
    for (uint32_t i = 0; i < tally_shard_count(t); i++) {
        tally_shard_stats st;
        tally_shard_stats_get(t, i, &st);
        if (st.status != 0) {
            printf("shard %u: FAULT: %s\n", i, st.status_message);
            bad = 1;
        }
    }
    char msg[512] = "";
    int rc = bad ? 0 : tally_verify_full(t, msg, sizeof(msg));
    if (rc < 0) {
        printf("FAULT: %s\n", msg);
        bad = 1;
    } else if (!bad) {
        uint64_t records = 0;
        for (uint32_t i = 0; i < tally_shard_count(t); i++) {
            tally_shard_stats st;
            tally_shard_stats_get(t, i, &st);
            records += st.durable_seq;
        }
        printf("ok: %u shards, %" PRIu64 " records, checksums and chain valid, "
               "state equals the replay of the log (%.1f s)\n",
               tally_shard_count(t), records, (double)(tool_mono_ms() - t0) / 1000.0);
    }
    tally_close(t);
    return bad;
}

/* ---- dump --------------------------------------------------------------- */

typedef struct tool_dump {
    uint64_t merchant; /* 0 = all */
    int refusals;      /* also print remembered refusals */
    uint64_t printed;
} tool_dump;

static int tool_dump_one(void *ctx, const tally_entry *e, bool refusal, int status)
{
    tool_dump *d = ctx;
    if (d->merchant && e->merchant != d->merchant)
        return 0;
    if (refusal && !d->refusals)
        return 0;
    char line[EXPORT_LINE_BYTES_MAX];
    size_t n = export_json(line, sizeof(line), e, refusal, status);
    fwrite(line, 1, n, stdout);
    d->printed++;
    return ferror(stdout) ? -EIO : 0;
}

static int tool_dump_run(const char *dir, uint64_t merchant, int refusals)
{
    tally *t;
    if (tool_open(dir, &t) < 0)
        return 1;
    tool_dump d = {.merchant = merchant, .refusals = refusals};
    uint32_t first = 0, last = tally_shard_count(t);
    if (merchant) {
        first = tally_shard_of(t, merchant);
        last = first + 1;
    }
    int rc = 0;
    if (merchant)
        for (uint32_t i = first; i < last && rc == 0; i++)
            rc = tally_scan(t, i, 0, tool_dump_one, &d);
    else
        rc = tally_scan_all(t, tool_dump_one, &d);
    if (rc < 0)
        fprintf(stderr, "tally: dump stopped: %s\n", tally_strerror(rc));
    tally_close(t);
    return rc < 0;
}

/* ---- stats -------------------------------------------------------------- */

typedef struct tool_stats {
    uint64_t kinds[TALLY_KIND_COUNT];
    uint64_t refusals;
    uint64_t *scanned;       /* all shards so far, for progress */
    uint64_t *last_report_ms;
} tool_stats;

static int tool_stats_one(void *ctx, const tally_entry *e, bool refusal, int status)
{
    (void)status;
    tool_stats *s = ctx;
    if (refusal)
        s->refusals++;
    else if (e->kind < TALLY_KIND_COUNT)
        s->kinds[e->kind]++;
    if ((++*s->scanned & 0xffff) == 0 && tool_mono_ms() - *s->last_report_ms > 1000) {
        *s->last_report_ms = tool_mono_ms();
        fprintf(stderr, "tally: stats: %" PRIu64 " records scanned\n", *s->scanned);
    }
    return 0;
}

/* Bytes of regular files under path (one level of shard directories). */
static uint64_t tool_du(const char *path)
{
    DIR *d = opendir(path);
    if (!d)
        return 0;
    uint64_t sum = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        char p[4400];
        snprintf(p, sizeof(p), "%s/%s", path, de->d_name);
        struct stat st;
        if (lstat(p, &st) != 0)
            continue;
        if (S_ISDIR(st.st_mode))
            sum += tool_du(p);
        else if (S_ISREG(st.st_mode))
            sum += (uint64_t)st.st_blocks * 512u;
    }
    closedir(d);
    return sum;
}

/* Entries per kind and remembered refusals, as one line. */
static void tool_stats_kinds(const char *indent, const tool_stats *s)
{
    printf("%sentries", indent);
    for (int k = 1; k < TALLY_KIND_COUNT; k++)
        printf(" %s %" PRIu64, tally_kind_name(k), s->kinds[k]);
    printf("; refusals remembered %" PRIu64 "\n", s->refusals);
}

/* Per shard: seqs, log start, snapshot, status, entries per kind, disk
 * use; then the totals. */
static int tool_stats_run(const char *dir)
{
    tally *t;
    if (tool_open(dir, &t) < 0)
        return 1;
    uint64_t scanned = 0, last_report_ms = tool_mono_ms();
    tool_stats total = {0};
    printf("shards: %u\n", tally_shard_count(t));
    int rc = 0;
    for (uint32_t i = 0; i < tally_shard_count(t) && rc == 0; i++) {
        tally_shard_stats st;
        tally_shard_stats_get(t, i, &st);
        tool_stats s = {.scanned = &scanned, .last_report_ms = &last_report_ms};
        rc = tally_scan(t, i, 0, tool_stats_one, &s);
        char path[4200];
        snprintf(path, sizeof(path), "%s/shard-%03u", dir, i);
        printf("shard %u: seq %" PRIu64 ", checkpoint seq %" PRIu64 ", log from seq %" PRIu64
               ", snapshot seq %" PRIu64 " (%" PRIu64 " bytes), disk bytes %" PRIu64
               ", status %s\n",
               i, st.durable_seq, st.checkpoint_seq, st.log_first_seq, st.snapshot_seq,
               st.snapshot_bytes, tool_du(path), st.status ? st.status_message : "ok");
        tool_stats_kinds("  ", &s);
        for (int k = 0; k < TALLY_KIND_COUNT; k++)
            total.kinds[k] += s.kinds[k];
        total.refusals += s.refusals;
    }
    printf("total: ");
    tool_stats_kinds("", &total);
    printf("disk bytes: %" PRIu64 "\n", tool_du(dir));
    if (rc < 0)
        fprintf(stderr, "tally: stats stopped: %s\n", tally_strerror(rc));
    tally_close(t);
    return rc < 0;
}

/* ---- snapshot ------------------------------------------------------------- */

/* Opens the directory as tallyd would (recovering every shard, holding its
 * LOCK), takes a snapshot of every shard and applies the retention. */
static int tool_snapshot(const char *dir, int retention, const char *archive)
{
    tally_options o = {.dir = dir, .log = tool_log, .retention = retention,
                       .archive_dir = archive};
    tally *t;
    int rc = tally_open(&o, &t);
    if (rc < 0) {
        fprintf(stderr, "tally: cannot open %s: %s\n", dir,
                rc == TALLY_ELOCKED ? "in use by a running tallyd (send it SNAPSHOT instead)"
                                    : tally_strerror(rc));
        return 1;
    }
    uint64_t t0 = tool_mono_ms();
    tally_request r;
    memset(&r, 0, sizeof(r));
    r.op = TALLY_OP_SNAPSHOT;
    rc = tally_call(t, &r);
    if (rc != 0) {
        fprintf(stderr, "tally: snapshot failed: %s\n",
                r.res.message[0] ? r.res.message : tally_strerror(rc));
    } else {
        for (uint32_t i = 0; i < tally_shard_count(t); i++) {
            tally_shard_stats st;
            tally_shard_stats_get(t, i, &st);
            printf("shard %u: snapshot at seq %" PRIu64 ", %" PRIu64 " bytes; log from seq %" PRIu64
                   "\n",
                   i, st.snapshot_seq, st.snapshot_bytes, st.log_first_seq);
        }
        printf("ok (%.1f s)\n", (double)(tool_mono_ms() - t0) / 1000.0);
    }
    tally_close(t);
    return rc != 0;
}

/* ---- import --------------------------------------------------------------- */

/* The longest line (a CSV row with its quoted newlines) read. */
#define TOOL_IMPORT_LINE_MAX (64u << 10)

typedef struct tool_import {
    FILE *in;
    char *buf;
    size_t cap;
    uint64_t line;      /* lines read */
    uint64_t bytes;     /* bytes read */
    char *row;          /* a CSV row being joined */
    size_t row_len, row_cap;
} tool_import;

/* The next line (its newline included), or NULL at the end. */
static const char *tool_import_line(tool_import *r, size_t *len)
{
    ssize_t n = getline(&r->buf, &r->cap, r->in);
    if (n < 0)
        return NULL;
    r->line++;
    r->bytes += (uint64_t)n;
    *len = (size_t)n;
    return r->buf;
}

static bool tool_blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n')
            return false;
    return true;
}

static int tool_import_append(tool_import *r, const char *s, size_t n)
{
    if (r->row_len + n + 1 > r->row_cap) {
        size_t cap = (r->row_len + n + 1) * 2;
        char *v = realloc(r->row, cap);
        if (!v)
            return -ENOMEM;
        r->row = v;
        r->row_cap = cap;
    }
    memcpy(r->row + r->row_len, s, n);
    r->row_len += n;
    return 0;
}

static int tool_import_run(const char *dir, const char *file, uint32_t shards)
{
    tool_import r = {.in = strcmp(file, "-") == 0 ? stdin : fopen(file, "r")};
    if (!r.in) {
        fprintf(stderr, "tally: import: cannot read %s: %s\n", file, strerror(errno));
        return 1;
    }
    struct stat fst;
    uint64_t total = fstat(fileno(r.in), &fst) == 0 && S_ISREG(fst.st_mode) ? (uint64_t)fst.st_size
                                                                           : 0;
    tally_options o = {.dir = dir, .log = tool_log, .offline = true, .shards = shards};
    tally *t;
    int rc = tally_open(&o, &t);
    if (rc < 0) {
        fprintf(stderr, "tally: cannot open %s: %s\n", dir,
                rc == TALLY_ELOCKED ? "in use by a running tallyd (stop it first)"
                                    : tally_strerror(rc));
        if (r.in != stdin)
            fclose(r.in);
        return 1;
    }
    char msg[512];
    tally_import *im;
    rc = tally_import_begin(t, &im, msg, sizeof(msg));
    if (rc < 0) {
        fprintf(stderr, "tally: import: %s\n", msg);
        tally_close(t);
        if (r.in != stdin)
            fclose(r.in);
        return 1;
    }
    uint64_t t0 = tool_mono_ms(), shown = t0, at = 0;
    enum { UNKNOWN, JSON, CSV } format = UNKNOWN;
    export_csv csv;
    tally_import_item it;
    const char *text;
    size_t len;
    rc = 0;
    while (rc == 0 && (text = tool_import_line(&r, &len)) != NULL) {
        at = r.line;
        if (len > TOOL_IMPORT_LINE_MAX) {
            snprintf(msg, sizeof(msg), "longer than %u bytes", TOOL_IMPORT_LINE_MAX);
            rc = TALLY_ESYNTAX;
            break;
        }
        if (tool_blank(text, len))
            continue;
        if (format == UNKNOWN) {
            size_t i = 0;
            while (text[i] == ' ' || text[i] == '\t')
                i++;
            format = text[i] == '{' ? JSON : CSV;
            if (format == CSV) {
                rc = export_csv_header(text, len, &csv, msg, sizeof(msg));
                continue;
            }
        }
        if (format == JSON) {
            rc = export_parse_json(text, len, &it, msg, sizeof(msg));
        } else {
            /* A quoted cell may hold newlines: join lines until it closes. */
            r.row_len = 0;
            rc = tool_import_append(&r, text, len);
            while (rc == 0 && export_csv_open_quote(r.row, r.row_len)) {
                if (r.row_len > TOOL_IMPORT_LINE_MAX || !(text = tool_import_line(&r, &len))) {
                    snprintf(msg, sizeof(msg), "a quoted cell is not closed");
                    rc = TALLY_ESYNTAX;
                    break;
                }
                rc = tool_import_append(&r, text, len);
            }
            if (rc == 0)
                rc = export_parse_csv(&csv, r.row, r.row_len, &it, msg, sizeof(msg));
        }
        if (rc == 0) {
            it.line = at;
            rc = tally_import_add(im, &it, msg, sizeof(msg));
            if (rc < 0)
                at = 0; /* the message names the line */
        }
        if ((r.line & 0xffff) == 0 && tool_mono_ms() - shown >= 1000) {
            shown = tool_mono_ms();
            double s = (double)(shown - t0) / 1000.0;
            if (total)
                fprintf(stderr, "tally: import: %" PRIu64 " lines, %.0f lines/s, %.0f%%\n",
                        r.line, (double)r.line / s, 100.0 * (double)r.bytes / (double)total);
            else
                fprintf(stderr, "tally: import: %" PRIu64 " lines, %.0f lines/s\n", r.line,
                        (double)r.line / s);
        }
    }
    if (rc == 0 && ferror(r.in)) {
        snprintf(msg, sizeof(msg), "reading %s: %s", file, strerror(errno));
        rc = -EIO;
        at = 0;
    }
    if (r.in != stdin)
        fclose(r.in);
    free(r.buf);
    free(r.row);
    tally_import_stats st;
    if (rc == 0) {
        rc = tally_import_commit(im, &st, msg, sizeof(msg));
        at = 0;
    }
    if (rc < 0 && at)
        fprintf(stderr, "tally: import: line %" PRIu64 ": %s\n", at, msg);
    else if (rc < 0)
        fprintf(stderr, "tally: import: %s\n", msg);
    if (rc < 0) {
        int arc = tally_import_abort(im);
        fprintf(stderr, "tally: import: nothing was imported%s\n",
                arc < 0 ? " (the undo failed: it is done when the directory is next opened)"
                        : "");
        tally_close(t);
        return 1;
    }
    double s = (double)(tool_mono_ms() - t0) / 1000.0;
    printf("imported %" PRIu64 " lines: %" PRIu64 " applied, %" PRIu64
           " already there; %" PRIu64 " records, %u merchants, %.1f s (%.0f lines/s)\n",
           st.lines, st.applied, st.present, st.records, st.merchants, s,
           s > 0 ? (double)st.lines / s : 0.0);
    tally_close(t);
    return 0;
}

/* ---- main --------------------------------------------------------------- */

static const char tool_usage_text[] =
    "usage: tally verify DIR\n"
    "       tally dump DIR [--merchant M] [--refusals]\n"
    "       tally import DIR FILE|- [--shards N]   JSON lines as dump writes them, or CSV\n"
    "                                with a header; all or nothing (N: a new DIR's shards)\n"
    "       tally stats DIR\n"
    "       tally snapshot DIR [--retention keep|delete|archive] [--archive-dir D]\n";
static const char tool_usage_notes[] =
    "       tally --help\n"
    "Options may come before or after DIR.  The directory must not be open in a\n"
    "running tallyd (use its SNAPSHOT and VERIFY commands instead).  follow talks to a\n"
    "running tallyd.  The cluster commands work on the cluster's map in ZooKeeper.\n";

/* The cluster's commands are engine/cluster_admin.c's. */
static void tool_usage(FILE *f)
{
    fputs(tool_usage_text, f);
    fputs(follow_usage, f);
    fputs(cluster_admin_usage, f);
    fputs(tool_usage_notes, f);
}

static int tool_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* A usage error: what is wrong, then how to ask for help; exit status 2. */
static int tool_usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("tally: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs(" (tally --help shows the usage)\n", stderr);
    return 2;
}

/* The command line, options anywhere after the command. */
typedef struct tool_args {
    const char *cmd, *dir;
    uint64_t merchant;  /* dump --merchant, 0: all */
    int refusals;       /* dump --refusals */
    int retention;      /* snapshot --retention */
    const char *archive; /* snapshot --archive-dir */
    const char *file;    /* import FILE|- */
    uint32_t shards;     /* import --shards (a new directory) */
} tool_args;

/* Which options each command takes. */
static bool tool_takes(const char *cmd, const char *opt)
{
    if (strcmp(cmd, "dump") == 0)
        return strcmp(opt, "--merchant") == 0 || strcmp(opt, "--refusals") == 0;
    if (strcmp(cmd, "snapshot") == 0)
        return strcmp(opt, "--retention") == 0 || strcmp(opt, "--archive-dir") == 0;
    if (strcmp(cmd, "import") == 0)
        return strcmp(opt, "--shards") == 0;
    return false;
}

/* One option with its value (argv[*i + 1]); advances *i past what it used.
 * 0, or the exit status of a usage error. */
static int tool_option(tool_args *a, int argc, char **argv, int *i)
{
    const char *opt = argv[*i];
    if (!tool_takes(a->cmd, opt))
        return strncmp(opt, "--", 2) == 0 ? tool_usage_error("unknown option %s", opt)
                                          : tool_usage_error("unexpected argument '%s'", opt);
    if (strcmp(opt, "--refusals") == 0) {
        a->refusals = 1;
        return 0;
    }
    if (*i + 1 >= argc)
        return tool_usage_error("%s needs a value", opt);
    const char *v = argv[++*i];
    if (strcmp(opt, "--merchant") == 0) {
        if (config_parse_u64(v, strlen(v), &a->merchant) != 0 || a->merchant == 0)
            return tool_usage_error("--merchant must be 1..18446744073709551615, got '%s'", v);
    } else if (strcmp(opt, "--shards") == 0) {
        uint64_t n;
        if (config_parse_u64(v, strlen(v), &n) != 0 || n < 1 || n > LIMIT_SHARDS_MAX)
            return tool_usage_error("--shards must be 1..%d, got '%s'", LIMIT_SHARDS_MAX, v);
        a->shards = (uint32_t)n;
    } else if (strcmp(opt, "--retention") == 0) {
        if (config_parse_retention(v, &a->retention) < 0)
            return tool_usage_error("--retention must be keep, delete or archive, got '%s'", v);
    } else {
        a->archive = v;
    }
    return 0;
}

static int tool_parse(tool_args *a, int argc, char **argv)
{
    static const char *const cmds[] = {"verify", "dump", "stats", "snapshot", "import"};
    bool known = false;
    for (size_t k = 0; k < sizeof(cmds) / sizeof(cmds[0]); k++)
        known |= strcmp(a->cmd, cmds[k]) == 0;
    if (!known)
        return tool_usage_error("unknown command '%s'", a->cmd);
    for (int i = 2; i < argc; i++) {
        if (argv[i][0] != '-' && !a->dir) {
            a->dir = argv[i];
            continue;
        }
        bool stdin_arg = strcmp(argv[i], "-") == 0;
        if (strcmp(a->cmd, "import") == 0 && a->dir && !a->file &&
            (argv[i][0] != '-' || stdin_arg)) {
            a->file = argv[i];
            continue;
        }
        int rc = tool_option(a, argc, argv, &i);
        if (rc != 0)
            return rc;
    }
    if (!a->dir)
        return tool_usage_error("%s needs a data directory", a->cmd);
    if (strcmp(a->cmd, "import") == 0 && !a->file)
        return tool_usage_error("import needs a file to read (or - for standard input)");
    if (a->retention == TALLY_RETAIN_ARCHIVE && !a->archive)
        return tool_usage_error("--retention archive needs --archive-dir DIR");
    return 0;
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0 ||
            (i == 1 && strcmp(argv[i], "help") == 0)) {
            tool_usage(stdout);
            return 0;
        }
    if (argc < 2) {
        tool_usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "cluster") == 0)
        return cluster_admin_main(argc - 2, argv + 2, stdout, stderr);
    if (strcmp(argv[1], "follow") == 0)
        return follow_main(argc - 2, argv + 2, stdout, stderr);
    tool_args a = {.cmd = argv[1], .retention = TALLY_RETAIN_KEEP};
    int rc = tool_parse(&a, argc, argv);
    if (rc != 0)
        return rc;
    if (strcmp(a.cmd, "verify") == 0)
        return tool_verify(a.dir);
    if (strcmp(a.cmd, "stats") == 0)
        return tool_stats_run(a.dir);
    if (strcmp(a.cmd, "snapshot") == 0)
        return tool_snapshot(a.dir, a.retention, a.archive);
    if (strcmp(a.cmd, "import") == 0)
        return tool_import_run(a.dir, a.file, a.shards);
    return tool_dump_run(a.dir, a.merchant, a.refusals);
}
