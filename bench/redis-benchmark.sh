#!/usr/bin/env bash
# redis-benchmark against tallyd and against Redis, in one run (issue 3's
# figure): `redis-benchmark -P 16 -c 50` on EARN with random accounts and
# ids, every write durable before its reply —
#   tallyd --sync always                 EARN 42 <account> 10 <id>
#   redis-server appendonly yes, appendfsync always,
#                EVALSHA of the ledger script tally-bench's Redis peer runs
#                (idempotency check, balance, sequence, entry, history list)
# Each server runs on a free loopback port in a temp dir and is stopped on
# exit.  Usage: bench/redis-benchmark.sh [REQUESTS] (default 300000).
#
# Ids are two __rand_int__ (24 random digits): redis-benchmark 7 exits on
# the first error reply, and a repeated id with another account is a
# -CONFLICT.  Its -r is an int: 2000000000 is the widest keyspace.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-300000}
B=build
[ -x $B/tallyd ] && [ -x $B/tally-bench ] || { echo "run make first" >&2; exit 2; }
command -v redis-server >/dev/null || { echo "needs redis-server (make deps-bench)" >&2; exit 2; }
TMP=$(mktemp -d /tmp/tally-rb.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

wait_port() { for _ in $(seq 200); do redis-cli -p "$1" PING >/dev/null 2>&1 && return 0; sleep 0.05; done; return 1; }
rps() { tr '\r' '\n' < "$1" | grep -E "requests per second" | tail -1; }
p99() { tr '\r' '\n' < "$1" | grep -E "^ +99\.[0-9]+% <=" | head -1; }

TP=$($B/tally-bench freeport)
$B/tallyd --dir "$TMP/tally" --port "$TP" --sync always > "$TMP/tallyd.log" 2>&1 &
PIDS+=($!)
RP=$($B/tally-bench freeport)
redis-server --port "$RP" --dir "$TMP" --appendonly yes --appendfsync always --save "" \
    --daemonize no > "$TMP/redis.log" 2>&1 &
PIDS+=($!)
wait_port "$TP" && wait_port "$RP"
SHA=$(redis-cli -p "$RP" SCRIPT LOAD "$($B/tally-bench redis-script)")

echo "== tallyd --sync always: EARN, redis-benchmark -P 16 -c 50 -n $N"
redis-benchmark -p "$TP" -P 16 -c 50 -n "$N" -r 2000000000 \
    EARN 42 __rand_int__ 10 __rand_int____rand_int__ > "$TMP/tally.out" 2>&1
rps "$TMP/tally.out"
redis-cli -p "$TP" INFO commit | grep -E "batch_records_avg|flush_latency_us_avg" | tr -d '\r'

echo "== redis-server appendfsync always: EVALSHA ledger script, same settings"
redis-benchmark -p "$RP" -P 16 -c 50 -n "$N" -r 2000000000 \
    EVALSHA "$SHA" 0 earn 42 __rand_int__ 10 __rand_int____rand_int__ > "$TMP/redis.out" 2>&1
rps "$TMP/redis.out"

t=$(rps "$TMP/tally.out" | grep -oE "[0-9.]+ requests" | cut -d' ' -f1)
r=$(rps "$TMP/redis.out" | grep -oE "[0-9.]+ requests" | cut -d' ' -f1)
echo "== tally / redis = $(echo "scale=2; $t / $r" | bc)"
