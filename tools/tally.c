/*
 * tally.c — the offline tool (SPEC §6): works on a data directory while no
 * tallyd has it open (the directory's LOCK enforces that).
 *
 *   tally verify DIR                 checksums, chain, snapshots, state == replay
 *   tally dump DIR [--merchant m] [--refusals]   entries as JSON lines
 *   tally stats DIR                  per-shard and per-kind counts, sizes
 *   tally snapshot DIR [--retention keep|delete|archive] [--archive-dir D]
 *
 * Exit status: 0 ok, 1 a fault was found (verify) or an error, 2 usage.
 */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

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

/* Writes len bytes as a JSON string (memo bytes are opaque). */
static void tool_json_string(FILE *out, const char *s, size_t len)
{
    fputc('"', out);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            fprintf(out, "\\%c", c);
        else if (c < 0x20 || c >= 0x7f)
            fprintf(out, "\\u%04x", c);
        else
            fputc(c, out);
    }
    fputc('"', out);
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
    printf("{\"seq\":%" PRIu64 ",\"id\":", e->seq);
    tool_json_string(stdout, e->id, e->id_len);
    printf(",\"kind\":\"%s\",\"merchant\":%" PRIu64 ",\"account\":%" PRIu64,
           tally_kind_name(e->kind), e->merchant, e->account);
    if (refusal) {
        printf(",\"refused\":\"%s\"", tally_error_code(status));
    } else {
        printf(",\"points\":%" PRId64 ",\"balance\":%" PRId64 ",\"held\":%" PRId64, e->points,
               e->balance, e->held);
    }
    printf(",\"ts\":%" PRIu64 ",\"ref\":", e->ts_ms);
    tool_json_string(stdout, e->ref, e->ref_len);
    printf(",\"expires\":%" PRIu64 ",\"memo\":", e->expires);
    tool_json_string(stdout, e->memo, e->memo_len);
    fputs("}\n", stdout);
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
    for (uint32_t i = first; i < last && rc == 0; i++)
        rc = tally_scan(t, i, 0, tool_dump_one, &d);
    if (rc < 0)
        fprintf(stderr, "tally: dump stopped: %s\n", tally_strerror(rc));
    tally_close(t);
    return rc < 0;
}

/* ---- stats -------------------------------------------------------------- */

typedef struct tool_stats {
    uint64_t kinds[TALLY_KIND_COUNT];
    uint64_t refusals;
    uint64_t records;
    uint64_t last_report_ms;
} tool_stats;

static int tool_stats_one(void *ctx, const tally_entry *e, bool refusal, int status)
{
    (void)status;
    tool_stats *s = ctx;
    if (refusal)
        s->refusals++;
    else if (e->kind < TALLY_KIND_COUNT)
        s->kinds[e->kind]++;
    if ((++s->records & 0xffff) == 0 && tool_mono_ms() - s->last_report_ms > 1000) {
        s->last_report_ms = tool_mono_ms();
        fprintf(stderr, "tally: stats: %" PRIu64 " records scanned\n", s->records);
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

static int tool_stats_run(const char *dir)
{
    tally *t;
    if (tool_open(dir, &t) < 0)
        return 1;
    tool_stats s = {.last_report_ms = tool_mono_ms()};
    printf("shards: %u\n", tally_shard_count(t));
    int rc = 0;
    for (uint32_t i = 0; i < tally_shard_count(t) && rc == 0; i++) {
        tally_shard_stats st;
        tally_shard_stats_get(t, i, &st);
        printf("shard %u: seq %" PRIu64 ", checkpoint seq %" PRIu64 ", log from seq %" PRIu64
               ", snapshot seq %" PRIu64 " (%" PRIu64 " bytes), status %s\n",
               i, st.durable_seq, st.checkpoint_seq, st.log_first_seq, st.snapshot_seq,
               st.snapshot_bytes, st.status ? st.status_message : "ok");
        rc = tally_scan(t, i, 0, tool_stats_one, &s);
    }
    for (int k = 1; k < TALLY_KIND_COUNT; k++)
        printf("entries %-8s %" PRIu64 "\n", tally_kind_name(k), s.kinds[k]);
    printf("refusals remembered: %" PRIu64 "\n", s.refusals);
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

/* ---- main --------------------------------------------------------------- */

static int tool_usage(void)
{
    fputs("usage: tally verify DIR\n"
          "       tally dump DIR [--merchant M] [--refusals]\n"
          "       tally stats DIR\n"
          "       tally snapshot DIR [--retention keep|delete|archive] [--archive-dir D]\n",
          stderr);
    return 2;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return tool_usage();
    const char *cmd = argv[1], *dir = argv[2];
    if (strcmp(cmd, "verify") == 0 && argc == 3)
        return tool_verify(dir);
    if (strcmp(cmd, "stats") == 0 && argc == 3)
        return tool_stats_run(dir);
    if (strcmp(cmd, "snapshot") == 0) {
        int retention = TALLY_RETAIN_KEEP;
        const char *archive = NULL;
        for (int i = 3; i < argc; i++) {
            if (strcmp(argv[i], "--retention") == 0 && i + 1 < argc) {
                const char *v = argv[++i];
                if (strcmp(v, "keep") == 0)
                    retention = TALLY_RETAIN_KEEP;
                else if (strcmp(v, "delete") == 0)
                    retention = TALLY_RETAIN_DELETE;
                else if (strcmp(v, "archive") == 0)
                    retention = TALLY_RETAIN_ARCHIVE;
                else
                    return tool_usage();
            } else if (strcmp(argv[i], "--archive-dir") == 0 && i + 1 < argc) {
                archive = argv[++i];
            } else {
                return tool_usage();
            }
        }
        if (retention == TALLY_RETAIN_ARCHIVE && !archive) {
            fprintf(stderr, "tally: --retention archive needs --archive-dir\n");
            return 2;
        }
        return tool_snapshot(dir, retention, archive);
    }
    if (strcmp(cmd, "dump") == 0) {
        uint64_t merchant = 0;
        int refusals = 0;
        for (int i = 3; i < argc; i++) {
            if (strcmp(argv[i], "--merchant") == 0 && i + 1 < argc) {
                char *end;
                errno = 0;
                merchant = strtoull(argv[++i], &end, 10);
                if (errno || *end || merchant == 0 || argv[i][0] == '-') {
                    fprintf(stderr, "tally: bad merchant '%s'\n", argv[i]);
                    return 2;
                }
            } else if (strcmp(argv[i], "--refusals") == 0) {
                refusals = 1;
            } else {
                return tool_usage();
            }
        }
        return tool_dump_run(dir, merchant, refusals);
    }
    return tool_usage();
}
