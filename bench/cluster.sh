#!/usr/bin/env bash
# bench/cluster.sh — the cost of replication (issue 15), in one run: points-v1
# against a single tallyd, then against a 3-node cluster on this machine
# (three shard groups, one replica each: `tally cluster create --replicas 1`)
# with --ack local, then with --ack replicated; throughput, p99, and the
# ratios.  Every node, replica and the private ZooKeeper share this machine's
# cores and disk with the load generator: the figures are what one machine
# does, not what three would.
#
#   bench/cluster.sh [--duration S] [--connections C] [--pipeline P] [--out DIR]
#   make bench-cluster [BENCH_ARGS="--duration 30"]
#
# Servers are started on free loopback ports in a temporary directory (on a
# disk) and stopped on exit.  Results: out/bench/cluster.txt and .json.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${TALLY_BUILD:-$ROOT/build}
BENCH=$BUILD/tally-bench
OUT=$ROOT/out/bench
DURATION=20 WARMUP=2 CONNS=64 PIPELINE=16
ACCOUNTS=100000 MERCHANTS=100
ZK_JAR=/usr/share/java/zookeeper.jar

while [ $# -gt 0 ]; do
    case $1 in
        --duration) DURATION=$2; shift ;;
        --warmup) WARMUP=$2; shift ;;
        --connections) CONNS=$2; shift ;;
        --pipeline) PIPELINE=$2; shift ;;
        --out) OUT=$2; shift ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench/cluster.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done
[ -x "$BUILD/tallyd" ] && [ -x "$BENCH" ] || { echo "bench/cluster.sh: make all first" >&2; exit 1; }
[ -f "$ZK_JAR" ] || { echo "bench/cluster.sh: needs zookeeperd (apt-get install zookeeperd)" >&2; exit 1; }
mkdir -p "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tally-bench-cluster.XXXXXX")
"$BENCH" fscheck "$WORK" >/dev/null
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

port() { "$BENCH" freeport; }

# Waits until a node answers PING.
wait_up() {
    for _ in $(seq 600); do
        redis-cli -p "$1" PING 2>/dev/null | grep -q PONG && return 0
        sleep 0.1
    done
    echo "bench/cluster.sh: nothing answers on port $1" >&2
    exit 1
}

LOAD=(-w points-v1 -c "$CONNS" -P "$PIPELINE" -d "$DURATION" --warmup "$WARMUP"
      --accounts "$ACCOUNTS" --merchants "$MERCHANTS" --seed 42 -q)

# 1. One tallyd, as `make bench` runs it.
P=$(port)
"$BUILD/tallyd" --dir "$WORK/single" --port "$P" 2>"$WORK/single.log" & PIDS+=($!)
wait_up "$P"
"$BENCH" run -p "$P" "${LOAD[@]}" --durable --label "single node" --json "$WORK/single.json" \
    > "$WORK/single.txt"
kill -TERM "${PIDS[-1]}"; wait "${PIDS[-1]}" || true

# 2. A private ZooKeeper for the clusters.
ZKP=$(port)
mkdir -p "$WORK/zk/data"
cat > "$WORK/zk/zoo.cfg" <<EOF
tickTime=200
minSessionTimeout=400
maxSessionTimeout=60000
dataDir=$WORK/zk/data
clientPort=$ZKP
clientPortAddress=127.0.0.1
admin.enableServer=false
4lw.commands.whitelist=srvr,ruok
EOF
java -Xmx128m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -cp "$ZK_JAR" \
    org.apache.zookeeper.server.ZooKeeperServerMain "$WORK/zk/zoo.cfg" >"$WORK/zk.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 300); do
    "$BUILD/tally" cluster status "127.0.0.1:$ZKP/none" 2>&1 | grep -q "no such cluster" && break
    sleep 0.2
done

# 3. A 3-node cluster per --ack mode: three groups in a ring, one replica each.
cluster_run() {
    local ack=$1 spec="" ports=() rpid=()
    for n in a b c; do
        local p r
        p=$(port); r=$(port)
        ports+=("$p")
        spec="$spec${spec:+,}$n@127.0.0.1:$p@$r"
    done
    "$BUILD/tally" cluster create "127.0.0.1:$ZKP/bench-$ack" --nodes "$spec" --replicas 1 \
        > "$WORK/create-$ack.txt"
    local i=0
    for n in a b c; do
        local p=${ports[$i]}
        "$BUILD/tallyd" --dir "$WORK/$ack-$n" --port "$p" --cluster "127.0.0.1:$ZKP/bench-$ack" \
            --node-id "$n" --advertise "127.0.0.1:$p" --ack "$ack" 2>"$WORK/$ack-$n.log" &
        PIDS+=($!); rpid+=($!)
        i=$((i + 1))
    done
    for p in "${ports[@]}"; do wait_up "$p"; done
    # Every group led and streaming to its replica.
    for _ in $(seq 600); do
        [ "$(redis-cli -p "${ports[0]}" CLUSTER INFO | tr -d '\r' | grep -c 'cluster_state:ok')" = 1 ] &&
            [ "$(for p in "${ports[@]}"; do redis-cli -p "$p" INFO replication; done |
                 grep -c 'role=leader.*replicas=1')" = 3 ] && break
        sleep 0.2
    done
    "$BENCH" run --cluster -p "${ports[0]}" "${LOAD[@]}" --label "3-node cluster, --ack $ack" \
        --json "$WORK/$ack.json" > "$WORK/$ack.txt"
    for p in "${rpid[@]}"; do kill -TERM "$p"; wait "$p" || true; done
}
cluster_run local
cluster_run replicated

num() { jq -r ".$2" "$WORK/$1.json"; }
{
    echo "points-v1, $ACCOUNTS accounts over $MERCHANTS merchants, c=$CONNS P=$PIPELINE," \
         "${DURATION}s after ${WARMUP}s of warm-up, one machine ($(nproc) CPUs); $(date -u +%F)"
    printf '%-34s %12s %10s %10s\n' "" "ops/s" "p50 ms" "p99 ms"
    for r in single local replicated; do
        case $r in single) name="single node";; *) name="3-node cluster, --ack $r";; esac
        printf '%-34s %12.0f %10.2f %10.2f\n' "$name" "$(num $r ops_per_s)" \
            "$(jq -r '.latency_us.p50 / 1000' "$WORK/$r.json")" \
            "$(jq -r '.latency_us.p99 / 1000' "$WORK/$r.json")"
    done
    awk -v s="$(num single ops_per_s)" -v l="$(num local ops_per_s)" \
        -v r="$(num replicated ops_per_s)" 'BEGIN {
        printf "replication costs: --ack replicated / --ack local = %.2f of the throughput\n", r / l;
        printf "cluster vs single node: --ack local %.2f, --ack replicated %.2f\n", l / s, r / s }'
    echo "command: bench/cluster.sh --duration $DURATION --connections $CONNS --pipeline $PIPELINE"
} | tee "$OUT/cluster.txt"
jq -s '{single: .[0], local: .[1], replicated: .[2]}' "$WORK/single.json" "$WORK/local.json" \
    "$WORK/replicated.json" > "$OUT/cluster.json"
