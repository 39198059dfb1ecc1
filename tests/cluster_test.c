/*
 * cluster_test.c — engine/cluster.c against a real private ZooKeeper
 * (zk_util.h): a created map reads back whole, members see changes
 * arrive, elections follow the (epoch, seq) rule among in-sync members,
 * leases end when ZooKeeper stops answering, and a deposed or resigning
 * leader can change nothing.  Several members run in this one process,
 * each with its own ZooKeeper session, as separate nodes would.
 * Deadlines are generous: nothing here measures speed.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cluster.h"
#include "zk_util.h"

#define DEADLINE_MS 30000
#define SESSION_MS 3000

static zku srv;
static zk *admin;

static void up(void)
{
    zku_start(&srv);
    cr_assert_eq(zk_open(&(zk_options){.hosts = srv.hosts, .session_timeout_ms = 10000}, &admin),
                 0);
    cr_assert_eq(zk_wait_connected(admin, DEADLINE_MS), 0);
}

static void down(void)
{
    zk_close(admin);
    zku_cleanup(&srv);
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Plans and creates cluster `name` of n nodes "n0@127.0.0.1:7000"... */
static void create(cluster_map *m, const char *name, uint32_t n, uint32_t replicas,
                   uint32_t groups)
{
    cluster_node nodes[8];
    for (uint32_t i = 0; i < n; i++) {
        char spec[64];
        const char *why;
        snprintf(spec, sizeof(spec), "%c@127.0.0.1:%u", 'a' + i, 7000 + i);
        cr_assert_eq(cluster_node_parse(spec, &nodes[i], &why), 0);
    }
    const char *why = NULL;
    cr_assert_eq(cluster_map_plan(m, name, nodes, n, replicas, groups, &why), 0, "%s", why);
    cr_assert_eq(cluster_create(admin, m), 0);
}

/* ---- members -------------------------------------------------------------- */

typedef struct member {
    cluster *c;
    char id[8];
    _Atomic int leader_events, deposed_events, map_events;
    _Atomic uint64_t last_epoch;
    _Atomic int slot0_group;   /* in the newest map event */
    _Atomic int live_nodes;    /* in the newest map event */
} member;

static void on_event(void *ctx, const cluster_event *ev)
{
    member *m = ctx;
    if (ev->kind == CLUSTER_EVENT_LEADER) {
        atomic_store(&m->last_epoch, ev->epoch);
        atomic_fetch_add(&m->leader_events, 1);
    } else if (ev->kind == CLUSTER_EVENT_DEPOSED) {
        atomic_fetch_add(&m->deposed_events, 1);
    } else {
        cr_assert_eq(ev->kind, CLUSTER_EVENT_MAP);
        int live = 0;
        for (uint32_t i = 0; i < ev->map->node_count; i++)
            live += ev->map->nodes[i].live;
        atomic_store(&m->live_nodes, live);
        atomic_store(&m->slot0_group, ev->map->slot_group[0]);
        atomic_fetch_add(&m->map_events, 1);
    }
}

static void quiet(void *ctx, int level, const char *msg)
{
    (void)ctx;
    (void)level;
    (void)msg;
}

static void join(member *m, const char *name, const char *id)
{
    memset(m, 0, sizeof(*m));
    snprintf(m->id, sizeof(m->id), "%s", id);
    atomic_store(&m->slot0_group, -1);
    cluster_options o = {.zk_hosts = srv.hosts, .name = name, .node_id = id,
                         .session_timeout_ms = SESSION_MS, .event = on_event, .event_ctx = m,
                         .log = quiet};
    int rc = cluster_open(&o, &m->c);
    cr_assert_eq(rc, 0, "node %s joins %s: %s", id, name, strerror(-rc));
}

static void leave(member *m)
{
    cluster_close(m->c);
    m->c = NULL;
}

static void position(member *m, uint32_t g, uint64_t log_epoch, uint64_t seq)
{
    cr_assert_eq(cluster_position(m->c, g, (cluster_pos){.log_epoch = log_epoch, .seq = seq}), 0);
}

/* Waits until m leads group g; returns its epoch. */
static uint64_t await_lease(member *m, uint32_t g)
{
    uint64_t epoch = 0, end = now_ms() + DEADLINE_MS;
    while (!cluster_lease(m->c, g, &epoch) && now_ms() < end)
        usleep(10000);
    cr_assert(cluster_lease(m->c, g, &epoch), "%s never led group %u", m->id, g);
    return epoch;
}

/* The map as ZooKeeper has it now. */
static void read_map(cluster_map *m, const char *name)
{
    cr_assert_eq(cluster_read(admin, name, false, m), 0);
}

/* Waits until the group's position reports reach ZooKeeper. */
static void await_pos(const char *name, uint32_t g, uint32_t member_index, uint64_t seq)
{
    static cluster_map m;
    uint64_t end = now_ms() + DEADLINE_MS;
    do {
        read_map(&m, name);
        if (m.groups[g].pos[member_index].seq == seq)
            return;
        usleep(20000);
    } while (now_ms() < end);
    cr_assert_fail("member %u of group %u never reported seq %lu", member_index, g,
                   (unsigned long)seq);
}

/* Creates cluster `name` of n nodes a, b, ... in one group (n - 1
 * replicas), joins them all at position (0, 0) and waits until a, the
 * preferred leader, leads with epoch 1. */
static void one_group(const char *name, uint32_t n, member *m)
{
    static cluster_map plan;
    create(&plan, name, n, n - 1, 1);
    for (uint32_t i = 0; i < n; i++) {
        char id[2] = {(char)('a' + i), '\0'};
        join(&m[i], name, id);
    }
    for (uint32_t i = 0; i < n; i++)
        position(&m[i], 0, 0, 0);
    cr_assert_eq(await_lease(&m[0], 0), 1);
}

static void leave_all(member *m, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        if (m[i].c != NULL)
            leave(&m[i]);
}

/* ---- tests ---------------------------------------------------------------- */

Test(cluster, a_created_map_reads_back_whole_and_cannot_be_created_twice, .init = up, .fini = down)
{
    static cluster_map plan, back;
    create(&plan, "prod", 3, 1, 0);
    read_map(&back, "prod");
    cr_assert_str_eq(back.name, "prod");
    cr_assert(back.node_count == 3 && back.group_count == 3 && back.replicas == 1);
    for (uint32_t i = 0; i < 3; i++) {
        cr_assert_str_eq(back.nodes[i].id, plan.nodes[i].id);
        cr_assert_str_eq(back.nodes[i].host, "127.0.0.1");
        cr_assert_eq(back.nodes[i].port, plan.nodes[i].port);
        cr_assert_eq(back.nodes[i].repl_port, plan.nodes[i].port + 10000);
        cr_assert(!back.nodes[i].live, "nobody joined yet");
    }
    cr_assert(memcmp(back.slot_group, plan.slot_group, sizeof(plan.slot_group)) == 0);
    for (uint32_t g = 0; g < 3; g++) {
        const cluster_group *gr = &back.groups[g];
        cr_assert(gr->member_count == 2 && gr->members[0] == g && gr->members[1] == (g + 1) % 3);
        cr_assert(!gr->leased && gr->leader == -1 && gr->epoch == 0 && gr->epoch_version == 0);
        cr_assert(gr->insync == 3 && gr->insync_epoch == 0);
        cr_assert(!gr->voted[0] && !gr->voted[1]);
    }
    cr_assert_eq(cluster_create(admin, &plan), -EEXIST);
    cr_assert_eq(cluster_read(admin, "nope", false, &back), -ENOENT);
    char text[64];
    size_t len;
    cr_assert_eq(zk_get(admin, "/tally/prod/groups/1/insync", false, text, sizeof(text), &len,
                        NULL), 0);
    cr_assert_eq(len, 6);
    cr_assert(memcmp(text, "0 b c\n", 6) == 0, "the layout cluster.h documents");
}

Test(cluster, members_see_changes_of_the_map_arrive, .init = up, .fini = down)
{
    static cluster_map plan;
    create(&plan, "watch", 3, 1, 0);
    member a, b;
    join(&a, "watch", "a");
    const cluster_map *m = cluster_map_acquire(a.c);
    cr_assert(m->nodes[0].live, "a sees itself alive");
    cr_assert_eq(m->slot_group[0], 0);
    cluster_map_release(a.c, m);
    cr_assert_eq(cluster_self(a.c), 0);
    /* Slots 0..99 move to group 1 (what resharding will do). */
    const char *moved = "0-99 1\n100-5460 0\n5461-10922 1\n10923-16383 2\n";
    cr_assert_eq(zk_set(admin, "/tally/watch/slots", moved, strlen(moved), -1), 0);
    uint64_t end = now_ms() + DEADLINE_MS;
    while (atomic_load(&a.slot0_group) != 1 && now_ms() < end)
        usleep(10000);
    cr_assert_eq(atomic_load(&a.slot0_group), 1, "the change arrived");
    m = cluster_map_acquire(a.c);
    cr_assert(m->slot_group[99] == 1 && m->slot_group[100] == 0);
    join(&b, "watch", "b");
    end = now_ms() + DEADLINE_MS;
    while (atomic_load(&a.live_nodes) != 2 && now_ms() < end)
        usleep(10000);
    cr_assert_eq(atomic_load(&a.live_nodes), 2, "b's arrival arrived");
    cr_assert(m->slot_group[99] == 1 && !m->nodes[1].live, "an acquired map never changes");
    cluster_map_release(a.c, m);
    leave(&b);
    end = now_ms() + DEADLINE_MS;
    while (atomic_load(&a.live_nodes) != 1 && now_ms() < end)
        usleep(10000);
    cr_assert_eq(atomic_load(&a.live_nodes), 1, "and its departure");
    leave(&a);
}

Test(cluster, first_elections_make_each_groups_preferred_member_leader, .init = up,
     .fini = down)
{
    static cluster_map plan, now;
    create(&plan, "ring", 3, 1, 0);
    member n[3];
    const char *ids[3] = {"a", "b", "c"};
    for (int i = 0; i < 3; i++)
        join(&n[i], "ring", ids[i]);
    /* Node i is member 0 of group i and member 1 of group i - 1. */
    for (uint32_t i = 0; i < 3; i++) {
        position(&n[i], i, 0, 0);
        position(&n[i], (i + 2) % 3, 0, 0);
    }
    for (uint32_t g = 0; g < 3; g++)
        cr_assert_eq(await_lease(&n[g], g), 1, "group %u: epoch 1", g);
    read_map(&now, "ring");
    for (uint32_t g = 0; g < 3; g++) {
        uint64_t e;
        cr_assert(now.groups[g].leased && now.groups[g].leader == (int32_t)g);
        cr_assert(now.groups[g].leader_epoch == 1 && now.groups[g].epoch == 1);
        cr_assert(!cluster_lease(n[(g + 1) % 3].c, g, &e), "the follower does not lead");
        cr_assert_eq(atomic_load(&n[g].leader_events), 1);
    }
    cr_assert_eq(cluster_position(n[0].c, 1, (cluster_pos){0}), -EINVAL, "a is not in group 1");
    for (int i = 0; i < 3; i++)
        leave(&n[i]);
}

Test(cluster, the_in_sync_member_with_the_highest_epoch_and_seq_succeeds_a_lost_leader,
     .init = up, .fini = down)
{
    static cluster_map now;
    member m[3], *a = &m[0], *b = &m[1], *c = &m[2];
    one_group("three", 3, m);
    /* c falls behind and the leader takes it out of the in-sync set; then
     * c catches up past b on records the leader never acknowledged. */
    cr_assert_eq(cluster_insync_set(a->c, 0, 0x3), 0);
    cr_assert_eq(cluster_insync_set(a->c, 0, 0x8), -EINVAL, "only members");
    cr_assert_eq(cluster_insync_set(b->c, 0, 0x3), -EPERM, "only the leader");
    position(a, 0, 1, 120);
    position(b, 0, 1, 100);
    position(c, 0, 1, 500);
    await_pos("three", 0, 1, 100);
    read_map(&now, "three");
    cr_assert(now.groups[0].insync == 0x3 && now.groups[0].insync_epoch == 1);
    leave(a); /* the leader's session ends */
    uint64_t e = await_lease(b, 0);
    cr_assert_eq(e, 2, "a new, higher epoch");
    cr_assert(!cluster_lease(c->c, 0, &e), "c was not in sync: it never wins on seq");
    cr_assert_eq(atomic_load(&c->leader_events), 0);
    read_map(&now, "three");
    cr_assert(now.groups[0].leader == 1 && now.groups[0].epoch == 2);
    /* With b gone too, only c lives: nobody in sync can vote, so nobody
     * leads, however long it waits. */
    leave(b);
    sleep(2);
    read_map(&now, "three");
    cr_assert(!now.groups[0].leased, "c is never elected");
    cr_assert_eq(atomic_load(&c->leader_events), 0);
    /* a comes back behind c but in sync: a wins. */
    join(a, "three", "a");
    position(a, 0, 1, 120);
    cr_assert_eq(await_lease(a, 0), 3);
    cr_assert_eq(atomic_load(&c->leader_events), 0);
    leave_all(m, 3);
}

Test(cluster, a_later_epoch_outranks_a_longer_log, .init = up, .fini = down)
{
    member m[3], *a = &m[0], *b = &m[1], *c = &m[2];
    one_group("epochs", 3, m);
    /* b holds a long suffix of epoch 0 that epoch 1 never had; c has
     * epoch 1's records. */
    position(b, 0, 0, 900);
    position(c, 0, 1, 50);
    leave(a);
    cr_assert_eq(await_lease(c, 0), 2);
    uint64_t e;
    cr_assert(!cluster_lease(b->c, 0, &e));
    /* Equal positions: the member listed first wins. */
    position(b, 0, 2, 60);
    position(c, 0, 2, 60);
    join(a, "epochs", "a");
    position(a, 0, 2, 60);
    leave(c);
    cr_assert_eq(await_lease(a, 0), 3);
    cr_assert(!cluster_lease(b->c, 0, &e));
    leave_all(m, 3);
}

Test(cluster, a_leader_cut_off_from_zookeeper_stops_leading_within_its_session, .init = up,
     .fini = down)
{
    member m[2], *a = &m[0], *b = &m[1];
    one_group("cut", 2, m);
    uint64_t e;
    zku_pause(&srv);
    uint64_t paused = now_ms();
    while (cluster_lease(a->c, 0, &e) && now_ms() < paused + DEADLINE_MS)
        usleep(5000);
    uint64_t lost_ms = now_ms() - paused;
    cr_assert(!cluster_lease(a->c, 0, &e), "the lease ends while ZooKeeper is silent");
    /* A third of the session after the last answered probe, which was
     * sent at most a probe period before the pause: well within the
     * session, before anyone else could take the lease. */
    cr_assert_lt(lost_ms, SESSION_MS, "lease held %lu ms into the silence",
                 (unsigned long)lost_ms);
    cr_assert_eq(atomic_load(&b->leader_events), 0);
    zku_resume(&srv);
    /* Whatever the session's fate, one leader at a time, with epoch 1 if
     * a kept its session and 2 if b took over. */
    uint64_t end = now_ms() + DEADLINE_MS;
    uint64_t ea = 0, eb = 0;
    bool la = false, lb = false;
    while (!(la = cluster_lease(a->c, 0, &ea)) && !(lb = cluster_lease(b->c, 0, &eb)) &&
           now_ms() < end)
        usleep(10000);
    cr_assert(la || lb, "a leader again once ZooKeeper answers");
    cr_assert(la ? ea == 1 : eb == 2);
    leave_all(m, 2);
}

Test(cluster, a_resigning_leader_hands_over_and_leaves_the_in_sync_set, .init = up,
     .fini = down)
{
    static cluster_map now;
    member m[2], *a = &m[0], *b = &m[1];
    one_group("hand", 2, m);
    cr_assert_eq(cluster_resign(b->c, 0), -EPERM, "b does not lead");
    cr_assert_eq(cluster_resign(a->c, 0), 0);
    uint64_t e;
    cr_assert(!cluster_lease(a->c, 0, &e), "the lease ends at once");
    cr_assert_eq(await_lease(b, 0), 2);
    read_map(&now, "hand");
    cr_assert_eq(now.groups[0].insync, 0x2, "a left the in-sync set");
    cr_assert_eq(now.groups[0].insync_epoch, 1);
    cr_assert_eq(cluster_resign(b->c, 0), -EBUSY, "nobody else in sync to take over");
    cr_assert(cluster_lease(b->c, 0, &e) && e == 2, "so b keeps leading");
    cr_assert_eq(cluster_insync_set(b->c, 0, 0x3), 0, "a caught up");
    cr_assert_eq(cluster_resign(b->c, 0), 0);
    cr_assert_eq(await_lease(a, 0), 3);
    cr_assert_eq(atomic_load(&a->deposed_events), 0, "a resign is no deposition");
    leave_all(m, 2);
}

Test(cluster, a_live_in_sync_member_that_has_not_voted_holds_the_election_up, .init = up,
     .fini = down)
{
    static cluster_map plan, now;
    create(&plan, "wait", 2, 1, 1);
    member a, b;
    join(&a, "wait", "a");
    join(&b, "wait", "b");
    position(&a, 0, 0, 0); /* b's log is still opening: it may hold more */
    sleep(1);
    read_map(&now, "wait");
    cr_assert(!now.groups[0].leased && now.groups[0].voted[0] && !now.groups[0].voted[1]);
    position(&b, 0, 0, 7);
    cr_assert_eq(await_lease(&b, 0), 1, "b had the longer log");
    leave(&a);
    leave(&b);
}

Test(cluster, a_deposed_leader_cannot_change_the_in_sync_set, .init = up, .fini = down)
{
    static cluster_map now;
    member m[2], *a = &m[0];
    one_group("fence", 2, m);
    /* A newer election a has not heard of (here by hand): its writes are
     * refused by ZooKeeper, whatever a believes. */
    cr_assert_eq(zk_set(admin, "/tally/fence/groups/0/epoch", "2\n", 2, 1), 0);
    cr_assert_eq(cluster_insync_set(a->c, 0, 0x1), -ESTALE);
    cr_assert_eq(cluster_resign(a->c, 0), -ESTALE);
    read_map(&now, "fence");
    cr_assert_eq(now.groups[0].insync, 0x3, "unchanged");
    cr_assert_eq(now.groups[0].insync_epoch, 0);
    /* The lease goes (the resign took it from a at once): a new round, in
     * which a, preferred and level with b, wins epoch 3. */
    cr_assert_eq(cluster_insync_set(a->c, 0, 0x1), -EPERM, "no lease, no writes");
    cr_assert_eq(await_lease(a, 0), 3);
    leave_all(m, 2);
}
