/*
 * report.c — text and JSON renderings of a run (report.h).
 */
#include <string.h>

#include "report.h"

double report_ops_per_s(const report_run *r)
{
    return r->elapsed_s > 0.0 ? (double)r->ops / r->elapsed_s : 0.0;
}

static double report_us(const report_run *r, double q)
{
    return (double)hist_quantile(r->latency, q) / 1000.0;
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
    if (r->batches)
        fprintf(f, "  engine      %llu entries in %llu batches: %.1f entries/batch, "
                   "%u shards, sync %s\n",
                (unsigned long long)r->entries, (unsigned long long)r->batches,
                (double)r->entries / (double)r->batches, r->shards, r->sync);
    if (r->server_cpu_s >= 0 && r->ops)
        fprintf(f, "  server CPU  %.1f us/op  (%.2f CPU-s)\n",
                r->server_cpu_s * 1e6 / (double)r->ops, r->server_cpu_s);
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

void report_json(FILE *f, const report_run *r)
{
    fputs("{\"system\":", f);
    report_json_string(f, r->system);
    fputs(",\"workload\":", f);
    report_json_string(f, r->workload);
    fputs(",\"label\":", f);
    report_json_string(f, r->label);
    fprintf(f, ",\"connections\":%u,\"pipeline\":%u,\"threads\":%u,\"elapsed_s\":%.3f",
            r->connections, r->pipeline, r->threads, r->elapsed_s);
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
    if (r->server_cpu_s >= 0 && r->ops)
        fprintf(f, ",\"server_cpu_s\":%.3f,\"server_cpu_us_per_op\":%.2f", r->server_cpu_s,
                r->server_cpu_s * 1e6 / (double)r->ops);
    if (r->batches) {
        fprintf(f, ",\"entries\":%llu,\"batches\":%llu,\"batch_entries_avg\":%.2f,\"shards\":%u",
                (unsigned long long)r->entries, (unsigned long long)r->batches,
                (double)r->entries / (double)r->batches, r->shards);
        fputs(",\"sync\":", f);
        report_json_string(f, r->sync);
    }
    fputs("}\n", f);
}
