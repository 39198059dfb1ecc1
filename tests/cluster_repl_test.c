/*
 * cluster_repl_test.c — replication below the network: the protocol's
 * frames and handshake MACs (repl_proto.h), and two group engines in one
 * process (tally.h "cluster mode") — a leader whose log records are
 * shipped byte for byte into a replica, answers held until replicated,
 * checkpoints held at the commit seq, a replica's suffix cut at open.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "engine_util.h"
#include "log.h"
#include "record.h"
#include "repl_proto.h"

/* ---- frames ------------------------------------------------------------------ */

static repl_frame frame_of(const uint8_t *buf, size_t len)
{
    cr_assert_geq(len, REPL_HEAD_BYTES);
    uint32_t body = (uint32_t)buf[0] | (uint32_t)buf[1] << 8 | (uint32_t)buf[2] << 16 |
                    (uint32_t)buf[3] << 24;
    cr_assert_eq(body + 4, len);
    return (repl_frame){.type = buf[4], .p = buf + REPL_HEAD_BYTES, .len = len - REPL_HEAD_BYTES};
}

Test(cluster_repl, every_message_decodes_back_to_what_was_encoded)
{
    uint8_t buf[REPL_AUTH_BYTES_MAX];
    repl_join j = {.version = REPL_VERSION, .group = 2, .log_epoch = 7, .last_seq = 900,
                   .floor_seq = 800, .probe_count = 3};
    memset(j.nonce, 0xab, sizeof(j.nonce));
    memset(j.mac, 0xcd, sizeof(j.mac));
    snprintf(j.id, sizeof(j.id), "node-b");
    for (uint32_t i = 0; i < 3; i++)
        j.probes[i] = (repl_probe){.seq = 900 - i, .sum = 0x1234567890abcdefull + i};
    size_t n = repl_enc_join(&j, buf, sizeof(buf));
    repl_frame f = frame_of(buf, n);
    repl_join back;
    cr_assert_eq(repl_dec_join(&f, &back), 0);
    cr_assert(back.version == j.version && back.group == j.group &&
              back.log_epoch == j.log_epoch && back.last_seq == j.last_seq &&
              back.floor_seq == j.floor_seq && back.probe_count == 3);
    cr_assert(memcmp(back.nonce, j.nonce, sizeof(j.nonce)) == 0 &&
              memcmp(back.mac, j.mac, sizeof(j.mac)) == 0 && strcmp(back.id, j.id) == 0);
    for (uint32_t i = 0; i < 3; i++)
        cr_assert(back.probes[i].seq == j.probes[i].seq && back.probes[i].sum == j.probes[i].sum);

    repl_welcome w = {.epoch = 9, .match_seq = 880, .leader_seq = 950, .snapshot = true};
    memset(w.mac, 0x11, sizeof(w.mac));
    n = repl_enc_welcome(&w, buf, sizeof(buf));
    f = frame_of(buf, n);
    repl_welcome wb;
    cr_assert_eq(repl_dec_welcome(&f, &wb), 0);
    cr_assert(wb.epoch == 9 && wb.match_seq == 880 && wb.leader_seq == 950 && wb.snapshot);

    repl_snapend se = {.seq = 100, .ids_seq = 90, .first_seq = 91, .first_prev = 77}, sb;
    n = repl_enc_snapend(&se, buf, sizeof(buf));
    f = frame_of(buf, n);
    cr_assert_eq(repl_dec_snapend(&f, &sb), 0);
    cr_assert(sb.seq == 100 && sb.ids_seq == 90 && sb.first_seq == 91 && sb.first_prev == 77);

    uint64_t v[3] = {5, 6, 7}, vb[3];
    n = repl_enc_u64s(REPL_COMMIT, v, 3, buf, sizeof(buf));
    f = frame_of(buf, n);
    const uint8_t *rest;
    size_t rest_len;
    cr_assert_eq(repl_dec_u64s(&f, vb, 3, &rest, &rest_len), 0);
    cr_assert(vb[0] == 5 && vb[1] == 6 && vb[2] == 7 && rest_len == 0);
}

Test(cluster_repl, a_short_long_or_mislabelled_payload_is_refused)
{
    uint8_t buf[256];
    repl_hello h = {.version = REPL_VERSION};
    size_t n = repl_enc_hello(&h, buf, sizeof(buf));
    repl_frame f = frame_of(buf, n), g = f;
    repl_hello hb;
    g.len--;
    cr_assert_eq(repl_dec_hello(&g, &hb), -EPROTO);
    g.len += 2;
    cr_assert_eq(repl_dec_hello(&g, &hb), -EPROTO);
    g = f;
    g.type = REPL_JOIN;
    cr_assert_eq(repl_dec_hello(&g, &hb), -EPROTO);
    /* A snapshot whose log would start past its id index's seq + 1. */
    repl_snapend se = {.seq = 100, .ids_seq = 90, .first_seq = 95}, sb;
    n = repl_enc_snapend(&se, buf, sizeof(buf));
    f = frame_of(buf, n);
    cr_assert_eq(repl_dec_snapend(&f, &sb), -EPROTO);
}

/* A SNAPFILE frame naming `name`. */
static int snapfile_named(const char *name)
{
    uint8_t buf[512];
    size_t nl = strlen(name), h = repl_enc_head(REPL_SNAPFILE, 2 + nl + 8 + 3, buf);
    buf[h++] = (uint8_t)nl;
    buf[h++] = 0;
    memcpy(buf + h, name, nl);
    h += nl;
    memset(buf + h, 0, 8);
    h += 8;
    memcpy(buf + h, "abc", 3);
    h += 3;
    repl_frame f = frame_of(buf, h);
    char out[256];
    uint64_t off;
    const uint8_t *data;
    size_t len;
    return repl_dec_snapfile(&f, out, sizeof(out), &off, &data, &len);
}

Test(cluster_repl, a_snapshot_file_name_never_leaves_the_snapshots_directory)
{
    cr_assert_eq(snapfile_named("snap-00000000000000000007.mdb"), 0);
    cr_assert_eq(snapfile_named("snap-00000000000000000007.ids/run-1"), 0);
    cr_assert_eq(snapfile_named("../state/data.mdb"), -EPROTO);
    cr_assert_eq(snapfile_named("snap.ids/../../x"), -EPROTO);
    cr_assert_eq(snapfile_named("a/b/c"), -EPROTO);
    cr_assert_eq(snapfile_named(".."), -EPROTO);
    cr_assert_eq(snapfile_named("x/"), -EPROTO);
}

Test(cluster_repl, hmac_sha256_matches_rfc_4231)
{
    uint8_t mac[REPL_MAC_BYTES];
    const char *data = "what do ya want for nothing?";
    repl_hmac((const uint8_t *)"Jefe", 4, data, strlen(data), mac);
    static const uint8_t want[REPL_MAC_BYTES] = {
        0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e, 0x6a, 0x04, 0x24, 0x26, 0x08, 0x95, 0x75, 0xc7,
        0x5a, 0x00, 0x3f, 0x08, 0x9d, 0x27, 0x39, 0x83, 0x9d, 0xec, 0x58, 0xb9, 0x64, 0xec, 0x38, 0x43};
    cr_assert(repl_mac_equal(mac, want));
}

Test(cluster_repl, a_join_mac_depends_on_the_secret_both_nonces_the_group_and_the_node)
{
    uint8_t nl[REPL_NONCE_BYTES], nf[REPL_NONCE_BYTES], a[REPL_MAC_BYTES], b[REPL_MAC_BYTES];
    cr_assert_eq(repl_nonce(nl), 0);
    cr_assert_eq(repl_nonce(nf), 0);
    cr_assert_neq(memcmp(nl, nf, sizeof(nl)), 0, "fresh nonces differ");
    const uint8_t *s = (const uint8_t *)"secret";
    repl_mac_join(s, 6, nl, nf, 1, "b", a);
    repl_mac_join(s, 6, nl, nf, 1, "b", b);
    cr_assert(repl_mac_equal(a, b));
    repl_mac_join((const uint8_t *)"secreT", 6, nl, nf, 1, "b", b);
    cr_assert_not(repl_mac_equal(a, b));
    repl_mac_join(s, 6, nf, nl, 1, "b", b);
    cr_assert_not(repl_mac_equal(a, b));
    repl_mac_join(s, 6, nl, nf, 2, "b", b);
    cr_assert_not(repl_mac_equal(a, b));
    repl_mac_join(s, 6, nl, nf, 1, "c", b);
    cr_assert_not(repl_mac_equal(a, b));
    repl_mac_welcome(s, 6, nf, nl, 4, b);
    cr_assert_not(repl_mac_equal(a, b), "a join's MAC is no welcome's");
}

Test(cluster_repl, a_frame_arrives_whole_across_reads_and_a_huge_length_is_refused_unread)
{
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    uint8_t buf[64];
    uint64_t v = 42;
    size_t n = repl_enc_u64s(REPL_ACK, &v, 1, buf, sizeof(buf));
    cr_assert_eq(write(sv[0], buf, 3), 3);
    repl_rx rx = {0};
    repl_frame f;
    cr_assert_eq(repl_recv(sv[1], &rx, 64, 50, -1, &f), -ETIMEDOUT, "a part is no frame");
    cr_assert_eq(write(sv[0], buf + 3, n - 3), (ssize_t)(n - 3));
    cr_assert_eq(repl_recv(sv[1], &rx, 64, 1000, -1, &f), 0);
    uint64_t got;
    const uint8_t *rest;
    size_t rest_len;
    cr_assert(f.type == REPL_ACK && repl_dec_u64s(&f, &got, 1, &rest, &rest_len) == 0 &&
              got == 42);
    const uint8_t huge[5] = {0xff, 0xff, 0xff, 0x7f, REPL_RECORDS};
    cr_assert_eq(write(sv[0], huge, 5), 5);
    cr_assert_eq(repl_recv(sv[1], &rx, REPL_AUTH_BYTES_MAX, 1000, -1, &f), -EPROTO);
    cr_assert_leq(rx.cap, 65536u, "nothing was allocated for the declared length");
    close(sv[0]);
    repl_rx_free(&rx);
    repl_rx r2 = {0};
    cr_assert_eq(repl_recv(sv[1], &r2, 64, 1000, -1, &f), -ECONNRESET);
    repl_rx_free(&r2);
    close(sv[1]);
}

/* ---- two group engines in one process ------------------------------------------ */

static _Atomic bool lease_ok = true;
static bool may_ack(void *ctx)
{
    (void)ctx;
    return atomic_load(&lease_ok);
}
static void on_durable(void *ctx, uint64_t seq, uint32_t epoch)
{
    (void)ctx;
    (void)seq;
    (void)epoch;
}

static char ldir[64], rdir[64];
static tally *lead, *rep;

static tally *open_group(const char *dir, uint64_t cut_after, uint32_t checkpoint_ms)
{
    tally_replica rp = {.may_ack = may_ack, .on_durable = on_durable, .cut_after = cut_after};
    tally_options o = {.dir = dir, .shards = 1, .segment_bytes = 64 << 10,
                       .checkpoint_ms = checkpoint_ms, .log = eu_log, .replica = &rp};
    tally *t = NULL;
    cr_assert_eq(tally_open(&o, &t), 0);
    return t;
}

static void up(void)
{
    atomic_store(&lease_ok, true);
    eu_tmpdir(ldir, "repl-lead");
    eu_tmpdir(rdir, "repl-rep");
    lead = open_group(ldir, 0, 0);
    rep = open_group(rdir, 0, 0);
}

static void down(void)
{
    tally_close(lead);
    tally_close(rep);
    eu_rmrf(ldir);
    eu_rmrf(rdir);
}

typedef struct waiter {
    tally_replica_chunk c;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
} waiter;

static void waiter_done(tally_request *req)
{
    waiter *w = (waiter *)(void *)req;
    pthread_mutex_lock(&w->mu);
    w->done = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* Ships the leader's durable records after `after` to the replica as one
 * chunk of epoch `epoch`; returns the chunk's status. */
static int ship(uint64_t after, uint32_t epoch)
{
    log_t *log = tally_replica_log(lead);
    log_iter it;
    cr_assert_eq(log_iter_init(log, after, &it), 0);
    uint8_t *buf = malloc(4 << 20);
    size_t len = 0, n;
    record *r = malloc(sizeof(*r));
    while (log_iter_next_raw(&it, r, buf + len, &n) == 1)
        len += n;
    free(r);
    waiter w = {.done = false};
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    tally_request_init(&w.c.req);
    w.c.req.done = waiter_done;
    w.c.buf = buf;
    w.c.len = len;
    w.c.epoch = epoch;
    tally_replica_append(rep, &w.c);
    pthread_mutex_lock(&w.mu);
    while (!w.done)
        pthread_cond_wait(&w.cv, &w.mu);
    pthread_mutex_unlock(&w.mu);
    free(buf);
    return w.c.req.res.status;
}

static void stats(tally *t, tally_shard_stats *st) { cr_assert_eq(tally_shard_stats_get(t, 0, st), 0); }

static uint64_t chain_at(tally *t, uint64_t seq)
{
    uint64_t sum = 0;
    cr_assert_eq(log_checksum_at(tally_replica_log(t), seq, &sum), 0);
    return sum;
}

/* Leads with epoch 3, everything acknowledged as soon as it is durable. */
static void lead_all(void)
{
    tally_replica_lead(lead, true, 3);
    tally_replica_ack(lead, UINT64_MAX);
    tally_replica_commit(lead, UINT64_MAX);
}

Test(cluster_repl, a_replica_holds_its_leaders_records_byte_for_byte_and_the_same_balances,
     .init = up, .fini = down)
{
    lead_all();
    char id[32];
    for (int i = 0; i < 300; i++) {
        snprintf(id, sizeof(id), "e-%d", i);
        cr_assert_eq(eu_earn(lead, 7, (uint64_t)(i % 13 + 1), 10 + i, id, NULL), 0);
    }
    for (int i = 0; i < 40; i++) {
        snprintf(id, sizeof(id), "r-%d", i);
        int rc = eu_redeem(lead, 7, (uint64_t)(i % 13 + 1), 25, id, NULL);
        cr_assert(rc == 0 || rc == TALLY_EINSUFFICIENT);
    }
    tally_shard_stats ls, rs;
    stats(lead, &ls);
    cr_assert_eq(ship(0, 3), 0);
    stats(rep, &rs);
    cr_assert_eq(rs.durable_seq, ls.durable_seq);
    cr_assert_eq(rs.durable_epoch, 3, "the records carry the leader's epoch");
    cr_assert_eq(chain_at(rep, rs.durable_seq), chain_at(lead, ls.durable_seq));
    for (uint64_t a = 1; a <= 13; a++) {
        tally_balance x, y;
        cr_assert_eq(eu_balance(lead, 7, a, &x), 0);
        cr_assert_eq(eu_balance(rep, 7, a, &y), 0);
        cr_assert_eq(memcmp(&x, &y, sizeof(x)), 0, "account %llu", (unsigned long long)a);
    }
    tally_entry e;
    cr_assert_eq(eu_find(rep, 7, "e-42", &e), 1);
    cr_assert_eq(e.seq, 43);
    /* A replica takes no write of its own. */
    cr_assert_eq(eu_earn(rep, 7, 1, 5, "mine", NULL), TALLY_ETRYAGAIN);
    /* The same chunk again does not continue the log: refused whole. */
    cr_assert_eq(ship(0, 3), TALLY_ECORRUPT);
    stats(rep, &rs);
    cr_assert_eq(rs.durable_seq, ls.durable_seq, "nothing of it was appended");
}

Test(cluster_repl, records_of_an_older_epoch_than_the_replicas_log_are_refused, .init = up,
     .fini = down)
{
    lead_all();
    cr_assert_eq(eu_earn(lead, 1, 1, 10, "a", NULL), 0);
    cr_assert_eq(ship(0, 3), 0);
    cr_assert_eq(eu_earn(lead, 1, 1, 10, "b", NULL), 0);
    /* Shipped as if by a leader of epoch 2: its record says 3. */
    cr_assert_eq(ship(1, 2), TALLY_ECORRUPT);
    tally_replica_lead(lead, true, 2); /* a leader going back in epochs */
    cr_assert_eq(eu_earn(lead, 1, 1, 10, "c", NULL), 0);
    cr_assert_eq(ship(1, 3), TALLY_ECORRUPT, "seq 3 (epoch 2) follows seq 2 (epoch 3)");
}

typedef struct async_req {
    tally_request req;
    _Atomic bool done;
} async_req;

static void async_done(tally_request *req) { atomic_store(&((async_req *)(void *)req)->done, true); }

static void wait_durable(tally *t, uint64_t seq)
{
    tally_shard_stats st;
    for (;;) {
        stats(t, &st);
        if (st.durable_seq >= seq)
            return;
        usleep(1000);
    }
}

Test(cluster_repl, a_leader_answers_a_write_only_once_replicated_and_while_its_lease_holds,
     .init = up, .fini = down)
{
    tally_replica_lead(lead, true, 3);
    async_req *w = calloc(1, sizeof(*w));
    tally_request_init(&w->req);
    eu_write(&w->req, TALLY_OP_EARN, 1, 1, 10, "held");
    w->req.done = async_done;
    tally_submit(lead, &w->req);
    wait_durable(lead, 1);
    cr_assert_not(atomic_load(&w->done), "durable but not replicated: not answered");
    atomic_store(&lease_ok, false);
    tally_replica_ack(lead, 1);
    usleep(20000);
    cr_assert_not(atomic_load(&w->done), "replicated but the lease is in doubt: not answered");
    atomic_store(&lease_ok, true);
    tally_replica_kick(lead);
    while (!atomic_load(&w->done))
        usleep(1000);
    cr_assert_eq(w->req.res.status, 0);
    /* Lost leadership answers what waits: its outcome unknown. */
    tally_request_init(&w->req);
    eu_write(&w->req, TALLY_OP_EARN, 1, 1, 10, "orphan");
    w->req.done = async_done;
    atomic_store(&w->done, false);
    tally_submit(lead, &w->req);
    wait_durable(lead, 2);
    cr_assert_not(atomic_load(&w->done));
    tally_replica_lead(lead, false, 0);
    while (!atomic_load(&w->done))
        usleep(1000);
    cr_assert_eq(w->req.res.status, TALLY_ETRYAGAIN);
    tally_result_free(&w->req.res);
    free(w);
}

Test(cluster_repl, no_checkpoint_passes_the_commit_seq, .init = up, .fini = down)
{
    tally_close(lead);
    lead = open_group(ldir, 0, 1); /* a checkpoint due every millisecond */
    tally_replica_lead(lead, true, 3);
    tally_replica_ack(lead, UINT64_MAX);
    char id[32];
    for (int i = 0; i < 50; i++) {
        snprintf(id, sizeof(id), "e-%d", i);
        cr_assert_eq(eu_earn(lead, 1, 1, 10, id, NULL), 0);
    }
    usleep(50000);
    tally_shard_stats st;
    stats(lead, &st);
    cr_assert_eq(st.checkpoint_seq, 0, "nothing replicated: nothing checkpointed");
    tally_replica_commit(lead, 20);
    for (int i = 50; i < 60; i++) {
        snprintf(id, sizeof(id), "e-%d", i);
        cr_assert_eq(eu_earn(lead, 1, 1, 10, id, NULL), 0);
    }
    for (int k = 0; k < 2000; k++) {
        stats(lead, &st);
        if (st.checkpoint_seq > 0)
            break;
        usleep(1000);
    }
    cr_assert(st.checkpoint_seq > 0 && st.checkpoint_seq <= 20, "checkpoint at %llu",
              (unsigned long long)st.checkpoint_seq);
    /* Closing checkpoints no further either. */
    tally_close(lead);
    lead = open_group(ldir, 0, 0);
    stats(lead, &st);
    cr_assert_leq(st.checkpoint_seq, 20);
    cr_assert_eq(st.durable_seq, 60, "the rest is replayed from the log");
}

Test(cluster_repl, a_replica_opened_with_a_cut_drops_the_suffix_its_leader_lacks, .init = up,
     .fini = down)
{
    lead_all();
    char id[32];
    for (int i = 0; i < 30; i++) {
        snprintf(id, sizeof(id), "e-%d", i);
        cr_assert_eq(eu_earn(lead, 1, (uint64_t)(i % 3 + 1), 10, id, NULL), 0);
    }
    cr_assert_eq(ship(0, 3), 0);
    uint64_t at20 = chain_at(lead, 20);
    tally_replica_commit(rep, 20);
    tally_close(rep);
    rep = open_group(rdir, 20, 0);
    tally_shard_stats st;
    stats(rep, &st);
    cr_assert_eq(st.durable_seq, 20);
    cr_assert_eq(chain_at(rep, 20), at20);
    tally_entry e;
    cr_assert_eq(eu_find(rep, 1, "e-25", &e), 0, "cut");
    cr_assert_eq(eu_find(rep, 1, "e-19", &e), 1);
    /* It continues from there: the leader's records after 20 again. */
    cr_assert_eq(ship(20, 3), 0);
    stats(rep, &st);
    cr_assert_eq(st.durable_seq, 30);
    cr_assert_eq(chain_at(rep, 30), chain_at(lead, 30));
}

/* FOLLOW m AFTER after on the leader, at once: how many entries. */
static uint32_t follow_count(tally *t, uint64_t m, uint64_t after)
{
    tally_request q;
    memset(&q, 0, sizeof(q));
    tally_request_init(&q);
    q.op = TALLY_OP_FOLLOW;
    q.merchant = m;
    q.after_seq = after;
    q.limit = 100;
    cr_assert_eq(tally_call(t, &q), 0, "%s", q.res.message);
    uint32_t n = q.res.items_count;
    tally_request_release(&q);
    return n;
}

Test(cluster_repl, follow_delivers_only_what_the_group_replicated, .init = up, .fini = down)
{
    /* Acknowledged on the local flush (--ack local), replicated nowhere. */
    tally_replica_lead(lead, true, 3);
    tally_replica_ack(lead, UINT64_MAX);
    char id[32];
    for (int i = 0; i < 10; i++) {
        snprintf(id, sizeof(id), "e-%d", i);
        cr_assert_eq(eu_earn(lead, 5, 1, 10, id, NULL), 0);
    }
    cr_assert_eq(follow_count(lead, 5, 0), 0, "nothing replicated: nothing to follow");
    tally_replica_commit(lead, 4);
    cr_assert_eq(follow_count(lead, 5, 0), 4);
    tally_replica_commit(lead, 10);
    cr_assert_eq(follow_count(lead, 5, 0), 10);
    /* The replica too: what it holds, up to the commit seq it was told. */
    cr_assert_eq(ship(0, 3), 0);
    cr_assert_eq(follow_count(rep, 5, 0), 0);
    tally_replica_commit(rep, 7);
    cr_assert_eq(follow_count(rep, 5, 0), 7);
}

Test(cluster_repl, waiting_writes_are_answered_tryagain_when_no_replica_can_confirm, .init = up,
     .fini = down)
{
    tally_replica_lead(lead, true, 3);
    async_req *w = calloc(1, sizeof(*w));
    tally_request_init(&w->req);
    eu_write(&w->req, TALLY_OP_EARN, 1, 1, 10, "stranded");
    w->req.done = async_done;
    tally_submit(lead, &w->req);
    wait_durable(lead, 1);
    cr_assert_not(atomic_load(&w->done));
    tally_replica_expire(lead);
    while (!atomic_load(&w->done))
        usleep(1000);
    cr_assert_eq(w->req.res.status, TALLY_ETRYAGAIN);
    tally_result_free(&w->req.res);
    free(w);
    /* Still the leader: once a replica confirms, the retry is answered
     * from the record it wrote. */
    tally_replica_ack(lead, UINT64_MAX);
    tally_entry e;
    cr_assert_eq(eu_earn(lead, 1, 1, 10, "stranded", &e), 0);
    cr_assert_eq(e.seq, 1, "the same entry, not a second one");
}
