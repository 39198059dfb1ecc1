/*
 * metrics.c — the figures INFO and /metrics report (metrics.h), and the
 * Prometheus text exposition of them.
 *
 * Every family is written with its HELP and TYPE lines, base units in its
 * name (seconds, bytes) and _total on counters, as `promtool check
 * metrics` wants them.  Histograms come from tally_hist's power-of-two
 * buckets, cumulated here; only a window of bounds is written (a bucket
 * left out is merged into the next bound written, which keeps every
 * written bucket's count exact).  A family with nothing to report yet (a
 * command never called, a shard without a snapshot) has no series: a
 * series appears with its first event.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "metrics.h"

/* ---- constants ------------------------------------------------------------ */

/* Bounds written, as powers of two of the histogram's unit: request and
 * flush latency 16 us .. 16.8 s; checkpoints 1 ms .. 268 s; batches 1 ..
 * 16384 records (LIMIT_BATCH_ENTRIES_MAX). */
#define METRICS_LATENCY_LO 4
#define METRICS_LATENCY_HI 24
#define METRICS_CHECKPOINT_LO 10
#define METRICS_CHECKPOINT_HI 28
#define METRICS_BATCH_LO 0
#define METRICS_BATCH_HI 14

static_assert(METRICS_CHECKPOINT_HI < TALLY_HIST_BUCKETS - 1, "bounds within the histogram");
static_assert((1u << METRICS_BATCH_HI) == LIMIT_BATCH_ENTRIES_MAX, "batches up to their limit");

static const char *const metrics_result_names[METRICS_RESULT_COUNT] = {
    [METRICS_OK] = "ok",
    [METRICS_INSUFFICIENT] = "insufficient",
    [METRICS_NOTFOUND] = "notfound",
    [METRICS_CONFLICT] = "conflict",
    [METRICS_INVALID] = "invalid",
    [METRICS_ERROR] = "error",
    [METRICS_NOAUTH] = "noauth",
    [METRICS_NOPERM] = "noperm",
    [METRICS_WRONGPASS] = "wrongpass",
    [METRICS_FAILED] = "failed",
};

/* ---- text ------------------------------------------------------------------ */

void metrics_textf(metrics_text *t, const char *fmt, ...)
{
    if (t->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->buf ? t->buf + t->len : NULL, t->cap - t->len, fmt, ap);
        va_end(ap);
        if (n < 0)
            return;
        if (t->len + (size_t)n < t->cap) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = (t->cap + (size_t)n + 1) * 2;
        char *b = realloc(t->buf, cap);
        if (!b) {
            t->oom = true;
            return;
        }
        t->buf = b;
        t->cap = cap;
    }
}

void metrics_text_free(metrics_text *t)
{
    free(t->buf);
    *t = (metrics_text){0};
}

/* ---- results ------------------------------------------------------------- */

const char *metrics_result_name(enum metrics_result r)
{
    assert(r < METRICS_RESULT_COUNT);
    return metrics_result_names[r];
}

enum metrics_result metrics_result_of_status(int status)
{
    switch (status) {
    case 0: return METRICS_OK;
    case TALLY_EINSUFFICIENT: return METRICS_INSUFFICIENT;
    case TALLY_ENOTFOUND: return METRICS_NOTFOUND;
    case TALLY_ECONFLICT: return METRICS_CONFLICT;
    case TALLY_EINVALID: return METRICS_INVALID;
    case TALLY_ESYNTAX:
    case TALLY_ETOOBIG:
    case TALLY_EARCHIVED: return METRICS_ERROR;
    default: return METRICS_FAILED; /* failed, corrupt, closing, -errno */
    }
}

enum metrics_result metrics_result_of_reply(const char *reply, size_t len)
{
    if (len == 0 || reply[0] != '-')
        return METRICS_OK;
    static const struct {
        const char *word;
        enum metrics_result result;
    } codes[] = {
        {"INSUFFICIENT", METRICS_INSUFFICIENT}, {"NOTFOUND", METRICS_NOTFOUND},
        {"CONFLICT", METRICS_CONFLICT},         {"INVALID", METRICS_INVALID},
        {"NOAUTH", METRICS_NOAUTH},             {"NOPERM", METRICS_NOPERM},
        {"WRONGPASS", METRICS_WRONGPASS},
    };
    size_t word = 1;
    while (word < len && reply[word] != ' ' && reply[word] != '\r')
        word++;
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
        if (word - 1 == strlen(codes[i].word) && memcmp(reply + 1, codes[i].word, word - 1) == 0)
            return codes[i].result;
    return METRICS_ERROR;
}

/* ---- the server's counters ----------------------------------------------- */

void metrics_init(metrics *m, const char *dir, uint32_t max_clients,
                  const char *const *names, uint32_t count)
{
    assert(count < METRICS_COMMANDS_MAX);
    memset(m, 0, sizeof(*m));
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    m->start_ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
    m->dir = dir;
    m->max_clients = max_clients;
    m->commands_count = count;
    for (uint32_t i = 0; i < count; i++)
        m->command_names[i] = names[i];
    m->command_names[count] = "unknown";
}

/* ---- the engine's figures ------------------------------------------------- */

static void metrics_hist_add(tally_hist *into, const tally_hist *h)
{
    for (uint32_t i = 0; i < TALLY_HIST_BUCKETS; i++)
        into->counts[i] += h->counts[i];
    into->sum += h->sum;
}

static uint64_t metrics_max(uint64_t a, uint64_t b) { return a > b ? a : b; }

/* Adds one shard's counters to the engine's. */
static void metrics_engine_add(metrics_engine *e, const tally_shard_stats *st)
{
    tally_shard_stats *sum = &e->sum;
    e->shards++;
    e->shards_failed += st->status != 0;
    sum->seq += st->seq;
    sum->durable_seq += st->durable_seq;
    sum->entries += st->entries;
    sum->batches += st->batches;
    sum->batch_entries_max = metrics_max(sum->batch_entries_max, st->batch_entries_max);
    sum->flush_us_total += st->flush_us_total;
    sum->flush_us_max = metrics_max(sum->flush_us_max, st->flush_us_max);
    sum->checkpoints += st->checkpoints;
    sum->checkpoint_us_total += st->checkpoint_us_total;
    sum->checkpoint_us_max = metrics_max(sum->checkpoint_us_max, st->checkpoint_us_max);
    sum->checkpoint_stall_us_max =
        metrics_max(sum->checkpoint_stall_us_max, st->checkpoint_stall_us_max);
    sum->checkpoint_bytes += st->checkpoint_bytes;
    sum->log_bytes += st->log_bytes;
    sum->sweep_entries += st->sweep_entries;
    sum->sweep_chunks += st->sweep_chunks;
    sum->sweep_chunk_entries_max =
        metrics_max(sum->sweep_chunk_entries_max, st->sweep_chunk_entries_max);
    sum->snapshots += st->snapshots;
    metrics_hist_add(&sum->flush_us, &st->flush_us);
    metrics_hist_add(&sum->batch_records, &st->batch_records);
    metrics_hist_add(&sum->checkpoint_us, &st->checkpoint_us);
}

void metrics_engine_sum(const tally_shard_stats *st, uint32_t n, metrics_engine *out)
{
    memset(out, 0, sizeof(*out));
    for (uint32_t i = 0; i < n; i++)
        metrics_engine_add(out, &st[i]);
}

void metrics_engine_read(tally *eng, metrics_engine *out)
{
    memset(out, 0, sizeof(*out));
    uint32_t n = eng ? tally_shard_count(eng) : 0;
    for (uint32_t i = 0; i < n; i++) {
        tally_shard_stats st;
        tally_shard_stats_get(eng, i, &st);
        metrics_engine_add(out, &st);
    }
}

/* ---- what the system says ---------------------------------------------------- */

/* A "Field:   N kB" line of /proc/self/status, in bytes; 0 if absent. */
static uint64_t metrics_status_bytes(const char *status, const char *field)
{
    size_t n = strlen(field);
    for (const char *p = status; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (strncmp(p, field, n) == 0 && p[n] == ':')
            return strtoull(p + n + 1, NULL, 10) * 1024u;
    return 0;
}

static void metrics_memory(uint64_t *resident, uint64_t *anonymous)
{
    char buf[4096] = "";
    int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, buf, sizeof(buf) - 1);
        buf[n > 0 ? n : 0] = 0;
        close(fd);
    }
    *resident = metrics_status_bytes(buf, "VmRSS");
    *anonymous = metrics_status_bytes(buf, "RssAnon");
}

/* The disk a file takes: LMDB's data.mdb is as large as its map, with
 * holes (MDB_WRITEMAP), so its size would say the map. */
static uint64_t metrics_file_bytes(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (uint64_t)st.st_blocks * 512u : 0;
}

/* A shard's state on disk: its LMDB file and its id index's run files
 * (DIR/shard-NNN/state/data.mdb and state/ids/ *.run, the layout the
 * README shows). */
static uint64_t metrics_state_bytes(const char *dir, uint32_t shard)
{
    char path[4400];
    snprintf(path, sizeof(path), "%s/shard-%03u/state/data.mdb", dir, shard);
    uint64_t bytes = metrics_file_bytes(path);
    snprintf(path, sizeof(path), "%s/shard-%03u/state/ids", dir, shard);
    DIR *d = opendir(path);
    if (!d)
        return bytes;
    int dfd = dirfd(d);
    for (struct dirent *e; (e = readdir(d));) {
        size_t n = strlen(e->d_name);
        struct stat st;
        if (n > 4 && strcmp(e->d_name + n - 4, ".run") == 0 &&
            fstatat(dfd, e->d_name, &st, 0) == 0)
            bytes += (uint64_t)st.st_blocks * 512u;
    }
    closedir(d);
    return bytes;
}

/* ---- the exposition ------------------------------------------------------------ */

static void metrics_family(metrics_text *t, const char *name, const char *type, const char *help)
{
    metrics_textf(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* One histogram's series: buckets lo..hi (bounds 2^i units, scale units
 * a second or 1 for counts), +Inf, _sum and _count.  labels: "" or
 * `name="value"` pairs. */
static void metrics_histogram(metrics_text *t, const char *name, const char *labels,
                              const tally_hist *h, uint32_t lo, uint32_t hi, double scale)
{
    const char *comma = labels[0] ? "," : "";
    uint64_t below = 0;
    for (uint32_t i = 0; i < lo; i++)
        below += h->counts[i];
    for (uint32_t i = lo; i <= hi; i++) {
        below += h->counts[i];
        metrics_textf(t, "%s_bucket{%s%sle=\"%.9g\"} %llu\n", name, labels, comma,
                      ldexp(1.0, (int)i) / scale, (unsigned long long)below);
    }
    for (uint32_t i = hi + 1; i < TALLY_HIST_BUCKETS; i++)
        below += h->counts[i];
    metrics_textf(t, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, comma,
                  (unsigned long long)below);
    const char *open = labels[0] ? "{" : "", *close = labels[0] ? "}" : "";
    if (scale == 1.0)
        metrics_textf(t, "%s_sum%s%s%s %llu\n", name, open, labels, close,
                      (unsigned long long)h->sum);
    else
        metrics_textf(t, "%s_sum%s%s%s %.6f\n", name, open, labels, close,
                      (double)h->sum / scale);
    metrics_textf(t, "%s_count%s%s%s %llu\n", name, open, labels, close,
                  (unsigned long long)below);
}

static bool metrics_command_seen(const metrics_command *c)
{
    for (int r = 0; r < METRICS_RESULT_COUNT; r++)
        if (c->results[r])
            return true;
    return false;
}

/* Requests by command and result, and their latency.  A command appears
 * once called, with every result (zeros too), so a rate over any result
 * starts from the command's first call. */
static void metrics_requests(const metrics *m, metrics_text *t)
{
    metrics_family(t, "tally_requests_total", "counter",
                   "Requests answered, by command and result (ok, a refusal's code, error: "
                   "the client's mistake, failed: the server could not carry it out).");
    for (uint32_t i = 0; i <= m->commands_count; i++) {
        if (!metrics_command_seen(&m->commands[i]))
            continue;
        for (int r = 0; r < METRICS_RESULT_COUNT; r++)
            metrics_textf(t, "tally_requests_total{command=\"%s\",result=\"%s\"} %llu\n",
                          m->command_names[i], metrics_result_names[r],
                          (unsigned long long)m->commands[i].results[r]);
    }
    metrics_family(t, "tally_request_duration_seconds", "histogram",
                   "Time from a request's dispatch to its reply being ready (durable for "
                   "writes), by command.");
    for (uint32_t i = 0; i <= m->commands_count; i++) {
        if (!metrics_command_seen(&m->commands[i]))
            continue;
        char labels[96];
        snprintf(labels, sizeof(labels), "command=\"%s\"", m->command_names[i]);
        metrics_histogram(t, "tally_request_duration_seconds", labels,
                          &m->commands[i].duration_us, METRICS_LATENCY_LO, METRICS_LATENCY_HI,
                          1e6);
    }
}

static void metrics_scalar(metrics_text *t, const char *name, const char *type, const char *help,
                           uint64_t v)
{
    metrics_family(t, name, type, help);
    metrics_textf(t, "%s %llu\n", name, (unsigned long long)v);
}

static void metrics_server(const metrics *m, metrics_text *t)
{
    metrics_scalar(t, "tally_connections", "gauge", "RESP connections open.", m->clients);
    metrics_scalar(t, "tally_connections_max", "gauge",
                   "RESP connections served at once (--maxclients).", m->max_clients);
    metrics_scalar(t, "tally_connections_accepted_total", "counter",
                   "RESP connections accepted, those then turned away included.",
                   m->connections_accepted);
    metrics_scalar(t, "tally_connections_rejected_total", "counter",
                   "RESP connections turned away (maxclients, shutting down, no memory).",
                   m->connections_rejected);
    metrics_scalar(t, "tally_protocol_errors_total", "counter",
                   "Malformed RESP input (answered and its connection closed).",
                   m->protocol_errors);
    metrics_scalar(t, "tally_requests_in_flight", "gauge",
                   "Requests dispatched whose reply is not ready yet.", m->requests_inflight);
    metrics_family(t, "tally_start_time_seconds", "gauge", "When tallyd started, unix seconds.");
    metrics_textf(t, "tally_start_time_seconds %.3f\n", (double)m->start_ms / 1000.0);
    uint64_t resident, anonymous;
    metrics_memory(&resident, &anonymous);
    metrics_scalar(t, "tally_process_resident_memory_bytes", "gauge",
                   "Resident memory of the process (VmRSS).", resident);
    metrics_scalar(t, "tally_process_anonymous_memory_bytes", "gauge",
                   "Resident anonymous memory of the process (RssAnon): the heap, not the "
                   "mapped log and state files.", anonymous);
}

static void metrics_engine_histograms(const metrics_engine *e, metrics_text *t)
{
    metrics_family(t, "tally_flush_duration_seconds", "histogram",
                   "Per batch: from its submission to its write and flush completed, every "
                   "shard.");
    metrics_histogram(t, "tally_flush_duration_seconds", "", &e->sum.flush_us,
                      METRICS_LATENCY_LO, METRICS_LATENCY_HI, 1e6);
    metrics_family(t, "tally_batch_records", "histogram",
                   "Records per flushed batch (group commit), every shard.");
    metrics_histogram(t, "tally_batch_records", "", &e->sum.batch_records, METRICS_BATCH_LO,
                      METRICS_BATCH_HI, 1.0);
    metrics_family(t, "tally_checkpoint_duration_seconds", "histogram",
                   "Per state checkpoint: from its start to its synced LMDB commit, every "
                   "shard.");
    metrics_histogram(t, "tally_checkpoint_duration_seconds", "", &e->sum.checkpoint_us,
                      METRICS_CHECKPOINT_LO, METRICS_CHECKPOINT_HI, 1e6);
}

/* A per-shard family: one series per shard, value from the shard's stats
 * (st[i]) or, with NULL, from values[i]. */
typedef struct metrics_shard_row {
    const char *name, *type, *help;
    size_t field; /* offsetof a uint64_t in tally_shard_stats */
} metrics_shard_row;

static const metrics_shard_row metrics_shard_rows[] = {
    {"tally_records_written_total", "counter",
     "Log records (entries and remembered refusals) written since tallyd started.",
     offsetof(tally_shard_stats, entries)},
    {"tally_engine_entries_total", "counter",
     "Entries the engine wrote itself (expiries, maturities, hold timeouts) since start.",
     offsetof(tally_shard_stats, sweep_entries)},
    {"tally_checkpoint_bytes_total", "counter",
     "Bytes state checkpoints wrote (LMDB pages, id index runs) since start.",
     offsetof(tally_shard_stats, checkpoint_bytes)},
    {"tally_sweep_chunks_total", "counter",
     "Sweep turns that wrote engine entries since start, each at most one chunk.",
     offsetof(tally_shard_stats, sweep_chunks)},
    {"tally_sweep_chunk_entries_max", "gauge",
     "The most engine entries one sweep turn wrote since start (the chunk bounds it).",
     offsetof(tally_shard_stats, sweep_chunk_entries_max)},
    {"tally_snapshots_total", "counter", "Snapshots taken since start.",
     offsetof(tally_shard_stats, snapshots)},
    {"tally_log_bytes", "gauge", "Bytes of log records the shard holds (INFO's log_bytes).",
     offsetof(tally_shard_stats, log_bytes)},
};

/* Row i's shard label and state bytes: shard i of m->dir, or in cluster
 * mode group groups[i]'s one shard in m->dir/group-G. */
static uint32_t metrics_label(const uint32_t *groups, uint32_t i)
{
    return groups ? groups[i] : i;
}

static uint64_t metrics_row_state_bytes(const metrics *m, const uint32_t *groups, uint32_t i)
{
    if (!m->dir)
        return 0;
    if (!groups)
        return metrics_state_bytes(m->dir, i);
    char dir[4200];
    snprintf(dir, sizeof(dir), "%s/group-%u", m->dir, groups[i]);
    return metrics_state_bytes(dir, 0);
}

/* The per-shard families of n shards' stats st (labels: metrics_label). */
static void metrics_shards(const metrics *m, const tally_shard_stats *st, const uint32_t *groups,
                           uint32_t n, metrics_text *t)
{
    for (size_t r = 0; r < sizeof(metrics_shard_rows) / sizeof(metrics_shard_rows[0]); r++) {
        const metrics_shard_row *row = &metrics_shard_rows[r];
        metrics_family(t, row->name, row->type, row->help);
        for (uint32_t i = 0; i < n; i++) {
            uint64_t v;
            memcpy(&v, (const char *)&st[i] + row->field, sizeof(v));
            metrics_textf(t, "%s{shard=\"%u\"} %llu\n", row->name, metrics_label(groups, i),
                          (unsigned long long)v);
        }
    }
    metrics_family(t, "tally_state_bytes", "gauge",
                   "Bytes of the shard's state on disk: its LMDB file and id index runs.");
    for (uint32_t i = 0; i < n; i++)
        metrics_textf(t, "tally_state_bytes{shard=\"%u\"} %llu\n", metrics_label(groups, i),
                      (unsigned long long)metrics_row_state_bytes(m, groups, i));
    metrics_family(t, "tally_state_memory_bytes", "gauge",
                   "Anonymous memory mapped for the shard's state: part=layers (uncommitted changes "
                   "and the clean cache), id_memtables, id_filters.");
    for (uint32_t i = 0; i < n; i++) {
        const struct {
            const char *part;
            uint64_t v;
        } parts[] = {{"layers", st[i].memory_layers},
                     {"id_memtables", st[i].memory_id_tables},
                     {"id_filters", st[i].memory_id_filters}};
        for (size_t p = 0; p < sizeof(parts) / sizeof(parts[0]); p++)
            metrics_textf(t, "tally_state_memory_bytes{shard=\"%u\",part=\"%s\"} %llu\n",
                          metrics_label(groups, i), parts[p].part, (unsigned long long)parts[p].v);
    }
    metrics_family(t, "tally_shard_status", "gauge",
                   "0 ok, 1 failed (an I/O error: it takes no writes until a restart), "
                   "2 corrupt (refused).");
    for (uint32_t i = 0; i < n; i++)
        metrics_textf(t, "tally_shard_status{shard=\"%u\"} %d\n", metrics_label(groups, i),
                      st[i].status == 0 ? 0 : st[i].status == TALLY_ECORRUPT ? 2 : 1);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    double now_s = (double)now.tv_sec + (double)now.tv_nsec / 1e9;
    metrics_family(t, "tally_snapshot_age_seconds", "gauge",
                   "Seconds since the shard's newest snapshot (no series before its first).");
    for (uint32_t i = 0; i < n; i++)
        if (st[i].snapshot_created_ms) {
            double age = now_s - (double)st[i].snapshot_created_ms / 1000.0;
            metrics_textf(t, "tally_snapshot_age_seconds{shard=\"%u\"} %.3f\n",
                          metrics_label(groups, i),
                          age > 0 ? age : 0.0);
        }
    metrics_family(t, "tally_replication_lag_records", "gauge",
                   "Records the shard's slowest replica lacks (a cluster's leader; 0 otherwise).");
    for (uint32_t i = 0; i < n; i++)
        metrics_textf(t, "tally_replication_lag_records{shard=\"%u\"} %llu\n",
                      metrics_label(groups, i), (unsigned long long)st[i].repl_lag);
}

void metrics_prometheus(const metrics *m, tally *eng, metrics_text *out)
{
    uint32_t n = eng ? tally_shard_count(eng) : 0;
    tally_shard_stats *st = calloc(n ? n : 1, sizeof(*st));
    if (!st) {
        out->oom = true;
        return;
    }
    /* Each shard read once: the sums and the shard's own series agree. */
    for (uint32_t i = 0; i < n; i++)
        tally_shard_stats_get(eng, i, &st[i]);
    metrics_prometheus_rows(m, st, NULL, n, out);
    free(st);
}

void metrics_prometheus_rows(const metrics *m, const tally_shard_stats *st,
                             const uint32_t *groups, uint32_t n, metrics_text *out)
{
    metrics_requests(m, out);
    metrics_server(m, out);
    metrics_engine e;
    metrics_engine_sum(st, n, &e);
    metrics_engine_histograms(&e, out);
    metrics_shards(m, st, groups, n, out);
}
