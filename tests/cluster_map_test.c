/*
 * cluster_map_test.c — engine/cluster_map.c without ZooKeeper: Redis
 * Cluster's key slots (against values Redis documents), the placement of
 * a new cluster, node specs, and every text format's encode/decode pair.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "cluster_map.h"

static uint16_t slot(const char *key)
{
    return cluster_keyslot(key, strlen(key));
}

Test(cluster_map, crc16_is_xmodem)
{
    /* CRC-16/XMODEM's check value, and Redis Cluster's spec example. */
    cr_assert_eq(cluster_crc16("123456789", 9), 0x31c3);
    cr_assert_eq(cluster_crc16("", 0), 0);
}

Test(cluster_map, key_slots_are_redis_cluster_slots)
{
    /* CLUSTER KEYSLOT answers of Redis. */
    cr_assert_eq(slot("foo"), 12182);
    cr_assert_eq(slot("bar"), 5061);
    cr_assert_eq(slot("123"), 5970);
    cr_assert_eq(slot("somekey"), 11058);
    cr_assert_eq(slot("foo{hash_tag}"), 2515);
    cr_assert_eq(slot("bar{hash_tag}"), 2515);
    cr_assert_eq(slot("{user1000}.following"), slot("{user1000}.followers"));
    cr_assert_eq(slot("{user1000}.following"), slot("user1000"));
    /* Merchants: the canonical decimal is the key. */
    cr_assert_eq(cluster_keyslot("42", 2), slot("42"));
    cr_assert_neq(slot("42"), slot("042"), "leading zeros change the slot (hence canonical)");
}

Test(cluster_map, hash_tags_follow_redis_rules)
{
    cr_assert_eq(slot("{}foo"), cluster_crc16("{}foo", 5) % 16384, "an empty tag: whole key");
    cr_assert_eq(slot("foo{}{bar}"), cluster_crc16("foo{}{bar}", 10) % 16384,
                 "the first '{' and the first '}' after it decide");
    cr_assert_eq(slot("foo{{bar}}zap"), cluster_crc16("{bar", 4) % 16384);
    cr_assert_eq(slot("foo{bar}{zap}"), slot("bar"));
    cr_assert_eq(slot("foo{bar"), cluster_crc16("foo{bar", 7) % 16384, "no '}': whole key");
    cr_assert_eq(cluster_keyslot("a{b}\0c", 6), slot("b"), "keys are bytes");
}

static cluster_node node(const char *spec)
{
    cluster_node n;
    const char *why;
    cr_assert_eq(cluster_node_parse(spec, &n, &why), 0, "%s", spec);
    return n;
}

Test(cluster_map, node_specs_are_parsed_and_checked)
{
    cluster_node n = node("n1@127.0.0.1:7001");
    cr_assert_str_eq(n.id, "n1");
    cr_assert_str_eq(n.host, "127.0.0.1");
    cr_assert_eq(n.port, 7001);
    cr_assert_eq(n.repl_port, 17001, "Redis's bus offset by default");
    n = node("a.b-c_d@db-3.example:6379@9000");
    cr_assert_str_eq(n.host, "db-3.example");
    cr_assert_eq(n.repl_port, 9000);
    const char *bad[] = {"n1", "n1@host", "@h:1", "n 1@h:1", "n1@:1", "n1@h:0", "n1@h:65536",
                         "n1@h:x", "n1@h:60000", "n1@h:1@0", "..@h:1",
                         "0123456789012345678901234567890123456789x@h:1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *why = NULL;
        cr_assert_eq(cluster_node_parse(bad[i], &n, &why), -EINVAL, "%s", bad[i]);
        cr_assert_not_null(why);
    }
}

static cluster_map map;

static void plan3(uint32_t replicas, uint32_t groups)
{
    cluster_node nodes[3] = {node("a@127.0.0.1:7001"), node("b@127.0.0.1:7002"),
                             node("c@127.0.0.1:7003")};
    const char *why = NULL;
    cr_assert_eq(cluster_map_plan(&map, "prod", nodes, 3, replicas, groups, &why), 0, "%s", why);
}

Test(cluster_map, three_nodes_make_three_groups_in_a_ring_with_redis_slot_ranges)
{
    plan3(1, 0);
    cr_assert_eq(map.group_count, 3);
    uint16_t r[4][2];
    const uint16_t want[3][2] = {{0, 5460}, {5461, 10922}, {10923, 16383}};
    for (uint32_t g = 0; g < 3; g++) {
        cr_assert_eq(cluster_slot_ranges(&map, g, r, 4), 1);
        cr_assert(r[0][0] == want[g][0] && r[0][1] == want[g][1], "group %u: %u-%u", g, r[0][0],
                  r[0][1]);
        cr_assert_eq(map.groups[g].member_count, 2);
        cr_assert_eq(map.groups[g].members[0], g, "each node leads one group");
        cr_assert_eq(map.groups[g].members[1], (g + 1) % 3, "and follows the next");
        cr_assert_eq(map.groups[g].insync, 3u, "every member in sync at creation");
        cr_assert_eq(map.groups[g].epoch, 0);
        cr_assert(!map.groups[g].leased);
    }
}

Test(cluster_map, nodes_split_into_disjoint_groups_as_redis_cli_does)
{
    cluster_node nodes[6];
    char spec[32];
    for (int i = 0; i < 6; i++) {
        snprintf(spec, sizeof(spec), "n%d@10.0.0.%d:7000", i, i + 1);
        nodes[i] = node(spec);
    }
    const char *why;
    cr_assert_eq(cluster_map_plan(&map, "six", nodes, 6, 1, 3, &why), 0);
    for (uint32_t g = 0; g < 3; g++) {
        cr_assert_eq(map.groups[g].members[0], g);
        cr_assert_eq(map.groups[g].members[1], g + 3);
    }
    cr_assert_eq(cluster_map_plan(&map, "six", nodes, 6, 1, 4, &why), -EINVAL);
    cr_assert_str_eq(why, "--groups is the number of nodes, or the nodes divided by 1 + replicas");
    cr_assert_eq(cluster_map_plan(&map, "six", nodes, 6, 1, 6, &why), 0);
    cr_assert_eq(map.groups[5].members[1], 0, "the ring wraps");
}

Test(cluster_map, plans_that_cannot_work_are_refused_with_a_reason)
{
    cluster_node nodes[3] = {node("a@h:1"), node("b@h:2"), node("a@h:3")};
    const char *why;
    cr_assert_eq(cluster_map_plan(&map, "x", nodes, 3, 1, 0, &why), -EINVAL);
    cr_assert_str_eq(why, "two nodes have the same id");
    nodes[2] = node("c@h:1");
    cr_assert_eq(cluster_map_plan(&map, "x", nodes, 3, 1, 0, &why), -EINVAL);
    cr_assert_str_eq(why, "two nodes have the same address");
    nodes[2] = node("c@h:3");
    cr_assert_eq(cluster_map_plan(&map, "x", nodes, 3, 3, 0, &why), -EINVAL);
    cr_assert_eq(cluster_map_plan(&map, "x/y", nodes, 3, 1, 0, &why), -EINVAL);
    cr_assert_eq(cluster_map_plan(&map, "x", nodes, 0, 0, 0, &why), -EINVAL);
    cr_assert_eq(cluster_map_plan(&map, "x", nodes, 3, 2, 1, &why), 0, "one group of three");
}

Test(cluster_map, texts_encode_as_documented_and_decode_back)
{
    plan3(1, 0);
    char buf[512];
    size_t n = cluster_meta_encode(&map, buf, sizeof(buf));
    cr_assert_str_eq(buf, "tally-cluster 1 replicas 1 groups 3 nodes a b c\n");
    cluster_map back;
    memset(&back, 0, sizeof(back));
    cr_assert_eq(cluster_meta_decode(buf, n, &back), 0);
    cr_assert(back.replicas == 1 && back.group_count == 3 && back.node_count == 3);
    cr_assert_str_eq(back.nodes[2].id, "c");
    n = cluster_slots_encode(&map, buf, sizeof(buf));
    cr_assert_str_eq(buf, "0-5460 0\n5461-10922 1\n10923-16383 2\n");
    cr_assert_eq(cluster_slots_decode(buf, n, &back), 0);
    cr_assert(memcmp(back.slot_group, map.slot_group, sizeof(map.slot_group)) == 0);
    n = cluster_node_encode(&map.nodes[1], buf, sizeof(buf));
    cr_assert_str_eq(buf, "127.0.0.1 7002 17002\n");
    cr_assert_eq(cluster_node_decode(buf, n, &back.nodes[1]), 0);
    cr_assert(back.nodes[1].port == 7002 && back.nodes[1].repl_port == 17002);
    n = cluster_group_encode(&map, &map.groups[2], buf, sizeof(buf));
    cr_assert_str_eq(buf, "c a\n");
    cr_assert_eq(cluster_group_decode(buf, n, &back, &back.groups[2]), 0);
    cr_assert(back.groups[2].members[0] == 2 && back.groups[2].members[1] == 0);
    n = cluster_insync_encode(&map, &map.groups[2], 4, 2, buf, sizeof(buf));
    cr_assert_str_eq(buf, "4 a\n");
    uint64_t e;
    uint32_t set;
    cr_assert_eq(cluster_insync_decode(buf, n, &back, &back.groups[2], &e, &set), 0);
    cr_assert(e == 4 && set == 2);
    n = cluster_insync_encode(&map, &map.groups[2], 5, 0, buf, sizeof(buf));
    cr_assert_str_eq(buf, "5\n", "an empty set");
    n = cluster_lease_encode("b", 7, buf, sizeof(buf));
    char id[64];
    cr_assert_str_eq(buf, "b 7\n");
    cr_assert_eq(cluster_lease_decode(buf, n, id, &e), 0);
    cr_assert(strcmp(id, "b") == 0 && e == 7);
    cluster_pos p = {.log_epoch = 3, .seq = 1187}, q;
    uint64_t ms, round;
    n = cluster_pos_encode(p, 1767225600000ull, buf, sizeof(buf));
    cr_assert_str_eq(buf, "3 1187 1767225600000\n");
    cr_assert_eq(cluster_pos_decode(buf, n, &q, &ms), 0);
    cr_assert(q.log_epoch == 3 && q.seq == 1187 && ms == 1767225600000ull);
    n = cluster_vote_encode(4, p, buf, sizeof(buf));
    cr_assert_str_eq(buf, "4 3 1187\n");
    cr_assert_eq(cluster_vote_decode(buf, n, &round, &q), 0);
    cr_assert(round == 4 && q.seq == 1187);
    n = cluster_epoch_encode(18446744073709551615ull, buf, sizeof(buf));
    cr_assert_eq(cluster_epoch_decode(buf, n, &e), 0);
    cr_assert_eq(e, 18446744073709551615ull);
    cr_assert_eq(cluster_epoch_encode(12345, buf, 3), 0, "no room: nothing");
}

/* decode(text) must refuse, leaving *out as it was. */
static void refuse_slots(const char *text)
{
    cluster_map before = map;
    cr_assert_eq(cluster_slots_decode(text, strlen(text), &map), -EINVAL, "%s", text);
    cr_assert(memcmp(&before, &map, sizeof(map)) == 0, "nothing written: %s", text);
}

Test(cluster_map, malformed_texts_are_refused)
{
    plan3(1, 0);
    refuse_slots("0-5460 0\n5461-16383 1");            /* no final newline */
    refuse_slots("0-5460 0\n5461-10922 1\n");          /* slots left over */
    refuse_slots("0-5460 0\n5460-16383 1\n");          /* overlap */
    refuse_slots("0-16383 3\n");                       /* no group 3 */
    refuse_slots("0-16384 0\n");                       /* past the last slot */
    refuse_slots("0-100 0\n101-16383  1\n");           /* two spaces */
    refuse_slots("10-0 0\n");
    const char *meta[] = {"tally-cluster 1 replicas 1 groups 3 nodes a b a\n",
                          "tally-cluster 1 replicas 1 groups 0 nodes a b c\n",
                          "tally-cluster 1 replicas 3 groups 1 nodes a b c\n",
                          "tally-cluster 1 replicas 1 groups 3\n", "tally 1\n", ""};
    cluster_map m;
    for (size_t i = 0; i < sizeof(meta) / sizeof(meta[0]); i++)
        cr_assert_eq(cluster_meta_decode(meta[i], strlen(meta[i]), &m), -EINVAL, "%s", meta[i]);
    const char *v2 = "tally-cluster 2 replicas 1 groups 3 nodes a b c\n";
    cr_assert_eq(cluster_meta_decode(v2, strlen(v2), &m), -EPROTO, "another version");
    cluster_group g;
    const char *groups[] = {"a\n", "a b c\n", "a a\n", "a z\n", "a b"};
    for (size_t i = 0; i < sizeof(groups) / sizeof(groups[0]); i++)
        cr_assert_eq(cluster_group_decode(groups[i], strlen(groups[i]), &map, &g), -EINVAL, "%s",
                     groups[i]);
    uint64_t e;
    uint32_t set;
    const char *insync[] = {"x a\n", "1 c\n", "1 a a\n", "\n"};
    for (size_t i = 0; i < sizeof(insync) / sizeof(insync[0]); i++)
        cr_assert_eq(cluster_insync_decode(insync[i], strlen(insync[i]), &map, &map.groups[0], &e,
                                           &set),
                     -EINVAL, "%s", insync[i]);
    char id[64];
    const char *leases[] = {"a 0\n", "a\n", "a b\n", "a 1 2\n", "a/b 1\n",
                            "a 18446744073709551616\n"};
    for (size_t i = 0; i < sizeof(leases) / sizeof(leases[0]); i++)
        cr_assert_eq(cluster_lease_decode(leases[i], strlen(leases[i]), id, &e), -EINVAL, "%s",
                     leases[i]);
    cluster_node n;
    const char *nodes[] = {"h 1\n", "h 0 1\n", "h:1 2 3\n", "h 1 70000\n"};
    for (size_t i = 0; i < sizeof(nodes) / sizeof(nodes[0]); i++)
        cr_assert_eq(cluster_node_decode(nodes[i], strlen(nodes[i]), &n), -EINVAL, "%s", nodes[i]);
}
