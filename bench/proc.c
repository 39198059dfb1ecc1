/*
 * proc.c — /proc and filesystem readings (proc.h).
 */
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "proc.h"

/* statfs f_type values (linux/magic.h), named for the report. */
static const struct {
    long magic;
    const char *name;
    bool memory;
} proc_fs_names[] = {
    {0xEF53, "ext4", false},        {0x58465342, "xfs", false},
    {0x9123683E, "btrfs", false},   {0x2FC12FC1, "zfs", false},
    {0x794C7630, "overlayfs", false}, {0x6969, "nfs", false},
    {0x01021994, "tmpfs", true},    {(long)0x858458F6, "ramfs", true},
};

double proc_cpu_s(int pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* Fields after "(comm)": state is field 3; utime, stime, cutime,
     * cstime are fields 14..17. */
    char *p = strrchr(buf, ')');
    unsigned long long v[14];
    if (!p || sscanf(p + 2, "%*c %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu "
                            "%llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7],
                     &v[8], &v[9], &v[10], &v[11], &v[12], &v[13]) != 14)
        return -1;
    long hz = sysconf(_SC_CLK_TCK);
    return (double)(v[10] + v[11] + v[12] + v[13]) / (double)(hz > 0 ? hz : 100);
}

/* The number after "key" on its line of a /proc text file, -1 if absent. */
static int64_t proc_field(const char *path, const char *key)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    char line[256];
    size_t klen = strlen(key);
    long long v = -1;
    while (fgets(line, sizeof(line), f))
        if (strncmp(line, key, klen) == 0 && sscanf(line + klen, " %lld", &v) == 1)
            break;
    fclose(f);
    return v;
}

/* nftw has no context argument: the running sum lives here, one walk at a
 * time per thread. */
static _Thread_local int64_t proc_du_bytes;

static int proc_du_add(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)path;
    (void)ftw;
    if (flag == FTW_F || flag == FTW_D || flag == FTW_DP || flag == FTW_SL)
        proc_du_bytes += (int64_t)st->st_blocks * 512;
    return 0;
}

int64_t proc_dir_bytes(const char *dir)
{
    proc_du_bytes = 0;
    if (nftw(dir, proc_du_add, 32, FTW_PHYS) != 0)
        return errno ? -errno : -EIO;
    return proc_du_bytes;
}

int proc_sample_get(int pid, const char *dir, proc_sample *out)
{
    char path[64];
    proc_sample s = {.cpu_s = proc_cpu_s(pid), .disk_bytes = -1, .records = -1};
    if (s.cpu_s < 0)
        return -ESRCH;
    snprintf(path, sizeof(path), "/proc/%d/io", pid);
    s.write_bytes = proc_field(path, "write_bytes:");
    snprintf(path, sizeof(path), "/proc/%d/status", pid);
    s.rss_anon_kib = proc_field(path, "RssAnon:");
    if (dir) {
        int64_t b = proc_dir_bytes(dir);
        s.disk_bytes = b >= 0 ? b : -1;
    }
    *out = s;
    return 0;
}

static double proc_ratio(double num, double den)
{
    return num >= 0 && den > 0 ? num / den : -1;
}

void proc_figures_get(const proc_sample *before, const proc_sample *after, uint64_t ops,
                      proc_figures *out)
{
    proc_figures f = {.cpu_s = -1, .entries_written = -1, .write_bytes = -1, .rss_anon_bytes = -1};
    if (before->cpu_s >= 0 && after->cpu_s >= before->cpu_s)
        f.cpu_s = after->cpu_s - before->cpu_s;
    f.cpu_us_per_op = proc_ratio(f.cpu_s * 1e6, (double)ops);
    if (before->records >= 0 && after->records >= before->records)
        f.entries_written = after->records - before->records;
    if (before->write_bytes >= 0 && after->write_bytes >= before->write_bytes)
        f.write_bytes = after->write_bytes - before->write_bytes;
    f.write_bytes_per_entry = proc_ratio((double)f.write_bytes, (double)f.entries_written);
    f.disk_bytes_per_entry = proc_ratio((double)after->disk_bytes, (double)after->records);
    if (after->rss_anon_kib >= 0)
        f.rss_anon_bytes = after->rss_anon_kib * 1024;
    *out = f;
}

int proc_fs_type(const char *path, char *name, unsigned cap, bool *memory)
{
    struct statfs sf;
    if (statfs(path, &sf) != 0)
        return -errno;
    for (size_t i = 0; i < sizeof(proc_fs_names) / sizeof(proc_fs_names[0]); i++)
        if ((unsigned long)sf.f_type == (unsigned long)proc_fs_names[i].magic) {
            snprintf(name, cap, "%s", proc_fs_names[i].name);
            *memory = proc_fs_names[i].memory;
            return 0;
        }
    snprintf(name, cap, "0x%lx", (unsigned long)sf.f_type);
    *memory = false;
    return 0;
}
