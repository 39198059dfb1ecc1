/*
 * limits.h — every limit tally enforces, in one place, each with its reason.
 *
 * A limit exists so that memory, disk and latency stay bounded whatever a
 * client sends.  Changing one that is marked "format" changes the on-disk
 * format and needs a new record version.
 */
#ifndef TALLY_LIMITS_H
#define TALLY_LIMITS_H

#include <assert.h>
#include <stdint.h>

/* ---- data model (SPEC §1) ---------------------------------------------- */

/* Amount in a command: 1..10^15 points (SPEC §1). */
#define LIMIT_AMOUNT_MAX 1000000000000000LL
/* |balance| after any entry must stay <= 2^62 (SPEC §1). */
#define LIMIT_BALANCE_ABS_MAX (1LL << 62)
/* Client ids: 1..64 printable bytes (SPEC §1). */
#define LIMIT_ID_BYTES_MAX 64
/* Engine ids (format): the longest is "~exp:~to:" + a client id + "/" + a
 * received lot's number + "#" + a decimal repeat count. */
#define LIMIT_ENGINE_ID_BYTES_MAX 128
/* Memo: 0..128 opaque bytes (SPEC §1, format). */
#define LIMIT_MEMO_BYTES_MAX 128
/* HISTORY LIMIT n: 1..1000, default 100 (SPEC §2). */
#define LIMIT_HISTORY_MAX 1000
#define LIMIT_HISTORY_DEFAULT 100
/* FOLLOW COUNT n: 1..1000, default 100 (SPEC §8). */
#define LIMIT_FOLLOW_MAX 1000
#define LIMIT_FOLLOW_DEFAULT 100
/* Records one FOLLOW looks at beyond the entries it returns (SPEC §8: a
 * fixed scan budget): a follower of a quiet merchant on a busy shard
 * gets its cursor moved this far per call, and a call costs at most
 * about a millisecond of checksums. */
#define LIMIT_FOLLOW_SCAN_RECORDS 16384
/* FOLLOW BLOCK ms: 0 (no limit) .. one leap year. */
#define LIMIT_FOLLOW_BLOCK_MS_MAX (366ULL * 24 * 3600 * 1000)
/* Commands one MULTI queues: each is a request (~1.3 KiB) held until its
 * EXEC, and an EXEC's records must fit in one batch. */
#define LIMIT_MULTI_COMMANDS_MAX 256
/* HOLD TIMEOUT default 900 s (SPEC §2); longest accepted: one year. */
#define LIMIT_HOLD_TIMEOUT_DEFAULT_S 900
#define LIMIT_HOLD_TIMEOUT_MAX_S (366ULL * 24 * 3600)
/* Unix seconds accepted for EXPIRES / AVAILABLE_AT: up to year 9999. */
#define LIMIT_UNIX_S_MAX 253402300799ULL

/* ---- storage ------------------------------------------------------------ */

/* Shards per data directory: fixed at creation (SPEC §5). */
#define LIMIT_SHARDS_MAX 256
/* One log segment file; preallocated so a flush does not commit size. */
#define LIMIT_SEGMENT_BYTES_DEFAULT (64u << 20)
#define LIMIT_SEGMENT_BYTES_MIN (64u << 10)
/* One batch: one write (per segment it touches) + one flush.  The shard
 * stops adding requests to a batch past LIMIT_BATCH_BYTES_MAX; one
 * request's records (a debit over a hundred thousand lots, an EXEC) may
 * take it further, up to LIMIT_BATCH_BYTES_HARD, because they must land
 * in one batch: the buffer grows for them.  The hard limit is what one
 * write may add to the log (about five million lots in one debit). */
#define LIMIT_BATCH_BYTES_MAX (4u << 20)
#define LIMIT_BATCH_BYTES_HARD (64u << 20)
#define LIMIT_BATCH_ENTRIES_MAX 16384
/* Segment boundaries one batch may cross: each is one more write and
 * flush job in the shard's ring (ring depth = this + a margin). */
#define LIMIT_BATCH_SEGMENTS_MAX 120
/* Largest encoded record: fixed fields + id, ref, memo + room for some
 * allocations (format). */
#define LIMIT_RECORD_BYTES_MAX 1024
/* Engine-written entries per sweep turn (SPEC §3: bounded chunks). */
#define LIMIT_SWEEP_CHUNK 1024
/* Checkpoint of the in-memory changes into LMDB (DESIGN-NOTES §1, §5).
 * Its cost is one write of every object it dirtied, so its interval sets
 * the write amplification of the state: with a million accounts, a
 * checkpoint per million records writes ~150 B per entry, one per 75,000
 * (500 ms at full load) ~1.7 KB.  Restart replays at most one interval. */
#define LIMIT_CHECKPOINT_MS_DEFAULT 30000
#define LIMIT_CHECKPOINT_ENTRIES_DEFAULT 1000000
/* Changes not yet committed to LMDB, per shard: past this while a commit
 * is still running, the shard stops taking requests until it finishes
 * (the disk sets the pace). */
#define LIMIT_STATE_PENDING_BYTES_MAX (256u << 20)
/* LMDB map per shard: address space only; data.mdb is a sparse file this
 * large (MDB_WRITEMAP) that takes disk as pages are used. */
#define LIMIT_STATE_MAP_BYTES_DEFAULT (64ULL << 30)

/* ---- wire (SPEC §5 "Limits on bad input") ------------------------------ */

#define LIMIT_BULK_BYTES_MAX 4096
#define LIMIT_ARGS_MAX 32
/* Inline commands (telnet) are one line; Redis allows 64 KiB. */
#define LIMIT_INLINE_BYTES_MAX 16384
/* Unparsed input buffered per client before it is refused. */
#define LIMIT_CLIENT_INPUT_BYTES_MAX (1u << 20)
/* Requests in flight per connection, counted in reply units (an entry's
 * worth: HISTORY LIMIT n weighs n, anything else 1): beyond it the server
 * stops reading that socket (backpressure) instead of queueing, and
 * holding the results of, requests without bound. */
#define LIMIT_CLIENT_PIPELINE_MAX 4096
/* Unsent reply bytes per client before the server stops reading it. */
#define LIMIT_CLIENT_OUTPUT_BYTES_MAX (4u << 20)
#define LIMIT_CONNECTIONS_MAX 10000
/* Requests parsed and not yet answered, over all connections, in the same
 * reply units: each holds a reply slot (~1.2 KiB) and its result; beyond
 * it the server reads only connections with nothing unanswered
 * (LIMIT_SERVER_INFLIGHT_RESERVE). */
#define LIMIT_SERVER_INFLIGHT_MAX 65536
/* Past LIMIT_SERVER_INFLIGHT_MAX, a connection with nothing unanswered may
 * still send one request, within this many units more: clients that read
 * their replies are served while others hold the whole limit. */
#define LIMIT_SERVER_INFLIGHT_RESERVE 16384
/* A client whose unsent replies sit at LIMIT_CLIENT_OUTPUT_BYTES_MAX with
 * no progress is disconnected after this long — after one second when the
 * server is short of reply units, since its results hold them. */
#define LIMIT_CLIENT_STUCK_MS 60000
#define LIMIT_CLIENT_STUCK_PRESSED_MS 1000
/* Time to receive one whole command (slowloris) and to authenticate. */
#define LIMIT_COMMAND_RECV_MS 10000
#define LIMIT_AUTH_MS 10000

/* ---- the metrics endpoint (tallyd --metrics) ---------------------------- */

/* A request's head: a scrape's is a few hundred bytes; what does not fit
 * is refused (431) before more is read. */
#define LIMIT_HTTP_HEAD_BYTES_MAX 8192
/* HTTP connections at once: a few Prometheus servers and an operator's
 * curl; the next one gets 503.  Each holds one head buffer (preallocated)
 * and at most one response. */
#define LIMIT_HTTP_CONNECTIONS_MAX 16
/* Time to send a whole request, from the connection or the previous
 * response (an idle keep-alive connection is closed then too), and to
 * take a whole response. */
#define LIMIT_HTTP_RECV_MS 10000
#define LIMIT_HTTP_SEND_MS 10000

static_assert(9 + LIMIT_ID_BYTES_MAX + 1 + 10 + 1 + 20 <= LIMIT_ENGINE_ID_BYTES_MAX,
              "engine ids hold ~exp:~to: + client id + /k + #n");
static_assert(LIMIT_ENGINE_ID_BYTES_MAX <= 255, "id length is one byte on disk");
static_assert(LIMIT_MEMO_BYTES_MAX <= 255, "memo length is one byte on disk");
static_assert(LIMIT_BATCH_BYTES_MAX < LIMIT_SEGMENT_BYTES_MIN * 1024u,
              "segments hold many batches");
static_assert(LIMIT_BATCH_BYTES_HARD / LIMIT_SEGMENT_BYTES_DEFAULT + 2 <= LIMIT_BATCH_SEGMENTS_MAX,
              "the largest batch fits the ring with default segments");
static_assert(LIMIT_RECORD_BYTES_MAX * 2 <= LIMIT_SEGMENT_BYTES_MIN,
              "a record always fits in a fresh segment");
static_assert(LIMIT_HISTORY_MAX <= LIMIT_CLIENT_PIPELINE_MAX,
              "one HISTORY request always fits a connection's reply units");
static_assert(LIMIT_FOLLOW_MAX <= LIMIT_CLIENT_PIPELINE_MAX,
              "one FOLLOW request always fits a connection's reply units");
static_assert(LIMIT_BULK_BYTES_MAX < LIMIT_CLIENT_INPUT_BYTES_MAX,
              "a whole maximal command fits in the input buffer");

/* ---- cluster (SPEC §8 "Cluster"; cluster_map.h, cluster.h, zk.h) ------- */

/* Hash slots, as Redis Cluster: a command's slot is CRC16(key) mod this.
 * Clients compute it themselves, so it can never change. */
#define LIMIT_CLUSTER_SLOTS 16384
/* Nodes and shard groups of one cluster: the map is a fixed-size value
 * (about 80 KiB) copied whole into every snapshot. */
#define LIMIT_CLUSTER_NODES_MAX 64
#define LIMIT_CLUSTER_GROUPS_MAX 64
/* Followers per group (--replicas): members are 1 + this; the in-sync set
 * is a bit mask over a group's members. */
#define LIMIT_CLUSTER_REPLICAS_MAX 4
#define LIMIT_CLUSTER_MEMBERS_MAX (1 + LIMIT_CLUSTER_REPLICAS_MAX)
/* Node ids: 1..40 bytes of [A-Za-z0-9_.-] (Redis's ids are 40 hex
 * digits); they are ZooKeeper node names and CLUSTER NODES fields. */
#define LIMIT_CLUSTER_NODE_ID_BYTES_MAX 40
/* Cluster names: 1..64 bytes of the same set (a ZooKeeper node name). */
#define LIMIT_CLUSTER_NAME_BYTES_MAX 64
/* An advertised host: a DNS name (253) or an IPv4 address. */
#define LIMIT_CLUSTER_HOST_BYTES_MAX 253
/* The ZooKeeper connect string (host:port,... plus a chroot). */
#define LIMIT_ZK_HOSTS_BYTES_MAX 1024
/* A ZooKeeper path tally builds: /tally/NAME/groups/G/votes/ID. */
#define LIMIT_ZK_PATH_BYTES_MAX 256
/* The slot map's text: at worst one "start-end group\n" line per slot. */
#define LIMIT_CLUSTER_SLOTS_TEXT_BYTES_MAX (LIMIT_CLUSTER_SLOTS * 18)
/* Session timeouts tally asks ZooKeeper for (the server clamps them to
 * its own 2..20 ticks).  A leader stops acknowledging after a third of
 * the negotiated timeout without contact (SPEC §8). */
#define LIMIT_ZK_SESSION_MS_DEFAULT 6000
#define LIMIT_ZK_SESSION_MS_MIN 1000
#define LIMIT_ZK_SESSION_MS_MAX 60000
/* How often a member writes its durable position to ZooKeeper when it
 * changed (status lag); a vote writes it at once. */
#define LIMIT_CLUSTER_POS_REPORT_MS 1000
/* Replication (repl.h): the most record bytes a leader puts in one
 * message (then it cuts at the next write's end): big enough that a
 * replica appends a busy leader's batch in one or two of its own, small
 * enough that a message is read into memory whole. */
#define LIMIT_REPL_CHUNK_BYTES (1u << 20)
static_assert(LIMIT_REPL_CHUNK_BYTES + 64 * LIMIT_RECORD_BYTES_MAX <= LIMIT_BATCH_BYTES_MAX,
              "a chunk fits one batch of the replica");

static_assert(LIMIT_CLUSTER_SLOTS == 16384, "Redis Cluster clients hash into 16384 slots");
static_assert(LIMIT_CLUSTER_GROUPS_MAX <= LIMIT_CLUSTER_NODES_MAX,
              "groups never outnumber nodes (each node leads at most one at creation)");
static_assert(LIMIT_CLUSTER_GROUPS_MAX <= UINT16_MAX, "a slot's group is a uint16_t");
static_assert(LIMIT_CLUSTER_MEMBERS_MAX <= 32, "the in-sync set is a 32-bit mask");
static_assert(LIMIT_ZK_PATH_BYTES_MAX >= 7 + LIMIT_CLUSTER_NAME_BYTES_MAX + 8 + 3 + 7 +
                                            LIMIT_CLUSTER_NODE_ID_BYTES_MAX + 1,
              "the longest path fits");

#endif
