/*
 * cluster_reply_test.c — engine/cluster_reply.c: CLUSTER SLOTS, CLUSTER
 * SHARDS, CLUSTER NODES and -MOVED from one map, byte for byte against
 * replies written out by hand in Redis's shapes, RESP2 and RESP3.
 *
 * The map: nodes a, b, c on 127.0.0.1:7001..7003, three groups in a ring.
 *   group 0, slots 0-5460:      a leads (epoch 1), b follows; b is down.
 *   group 1, slots 5461-10922:  c leads (epoch 2) after a failover; b
 *                               follows (down, out of sync).
 *   group 2, slots 10923-16383: no lease (an election, epoch 1): c, its
 *                               preferred leader, stands as master; a
 *                               follows, alive but out of sync.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "cluster_reply.h"

static cluster_map map;

static void setup(void)
{
    cluster_node nodes[3];
    const char *specs[3] = {"a@127.0.0.1:7001", "b@127.0.0.1:7002", "c@127.0.0.1:7003"};
    const char *why;
    for (int i = 0; i < 3; i++)
        cr_assert_eq(cluster_node_parse(specs[i], &nodes[i], &why), 0);
    cr_assert_eq(cluster_map_plan(&map, "t", nodes, 3, 1, 0, &why), 0);
    map.nodes[0].live = true;
    map.nodes[2].live = true;
    cluster_group *g = map.groups;
    g[0] = (cluster_group){.member_count = 2, .members = {0, 1}, .leased = true, .leader = 0,
                           .leader_epoch = 1, .epoch = 1, .insync = 3,
                           .pos = {{1, 120}, {1, 118}}};
    g[1] = (cluster_group){.member_count = 2, .members = {1, 2}, .leased = true, .leader = 2,
                           .leader_epoch = 2, .epoch = 2, .insync = 2,
                           .pos = {{1, 40}, {2, 77}}};
    g[2] = (cluster_group){.member_count = 2, .members = {2, 0}, .leader = -1, .epoch = 1,
                           .insync = 1, .pos = {{1, 5}, {1, 5}}};
}

/* Compares a reply with the expected bytes, showing both on a mismatch. */
static void expect(resp_out *o, const char *want)
{
    size_t n = strlen(want);
    cr_assert(!o->oom);
    cr_assert(o->len == n && memcmp(o->data, want, n) == 0, "got %zu bytes:\n%.*s\nwant %zu:\n%s",
              o->len, (int)o->len, o->data, n, want);
    resp_out_free(o);
}

/* A node of CLUSTER SLOTS; MAP0 is the empty map ("*0" in RESP2). */
#define NODE(MAP0, port, id) "*4\r\n$9\r\n127.0.0.1\r\n:" port "\r\n$1\r\n" id "\r\n" MAP0 "\r\n"
#define SLOTS(MAP0)                                                                          \
    "*3\r\n"                                                                                 \
    "*3\r\n:0\r\n:5460\r\n" NODE(MAP0, "7001", "a")                                          \
    "*3\r\n:5461\r\n:10922\r\n" NODE(MAP0, "7003", "c")                                      \
    "*4\r\n:10923\r\n:16383\r\n" NODE(MAP0, "7003", "c") NODE(MAP0, "7001", "a")

Test(cluster_reply, slots_lists_each_run_with_its_master_and_live_replicas, .init = setup)
{
    resp_out o = {0};
    cluster_reply_slots(&o, &map, 2);
    expect(&o, SLOTS("*0"));
    cluster_reply_slots(&o, &map, 3);
    expect(&o, SLOTS("%0"));
}

Test(cluster_reply, slots_splits_a_group_whose_slots_are_not_contiguous, .init = setup)
{
    for (int s = 0; s < 100; s++)
        map.slot_group[s] = 1;
    resp_out o = {0};
    cluster_reply_slots(&o, &map, 2);
    expect(&o, "*4\r\n"
               "*3\r\n:0\r\n:99\r\n" NODE("*0", "7003", "c")
               "*3\r\n:100\r\n:5460\r\n" NODE("*0", "7001", "a")
               "*3\r\n:5461\r\n:10922\r\n" NODE("*0", "7003", "c")
               "*4\r\n:10923\r\n:16383\r\n" NODE("*0", "7003", "c") NODE("*0", "7001", "a"));
}

/* A node of CLUSTER SHARDS: a map of 7 pairs, whose header is HEAD. */
#define SHARD_NODE(HEAD, id, port, role_len, role, offset, health_len, health)             \
    HEAD "$2\r\nid\r\n$1\r\n" id "\r\n$4\r\nport\r\n:" port "\r\n"                           \
         "$2\r\nip\r\n$9\r\n127.0.0.1\r\n$8\r\nendpoint\r\n$9\r\n127.0.0.1\r\n"                 \
         "$4\r\nrole\r\n$" role_len "\r\n" role "\r\n"                                        \
         "$18\r\nreplication-offset\r\n:" offset "\r\n"                                        \
         "$6\r\nhealth\r\n$" health_len "\r\n" health "\r\n"
/* The whole reply; SHARD and NODE are the headers of a shard's map (2
 * pairs) and a node's (7 pairs). */
#define SHARDS(SHARD, NODE)                                                                   \
    "*3\r\n"                                                                                  \
    SHARD "$5\r\nslots\r\n*2\r\n:0\r\n:5460\r\n$5\r\nnodes\r\n*2\r\n"                          \
    SHARD_NODE(NODE, "a", "7001", "6", "master", "120", "6", "online")                        \
    SHARD_NODE(NODE, "b", "7002", "7", "replica", "118", "4", "fail")                         \
    SHARD "$5\r\nslots\r\n*2\r\n:5461\r\n:10922\r\n$5\r\nnodes\r\n*2\r\n"                      \
    SHARD_NODE(NODE, "c", "7003", "6", "master", "77", "6", "online")                         \
    SHARD_NODE(NODE, "b", "7002", "7", "replica", "40", "4", "fail")                          \
    SHARD "$5\r\nslots\r\n*2\r\n:10923\r\n:16383\r\n$5\r\nnodes\r\n*2\r\n"                     \
    SHARD_NODE(NODE, "c", "7003", "6", "master", "5", "6", "online")                          \
    SHARD_NODE(NODE, "a", "7001", "7", "replica", "5", "7", "loading")

Test(cluster_reply, shards_lists_each_group_with_master_first, .init = setup)
{
    resp_out o = {0};
    cluster_reply_shards(&o, &map, 2);
    expect(&o, SHARDS("*4\r\n", "*14\r\n"));
    cluster_reply_shards(&o, &map, 3);
    expect(&o, SHARDS("%2\r\n", "%7\r\n"));
}

Test(cluster_reply, shards_names_a_host_that_is_no_ip_address_as_hostname, .init = setup)
{
    memcpy(map.nodes[0].host, "db1.example", 12);
    resp_out o = {0};
    cluster_reply_shards(&o, &map, 3);
    const char *want = "%2\r\n$5\r\nslots\r\n*2\r\n:0\r\n:5460\r\n$5\r\nnodes\r\n*2\r\n"
                       "%8\r\n$2\r\nid\r\n$1\r\na\r\n$4\r\nport\r\n:7001\r\n"
                       "$2\r\nip\r\n$11\r\ndb1.example\r\n$8\r\nendpoint\r\n$11\r\ndb1.example\r\n"
                       "$8\r\nhostname\r\n$11\r\ndb1.example\r\n$4\r\nrole\r\n$6\r\nmaster\r\n";
    cr_assert(o.len > 4 + strlen(want) && memcmp(o.data + 4, want, strlen(want)) == 0, "%.*s",
              (int)o.len, o.data);
    resp_out_free(&o);
}

#define NODES_TEXT                                                                 \
    "a 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460\n"             \
    "b 127.0.0.1:7002@17002 slave,fail a 0 0 1 disconnected\n"                    \
    "c 127.0.0.1:7003@17003 master - 0 0 2 connected 5461-16383\n"

Test(cluster_reply, nodes_is_redis_text_one_line_per_node, .init = setup)
{
    resp_out o = {0};
    char want[1024];
    snprintf(want, sizeof(want), "$%zu\r\n%s\r\n", strlen(NODES_TEXT), NODES_TEXT);
    cluster_reply_nodes(&o, &map, 0, 2);
    expect(&o, want);
    snprintf(want, sizeof(want), "=%zu\r\ntxt:%s\r\n", strlen(NODES_TEXT) + 4, NODES_TEXT);
    cluster_reply_nodes(&o, &map, 0, 3);
    expect(&o, want);
}

Test(cluster_reply, nodes_marks_the_answering_node_and_single_slots, .init = setup)
{
    map.slot_group[7] = 1; /* slot 7 moves to c's group 1 */
    resp_out o = {0};
    cluster_reply_nodes(&o, &map, 1, 2);
    const char *want =
        "a 127.0.0.1:7001@17001 master - 0 0 1 connected 0-6 8-5460\n"
        "b 127.0.0.1:7002@17002 myself,slave,fail a 0 0 1 disconnected\n"
        "c 127.0.0.1:7003@17003 master - 0 0 2 connected 7 5461-16383\n";
    cr_assert(o.len > strlen(want) && strstr(o.data, want) != NULL, "%.*s", (int)o.len, o.data);
    resp_out_free(&o);
}

Test(cluster_reply, moved_names_slot_and_address, .init = setup)
{
    resp_out o = {0};
    cluster_reply_moved(&o, &map, 12182, 2);
    expect(&o, "-MOVED 12182 127.0.0.1:7003\r\n");
    cr_assert_eq(cluster_group_leader(&map, 2), -1, "no leader: no redirection to make");
    cr_assert_eq(cluster_group_leader(&map, 1), 2);
    cr_assert_eq(cluster_group_master(&map, 2), 2);
}
