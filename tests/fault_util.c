/*
 * fault_util.c — filesystems, a replayable workload and its checks for
 * the durability tests (fault_util.h).
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "checksum.h"
#include "engine_util.h"
#include "fault_util.h"

/* ---- the registry of things to undo --------------------------------------- */

#define FU_REG_MAX 16

static td *fu_reg_td[FU_REG_MAX];
static pid_t fu_reg_pid[FU_REG_MAX];
static int fu_reg_pid_count;
static fu_fs *fu_reg_fs[FU_REG_MAX];
static char fu_reg_dir[FU_REG_MAX][64];
static int fu_reg_td_count, fu_reg_fs_count, fu_reg_dir_count;

static uint64_t fu_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- processes, files, shell ------------------------------------------------ */

static int fu_vsh(const char *fmt, va_list ap)
{
    char cmd[2048];
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    int st = system(cmd);
    if (st == -1)
        return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int fu_sh(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = fu_vsh(fmt, ap);
    va_end(ap);
    return rc;
}

void fu_sh_ok(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    char out[4096];
    int rc = td_run(cmd, out, sizeof(out));
    cr_assert_eq(rc, 0, "`%s` failed (%d): %s", cmd, rc, out);
}

void fu_require_root(void)
{
    if (geteuid() != 0)
        td_cannot_run("needs root (mount, loop devices): run make test as root");
}

static bool fu_pid_alive(int pid)
{
    return pid > 0 && (kill(pid, 0) == 0 || errno != ESRCH);
}

static int fu_cmp_len_desc(const void *a, const void *b)
{
    return (int)strlen(*(char *const *)b) - (int)strlen(*(char *const *)a);
}

/* Mounts and directories of fu tests whose process is gone (killed by a
 * timeout before its .fini ran): unmount and remove them. */
static void fu_sweep_stale(void)
{
    static const char prefix[] = "/dev/shm/tally-fu-";
    char *stale[64];
    int n = 0;
    FILE *f = fopen("/proc/mounts", "r");
    char line[1024];
    while (f && fgets(line, sizeof(line), f) && n < 64) {
        char dev[256], mp[512];
        if (sscanf(line, "%255s %511s", dev, mp) != 2 || strncmp(mp, prefix, sizeof(prefix) - 1))
            continue;
        if (!fu_pid_alive(atoi(mp + sizeof(prefix) - 1)))
            stale[n++] = strdup(mp);
    }
    if (f)
        fclose(f);
    qsort(stale, (size_t)n, sizeof(stale[0]), fu_cmp_len_desc);
    for (int i = 0; i < n; i++) {
        fu_sh("umount -l '%s' >/dev/null 2>&1", stale[i]);
        free(stale[i]);
    }
    DIR *d = opendir("/dev/shm");
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL) {
        char path[300];
        struct stat st;
        snprintf(path, sizeof(path), "/dev/shm/%s", de->d_name);
        /* Dead for a while (a kept post-mortem directory gets an hour). */
        if (strncmp(de->d_name, "tally-fu-", 9) == 0 && !fu_pid_alive(atoi(de->d_name + 9)) &&
            stat(path, &st) == 0 && st.st_mtime + 3600 < time(NULL))
            fu_sh("rm -rf '%s' >/dev/null 2>&1", path);
    }
    if (d)
        closedir(d);
}

void fu_workdir(char *buf, const char *tag)
{
    static bool swept;
    if (!swept) {
        swept = true;
        fu_sweep_stale();
    }
    snprintf(buf, 64, "/dev/shm/tally-fu-%d-%s-XXXXXX", (int)getpid(), tag);
    cr_assert_not_null(mkdtemp(buf), "mkdtemp %s: %s", buf, strerror(errno));
    cr_assert_lt(fu_reg_dir_count, FU_REG_MAX);
    snprintf(fu_reg_dir[fu_reg_dir_count++], 64, "%s", buf);
}

void fu_td_at(td *t, const char *dir, const char *log)
{
    memset(t, 0, sizeof(*t));
    cr_assert_lt(strlen(dir), sizeof(t->dir), "data dir path too long: %s", dir);
    cr_assert_lt(strlen(log), sizeof(t->log), "log path too long: %s", log);
    snprintf(t->dir, sizeof(t->dir), "%s", dir);
    snprintf(t->log, sizeof(t->log), "%s", log);
    for (int i = 0; i < fu_reg_td_count; i++)
        if (fu_reg_td[i] == t)
            return;
    cr_assert_lt(fu_reg_td_count, FU_REG_MAX);
    fu_reg_td[fu_reg_td_count++] = t;
}

char *fu_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 65536, n = 0;
    char *buf = malloc(cap);
    size_t got;
    while ((got = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += got;
        if (cap - n < 4096) {
            cap *= 2;
            buf = realloc(buf, cap);
        }
    }
    fclose(f);
    buf[n] = 0;
    if (len)
        *len = n;
    return buf;
}

char *fu_read_data(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return NULL;
    off_t end = lseek(fd, 0, SEEK_HOLE);
    char *buf = end >= 0 ? malloc((size_t)end + 1) : NULL;
    if (buf && pread(fd, buf, (size_t)end, 0) != end) {
        free(buf);
        buf = NULL;
    }
    close(fd);
    if (buf) {
        buf[end] = 0;
        *len = (size_t)end;
    }
    return buf;
}

int fu_log_count(const td *t, const char *const *needles)
{
    char *text = fu_read_file(t->log, NULL);
    if (!text)
        return 0;
    int count = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        bool all = true;
        for (int i = 0; needles[i] && all; i++)
            all = strstr(line, needles[i]) != NULL;
        count += all;
    }
    free(text);
    return count;
}

void fu_log_dump(const td *t, const char *why)
{
    char *text = fu_read_file(t->log, NULL);
    if (!text)
        return;
    cr_log_info("tallyd log (%s):", why);
    int lines = 0;
    for (char *line = strtok(text, "\n"); line && lines < 200; line = strtok(NULL, "\n"), lines++)
        cr_log_info("  %s", line);
    free(text);
}

long fu_rss_anon_kib(const td *t) { return td_status_kib(t, "RssAnon"); }

int fu_tally_tool(const char *args, char *out, size_t cap)
{
    const char *build = getenv("TALLY_BUILD");
    cr_assert_not_null(build, "TALLY_BUILD must name the build directory");
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "'%s/tally' %s", build, args);
    return td_run(cmd, out, cap);
}

int fu_tally_toolf(char *out, size_t cap, const char *fmt, ...)
{
    char args[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof(args), fmt, ap);
    va_end(ap);
    return fu_tally_tool(args, out, cap);
}

int fu_stop_any(td *t, int timeout_ms)
{
    if (t->pid <= 0)
        return 0;
    kill(t->pid, SIGTERM);
    int st = 0;
    uint64_t end = fu_ms() + (uint64_t)timeout_ms;
    pid_t got;
    while ((got = waitpid(t->pid, &st, WNOHANG)) == 0 && fu_ms() < end)
        usleep(10000);
    if (got == 0) {
        kill(t->pid, SIGKILL);
        waitpid(t->pid, NULL, 0);
        t->pid = 0;
        return -1;
    }
    t->pid = 0;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

pid_t fu_spawn(const char *const *argv, const char *log)
{
    cr_assert_lt(fu_reg_pid_count, FU_REG_MAX);
    pid_t pid = td_exec(argv, log);
    fu_reg_pid[fu_reg_pid_count++] = pid;
    return pid;
}

void fu_kill(pid_t pid)
{
    for (int i = 0; i < fu_reg_pid_count; i++)
        if (fu_reg_pid[i] == pid)
            fu_reg_pid[i] = 0;
    if (pid > 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
}

/* The TracerPid of every thread of pid is set. */
static bool fu_all_traced(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    if (!d)
        return false;
    bool all = true;
    int n = 0;
    struct dirent *de;
    while (all && (de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        char st[300], line[128];
        snprintf(st, sizeof(st), "/proc/%d/task/%s/status", (int)pid, de->d_name);
        FILE *f = fopen(st, "r");
        int tracer = 0;
        while (f && fgets(line, sizeof(line), f))
            if (sscanf(line, "TracerPid: %d", &tracer) == 1)
                break;
        if (f)
            fclose(f);
        all = tracer != 0;
        n++;
    }
    closedir(d);
    return all && n > 0;
}

pid_t fu_strace_inject_pid(pid_t target, const char *log, const char *path, const char *syscall,
                           const char *error)
{
    char pid[16], inject[128], trace[128];
    snprintf(pid, sizeof(pid), "%d", (int)target);
    snprintf(inject, sizeof(inject), "inject=%s:error=%s", syscall, error);
    snprintf(trace, sizeof(trace), "trace=%s", syscall);
    const char *argv[] = {"strace", "-f", "-qq", "-p", pid, "-P", path, "-e", trace, "-e",
                          inject, NULL};
    pid_t st = fu_spawn(argv, log);
    uint64_t end = fu_ms() + 10000;
    while (!fu_all_traced(target) && fu_ms() < end)
        usleep(10000);
    cr_assert(fu_all_traced(target), "strace attached to every thread of %d (see %s)",
              (int)target, log);
    return st;
}

pid_t fu_strace_inject(const td *t, const char *path, const char *syscall, const char *error)
{
    char log[128];
    snprintf(log, sizeof(log), "%s.strace", t->log);
    return fu_strace_inject_pid(t->pid, log, path, syscall, error);
}

/* ---- filesystems -------------------------------------------------------------- */

static void fu_fs_register(fu_fs *f)
{
    for (int i = 0; i < fu_reg_fs_count; i++)
        if (fu_reg_fs[i] == f)
            return;
    cr_assert_lt(fu_reg_fs_count, FU_REG_MAX);
    fu_reg_fs[fu_reg_fs_count++] = f;
}

void fu_fs_ext4(fu_fs *f, const char *tag, unsigned size_mb, unsigned outer_mb)
{
    memset(f, 0, sizeof(*f));
    fu_workdir(f->base, tag);
    fu_fs_register(f);
    snprintf(f->mnt, sizeof(f->mnt), "%s/mnt", f->base);
    cr_assert_eq(mkdir(f->mnt, 0755), 0);
    if (outer_mb > 0) {
        snprintf(f->outer, sizeof(f->outer), "%s/outer", f->base);
        cr_assert_eq(mkdir(f->outer, 0755), 0);
        fu_sh_ok("mount -t tmpfs -o size=%um tmpfs '%s'", outer_mb, f->outer);
        f->outer_mounted = true;
        snprintf(f->img, sizeof(f->img), "%s/img", f->outer);
    } else {
        snprintf(f->img, sizeof(f->img), "%s/img", f->base);
    }
    fu_sh_ok("truncate -s %um '%s' && mkfs.ext4 -q -F '%s'", size_mb, f->img, f->img);
    fu_fs_mount(f);
}

void fu_fs_tmpfs(fu_fs *f, const char *tag, const char *size)
{
    memset(f, 0, sizeof(*f));
    fu_workdir(f->base, tag);
    fu_fs_register(f);
    snprintf(f->mnt, sizeof(f->mnt), "%s/mnt", f->base);
    cr_assert_eq(mkdir(f->mnt, 0755), 0);
    fu_sh_ok("mount -t tmpfs -o size=%s tmpfs '%s'", size, f->mnt);
    f->mounted = true;
}

void fu_fs_tmpfs_resize(fu_fs *f, bool outer, const char *size)
{
    fu_sh_ok("mount -o remount,size=%s '%s'", size, outer ? f->outer : f->mnt);
}

void fu_fs_mount(fu_fs *f)
{
    cr_assert(f->img[0], "only image filesystems are remounted");
    fu_sh_ok("mount -o loop '%s' '%s'", f->img, f->mnt);
    f->mounted = true;
}

static int fu_umount_path(const char *path)
{
    /* A process that just died may still be letting go of its files. */
    for (int i = 0; i < 50; i++) {
        if (fu_sh("umount '%s' >/dev/null 2>&1", path) == 0)
            return 0;
        usleep(100000);
    }
    return fu_sh("umount -l '%s'", path);
}

void fu_fs_umount(fu_fs *f)
{
    if (!f->mounted)
        return;
    f->mounted = false;
    cr_assert_eq(fu_umount_path(f->mnt), 0, "umount %s", f->mnt);
}

void fu_fs_shutdown(fu_fs *f)
{
    fu_sh_ok("xfs_io -x -c shutdown '%s'", f->mnt);
}

void fu_cleanup(void)
{
    for (int i = 0; i < fu_reg_pid_count; i++)
        if (fu_reg_pid[i] > 0)
            fu_kill(fu_reg_pid[i]);
    fu_reg_pid_count = 0;
    for (int i = 0; i < fu_reg_td_count; i++) {
        td *t = fu_reg_td[i];
        if (t->pid > 0) {
            kill(t->pid, SIGKILL);
            waitpid(t->pid, NULL, 0);
            t->pid = 0;
        }
    }
    fu_reg_td_count = 0;
    for (int i = 0; i < fu_reg_fs_count; i++) {
        fu_fs *f = fu_reg_fs[i];
        if (f->mounted)
            fu_umount_path(f->mnt);
        f->mounted = false;
        if (f->outer_mounted)
            fu_umount_path(f->outer);
        f->outer_mounted = false;
    }
    fu_reg_fs_count = 0;
    for (int i = 0; i < fu_reg_dir_count; i++) {
        if (getenv("TALLY_FU_KEEP")) {
            fprintf(stderr, "TALLY_FU_KEEP: left %s\n", fu_reg_dir[i]);
            continue;
        }
        /* A lazily unmounted loop filesystem lets go of its mount point a
         * little later. */
        struct stat st;
        for (int k = 0; k < 50 && stat(fu_reg_dir[i], &st) == 0; k++) {
            if (k > 0)
                usleep(200000);
            fu_sh("rm -rf '%s' >/dev/null 2>&1", fu_reg_dir[i]);
        }
    }
    fu_reg_dir_count = 0;
}

/* ---- replies -------------------------------------------------------------------- */

typedef struct fu_buf {
    char *p;
    size_t len, cap;
} fu_buf;

static void fu_put(fu_buf *b, const void *s, size_t n)
{
    if (b->len + n <= b->cap)
        memcpy(b->p + b->len, s, n);
    b->len += n;
}

static void fu_putf(fu_buf *b, const char *fmt, ...)
{
    char tmp[64];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    fu_put(b, tmp, (size_t)n);
}

static void fu_encode(fu_buf *b, const redisReply *r)
{
    switch (r->type) {
    case REDIS_REPLY_STRING:
        fu_putf(b, "$%zu\r\n", (size_t)r->len);
        fu_put(b, r->str, (size_t)r->len);
        fu_put(b, "\r\n", 2);
        break;
    case REDIS_REPLY_ARRAY:
        fu_putf(b, "*%zu\r\n", r->elements);
        for (size_t i = 0; i < r->elements; i++)
            fu_encode(b, r->element[i]);
        break;
    case REDIS_REPLY_INTEGER:
        fu_putf(b, ":%lld\r\n", r->integer);
        break;
    case REDIS_REPLY_NIL:
        fu_put(b, "$-1\r\n", 5);
        break;
    case REDIS_REPLY_STATUS:
        fu_put(b, "+", 1);
        fu_put(b, r->str, (size_t)r->len);
        fu_put(b, "\r\n", 2);
        break;
    default: /* REDIS_REPLY_ERROR */
        fu_put(b, "-", 1);
        fu_put(b, r->str, (size_t)r->len);
        fu_put(b, "\r\n", 2);
        break;
    }
}

size_t fu_reply_bytes(const redisReply *r, char *buf, size_t cap)
{
    fu_buf b = {buf, 0, cap};
    fu_encode(&b, r);
    return b.len;
}

uint64_t fu_reply_hash(const redisReply *r)
{
    char buf[8192];
    size_t n = fu_reply_bytes(r, buf, sizeof(buf));
    if (n > sizeof(buf)) {
        char *big = malloc(n);
        fu_reply_bytes(r, big, n);
        uint64_t h = checksum64(big, n, 0);
        free(big);
        return h;
    }
    return checksum64(buf, n, 0);
}

bool fu_is_error(const redisReply *r, const char *code)
{
    size_t n = strlen(code);
    return r && r->type == REDIS_REPLY_ERROR && strncmp(r->str, code, n) == 0 &&
           (r->str[n] == ' ' || r->str[n] == 0);
}

void fu_shard_status(redisContext *c, unsigned shard, char *status, size_t cap, char *line,
                     size_t line_cap)
{
    redisReply *r = td_cmd(c, "INFO shards");
    cr_assert_eq(r->type, REDIS_REPLY_STRING, "INFO shards: %s",
                 r->type == REDIS_REPLY_ERROR ? r->str : "not a bulk string");
    char key[32];
    snprintf(key, sizeof(key), "shard%u:", shard);
    const char *p = strstr(r->str, key);
    cr_assert_not_null(p, "INFO shards lists shard %u: %s", shard, r->str);
    const char *eol = strpbrk(p, "\r\n");
    size_t n = eol ? (size_t)(eol - p) : strlen(p);
    if (line) {
        size_t k = n < line_cap - 1 ? n : line_cap - 1;
        memcpy(line, p, k);
        line[k] = 0;
    }
    const char *s = strstr(p, "status=");
    cr_assert(s && s < p + n, "shard %u has a status: %.*s", shard, (int)n, p);
    s += 7;
    size_t k = strcspn(s, ",\r\n");
    if (k >= cap)
        k = cap - 1;
    memcpy(status, s, k);
    status[k] = 0;
    freeReplyObject(r);
}

/* ---- the workload ---------------------------------------------------------------- */

static uint64_t fu_mix(uint64_t a, uint64_t b, uint64_t c)
{
    uint64_t z = a * 0x9e3779b97f4a7c15ull ^ b * 0xbf58476d1ce4e5b9ull ^ c * 0x94d049bb133111ebull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void fu_arg(fu_cmd *c, const char *fmt, ...)
{
    cr_assert_lt(c->argc, FU_ARGS_MAX);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(c->store[c->argc], sizeof(c->store[0]), fmt, ap);
    va_end(ap);
    c->argv[c->argc] = c->store[c->argc];
    c->argl[c->argc] = (size_t)n;
    c->argc++;
}

void fu_gen(const fu_shape *sh, uint32_t stream, uint32_t index, fu_cmd *c)
{
    c->argc = 0;
    uint32_t k = index % 16;
    c->merchant = 1 + fu_mix(stream, index / 2, 1) % sh->merchants;
    c->account = 1 + fu_mix(stream, index, 2) % sh->accounts;
    uint64_t h = fu_mix(stream, index, 3);
    int idn = snprintf(c->id, sizeof(c->id), "s%u-%u", stream, index);
    if (sh->fat) {
        memset(c->id + idn, 'x', 64 - (size_t)idn);
        c->id[64] = 0;
    }
    if (sh->earn_only || k <= 9 || k == 15) {
        c->kind = FU_EARN;
        c->points = 1 + (int64_t)(h % 500);
        fu_arg(c, "EARN");
        fu_arg(c, "%llu", (unsigned long long)c->merchant);
        fu_arg(c, "%llu", (unsigned long long)c->account);
        fu_arg(c, "%lld", (long long)c->points);
        fu_arg(c, "%s", c->id);
        if (!sh->earn_only && k == 9) {
            fu_arg(c, "EXPIRES");
            fu_arg(c, "4102444800");
            fu_arg(c, "MEMO");
            fu_arg(c, "order %u/%u", stream, index);
        } else if (sh->fat) {
            fu_arg(c, "MEMO");
            fu_arg(c, "%0128u", index);
        }
        return;
    }
    if (sh->refuse_only)
        k = 14;
    if (k == 13) {
        c->kind = FU_CAPTURE;
        c->points = 1 + (int64_t)(h % 60);
        fu_arg(c, "CAPTURE");
        fu_arg(c, "%llu", (unsigned long long)c->merchant);
        fu_cmd hold;
        fu_gen(sh, stream, index - 1, &hold);
        fu_arg(c, "%s", hold.id);
        fu_arg(c, "%s", c->id);
        fu_arg(c, "POINTS");
        fu_arg(c, "%lld", (long long)c->points);
        return;
    }
    c->kind = k == 12 ? FU_HOLD : k == 14 ? FU_REDEEM_BIG : FU_REDEEM;
    c->points = k == 12   ? 1 + (int64_t)(h % 100)
                : k == 14 ? 1000000000000ll
                          : 1 + (int64_t)(h % 200);
    fu_arg(c, k == 12 ? "HOLD" : "REDEEM");
    fu_arg(c, "%llu", (unsigned long long)c->merchant);
    fu_arg(c, "%llu", (unsigned long long)c->account);
    fu_arg(c, "%lld", (long long)c->points);
    fu_arg(c, "%s", c->id);
    if (sh->fat && k != 12) {
        fu_arg(c, "MEMO");
        fu_arg(c, "%0128u", index);
    }
}

static void fu_cmd_text(const fu_cmd *c, char *buf, size_t cap)
{
    size_t n = 0;
    buf[0] = 0;
    for (int i = 0; i < c->argc && n + 1 < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%s", i ? " " : "", c->argv[i]);
}

static const char *fu_kind_name(int kind)
{
    switch (kind) {
    case FU_EARN: return "earn";
    case FU_HOLD: return "hold";
    case FU_CAPTURE: return "capture";
    default: return "redeem";
    }
}

/* Classifies a reply to a write into op. */
static void fu_classify(fu_op *op, const redisReply *r)
{
    if (r->type == REDIS_REPLY_ARRAY) {
        const redisReply *s = td_field(r, "seq");
        op->state = s && s->type == REDIS_REPLY_INTEGER ? FU_ENTRY : FU_CONFLICT;
        op->seq = s ? (uint64_t)s->integer : 0;
        op->hash = fu_reply_hash(r);
    } else if (fu_is_error(r, "INSUFFICIENT") || fu_is_error(r, "NOTFOUND") ||
               fu_is_error(r, "INVALID")) {
        op->state = FU_REFUSED;
        op->seq = 0;
        op->hash = fu_reply_hash(r);
    } else if (r->type == REDIS_REPLY_ERROR && !fu_is_error(r, "CONFLICT")) {
        op->state = FU_FAILED;
    } else {
        op->state = FU_CONFLICT;
    }
}

void fu_book_free(fu_book *b)
{
    free(b->ops);
    b->ops = NULL;
    b->count = b->cap = 0;
}

static void fu_push(fu_op **ops, size_t *count, size_t *cap, const fu_op *op)
{
    if (*count == *cap) {
        *cap = *cap ? *cap * 2 : 4096;
        *ops = realloc(*ops, *cap * sizeof(**ops));
    }
    (*ops)[(*count)++] = *op;
}

#define FU_WORKERS_MAX 16

typedef struct fu_worker {
    struct fu_load *load;
    uint32_t stream;
    fu_op *ops;
    size_t count, cap;
} fu_worker;

struct fu_load {
    uint16_t port;
    fu_book *book;
    fu_load_opts o;
    fu_worker w[FU_WORKERS_MAX];
    pthread_t th[FU_WORKERS_MAX];
    _Atomic int stop;
    _Atomic long acked, failed;
    _Atomic int first_set;
    char first_error[256]; /* the first -ERR reply's text */
};

static void *fu_worker_main(void *arg)
{
    fu_worker *w = arg;
    fu_load *l = w->load;
    struct timeval tv = {.tv_sec = 30};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", l->port, tv);
    if (!c || c->err) {
        if (c)
            redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    fu_cmd cmd;
    bool dead = false;
    for (uint32_t idx = 0; !dead && !atomic_load(&l->stop) && idx < l->o.ops_max;) {
        uint32_t n = l->o.pipeline;
        if (n > l->o.ops_max - idx)
            n = l->o.ops_max - idx;
        size_t first = w->count;
        for (uint32_t j = 0; j < n; j++) {
            fu_gen(&l->book->shape, w->stream, idx + j, &cmd);
            redisAppendCommandArgv(c, cmd.argc, cmd.argv, cmd.argl);
            fu_op op = {.stream = w->stream, .index = idx + j, .state = FU_SENT};
            fu_push(&w->ops, &w->count, &w->cap, &op);
        }
        for (uint32_t j = 0; j < n; j++) {
            redisReply *r = NULL;
            if (redisGetReply(c, (void **)&r) != REDIS_OK || !r) {
                dead = true; /* the rest stays FU_SENT: not acknowledged */
                break;
            }
            fu_op *op = &w->ops[first + j];
            fu_classify(op, r);
            if (op->state == FU_ENTRY || op->state == FU_REFUSED)
                atomic_fetch_add(&l->acked, 1);
            else if (op->state == FU_FAILED && atomic_fetch_add(&l->failed, 1) == 0 &&
                     atomic_exchange(&l->first_set, 1) == 0)
                snprintf(l->first_error, sizeof(l->first_error), "%s", r->str ? r->str : "");
            freeReplyObject(r);
        }
        idx += n;
    }
    redisFree(c);
    return NULL;
}

fu_load *fu_load_start(const td *t, fu_book *b, const fu_load_opts *o)
{
    cr_assert(o->workers > 0 && o->workers <= FU_WORKERS_MAX);
    cr_assert(b->shape.merchants > 0 && b->shape.accounts > 0);
    fu_load *l = calloc(1, sizeof(*l));
    l->port = t->port;
    l->book = b;
    l->o = *o;
    if (!l->o.ops_max)
        l->o.ops_max = 200000;
    if (!l->o.pipeline)
        l->o.pipeline = 32;
    for (uint32_t i = 0; i < o->workers; i++) {
        l->w[i] = (fu_worker){.load = l, .stream = o->stream_base + i};
        pthread_create(&l->th[i], NULL, fu_worker_main, &l->w[i]);
    }
    return l;
}

long fu_load_acked(const fu_load *l) { return atomic_load(&((fu_load *)l)->acked); }
long fu_load_failed(const fu_load *l) { return atomic_load(&((fu_load *)l)->failed); }

const char *fu_load_first_error(const fu_load *l)
{
    return atomic_load(&((fu_load *)l)->first_set) ? l->first_error : "";
}

long fu_load_wait_acked(const fu_load *l, long n, int timeout_ms)
{
    uint64_t end = fu_ms() + (uint64_t)timeout_ms;
    while (fu_load_acked(l) < n && fu_ms() < end)
        usleep(5000);
    return fu_load_acked(l);
}

void fu_load_stop(fu_load *l)
{
    atomic_store(&l->stop, 1);
    for (uint32_t i = 0; i < l->o.workers; i++) {
        pthread_join(l->th[i], NULL);
        for (size_t k = 0; k < l->w[i].count; k++)
            fu_push(&l->book->ops, &l->book->count, &l->book->cap, &l->w[i].ops[k]);
        free(l->w[i].ops);
    }
    free(l);
}

/* ---- checks ------------------------------------------------------------------------ */

#define FU_CHUNK 256

static redisReply *fu_get(redisContext *c)
{
    redisReply *r = NULL;
    cr_assert_eq(redisGetReply(c, (void **)&r), REDIS_OK, "reply: %s", c->errstr);
    cr_assert_not_null(r);
    return r;
}

/* Older streams are sampled: about FU_OLDER_SAMPLE of their operations per
 * check, a different sample each time, so a long crash loop's checks stay
 * the same size. */
#define FU_OLDER_SAMPLE 4096

static bool fu_in_scope(const fu_op *op, uint32_t stream_from, uint64_t every, uint64_t salt)
{
    return op->stream >= stream_from || fu_mix(op->stream, op->index, salt) % every == 0;
}

/* Unacknowledged writes: there whole or not at all; then retried (a client
 * that got no answer retries with the same id) and booked. */
static void fu_check_unacked(redisContext *c, fu_book *b, fu_check *out)
{
    size_t *idx = malloc(FU_CHUNK * sizeof(*idx));
    int *found = malloc(FU_CHUNK * sizeof(*found));
    uint64_t *seqs = malloc(FU_CHUNK * sizeof(*seqs));
    size_t i = 0;
    fu_cmd cmd;
    char text[512];
    while (i < b->count) {
        size_t n = 0;
        for (; i < b->count && n < FU_CHUNK; i++)
            if (b->ops[i].state == FU_SENT || b->ops[i].state == FU_FAILED)
                idx[n++] = i;
        /* Whole or nothing: the entry, if there, is the request's. */
        for (size_t k = 0; k < n; k++) {
            fu_gen(&b->shape, b->ops[idx[k]].stream, b->ops[idx[k]].index, &cmd);
            redisAppendCommand(c, "ENTRY %llu %s", (unsigned long long)cmd.merchant, cmd.id);
        }
        for (size_t k = 0; k < n; k++) {
            redisReply *r = fu_get(c);
            fu_gen(&b->shape, b->ops[idx[k]].stream, b->ops[idx[k]].index, &cmd);
            fu_cmd_text(&cmd, text, sizeof(text));
            cr_assert(r->type == REDIS_REPLY_ARRAY || r->type == REDIS_REPLY_NIL,
                      "ENTRY of unacknowledged `%s`: %s", text,
                      r->type == REDIS_REPLY_ERROR ? r->str : "odd reply");
            found[k] = r->type == REDIS_REPLY_ARRAY;
            seqs[k] = 0;
            if (found[k]) {
                const redisReply *kind = td_field(r, "kind");
                cr_assert(kind && strcmp(kind->str, fu_kind_name(cmd.kind)) == 0,
                          "unacknowledged `%s` came back as a %s", text, kind ? kind->str : "?");
                if (cmd.kind != FU_CAPTURE) {
                    cr_assert_eq(td_int_field(r, "account"), (long long)cmd.account,
                                 "unacknowledged `%s`: account", text);
                    long long want = cmd.kind == FU_EARN ? cmd.points : -cmd.points;
                    cr_assert_eq(td_int_field(r, "points"), want,
                                 "unacknowledged `%s` is there only in part", text);
                }
                seqs[k] = (uint64_t)td_int_field(r, "seq");
                out->unacked_present++;
            }
            freeReplyObject(r);
        }
        /* The retry: the same entry if it was there, else applied now (or
         * refused by the ledger), never an I/O error or a conflict. */
        for (size_t k = 0; k < n; k++) {
            fu_gen(&b->shape, b->ops[idx[k]].stream, b->ops[idx[k]].index, &cmd);
            redisAppendCommandArgv(c, cmd.argc, cmd.argv, cmd.argl);
        }
        for (size_t k = 0; k < n; k++) {
            redisReply *r = fu_get(c);
            fu_op *op = &b->ops[idx[k]];
            fu_gen(&b->shape, op->stream, op->index, &cmd);
            fu_cmd_text(&cmd, text, sizeof(text));
            fu_classify(op, r);
            cr_assert(op->state == FU_ENTRY || op->state == FU_REFUSED,
                      "retry of unacknowledged `%s` after restart: %s", text,
                      r->type == REDIS_REPLY_ERROR ? r->str : "odd reply");
            if (found[k])
                cr_assert(op->state == FU_ENTRY && op->seq == seqs[k],
                          "retry of `%s` (present at seq %llu) must replay it", text,
                          (unsigned long long)seqs[k]);
            out->unacked++;
            freeReplyObject(r);
        }
    }
    free(idx);
    free(found);
    free(seqs);
}

/* Acknowledged writes: present with their seq, retries byte-identical. */
static void fu_check_acked(redisContext *c, fu_book *b, uint32_t stream_from, fu_check *out)
{
    static uint64_t salt = 7;
    size_t older = 0;
    for (size_t k = 0; k < b->count; k++)
        older += b->ops[k].stream < stream_from;
    uint64_t every = older / FU_OLDER_SAMPLE + 1;
    salt++;
    size_t *idx = malloc(FU_CHUNK * sizeof(*idx));
    size_t i = 0;
    fu_cmd cmd;
    char text[512];
    while (i < b->count) {
        size_t n = 0;
        for (; i < b->count && n < FU_CHUNK; i++) {
            const fu_op *op = &b->ops[i];
            cr_assert_neq(op->state, FU_CONFLICT, "stream %u op %u got an unexpected reply",
                          op->stream, op->index);
            if ((op->state == FU_ENTRY || op->state == FU_REFUSED) &&
                fu_in_scope(op, stream_from, every, salt))
                idx[n++] = i;
        }
        for (size_t k = 0; k < n; k++) {
            fu_gen(&b->shape, b->ops[idx[k]].stream, b->ops[idx[k]].index, &cmd);
            redisAppendCommand(c, "ENTRY %llu %s", (unsigned long long)cmd.merchant, cmd.id);
            redisAppendCommandArgv(c, cmd.argc, cmd.argv, cmd.argl);
        }
        for (size_t k = 0; k < n; k++) {
            const fu_op *op = &b->ops[idx[k]];
            fu_gen(&b->shape, op->stream, op->index, &cmd);
            fu_cmd_text(&cmd, text, sizeof(text));
            redisReply *e = fu_get(c), *r = fu_get(c);
            if (op->state == FU_ENTRY) {
                cr_assert_eq(e->type, REDIS_REPLY_ARRAY, "acknowledged `%s` (seq %llu) is lost: %s",
                             text, (unsigned long long)op->seq,
                             e->type == REDIS_REPLY_ERROR ? e->str : "nil");
                cr_assert_eq((uint64_t)td_int_field(e, "seq"), op->seq,
                             "acknowledged `%s` moved", text);
                out->entries++;
            } else {
                cr_assert_eq(e->type, REDIS_REPLY_NIL, "refused `%s` is not an entry: %s", text,
                             e->type == REDIS_REPLY_ERROR ? e->str : "an entry");
                out->refusals++;
            }
            char got[4096];
            size_t gl = fu_reply_bytes(r, got, sizeof(got) - 1);
            got[gl < sizeof(got) ? gl : sizeof(got) - 1] = 0;
            cr_assert_eq(fu_reply_hash(r), op->hash,
                         "retry of acknowledged `%s` answered differently: %s", text, got);
            out->retries++;
            freeReplyObject(e);
            freeReplyObject(r);
        }
    }
    free(idx);
}

/* A refused redemption stays refused once the balance would cover it. */
static void fu_check_refusal_sticks(redisContext *c, fu_book *b, uint32_t stream_from)
{
    const fu_op *pick = NULL;
    fu_cmd cmd;
    for (size_t i = b->count; i > 0 && !pick; i--) {
        const fu_op *op = &b->ops[i - 1];
        if (op->stream < stream_from || op->state != FU_REFUSED)
            continue;
        fu_gen(&b->shape, op->stream, op->index, &cmd);
        if (cmd.kind == FU_REDEEM_BIG)
            pick = op;
    }
    if (!pick)
        return;
    fu_gen(&b->shape, pick->stream, pick->index, &cmd);
    redisReply *r = td_cmd(c, "EARN %llu %llu %lld topup-%s", (unsigned long long)cmd.merchant,
                           (unsigned long long)cmd.account, (long long)cmd.points, cmd.id);
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY, "top-up: %s",
                 r->type == REDIS_REPLY_ERROR ? r->str : "?");
    freeReplyObject(r);
    r = redisCommandArgv(c, cmd.argc, cmd.argv, cmd.argl);
    cr_assert_not_null(r);
    cr_assert_eq(fu_reply_hash(r), pick->hash, "refused %s went through once covered: %s",
                 cmd.id, r->type == REDIS_REPLY_ERROR ? r->str : "an entry");
    freeReplyObject(r);
    /* Take the top-up back so later redemptions of the account stay short. */
    r = td_cmd(c, "REDEEM %llu %llu %lld drain-%s", (unsigned long long)cmd.merchant,
               (unsigned long long)cmd.account, (long long)cmd.points, cmd.id);
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY, "drain: %s",
                 r->type == REDIS_REPLY_ERROR ? r->str : "?");
    freeReplyObject(r);
}

void fu_book_check(const td *t, fu_book *b, uint32_t stream_from, fu_check *out)
{
    redisContext *c = td_connect(t);
    fu_check_unacked(c, b, out);
    fu_check_acked(c, b, stream_from, out);
    fu_check_refusal_sticks(c, b, stream_from);
    redisFree(c);
}

void fu_verify_ok(const td *t, const char *when)
{
    redisContext *c = td_connect(t);
    redisReply *r = td_cmd(c, "VERIFY");
    cr_assert(r->type == REDIS_REPLY_STATUS && strcmp(r->str, "OK") == 0, "%s: VERIFY: %s",
              when, r->str ? r->str : "?");
    freeReplyObject(r);
    redisFree(c);
}

void fu_tool_verify_ok(const char *dir, const char *when)
{
    char args[256], out[8192];
    snprintf(args, sizeof(args), "verify '%s'", dir);
    int rc = fu_tally_tool(args, out, sizeof(out));
    cr_assert_eq(rc, 0, "%s: tally verify %s exited %d: %s", when, dir, rc, out);
}
