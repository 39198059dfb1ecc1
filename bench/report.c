/*
 * report.c — text and JSON renderings of a run (report.h).
 */
#include <errno.h>
#include <string.h>

#include "report.h"

double report_ops_per_s(const report_run *r)
{
    return r->elapsed_s > 0.0 ? (double)r->ops / r->elapsed_s : 0.0;
}

void report_setting_add(report_run *r, const char *name, const char *value)
{
    if (r->setting_count == REPORT_SETTINGS_MAX)
        return;
    report_setting *s = &r->settings[r->setting_count++];
    snprintf(s->name, sizeof(s->name), "%s", name);
    snprintf(s->value, sizeof(s->value), "%s", value);
}

const char *report_setting_get(const report_run *r, const char *name)
{
    for (uint32_t i = 0; i < r->setting_count; i++)
        if (strcmp(r->settings[i].name, name) == 0)
            return r->settings[i].value;
    return NULL;
}

static double report_us(const report_run *r, double q)
{
    return (double)hist_quantile(r->latency, q) / 1000.0;
}

static void report_text_server(FILE *f, const report_run *r)
{
    proc_figures p;
    proc_figures_get(&r->server_before, &r->server_after, r->ops, &p);
    fprintf(f, "  server      records %lld -> %lld; written %.0f B/entry; disk %.0f B/entry "
               "(%lld B); RssAnon %lld B\n",
            (long long)r->server_before.records, (long long)r->server_after.records,
            p.write_bytes_per_entry, p.disk_bytes_per_entry,
            (long long)r->server_after.disk_bytes, (long long)p.rss_anon_bytes);
}

void report_text(FILE *f, const report_run *r)
{
    fprintf(f, "%s %s (%s)\n", r->system, r->workload, r->label);
    fprintf(f, "  throughput  %.0f ops/s  (%llu ops in %.2f s; ok %llu, refused %llu, "
               "errors %llu)\n",
            report_ops_per_s(r), (unsigned long long)r->ops, r->elapsed_s,
            (unsigned long long)r->ok, (unsigned long long)r->refused,
            (unsigned long long)r->errors);
    fprintf(f, "  latency us  p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  max %.1f  mean %.1f\n",
            report_us(r, 0.50), report_us(r, 0.90), report_us(r, 0.99), report_us(r, 0.999),
            report_us(r, 1.0), hist_mean(r->latency) / 1000.0);
    if (r->rate_asked > 0)
        fprintf(f, "  open loop   asked %.0f ops/s, achieved %.0f; sent %llu, dropped %llu "
                   "(unsent at the end, latency = end - schedule)\n",
                r->rate_asked, report_ops_per_s(r), (unsigned long long)r->sent,
                (unsigned long long)r->dropped);
    if (r->batches)
        fprintf(f, "  engine      %llu entries in %llu batches: %.1f entries/batch, "
                   "%u shards, sync %s\n",
                (unsigned long long)r->entries, (unsigned long long)r->batches,
                (double)r->entries / (double)r->batches, r->shards, r->sync);
    if (r->server_cpu_s >= 0 && r->ops)
        fprintf(f, "  server CPU  %.1f us/op  (%.2f CPU-s)\n",
                r->server_cpu_s * 1e6 / (double)r->ops, r->server_cpu_s);
    if (r->server_sampled)
        report_text_server(f, r);
    if (r->setting_count) {
        fprintf(f, "  durability ");
        for (uint32_t i = 0; i < r->setting_count; i++)
            fprintf(f, " %s=%s", r->settings[i].name, r->settings[i].value);
        fputc('\n', f);
    }
    if (r->errors)
        fprintf(f, "  first error %s\n", r->first_error);
}

void report_json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

static void report_json_server(FILE *f, const report_run *r)
{
    proc_figures p;
    proc_figures_get(&r->server_before, &r->server_after, r->ops, &p);
    fprintf(f, ",\"server\":{\"cpu_s\":%.3f,\"cpu_us_per_op\":%.2f,\"records_before\":%lld,"
               "\"records_after\":%lld,\"entries_written\":%lld,\"write_bytes\":%lld,"
               "\"write_bytes_per_entry\":%.1f,\"disk_bytes\":%lld,"
               "\"disk_bytes_per_entry\":%.1f,\"rss_anon_bytes\":%lld}",
            p.cpu_s, p.cpu_us_per_op, (long long)r->server_before.records,
            (long long)r->server_after.records, (long long)p.entries_written,
            (long long)p.write_bytes, p.write_bytes_per_entry,
            (long long)r->server_after.disk_bytes, p.disk_bytes_per_entry,
            (long long)p.rss_anon_bytes);
}

void report_json(FILE *f, const report_run *r)
{
    fputs("{\"system\":", f);
    report_json_string(f, r->system);
    fputs(",\"workload\":", f);
    report_json_string(f, r->workload);
    fputs(",\"label\":", f);
    report_json_string(f, r->label);
    fprintf(f, ",\"connections\":%u,\"pipeline\":%u,\"in_flight\":%llu,\"threads\":%u",
            r->connections, r->pipeline,
            (unsigned long long)(r->connections ? r->connections : 1) * r->pipeline, r->threads);
    fprintf(f, ",\"seed\":%llu,\"warmup_s\":%.1f,\"elapsed_s\":%.3f",
            (unsigned long long)r->seed, r->warmup_s, r->elapsed_s);
    fprintf(f, ",\"ops\":%llu,\"ok\":%llu,\"refused\":%llu,\"errors\":%llu,\"ops_per_s\":%.1f",
            (unsigned long long)r->ops, (unsigned long long)r->ok,
            (unsigned long long)r->refused, (unsigned long long)r->errors,
            report_ops_per_s(r));
    fprintf(f, ",\"latency_us\":{\"count\":%llu,\"mean\":%.1f,\"p50\":%.1f,\"p90\":%.1f,"
               "\"p99\":%.1f,\"p999\":%.1f,\"max\":%.1f}",
            (unsigned long long)r->latency->count, hist_mean(r->latency) / 1000.0,
            report_us(r, 0.50), report_us(r, 0.90), report_us(r, 0.99), report_us(r, 0.999),
            report_us(r, 1.0));
    fputs(",\"first_error\":", f);
    report_json_string(f, r->first_error);
    fputs(",\"durability\":{", f);
    for (uint32_t i = 0; i < r->setting_count; i++) {
        if (i)
            fputc(',', f);
        report_json_string(f, r->settings[i].name);
        fputc(':', f);
        report_json_string(f, r->settings[i].value);
    }
    fputc('}', f);
    if (r->rate_asked > 0)
        fprintf(f, ",\"open_loop\":{\"rate_asked\":%.1f,\"rate_achieved\":%.1f,\"sent\":%llu,"
                   "\"dropped\":%llu}",
                r->rate_asked, report_ops_per_s(r), (unsigned long long)r->sent,
                (unsigned long long)r->dropped);
    if (r->server_cpu_s >= 0 && r->ops)
        fprintf(f, ",\"server_cpu_s\":%.3f,\"server_cpu_us_per_op\":%.2f", r->server_cpu_s,
                r->server_cpu_s * 1e6 / (double)r->ops);
    if (r->server_sampled)
        report_json_server(f, r);
    if (r->batches) {
        fprintf(f, ",\"entries\":%llu,\"batches\":%llu,\"batch_entries_avg\":%.2f,\"shards\":%u",
                (unsigned long long)r->entries, (unsigned long long)r->batches,
                (double)r->entries / (double)r->batches, r->shards);
        fputs(",\"sync\":", f);
        report_json_string(f, r->sync);
    }
    fputs("}\n", f);
}

int report_data_fs(report_run *r, const char *dir, bool durable, const char *prog)
{
    char fs[32];
    bool memory = false;
    int rc = proc_fs_type(dir, fs, sizeof(fs), &memory);
    report_setting_add(r, "data_fs", rc == 0 ? fs : "unknown");
    if (rc == 0 && memory && durable) {
        fprintf(stderr, "%s: %s is on %s: durable figures need a real disk (nothing on %s "
                        "survives a power loss, and its flushes cost nothing)\n",
                prog, dir, fs, fs);
        return 1;
    }
    return 0;
}

int report_finish(const report_run *r, const char *json, const char *prog)
{
    report_text(stdout, r);
    fflush(stdout);
    if (json) {
        FILE *f = fopen(json, "w");
        if (!f) {
            fprintf(stderr, "%s: %s: %s\n", prog, json, strerror(errno));
            return 1;
        }
        report_json(f, r);
        if (fclose(f) != 0)
            return 1;
    }
    if (r->errors) {
        fprintf(stderr, "%s: %s %s: %llu errors (first: %s): errors can hide as slowness, so "
                        "this run's figures are not valid\n",
                prog, r->system, r->workload, (unsigned long long)r->errors, r->first_error);
        return 1;
    }
    if (r->ops == 0) {
        fprintf(stderr, "%s: no operation completed%s%s\n", prog, r->first_error[0] ? ": " : "",
                r->first_error);
        return 1;
    }
    return 0;
}
