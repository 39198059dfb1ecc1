/*
 * damage_test.c — damaged files under a stopped tallyd (SPEC §4: "a torn
 * or corrupt log tail is detected by checksum, truncated to the last valid
 * record, and reported; corruption inside acknowledged data is reported,
 * and the server refuses to serve the affected shard rather than serve
 * wrong balances").
 *
 * Segments: a ledger of 8 shards is written (per shard 40 writes one at a
 * time — one batch each — then bursts of 60 pipelined until the last batch
 * holds over 20 records), tallyd
 * is killed, and each run damages every shard's segment in its own way
 * (so one restart checks eight cases), restarts tallyd and checks every
 * shard.  The damage: zeroing from every byte offset of the last three
 * records to the end (a torn write), 4 KiB of zeros (at the tail, mid-log,
 * as a hole inside the last batch), one flipped bit (first record, middle,
 * the last record of the batch before the last, inside the last batch),
 * a duplicated 512-byte sector (mid-log, over the last sector, past the
 * end).  The state directory is removed before each run, so recovery
 * replays the whole log and every record is judged by the log alone.
 *
 * The rule (DESIGN-NOTES §7, log.h): only the last batch can be partly on
 * disk, so damage whose first damaged record is in the last batch is a
 * torn tail — truncated before that record, reported in tallyd's log,
 * served, and the next write gets that record's seq; damage before it is
 * corruption of acknowledged data — that shard is refused (INFO shards
 * says corrupt, its requests get an error naming the shard and the seq),
 * the other shards serve.  Never a wrong balance: every balance served
 * equals the sum of the records that survive.
 *
 * LMDB: there are no checksums in LMDB itself; a flipped bit inside a
 * stored value (an account's balances, a merchant's totals, an id's index
 * entry) must be detected — the shard refused — or harmless: every answer
 * served is still the right one.
 *
 * TALLY_TORN_STRIDE=n tries every n-th offset of the torn-write sweep
 * (default 1: every offset).
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checksum.h"
#include "fault_util.h"
#include "ids.h"
#include "record.h"

#define DM_SHARDS 8
#define DM_ONE_BY_ONE 40
#define DM_PIPELINED 60
#define DM_ROUNDS_MAX 12 /* bursts tried: a loaded machine splits them */
#define DM_RECS (DM_ONE_BY_ONE + DM_ROUNDS_MAX * DM_PIPELINED + 1)
#define DM_ACCOUNTS 3

typedef struct dm_rec {
    uint64_t off, len, seq, batch_seq, account;
    int64_t points;
    char id[32];
} dm_rec;

typedef struct dm_shard {
    uint64_t merchant;
    char seg[160];
    uint8_t *pristine; /* the segment's bytes [0, size) as written */
    uint8_t *damaged;
    size_t size;
    dm_rec recs[DM_RECS];
    int n;
    uint64_t end; /* first byte after the last record */
} dm_shard;

static dm_shard dm[DM_SHARDS];
static td dm_td;
static char dm_wd[64];

/* ---- the ledger under test -------------------------------------------------- */

static uint64_t dm_merchant_of(unsigned s)
{
    for (uint64_t m = 100; m < 100000; m++)
        if (checksum_shard(m, DM_SHARDS) == s)
            return m;
    cr_assert_fail("no merchant for shard %u", s);
    return 0;
}

static void dm_one_by_one(redisContext *c, unsigned s)
{
    uint64_t m = dm[s].merchant = dm_merchant_of(s);
    for (int k = 0; k < DM_ONE_BY_ONE; k++) {
        redisReply *r = td_cmd(c, "EARN %llu %d %d a%d", (unsigned long long)m,
                               1 + k % DM_ACCOUNTS, 1 + k * 37 % 97, k);
        cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
        freeReplyObject(r);
    }
}

/* One pipelined burst: on an idle machine the shard takes the first
 * request alone (it wakes on it) and the rest as one batch. */
static void dm_burst(redisContext *c, unsigned s, int round)
{
    uint64_t m = dm[s].merchant;
    for (int k = 0; k < DM_PIPELINED; k++)
        redisAppendCommand(c, "EARN %llu %d %d b%d-%d", (unsigned long long)m,
                           1 + k % DM_ACCOUNTS, 1 + k * 41 % 89, round, k);
    for (int k = 0; k < DM_PIPELINED; k++) {
        redisReply *r;
        cr_assert_eq(redisGetReply(c, (void **)&r), REDIS_OK);
        cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
        freeReplyObject(r);
    }
}

/* Reads shard s's only segment and decodes its records. */
static void dm_load_shard(unsigned s)
{
    dm_shard *d = &dm[s];
    snprintf(d->seg, sizeof(d->seg), "%s/shard-%03u/log-0000000001.seg", dm_td.dir, s);
    size_t len = 0;
    d->pristine = (uint8_t *)fu_read_file(d->seg, &len);
    cr_assert_not_null(d->pristine, "%s", d->seg);
    d->size = len;
    d->damaged = malloc(len);
    uint64_t off = 64, prev = 0;
    d->n = 0;
    while (off < len && d->n < DM_RECS) {
        record r;
        size_t rl;
        uint64_t sum;
        if (record_decode(d->pristine + off, len - off, &r, &rl, &sum) != RECORD_OK)
            break;
        cr_assert_eq(r.prev, prev, "shard %u: the written log chains", s);
        dm_rec *x = &d->recs[d->n++];
        *x = (dm_rec){.off = off, .len = rl, .seq = r.seq, .batch_seq = r.seq - r.batch_back,
                      .account = r.account, .points = r.points};
        snprintf(x->id, sizeof(x->id), "%.*s", (int)r.id_len, r.id);
        prev = sum;
        off += rl;
    }
    cr_assert_lt(d->n, DM_RECS);
    d->end = off;
}

static void dm_setup(void)
{
    fu_workdir(dm_wd, "dmg");
    char dir[96], log[96];
    snprintf(dir, sizeof(dir), "%s/data", dm_wd);
    snprintf(log, sizeof(log), "%s/tallyd.log", dm_wd);
    fu_td_at(&dm_td, dir, log);
    char shards[8];
    snprintf(shards, sizeof(shards), "%d", DM_SHARDS);
    td_start(&dm_td, (const char *const[]){"--shards", shards, NULL});
    redisContext *c = td_connect(&dm_td);
    for (unsigned s = 0; s < DM_SHARDS; s++)
        dm_one_by_one(c, s);
    /* The last batch must hold many records (the cases put holes in it); a
     * busy machine splits bursts, so a shard whose last batch came out
     * small gets another burst. */
    bool need[DM_SHARDS];
    memset(need, 1, sizeof(need));
    for (int round = 0;; round++) {
        cr_assert_lt(round, DM_ROUNDS_MAX,
                     "a pipelined burst ended in a batch of over 20 records");
        for (unsigned s = 0; s < DM_SHARDS; s++)
            if (need[s])
                dm_burst(c, s, round);
        redisFree(c);
        td_kill9(&dm_td);
        bool again = false;
        for (unsigned s = 0; s < DM_SHARDS; s++) {
            free(dm[s].pristine);
            free(dm[s].damaged);
            dm_load_shard(s);
            const dm_shard *d = &dm[s];
            int b0 = d->n - 1;
            while (b0 > 0 && d->recs[b0 - 1].batch_seq == d->recs[d->n - 1].batch_seq)
                b0--;
            need[s] = d->n - b0 <= 20;
            again |= need[s];
        }
        if (!again)
            break;
        td_start(&dm_td, (const char *const[]){"--shards", shards, NULL});
        c = td_connect(&dm_td);
    }
}

static void dm_free(void)
{
    for (unsigned s = 0; s < DM_SHARDS; s++) {
        free(dm[s].pristine);
        free(dm[s].damaged);
    }
    fu_cleanup();
}

/* ---- damage ---------------------------------------------------------------- */

enum dm_kind { DM_ZERO_TO_END, DM_ZERO, DM_FLIP, DM_DUP };

typedef struct dm_case {
    int kind;
    uint64_t off; /* DM_FLIP: the byte; DM_DUP: the sector copied onto the next */
    uint64_t len; /* DM_ZERO: bytes */
    bool header;  /* the damage is in the segment header: refuse */
    char name[64];
} dm_case;

static void dm_apply(dm_shard *d, const dm_case *c)
{
    memcpy(d->damaged, d->pristine, d->size);
    switch (c->kind) {
    case DM_ZERO_TO_END:
        memset(d->damaged + c->off, 0, d->end - c->off);
        break;
    case DM_ZERO:
        memset(d->damaged + c->off, 0, c->len);
        break;
    case DM_FLIP:
        d->damaged[c->off] ^= 0x08;
        break;
    default:
        memcpy(d->damaged + c->off + 512, d->pristine + c->off, 512);
        break;
    }
}

/* The first record whose bytes the damage changed (n: none). */
static int dm_first_damaged(const dm_shard *d)
{
    for (int k = 0; k < d->n; k++)
        if (memcmp(d->pristine + d->recs[k].off, d->damaged + d->recs[k].off, d->recs[k].len))
            return k;
    return d->n;
}

#define DM_ADD(...)                                                                      \
    do {                                                                                 \
        cr_assert_lt(n, cap);                                                            \
        out[n++] = (dm_case)__VA_ARGS__;                                                 \
    } while (0)

/* The first record of the last batch. */
static int dm_last_batch(const dm_shard *d)
{
    int last = d->n - 1, b0 = last;
    while (b0 > 0 && d->recs[b0 - 1].batch_seq == d->recs[last].batch_seq)
        b0--;
    cr_assert_geq(last - b0, 10, "the pipelined writes ended in a batch of several records");
    return b0;
}

/* A torn write: zeros from every offset of the last three records on. */
static int dm_cases_torn(const dm_shard *d, dm_case *out, int cap, int stride)
{
    int n = 0;
    for (uint64_t x = d->recs[d->n - 3].off; x < d->end; x += (uint64_t)stride) {
        DM_ADD({.kind = DM_ZERO_TO_END, .off = x});
        snprintf(out[n - 1].name, sizeof(out[0].name), "torn write from offset %llu",
                 (unsigned long long)x);
    }
    return n;
}

/* Zeroed blocks, flipped bits and duplicated sectors, at the tail and
 * before it (none starts at a record boundary: see dm_cases_boundary). */
static int dm_cases_mixed(const dm_shard *d, dm_case *out, int cap, int stride)
{
    (void)stride;
    int n = 0;
    const dm_rec *r = d->recs;
    int last = d->n - 1, b0 = dm_last_batch(d);
    DM_ADD({.kind = DM_ZERO, .off = d->end - 4096, .len = 4096,
            .name = "4 KiB of zeros at the tail"});
    DM_ADD({.kind = DM_ZERO, .off = r[10].off + 16, .len = 4096, .name = "4 KiB of zeros mid-log"});
    DM_ADD({.kind = DM_ZERO, .off = r[b0 + 1].off + 8, .len = r[b0 + 4].off - r[b0 + 1].off,
            .name = "a hole inside the last batch"});
    DM_ADD({.kind = DM_FLIP, .off = r[0].off + 30, .name = "a bit of the first record"});
    DM_ADD({.kind = DM_FLIP, .off = r[last / 2].off + 70, .name = "a bit mid-log"});
    DM_ADD({.kind = DM_FLIP, .off = r[b0 - 1].off + 50,
            .name = "a bit of the last record before the last batch"});
    DM_ADD({.kind = DM_FLIP, .off = r[b0 + 2].off + 60, .name = "a bit inside the last batch"});
    DM_ADD({.kind = DM_FLIP, .off = r[last].off + 40, .name = "a bit of the last record"});
    DM_ADD({.kind = DM_DUP, .off = (r[15].off + 511) / 512 * 512,
            .name = "a sector duplicated mid-log"});
    DM_ADD({.kind = DM_DUP, .off = (d->end - 1) / 512 * 512 - 512,
            .name = "the sector before the last written over the last"});
    DM_ADD({.kind = DM_DUP, .off = (d->end - 1) / 512 * 512,
            .name = "the last sector duplicated past the end"});
    return n;
}

/* Zeros that start exactly at a record boundary: the length field reads 0,
 * which is also what the clean end of the log looks like. */
static int dm_cases_boundary(const dm_shard *d, dm_case *out, int cap, int stride)
{
    (void)stride;
    int n = 0;
    const dm_rec *r = d->recs;
    int b0 = dm_last_batch(d);
    DM_ADD({.kind = DM_ZERO, .off = r[10].off, .len = 4096,
            .name = "4 KiB of zeros from a record boundary mid-log"});
    DM_ADD({.kind = DM_ZERO, .off = r[b0 - 3].off, .len = r[b0 - 1].off - r[b0 - 3].off,
            .name = "two records zeroed before the last batch"});
    DM_ADD({.kind = DM_ZERO, .off = r[b0 + 1].off, .len = r[b0 + 4].off - r[b0 + 1].off,
            .name = "three records zeroed inside the last batch"});
    return n;
}
/* The segment header (shard, index, first seq, chain value): no record is
 * damaged, but nothing in the segment can be trusted. */
static int dm_cases_header(const dm_shard *d, dm_case *out, int cap, int stride)
{
    (void)d;
    (void)stride;
    int n = 0;
    DM_ADD({.kind = DM_FLIP, .off = 20, .name = "a bit of the segment header", .header = true});
    return n;
}
#undef DM_ADD

/* ---- one run: damage, restart, check every shard ------------------------------- */

static void dm_restore_and_damage(unsigned s, const dm_case *c)
{
    dm_shard *d = &dm[s];
    dm_apply(d, c);
    int fd = open(d->seg, O_WRONLY);
    cr_assert(fd >= 0);
    cr_assert_eq(pwrite(fd, d->damaged, d->size, 0), (ssize_t)d->size);
    close(fd);
    /* Recovery replays the whole log: no checkpoint vouches for anything,
     * and later segments (made ahead) go too. */
    fu_sh_ok("cd '%s/shard-%03u' && rm -rf state && rm -f log-*.seg.tmp && "
             "ls | grep -v '^log-0000000001.seg$' | xargs -r rm -f",
             dm_td.dir, s);
}

typedef struct dm_tally {
    long tail, refused, intact;
} dm_tally;

static bool dm_text_has(const char *text, const char *a, const char *b)
{
    return text && strstr(text, a) && strstr(text, b);
}

static void dm_check_shard(redisContext *c, unsigned s, const dm_case *cs, dm_tally *tl)
{
    const dm_shard *d = &dm[s];
    int j = dm_first_damaged(d);
    char shard_s[32], seq_s[48], status[32], line[512];
    snprintf(shard_s, sizeof(shard_s), "shard %u", s);
    snprintf(seq_s, sizeof(seq_s), "seq %llu",
             j < d->n ? (unsigned long long)d->recs[j].seq : 0ull);
    fu_shard_status(c, s, status, sizeof(status), line, sizeof(line));
    /* Refused if an intact record of a later batch follows the first damaged
     * one (acknowledged data was damaged); else it is a torn tail. */
    bool refuse = cs->header;
    for (int k = j + 1; k < d->n && !refuse; k++)
        refuse = d->recs[k].batch_seq > d->recs[j].seq &&
                 memcmp(d->pristine + d->recs[k].off, d->damaged + d->recs[k].off,
                        d->recs[k].len) == 0;
    if (refuse) {
        /* Acknowledged data is damaged: the shard is refused. */
        cr_assert_str_eq(status, "corrupt", "shard %u, %s: INFO says %s", s, cs->name, line);
        if (!cs->header)
            cr_assert_not_null(strstr(line, seq_s), "shard %u, %s: INFO names %s: %s", s,
                               cs->name, seq_s, line);
        redisReply *r = td_cmd(c, "BALANCE %llu 1", (unsigned long long)d->merchant);
        cr_assert_eq(r->type, REDIS_REPLY_ERROR, "shard %u, %s: a corrupt shard served a balance",
                     s, cs->name);
        /* A damaged header names its segment rather than a seq. */
        cr_assert(dm_text_has(r->str, shard_s, cs->header ? "segment 1" : seq_s),
                  "shard %u, %s: the error names %s and %s: %s", s, cs->name, shard_s,
                  cs->header ? "segment 1" : seq_s, r->str);
        freeReplyObject(r);
        r = td_cmd(c, "EARN %llu 1 1 refused-write", (unsigned long long)d->merchant);
        cr_assert_eq(r->type, REDIS_REPLY_ERROR, "shard %u, %s: a corrupt shard took a write", s,
                     cs->name);
        freeReplyObject(r);
        tl->refused++;
        return;
    }
    /* A torn tail (or no damage to any record): served, truncated before
     * the first damaged record. */
    cr_assert_str_eq(status, "ok", "shard %u, %s: %s", s, cs->name, line);
    int64_t want[DM_ACCOUNTS + 1] = {0};
    for (int k = 0; k < j; k++)
        want[d->recs[k].account] += d->recs[k].points;
    for (int a = 1; a <= DM_ACCOUNTS; a++) {
        redisReply *r = td_cmd(c, "BALANCE %llu %d", (unsigned long long)d->merchant, a);
        cr_assert_eq(r->type, REDIS_REPLY_ARRAY, "shard %u, %s: BALANCE: %s", s, cs->name,
                     r->type == REDIS_REPLY_ERROR ? r->str : "?");
        cr_assert_eq(td_int_field(r, "available"), want[a],
                     "shard %u, %s: account %d has %lld, the %d surviving records say %lld", s,
                     cs->name, a, td_int_field(r, "available"), j, (long long)want[a]);
        freeReplyObject(r);
    }
    if (j > 0) {
        redisReply *r = td_cmd(c, "ENTRY %llu %s", (unsigned long long)d->merchant,
                               d->recs[j - 1].id);
        cr_assert_eq(r->type, REDIS_REPLY_ARRAY, "shard %u, %s: the last good record %s", s,
                     cs->name, d->recs[j - 1].id);
        freeReplyObject(r);
    }
    if (j < d->n) {
        redisReply *r = td_cmd(c, "ENTRY %llu %s", (unsigned long long)d->merchant,
                               d->recs[j].id);
        cr_assert_eq(r->type, REDIS_REPLY_NIL, "shard %u, %s: torn record %s is served", s,
                     cs->name, d->recs[j].id);
        freeReplyObject(r);
        /* Reported, unless the damage removed whole records (zeros from a
         * record boundary look like the clean end of the log). */
        bool whole = true;
        for (uint64_t o = d->recs[j].off; o < d->end && whole; o++)
            whole = d->damaged[o] == 0;
        char torn[64];
        snprintf(torn, sizeof(torn), "torn tail at seq %llu", (unsigned long long)d->recs[j].seq);
        if (!whole && fu_log_count(&dm_td, (const char *const[]){shard_s, torn, NULL}) < 1) {
            fu_log_dump(&dm_td, "no torn tail reported");
            for (int k = j - 3 < 0 ? 0 : j - 3; k < d->n && k < j + 4; k++)
                cr_log_info("shard %u record %d: off %llu len %llu seq %llu batch %llu", s, k,
                            (unsigned long long)d->recs[k].off,
                            (unsigned long long)d->recs[k].len,
                            (unsigned long long)d->recs[k].seq,
                            (unsigned long long)d->recs[k].batch_seq);
            cr_assert_fail("shard %u, %s: tallyd's log reports the %s", s, cs->name, torn);
        }
        tl->tail++;
    } else {
        tl->intact++;
    }
    /* Writing resumes right after the last good record. */
    redisReply *r = td_cmd(c, "EARN %llu 1 1 after-damage", (unsigned long long)d->merchant);
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY, "shard %u, %s: a write after recovery: %s", s,
                 cs->name, r->type == REDIS_REPLY_ERROR ? r->str : "?");
    uint64_t want_seq = j < d->n ? d->recs[j].seq : d->recs[d->n - 1].seq + 1;
    cr_assert_eq((uint64_t)td_int_field(r, "seq"), want_seq, "shard %u, %s: next seq", s,
                 cs->name);
    freeReplyObject(r);
}

typedef int (*dm_cases_fn)(const dm_shard *d, dm_case *out, int cap, int stride);

/* Deals the cases of `gen` out over the shards and runs them (see the
 * file comment); returns the tally. */
static dm_tally dm_run(dm_cases_fn gen, const char *what)
{
    int stride = getenv("TALLY_TORN_STRIDE") ? atoi(getenv("TALLY_TORN_STRIDE")) : 1;
    cr_assert_gt(stride, 0);
    dm_setup();
    static dm_case cases[DM_SHARDS][2048];
    int counts[DM_SHARDS], runs = 0;
    for (unsigned s = 0; s < DM_SHARDS; s++) {
        counts[s] = gen(&dm[s], cases[s], 2048, stride);
        if (counts[s] > runs)
            runs = counts[s];
    }
    /* The case lists have the same recipe on every shard (offsets are
     * relative to each shard's own records), so they are dealt out: case k
     * goes to shard k / per_run in run k % per_run — each case is tried
     * once, and each run mixes kinds across shards. */
    runs = (runs + DM_SHARDS - 1) / DM_SHARDS * DM_SHARDS;
    int per_run = runs / DM_SHARDS;
    dm_tally tl = {0};
    char shards[8];
    snprintf(shards, sizeof(shards), "%d", DM_SHARDS);
    long checked = 0;
    for (int i = 0; i < per_run; i++) {
        const dm_case *now[DM_SHARDS];
        for (unsigned s = 0; s < DM_SHARDS; s++) {
            int k = (i + (int)s * per_run) % runs;
            now[s] = &cases[s][k % counts[s]];
            dm_restore_and_damage(s, now[s]);
        }
        cr_assert_eq(truncate(dm_td.log, 0), 0);
        td_start(&dm_td, (const char *const[]){"--shards", shards, NULL});
        redisContext *c = td_connect(&dm_td);
        for (unsigned s = 0; s < DM_SHARDS; s++) {
            dm_check_shard(c, s, now[s], &tl);
            checked++;
        }
        redisFree(c);
        td_kill9(&dm_td);
    }
    fprintf(stderr,
            "damage (%s): %d restarts, %ld shard cases: %ld torn tails truncated, %ld shards "
            "refused, %ld harmless\n",
            what, per_run, checked, tl.tail, tl.refused, tl.intact);
    return tl;
}

Test(damage, a_torn_write_from_any_offset_of_the_last_records_is_truncated_reported_and_served,
     .timeout = 600, .fini = dm_free)
{
    dm_tally tl = dm_run(dm_cases_torn, "torn writes");
    cr_assert_gt(tl.tail, 0);
}

Test(damage, flipped_bits_zeroed_blocks_and_duplicated_sectors_truncate_tail_or_refuse_shard,
     .timeout = 600, .fini = dm_free)
{
    dm_tally tl = dm_run(dm_cases_mixed, "bits, blocks, sectors");
    cr_assert_gt(tl.tail, 0);
    cr_assert_gt(tl.refused, 0);
}

/* Regression test for a gap these tests found (fixed in 95e783b): the
 * shard was refused, but the error its clients got ("segment 1: header
 * checksum mismatch") did not name the shard. */
Test(damage, a_damaged_segment_header_refuses_the_shard_with_an_error_naming_it,
     .timeout = 600, .fini = dm_free)
{
    dm_tally tl = dm_run(dm_cases_header, "segment header");
    cr_assert_eq(tl.refused, DM_SHARDS);
}

/* Regression test for a bug these tests found (fixed in 95e783b): zeros
 * that begin exactly at a record boundary read as the clean end of the
 * log, so the acknowledged batches after them were dropped without a word
 * (tallyd served the balances without them; VERIFY and `tally verify`
 * said ok). */
Test(damage, zeros_from_a_record_boundary_do_not_silently_hide_the_records_after_them,
     .timeout = 600, .fini = dm_free)
{
    dm_run(dm_cases_boundary, "zeros from a record boundary");
}

/* ---- LMDB: a flipped bit inside a stored value ---------------------------------- */

#define LM_SHARDS 2
#define LM_MERCHANTS 8
#define LM_ACCOUNTS 4
#define LM_ACCOUNT0 1000001ull /* never equal to a seq: (m, a) keys stay unique */

static td lm_td;

static int64_t lm_earned(int m, int a) { return 60 + 10 * m + a; }

/* A small ledger, stopped cleanly: everything is in LMDB, nothing to replay. */
static void lm_setup(void)
{
    char wd[64], dir[96], log[96];
    fu_workdir(wd, "lmdb");
    snprintf(dir, sizeof(dir), "%s/data", wd);
    snprintf(log, sizeof(log), "%s/tallyd.log", wd);
    fu_td_at(&lm_td, dir, log);
    td_start(&lm_td, (const char *const[]){"--shards", "2", NULL});
    redisContext *c = td_connect(&lm_td);
    for (int m = 0; m < LM_MERCHANTS; m++)
        for (int a = 0; a < LM_ACCOUNTS; a++) {
            unsigned long long acct = LM_ACCOUNT0 + (unsigned long long)a;
            for (int k = 0; k < 3; k++)
                freeReplyObject(td_cmd(c, "EARN %d %llu %lld e%d-%llu-%d", 100 + m, acct,
                                       (long long)(k == 0 ? lm_earned(m, a) - 40 : 20), m,
                                       acct, k));
            freeReplyObject(td_cmd(c, "REDEEM %d %llu 5 r%d-%llu", 100 + m, acct, m, acct));
        }
    redisFree(c);
    td_stop(&lm_td);
}

/* Flips one bit at value offset `at` (or the middle of a shorter value) of
 * every leaf node whose key is key[0, key_len): LMDB keeps old copies of
 * pages, so every copy is hit, the live one included.  Returns how many. */
static int lm_flip_value(unsigned shard, const uint8_t *key, size_t key_len, size_t at)
{
    char path[160];
    snprintf(path, sizeof(path), "%s/shard-%03u/state/data.mdb", lm_td.dir, shard);
    size_t len = 0;
    uint8_t *db = (uint8_t *)fu_read_data(path, &len);
    cr_assert_not_null(db, "%s", path);
    int hits = 0;
    for (size_t p = 4096 + 8; p + key_len <= len; p++) {
        if (memcmp(db + p, key, key_len) != 0)
            continue;
        const uint8_t *node = db + p - 8, *page = db + p / 4096 * 4096;
        uint16_t flags = (uint16_t)(page[10] | page[11] << 8);
        size_t dsize = (size_t)(node[0] | node[1] << 8) | (size_t)(node[2] | node[3] << 8) << 16;
        uint16_t nflags = (uint16_t)(node[4] | node[5] << 8);
        uint16_t ksize = (uint16_t)(node[6] | node[7] << 8);
        /* A leaf page (not LEAF2, not overflow), a plain node with this key. */
        if (!(flags & 0x02) || (flags & 0x24) || nflags != 0 || ksize != key_len ||
            dsize < 9 || p + key_len + dsize > (p / 4096 + 1) * 4096)
            continue;
        size_t off = at < dsize - 8 ? at : (dsize - 8) / 2;
        db[p + key_len + off] ^= 0x04;
        hits++;
    }
    FILE *f = fopen(path, "r+b");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(db, 1, len, f), len);
    fclose(f);
    free(db);
    cr_assert_gt(hits, 0, "the key was found in %s (has the state's layout changed?)", path);
    return hits;
}

static void lm_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

/* The damage is reported with its shard: in tallyd's log or INFO shards. */
static void lm_assert_reported(redisContext *c, unsigned shard, long refusals)
{
    char sh[16], status[32], line[512];
    snprintf(sh, sizeof(sh), "shard %u", shard);
    int logged = fu_log_count(&lm_td, (const char *const[]){sh, "mismatch", NULL}) +
                 fu_log_count(&lm_td, (const char *const[]){sh, "corrupt", NULL}) +
                 fu_log_count(&lm_td, (const char *const[]){sh, "damaged", NULL});
    fu_shard_status(c, shard, status, sizeof(status), line, sizeof(line));
    fprintf(stderr, "  %d log lines about %s, %ld refused answers; INFO: %s\n", logged, sh,
            refusals, line);
    if (logged == 0 && strcmp(status, "corrupt") != 0)
        fu_log_dump(&lm_td, "the damage was not reported");
    cr_assert(logged > 0 || strcmp(status, "corrupt") == 0,
              "a flipped bit in %s's state is reported (tallyd's log or INFO shards)", sh);
}

/* Every account's BALANCE is right or refused; returns the refusals. */
static long lm_check_balances(redisContext *c, const char *what)
{
    long refused = 0;
    for (int m = 0; m < LM_MERCHANTS; m++)
        for (int a = 0; a < LM_ACCOUNTS; a++) {
            redisReply *r = td_cmd(c, "BALANCE %d %llu", 100 + m,
                                   LM_ACCOUNT0 + (unsigned long long)a);
            if (r->type == REDIS_REPLY_ERROR) {
                refused++;
                freeReplyObject(r);
                continue;
            }
            cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
            long long earned = lm_earned(m, a);
            long long got[3] = {td_int_field(r, "available"), td_int_field(r, "earned"),
                                td_int_field(r, "redeemed")};
            cr_assert(got[0] == earned - 5 && got[1] == earned && got[2] == 5 &&
                          td_int_field(r, "held") == 0 && td_int_field(r, "pending") == 0,
                      "%s: BALANCE %d %llu served a wrong balance (available %lld earned %lld "
                      "redeemed %lld; the ledger says %lld %lld 5)",
                      what, 100 + m, LM_ACCOUNT0 + (unsigned long long)a, got[0], got[1],
                      got[2], earned - 5, earned);
            freeReplyObject(r);
        }
    return refused;
}

/* Stops the refusing server, reports what the offline verify says, and
 * restarts: the damaged state is rebuilt, every balance is served and
 * right, VERIFY and `tally verify` are clean. */
static void lm_rebuild(const char *what)
{
    fu_stop_any(&lm_td, 30000);
    char args[256], out[4096];
    snprintf(args, sizeof(args), "verify '%s'", lm_td.dir);
    int rc = fu_tally_tool(args, out, sizeof(out));
    fprintf(stderr, "  %s: offline tally verify exits %d: %.300s\n", what, rc, out);
    td_start(&lm_td, (const char *const[]){"--shards", "2", NULL});
    redisContext *c = td_connect(&lm_td);
    cr_assert_eq(lm_check_balances(c, what), 0, "%s: after a restart every balance is served",
                 what);
    redisFree(c);
    fu_verify_ok(&lm_td, what);
    td_stop(&lm_td);
    fu_tool_verify_ok(lm_td.dir, what);
}

Test(lmdb, a_flipped_bit_in_an_account_value_is_never_served_as_a_wrong_balance,
     .timeout = 120, .fini = fu_cleanup)
{
    lm_setup();
    uint8_t key[16];
    lm_be64(key, 103);
    lm_be64(key + 8, LM_ACCOUNT0 + 2);
    unsigned shard = checksum_shard(103, LM_SHARDS);
    int hits = lm_flip_value(shard, key, sizeof(key), 40); /* lots_total in format 2 */
    td_start(&lm_td, (const char *const[]){"--shards", "2", NULL});
    redisContext *c = td_connect(&lm_td);
    long refused = lm_check_balances(c, "account value");
    lm_assert_reported(c, shard, refused);
    fprintf(stderr, "lmdb (account value): %d copies flipped, %ld of %d balances refused, the "
                    "rest right\n",
            hits, refused, LM_MERCHANTS * LM_ACCOUNTS);
    redisFree(c);
    lm_rebuild("account value");
}

Test(lmdb, a_flipped_bit_in_a_merchants_totals_is_never_served_as_wrong_totals,
     .timeout = 120, .fini = fu_cleanup)
{
    lm_setup();
    uint8_t key[8];
    lm_be64(key, 105);
    unsigned shard = checksum_shard(105, LM_SHARDS);
    int hits = lm_flip_value(shard, key, sizeof(key), 8); /* outstanding */
    td_start(&lm_td, (const char *const[]){"--shards", "2", NULL});
    redisContext *c = td_connect(&lm_td);
    long refused = 0;
    for (int m = 0; m < LM_MERCHANTS; m++) {
        redisReply *r = td_cmd(c, "MERCHANT %d", 100 + m);
        if (r->type == REDIS_REPLY_ERROR) {
            refused++;
            freeReplyObject(r);
            continue;
        }
        long long earned = 0;
        for (int a = 0; a < LM_ACCOUNTS; a++)
            earned += lm_earned(m, a);
        long long got[4] = {td_int_field(r, "accounts"), td_int_field(r, "outstanding"),
                            td_int_field(r, "earned"), td_int_field(r, "redeemed")};
        cr_assert(got[0] == LM_ACCOUNTS && got[1] == earned - 5 * LM_ACCOUNTS &&
                      got[2] == earned && got[3] == 5 * LM_ACCOUNTS,
                  "MERCHANT %d served wrong totals: accounts %lld outstanding %lld earned %lld "
                  "redeemed %lld",
                  100 + m, got[0], got[1], got[2], got[3]);
        freeReplyObject(r);
    }
    refused += lm_check_balances(c, "merchant totals");
    lm_assert_reported(c, shard, refused);
    fprintf(stderr, "lmdb (merchant totals): %d copies flipped, %ld answers refused, the rest "
                    "right\n",
            hits, refused);
    redisFree(c);
    lm_rebuild("merchant totals");
}

/* Flips a bit of the seq stored with `key` in every run file of a shard's
 * id index (entries are (hi, lo, value) little-endian in 4 KiB blocks
 * after a 4 KiB header): how many copies were flipped. */
static int lm_flip_ids(unsigned shard, ids_key key)
{
    uint8_t want[16];
    for (int i = 0; i < 8; i++) {
        want[i] = (uint8_t)(key.hi >> (8 * i));
        want[8 + i] = (uint8_t)(key.lo >> (8 * i));
    }
    char dir[160];
    snprintf(dir, sizeof(dir), "%s/shard-%03u/state/ids", lm_td.dir, shard);
    DIR *d = opendir(dir);
    cr_assert_not_null(d, "%s", dir);
    int hits = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t n = strlen(de->d_name);
        if (n < 4 || strcmp(de->d_name + n - 4, ".run") != 0)
            continue;
        char path[512];
        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        size_t len = 0;
        uint8_t *f = (uint8_t *)fu_read_file(path, &len);
        cr_assert_not_null(f, "%s", path);
        for (size_t p = 4096; p + 24 <= len; p += 24) {
            size_t in_block = (p - 4096) % 4096;
            if (in_block + 24 > 169 * 24) {
                p = p - in_block + 4096 - 24; /* on to the next block */
                continue;
            }
            if (memcmp(f + p, want, 16) == 0) {
                f[p + 16] ^= 0x04;
                hits++;
            }
        }
        FILE *w = fopen(path, "r+b");
        cr_assert_not_null(w);
        cr_assert_eq(fwrite(f, 1, len, w), len);
        fclose(w);
        free(f);
    }
    closedir(d);
    cr_assert_gt(hits, 0, "the id's key was found in a run of %s", dir);
    return hits;
}

Test(lmdb, a_flipped_bit_in_the_id_index_never_loses_an_entry_or_applies_a_retry_twice,
     .timeout = 120, .fini = fu_cleanup)
{
    lm_setup();
    /* The first earn of merchant 102, account 1000003: its seq in the id
     * index's run files (the index lives beside LMDB since issue 11). */
    const char *id = "e2-1000003-0";
    unsigned shard = checksum_shard(102, LM_SHARDS);
    int hits = lm_flip_ids(shard, ids_key_of(102, id, strlen(id)));
    td_start(&lm_td, (const char *const[]){"--shards", "2", NULL});
    redisContext *c = td_connect(&lm_td);
    long refused = 0;
    redisReply *r = td_cmd(c, "ENTRY 102 %s", id);
    if (r->type == REDIS_REPLY_ERROR) {
        refused++;
    } else {
        cr_assert_eq(r->type, REDIS_REPLY_ARRAY, "ENTRY 102 %s: an acknowledged entry is "
                                                 "missing after a bit flip in its index",
                     id);
        cr_assert_eq(td_int_field(r, "points"), lm_earned(2, 2) - 40);
        cr_assert_eq(td_int_field(r, "account"), (long long)(LM_ACCOUNT0 + 2));
    }
    freeReplyObject(r);
    /* The client's retry: answered from the original, or refused; never a
     * second application. */
    r = td_cmd(c, "EARN 102 %llu %lld %s", LM_ACCOUNT0 + 2, (long long)(lm_earned(2, 2) - 40),
               id);
    if (r->type == REDIS_REPLY_ERROR) {
        refused++;
    } else {
        cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
        cr_assert_eq(td_int_field(r, "balance"), lm_earned(2, 2) - 40,
                     "the retry of %s was applied a second time (balance %lld)", id,
                     td_int_field(r, "balance"));
    }
    freeReplyObject(r);
    refused += lm_check_balances(c, "id index");
    lm_assert_reported(c, shard, refused);
    fprintf(stderr, "lmdb (id index): %d copies flipped, %ld answers refused, the rest right\n",
            hits, refused);
    redisFree(c);
    lm_rebuild("id index");
}
