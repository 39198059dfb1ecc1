#!/usr/bin/env bash
# bench/run.sh — the tally benchmark suite (see bench/README.md).
#
#   bench/run.sh                 tally alone: points-v1 at peak and at half of peak
#                                (p99), the other mixes, the engine API benchmark
#   bench/run.sh --peers         the peer comparison: tally, Redis (AOF always),
#                                PostgreSQL (synchronous_commit on), SQLite (WAL,
#                                FULL), raw LMDB (synced), same workload, same seed,
#                                each at every load of --loads (equal concurrency)
#   bench/run.sh --scaling       throughput vs connections and vs pipeline depth
#   bench/run.sh --ledger SIZES  growth series (issue 11): fill to each size, then 1M
#                                ops of points-v1 at it, with sequential ids, random
#                                ids and the points-mix; restart times; one merchant
#   bench/run.sh --memory N      RSS of tallyd per account after N accounts
#   bench/run.sh --all           all of the above (sizes from --ledger or 1e6 1e7)
#
# Every server it needs is started here on a free loopback port in a
# temporary directory (on a disk: tmpfs is refused) and stopped on exit,
# whatever happens.  Results: out/bench/ (text, JSON, gnuplot PNG/SVG).
# Needs `make all` and the peer programs built (make bench / make bench-peers
# do both).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${TALLY_BUILD:-$ROOT/build}
BENCH=$BUILD/tally-bench
OUT=$ROOT/out/bench
DURATION=20
WARMUP=2
PEERS=0 SCALING=0 LEDGER="" MEMORY=0 SUITE=1 SINGLE=0 PUBLISH=0
SHARDS=""
TALLY_CONNS=64 TALLY_PIPELINE=64   # tally's peak setting (README: how it was chosen)
REDIS_CONNS=50 REDIS_PIPELINE=16   # the usual Redis benchmark setting
LOADS="1x1 8x1 32x1 64x1 50x16 64x64 1x1000"
ACCOUNTS=100000 MERCHANTS=100
LEDGER_ACCOUNTS=1000000 LEDGER_OPS=1000000
LEDGER_SERIES="seq random mix" RESTART_SERIES="seq"
FILL_CONNS=64 FILL_PIPELINE=128
SEED=""
WORKDIR=${TMPDIR:-/tmp}

usage() {
    sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'
    cat <<EOF

options:
  --duration S        seconds per measured run (default $DURATION; the short runs: half)
  --warmup S          unmeasured seconds before every measured run, every system ($WARMUP)
  --seed N            one random seed for every system and run (default: the clock)
  --out DIR           results directory (default out/bench)
  --workdir DIR       where the data directories go (default \$TMPDIR or /tmp; not tmpfs)
  --shards N          tallyd --shards (default: tallyd's, the CPU count)
  --tally-load C,P    tally's peak setting in the suite (default $TALLY_CONNS,$TALLY_PIPELINE)
  --redis-load C,P    Redis's setting in the suite (default $REDIS_CONNS,$REDIS_PIPELINE)
  --loads "CxP ..."   --peers: the loads every system runs at (default "$LOADS");
                      SQLite and LMDB run those with C = 1, P ops per transaction
  --pg-clients N      --peers: shorthand for adding "Nx1" to --loads
  --accounts N        accounts (default $ACCOUNTS), --merchants N (default $MERCHANTS)
  --ledger-accounts N accounts of the growth series and the single merchant ($LEDGER_ACCOUNTS)
  --ledger-ops N      operations measured at each size, and after each restart ($LEDGER_OPS)
  --ledger-series S   growth series to run, of "seq random mix" (default "$LEDGER_SERIES")
  --restart-series S  series whose every size is also measured after SIGTERM and
                      kill -9 restarts (default "$RESTART_SERIES"; "" = none)
  --fill-load C,P     connections,pipeline of the unmeasured fill ($FILL_CONNS,$FILL_PIPELINE)
  --single-merchant   one merchant with --ledger-accounts accounts, vs 100 merchants
                      (also part of --ledger; --no-single-merchant skips it there)
  --no-suite          with --scaling/--ledger/--memory: skip the default tally runs
  --publish           copy the tables, JSON and charts into bench/results/
EOF
}

while [ $# -gt 0 ]; do
    case $1 in
    --peers) PEERS=1; SUITE=0 ;;
    --scaling) SCALING=1 ;;
    --ledger) LEDGER=$2; [ "$SINGLE" = skip ] || SINGLE=1; shift ;;
    --memory) MEMORY=$2; shift ;;
    --all) PEERS=1; SCALING=1; ALL=1 ;;
    --no-suite) SUITE=0 ;;
    --duration) DURATION=$2; shift ;;
    --warmup) WARMUP=$2; shift ;;
    --seed) SEED=$2; shift ;;
    --out) OUT=$2; shift ;;
    --workdir) WORKDIR=$2; shift ;;
    --shards) SHARDS=$2; shift ;;
    --tally-load) TALLY_CONNS=${2%,*}; TALLY_PIPELINE=${2#*,}; shift ;;
    --redis-load) REDIS_CONNS=${2%,*}; REDIS_PIPELINE=${2#*,}; shift ;;
    --loads) LOADS=$2; shift ;;
    --pg-clients) LOADS="$LOADS ${2}x1"; shift ;;
    --accounts) ACCOUNTS=$2; shift ;;
    --merchants) MERCHANTS=$2; shift ;;
    --ledger-accounts) LEDGER_ACCOUNTS=$2; shift ;;
    --ledger-ops) LEDGER_OPS=$2; shift ;;
    --ledger-series) LEDGER_SERIES=$2; shift ;;
    --restart-series) RESTART_SERIES=$2; shift ;;
    --fill-load) FILL_CONNS=${2%,*}; FILL_PIPELINE=${2#*,}; shift ;;
    --single-merchant) SINGLE=1 ;;
    --no-single-merchant) SINGLE=skip ;;
    --publish) PUBLISH=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "run.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
if [ "${ALL:-0}" = 1 ]; then
    if [ "$MEMORY" = 0 ]; then MEMORY=1000000; fi
    LEDGER=${LEDGER:-1e6 1e7}
    [ "$SINGLE" = skip ] || SINGLE=1
fi
SHORT=$(( DURATION / 2 > 0 ? DURATION / 2 : 1 ))
SEED=${SEED:-$(date +%s)}
LOADS=$(echo "$LOADS" | tr ' ' '\n' | awk 'NF && !seen[$0]++' | tr '\n' ' ')
[ -x "$BENCH" ] && [ -x "$BUILD/tallyd" ] || { echo "run.sh: build first (make all)" >&2; exit 1; }

mkdir -p "$OUT/runs"
"$BENCH" fscheck "$WORKDIR" >/dev/null || exit 1
WORK=$(mktemp -d "$WORKDIR/tally-bench.XXXXXX")
chmod 755 "$WORK"
LOG=$OUT/run.log
: > "$LOG"
declare -A PIDS=()

# ---- servers: started here, always stopped on exit -----------------------

cleanup() {
    local rc=$?
    for name in "${!PIDS[@]}"; do stop_server "$name"; done
    if [ -n "${PG_DATA:-}" ]; then pg_stop; fi
    rm -rf "$WORK"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { echo "$*" | tee -a "$LOG" >&2; }

free_port() { "$BENCH" freeport; }

wait_ping() { # port: until the server answers PING (30 s)
    for _ in $(seq 300); do
        if [ "$(redis-cli -p "$1" PING 2>/dev/null)" = PONG ]; then return 0; fi
        sleep 0.1
    done
    say "server on port $1 did not answer PING"; return 1
}

stop_server() { # name
    local pid=${PIDS[$1]:-}
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset "PIDS[$1]"
}

spawn_tally() { # port sync dir: tallyd in the background, PIDS[tally]
    "$BUILD/tallyd" --dir "$3" --bind 127.0.0.1 --port "$1" --sync "$2" \
        ${SHARDS:+--shards "$SHARDS"} >>"$WORK/tallyd.log" 2>&1 &
    PIDS[tally]=$!
}

start_tally() { # port sync [dir]: tallyd on a fresh directory
    local dir=${3:-$WORK/tally-$1}
    spawn_tally "$1" "$2" "$dir"
    wait_ping "$1"
}

start_redis() { # port
    mkdir -p "$WORK/redis-$1"
    redis-server --bind 127.0.0.1 --port "$1" --dir "$WORK/redis-$1" --save "" \
        --appendonly yes --appendfsync always --daemonize no \
        --logfile "$WORK/redis-$1/redis.log" &
    PIDS[redis]=$!
    wait_ping "$1"
}

# PostgreSQL refuses to run as root: as root, its commands run as the
# postgres user (its data directory is that user's).
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)

pg_start() { # port
    PG_DATA=$WORK/pg
    mkdir -p "$PG_DATA"
    "$BENCH" fscheck "$PG_DATA" >>"$LOG"
    if [ "$(id -u)" = 0 ]; then chown postgres "$PG_DATA"; fi
    as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --auth=trust -E UTF8 >>"$LOG" 2>&1
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_DATA/server.log" -w start -o \
        "-p $1 -k $PG_DATA -c listen_addresses=127.0.0.1 -c fsync=on -c synchronous_commit=on \
         -c full_page_writes=on -c shared_buffers=1GB -c max_connections=200 \
         -c max_wal_size=4GB" >>"$LOG" 2>&1
}

pg_sql() { # port sql: one value
    as_pg "$PG_BIN/psql" -tA -h 127.0.0.1 -p "$1" -U postgres -c "$2" postgres
}

# CPU seconds of the cluster: the postmaster, its live children, and the
# children it has reaped (pgbench's backends exit when it disconnects).
pg_cpu_s() {
    local pm; pm=$(head -1 "$PG_DATA/postmaster.pid")
    local p ticks=0
    for p in "$pm" $(pgrep -P "$pm" || true); do
        [ -r "/proc/$p/stat" ] || continue
        ticks=$(( ticks + $(sed 's/^.*) //' "/proc/$p/stat" | awk '{ print $12 + $13 + $14 + $15 }') ))
    done
    awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.3f", t / hz }'
}

pg_stop() {
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop >>"$LOG" 2>&1 || true
    PG_DATA=""
}

# ---- measuring ---------------------------------------------------------------

field() { jq -r "$2" "$OUT/runs/$1.json"; }

run_bench() { # name, tally-bench arguments...: one measured run, text to the log
    local name=$1; shift
    say "== $name: tally-bench $* --seed $SEED"
    "$BENCH" "$@" --seed "$SEED" -q --json "$OUT/runs/$name.json" | tee -a "$LOG" >&2
}

best_of() { # runs...: the name of the one with the most ops/s
    local best="" ops=-1 n o
    for n in "$@"; do
        o=$(field "$n" '.ops_per_s | floor')
        if [ "$o" -gt "$ops" ]; then best=$n; ops=$o; fi
    done
    echo "$best"
}

# p99 at half of peak: the best closed-loop run's ops/s, halved, replayed
# as an open loop with that run's connections and pipeline.
half_of_best() { # name "common args" runs...
    local name=$1 w=$2; shift 2
    local best; best=$(best_of "$@")
    local half c p
    half=$(field "$best" '.ops_per_s / 2 | floor')
    c=$(field "$best" .connections)
    p=$(field "$best" .pipeline)
    run_bench "$name" $w -c "$c" -P "$p" -d "$DURATION" --warmup "$WARMUP" --rate "$half" \
        --label "tallyd --sync always; open loop at half of $best ($half ops/s asked), c=$c P=$p"
}

tally_suite() {
    local port; port=$(free_port)
    start_tally "$port" always
    local w="--accounts $ACCOUNTS --merchants $MERCHANTS -p $port --server-pid ${PIDS[tally]}"
    w="$w --durable"
    run_bench tally-peak $w -c "$TALLY_CONNS" -P "$TALLY_PIPELINE" -d "$DURATION" \
        --warmup "$WARMUP" \
        --label "tallyd --sync always, closed loop, c=$TALLY_CONNS P=$TALLY_PIPELINE"
    run_bench tally-redis-setting $w -c "$REDIS_CONNS" -P "$REDIS_PIPELINE" -d "$DURATION" \
        --warmup "$WARMUP" \
        --label "tallyd --sync always, closed loop, c=$REDIS_CONNS P=$REDIS_PIPELINE"
    half_of_best tally-half "$w" tally-peak tally-redis-setting
    for mix in earn-only redeem-heavy read-heavy hold-capture points-mix; do
        run_bench "tally-$mix" $w -w $mix -c "$TALLY_CONNS" -P "$TALLY_PIPELINE" -d "$SHORT" \
            --warmup 1 --label "tallyd --sync always"
    done
    run_bench tally-zipf $w --zipf 0.99 -c "$TALLY_CONNS" -P "$TALLY_PIPELINE" -d "$SHORT" \
        --warmup 1 --label "tallyd --sync always, Zipf 0.99 over accounts"
    stop_server tally
    local n; n=$(nproc)
    for sync in always none; do
        for shards in 1 "$n"; do
            TMPDIR=$WORK run_bench "engine-$sync-$shards" engine --sync $sync --shards "$shards" \
                --accounts "$ACCOUNTS" --merchants "$MERCHANTS" -d "$SHORT" --warmup 1
        done
    done
}

# ---- the peer comparison -------------------------------------------------------

load_c() { echo "${1%x*}"; }
load_p() { echo "${1#*x}"; }

# Every load of LOADS against one server: runs/peer-SYSTEM-CxP.json.
sweep_loads() { # system "common args" "label"
    local load c p
    for load in $LOADS; do
        c=$(load_c "$load"); p=$(load_p "$load")
        run_bench "peer-$1-$load" $2 -c "$c" -P "$p" -d "$DURATION" --warmup "$WARMUP" \
            --label "$3; c=$c P=$p"
    done
}

peers_tally() {
    local port load runs=""; port=$(free_port)
    start_tally "$port" always
    local w="--accounts $ACCOUNTS --merchants $MERCHANTS -p $port --server-pid ${PIDS[tally]}"
    w="$w --durable --system tally"
    sweep_loads tally "$w" "tallyd --sync always"
    for load in $LOADS; do runs="$runs peer-tally-$load"; done
    # shellcheck disable=SC2086
    half_of_best peer-tally-half "$w" $runs
    stop_server tally
}

peers_redis() {
    local port; port=$(free_port)
    start_redis "$port"
    local w="--accounts $ACCOUNTS --merchants $MERCHANTS -p $port --target redis --system redis"
    w="$w --durable --server-pid ${PIDS[redis]}"
    sweep_loads redis "$w" "appendonly yes, appendfsync always; EVALSHA"
    stop_server redis
}

# pgbench's script for P operations in flight per client: with P > 1, P
# calls between \startpipeline and \endpipeline — sent back to back, one
# implicit transaction, so one commit (one WAL flush) answers all P, the
# way tally's group commit answers a pipeline.
pg_script() { # P: prints the script's path
    local p=$1 f=$WORK/points-v1-p$1.pgbench
    if [ "$p" = 1 ]; then
        cp "$ROOT/bench/peers/postgres.pgbench" "$f"
    else
        { echo '\startpipeline'
          for _ in $(seq "$p"); do grep -v '^--' "$ROOT/bench/peers/postgres.pgbench"; done
          echo '\endpipeline'; } > "$f"
    fi
    chmod 644 "$f"
    echo "$f"
}

# One pgbench load: a warm-up run, then the measured one with a
# per-transaction log; its elapsed time is measured from the log.
peers_pg_load() { # port load
    local port=$1 load=$2 c p j script name=peer-postgres-$2
    c=$(load_c "$load"); p=$(load_p "$load"); j=$(( c < 2 ? c : 2 ))
    script=$(pg_script "$p")
    local common=(-h 127.0.0.1 -p "$port" -U postgres -n -M prepared -c "$c" -j "$j"
        --random-seed="$SEED" -D accounts="$ACCOUNTS" -D merchants="$MERCHANTS" -f "$script")
    say "== $name: pgbench ${common[*]} -T $DURATION (after a ${WARMUP}s warm-up)"
    as_pg pgbench "${common[@]}" -T "$WARMUP" postgres >>"$LOG" 2>&1 ||
        { say "pgbench warm-up failed (see $LOG)"; return 1; }
    rm -rf "$WORK/pgb" && mkdir -p "$WORK/pgb" && chmod 777 "$WORK/pgb"
    local refused0 refused1 cpu0 cpu1
    refused0=$(pg_sql "$port" "SELECT count(*) FROM entries WHERE kind = 'refused'")
    cpu0=$(pg_cpu_s)
    as_pg pgbench "${common[@]}" -T "$DURATION" -l --log-prefix="$WORK/pgb/log" postgres \
        > "$WORK/pgb.out" 2>&1 || { cat "$WORK/pgb.out" >> "$LOG"; say "pgbench failed:";
                                    tail -5 "$WORK/pgb.out" >&2; return 1; }
    sleep 0.5 # let the postmaster reap the backends, so their CPU time is counted
    cpu1=$(pg_cpu_s)
    tee -a "$LOG" < "$WORK/pgb.out" >&2
    refused1=$(pg_sql "$port" "SELECT count(*) FROM entries WHERE kind = 'refused'")
    local failed; failed=$(awk -F'[:(]' '/number of failed transactions/ { print $2 + 0 }' \
        "$WORK/pgb.out")
    cat "$WORK"/pgb/log.* > "$WORK/pgb.all"
    "$BENCH" summarize --file "$WORK/pgb.all" --pgbench-log --ops-per-line "$p" \
        --system postgres --connections "$c" --pipeline "$p" --seed "$SEED" -q \
        --errors "$(( ${failed:-0} * p ))" --refused "$(( refused1 - refused0 ))" \
        --server-cpu "$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { printf "%.3f", b - a }')" \
        $PG_SETTINGS \
        --label "synchronous_commit on, plpgsql per op; pgbench -c $c$( [ "$p" = 1 ] ||
            echo ", pipeline of $p (one txn)")" \
        --json "$OUT/runs/$name.json" | tee -a "$LOG" >&2
}

peers_postgres() {
    local port load; port=$(free_port)
    pg_start "$port"
    cp "$ROOT/bench/peers/postgres.sql" "$WORK/"
    chmod 644 "$WORK/postgres.sql"
    as_pg "$PG_BIN/psql" -q -h 127.0.0.1 -p "$port" -U postgres -v ON_ERROR_STOP=1 \
        -f "$WORK/postgres.sql" postgres >>"$LOG" 2>&1
    PG_SETTINGS="--setting data_fs=$("$BENCH" fscheck "$PG_DATA" | awk '{ print $2 }')"
    local s
    for s in synchronous_commit fsync full_page_writes wal_sync_method commit_delay; do
        PG_SETTINGS="$PG_SETTINGS --setting $s=$(pg_sql "$port" "SHOW $s")"
    done
    case "$PG_SETTINGS" in
    *synchronous_commit=on*fsync=on*) ;;
    *) say "PostgreSQL is not durable: $PG_SETTINGS"; return 1 ;;
    esac
    for load in $LOADS; do peers_pg_load "$port" "$load"; done
    pg_stop
}

# SQLite and LMDB are in-process and single-writer: they run the loads
# with one client, P operations per transaction.
peers_inprocess() {
    local load p peer
    for load in $LOADS; do
        [ "$(load_c "$load")" = 1 ] || continue
        p=$(load_p "$load")
        for peer in sqlite lmdb; do
            say "== peer-$peer-$load"
            "$BUILD/peer-$peer" --db "$WORK/$peer-$p.db" --batch "$p" -d "$DURATION" \
                --warmup "$WARMUP" --seed "$SEED" -q --accounts "$ACCOUNTS" \
                --merchants "$MERCHANTS" --json "$OUT/runs/peer-$peer-$load.json" |
                tee -a "$LOG" >&2
            rm -rf "$WORK/$peer-$p.db"*
        done
    done
}

peers_suite() {
    say "== peers: tally, Redis, PostgreSQL, SQLite, LMDB at loads $LOADS; ${DURATION}s each" \
        "after ${WARMUP}s of warm-up; seed $SEED"
    rm -f "$OUT"/runs/peer-*.json
    peers_tally
    peers_redis
    peers_postgres
    peers_inprocess
    peers_table
}

# The comparison: every run with the ratio of tally at the same load
# (equal concurrency: clients x pipeline) and of tally's best run; per
# peer a headline with both, each labelled with its in-flight counts.
peers_table() {
    local runs; runs=$(ls "$OUT"/runs/peer-*.json)
    # shellcheck disable=SC2086
    jq -s '
      def load: "\(.connections)x\(.pipeline)";
      def ratio($a; $b): if $b > 0 then ($a / $b * 100 | round / 100) else null end;
      (map(select(.system == "tally" and .open_loop == null))) as $t
      | ($t | max_by(.ops_per_s)) as $best
      | map(. as $r | ($t | map(select(load == ($r | load))) | first) as $same
            | . + {load: load,
                   tally_best: {load: ($best | load), ops_per_s: $best.ops_per_s},
                   ratio_tally_over: ratio($best.ops_per_s; .ops_per_s),
                   tally_same_load: (if $same then $same.ops_per_s else null end),
                   ratio_equal_load: (if $same then ratio($same.ops_per_s; .ops_per_s)
                                      else null end)})
      | {seed: (.[0].seed), runs: .,
         headline: ([.[] | select(.system != "tally")] | group_by(.system)
                    | map(max_by(.ops_per_s)
                          | {system, load, ops_per_s, tally_best, ratio_peak: .ratio_tally_over,
                             tally_same_load, ratio_equal_load,
                             text: "tally \(.tally_best.load) / \(.system) \(.load) = \(.ratio_tally_over)x; at equal load \(.load): \(.ratio_equal_load // "-")x"}))}
    ' $runs > "$OUT/peers.json"
    {
        echo "points-v1, every write durable before its ack; seed $SEED; load = clients x pipeline"
        echo "(SQLite, LMDB: 1 x ops per transaction); tally/x = tally's best run over x;"
        echo "same load = tally at x's load over x"
        echo
        printf '%-9s %-8s %-58s %9s %8s %9s %9s %6s %8s %9s\n' system load setting ops/s \
            p50_ms p99_ms cpu_us/op errors tally/x same_load
        jq -r '.runs | sort_by(.system != "tally", .system, .connections * .pipeline)[]
            | [.system, .load, .label, (.ops_per_s | floor),
               (.latency_us.p50 / 1000 * 100 | round / 100),
               (.latency_us.p99 / 1000 * 100 | round / 100),
               ((.server_cpu_us_per_op // -1) * 10 | round / 10), .errors,
               (.ratio_tally_over // "-"), (.ratio_equal_load // "-")] | @tsv' "$OUT/peers.json" |
            awk -F'\t' '{ printf "%-9s %-8s %-58s %9s %8s %9s %9s %6s %7sx %8sx\n",
                $1, $2, substr($3, 1, 58), $4, $5, $6, $7, $8, $9, $10 }'
        echo
        echo "headline (each peer at its best load; in flight = clients x pipeline):"
        jq -r '.headline[] | "  \(.text)"' "$OUT/peers.json"
    } > "$OUT/peers.txt"
    say ""
    tee -a "$LOG" < "$OUT/peers.txt" >&2
    plot_peers
}

# ---- scaling, memory ------------------------------------------------------------

scaling_suite() {
    local port; port=$(free_port)
    start_tally "$port" always
    local w="--accounts $ACCOUNTS --merchants $MERCHANTS -p $port --server-pid ${PIDS[tally]}"
    w="$w --durable --warmup 1 -d $(( SHORT / 2 > 2 ? SHORT / 2 : 2 ))"
    : > "$OUT/scaling-conns.dat"
    for c in 1 2 4 8 16 32 64 128 256; do
        run_bench "scale-c$c" $w -c $c -P 1 --label "connections sweep, pipeline 1"
        echo "$c $(field "scale-c$c" '"\(.ops_per_s) \(.latency_us.p99)"')" >> "$OUT/scaling-conns.dat"
    done
    : > "$OUT/scaling-pipeline.dat"
    for p in 1 2 4 8 16 32 64 128 256; do
        run_bench "scale-p$p" $w -c 16 -P $p --label "pipeline sweep, 16 connections"
        echo "$p $(field "scale-p$p" '"\(.ops_per_s) \(.latency_us.p99)"')" >> "$OUT/scaling-pipeline.dat"
    done
    stop_server tally
    plot_xy scaling-conns "connections (pipeline 1)"
    plot_xy scaling-pipeline "pipeline depth (16 connections)"
}

# RSS of tallyd per account: N accounts each earn once (prefill), then RSS.
memory_suite() {
    local port; port=$(free_port)
    start_tally "$port" always
    local pid=${PIDS[tally]}
    local before; before=$(awk '/VmRSS/ { print $2 }' "/proc/$pid/status")
    say "== memory: prefill of $MEMORY accounts"
    "$BENCH" -p "$port" -w earn-only --accounts "$MEMORY" --merchants "$MERCHANTS" \
        -c "$TALLY_CONNS" -P "$TALLY_PIPELINE" --prefill 100 -n 1 -d 0 -q >>"$LOG" 2>&1
    sleep 2 # a checkpoint
    local after; after=$(awk '/VmRSS/ { print $2 }' "/proc/$pid/status")
    local disk; disk=$(du -sk "$WORK/tally-$port" | cut -f1)
    jq -n --argjson n "$MEMORY" --argjson b "$before" --argjson a "$after" --argjson d "$disk" \
        '{accounts: $n, rss_kib_before: $b, rss_kib_after: $a, disk_kib: $d,
          rss_bytes_per_account: (($a - $b) * 1024 / $n), disk_bytes_per_account: ($d * 1024 / $n)}' \
        | tee "$OUT/memory.json" | tee -a "$LOG" >&2
    stop_server tally
}

# ---- growth series, restarts, one merchant (issue 11) ----------------------------

series_args() { # series: the workload's tally-bench arguments
    case $1 in
    seq) echo "-w points-v1" ;;
    random) echo "-w points-v1 --ids random" ;;
    mix) echo "-w points-mix --ids random" ;;
    *) say "unknown series $1 (seq, random, mix)"; return 1 ;;
    esac
}

records_of() { # port: entries in the ledger
    redis-cli -p "$1" INFO ledger | tr -d '\r' | awk -F: '$1 == "records" { print $2 }'
}

# Whether the next size fits on the disk, at the bytes per entry measured
# so far (1.2 x, for checkpoints and snapshots in flight); says so if not.
fits() { # dir target bytes_per_entry
    local free need; free=$(df --output=avail -B1 "$1" | tail -1)
    need=$(awk -v t="$2" -v b="$3" -v r="$(records_of "$PORT")" \
        'BEGIN { n = (t - r) * b * 1.2; printf "%.0f", (n > 0 ? n : 0) }')
    if [ "$need" -gt "$free" ]; then
        say "   skipping $2 and larger: ~$(( need / 1000000000 )) GB more needed at" \
            "$3 B/entry, $(( free / 1000000000 )) GB free in $1"
        return 1
    fi
}

# SNAPSHOT then SIGTERM, and SNAPSHOT then kill -9: after each, how long until
# the first PING and until every shard answers BALANCE, then LEDGER_OPS
# operations and their rate.
restart_measure() { # series size dir w
    local series=$1 size=$2 dir=$3 w=$4 t0 t1 snap stop_s how
    for how in term kill; do
        t0=$(date +%s.%N)
        redis-cli -p "$PORT" SNAPSHOT >>"$LOG"
        t1=$(date +%s.%N)
        snap=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
        local pid=${PIDS[tally]}
        t0=$(date +%s.%N)
        if [ $how = term ]; then kill -TERM "$pid"; else kill -KILL "$pid"; fi
        wait "$pid" 2>/dev/null || true
        t1=$(date +%s.%N)
        stop_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
        t0=$(date +%s.%N)
        spawn_tally "$PORT" always "$dir"
        "$BENCH" ready -p "$PORT" --since "$t0" --merchants "$MERCHANTS" \
            --json "$OUT/runs/restart-$series-$size-$how-ready.json" | tee -a "$LOG" >&2
        run_bench "restart-$series-$size-$how" $w -p "$PORT" --server-pid "${PIDS[tally]}" \
            --label "after SNAPSHOT and $how at $size entries"
        jq -c --arg s "$series" --argjson size "$size" --arg how "$how" \
            --argjson snap "$snap" --argjson stop "$stop_s" \
            --slurpfile ops "$OUT/runs/restart-$series-$size-$how.json" \
            '. + {series: $s, size: $size, how: $how, snapshot_s: $snap, stop_s: $stop,
                  ops_per_s_after: $ops[0].ops_per_s, p99_us_after: $ops[0].latency_us.p99}' \
            "$OUT/runs/restart-$series-$size-$how-ready.json" >> "$OUT/restart.jsonl"
    done
}

# One growth series: a fresh tallyd filled to each size with the series'
# workload (pipelined, unmeasured, progress every 10 s), then LEDGER_OPS
# operations measured at c=64 P=64 with tallyd's counters sampled.
growth_series() { # series
    local series=$1 w size target records bpe=0 dir=$WORK/ledger-$1
    w="$(series_args "$series") --accounts $LEDGER_ACCOUNTS --merchants $MERCHANTS"
    PORT=$(free_port)
    start_tally "$PORT" always "$dir"
    : > "$OUT/ledger-$series.dat"
    for size in $LEDGER; do
        target=$(awk -v s="$size" 'BEGIN { printf "%.0f", s }')
        if [ "$bpe" != 0 ] && ! fits "$dir" "$target" "$bpe"; then break; fi
        records=$(records_of "$PORT")
        if [ "$target" -gt "$records" ]; then
            say "== $series: filling the ledger from $records to $target entries" \
                "(c=$FILL_CONNS P=$FILL_PIPELINE)"
            "$BENCH" $w -p "$PORT" -c "$FILL_CONNS" -P "$FILL_PIPELINE" -d 0 \
                -n $(( target - records )) --seed "$SEED" --progress-s 10 \
                --json "$OUT/runs/ledger-$series-$target-fill.json" 2>&1 >>"$LOG" |
                tee -a "$LOG" >&2
        fi
        run_bench "ledger-$series-$target" $w -p "$PORT" --server-pid "${PIDS[tally]}" \
            --durable -c "$TALLY_CONNS" -P "$TALLY_PIPELINE" -n "$LEDGER_OPS" -d 0 \
            --label "$series: $LEDGER_OPS ops at $target entries"
        bpe=$(field "ledger-$series-$target" '.server.disk_bytes_per_entry')
        field "ledger-$series-$target" '"\(.server.records_before) \(.ops_per_s) \(.server.disk_bytes_per_entry) \(.server.write_bytes_per_entry)"' \
            >> "$OUT/ledger-$series.dat"
        case " $RESTART_SERIES " in
        *" $series "*) restart_measure "$series" "$target" "$dir" \
            "$w --durable -c $TALLY_CONNS -P $TALLY_PIPELINE -n $LEDGER_OPS -d 0" ;;
        esac
    done
    stop_server tally
    # The engine's own CPU per operation at the final size: the C API on the
    # same directory, no server.
    run_bench "ledger-$series-engine" engine --dir "$dir" $w -n "$LEDGER_OPS" -d 0 \
        --label "$series: engine C API on the filled ledger"
    rm -rf "$dir"
}

# One coalition program: every account under one merchant, so one shard
# does all the work; 100 merchants on a fresh server for contrast.
single_merchant() {
    local m dir port
    for m in 1 100; do
        port=$(free_port); dir=$WORK/single-$m
        start_tally "$port" always "$dir"
        run_bench "merchants-$m" -p "$port" --server-pid "${PIDS[tally]}" --durable \
            --accounts "$LEDGER_ACCOUNTS" --merchants $m -c "$TALLY_CONNS" -P "$TALLY_PIPELINE" \
            -n "$LEDGER_OPS" -d 0 --warmup 0 \
            --label "$m merchant(s), $LEDGER_ACCOUNTS accounts, fresh ledger"
        stop_server tally
        rm -rf "$dir"
    done
    {
        printf '%-12s %10s %9s %9s %9s\n' merchants ops/s p50_ms p99_ms cpu_us/op
        for m in 1 100; do
            jq -r --arg m "$m" '[$m, (.ops_per_s | floor), (.latency_us.p50 / 1000 * 100 | round / 100),
                (.latency_us.p99 / 1000 * 100 | round / 100),
                ((.server_cpu_us_per_op // -1) * 10 | round / 10)] | @tsv' \
                "$OUT/runs/merchants-$m.json"
        done | awk -F'\t' '{ printf "%-12s %10s %9s %9s %9s\n", $1, $2, $3, $4, $5 }'
    } > "$OUT/single-merchant.txt"
    jq -s '{one_merchant: .[0], hundred_merchants: .[1]}' "$OUT/runs/merchants-1.json" \
        "$OUT/runs/merchants-100.json" > "$OUT/single-merchant.json"
    tee -a "$LOG" < "$OUT/single-merchant.txt" >&2
}

ledger_suite() {
    : > "$OUT/restart.jsonl"
    rm -f "$OUT"/runs/ledger-*.json "$OUT"/runs/restart-*.json
    local series
    for series in $LEDGER_SERIES; do growth_series "$series"; done
    ledger_table
}

ledger_table() {
    local runs; runs=$(ls "$OUT"/runs/ledger-*.json | grep -v -- '-fill\.json$')
    # shellcheck disable=SC2086
    jq -s --arg order "$LEDGER_SERIES" '($order | split(" ") | map(select(. != ""))) as $o
        | map(. as $r | ($r.label | capture("^(?<series>[a-z]+): ")) + $r
              | . + {size: (if (.label | test(" at [0-9]+ entries")) then
                        (.label | capture(" at (?<n>[0-9]+) entries").n | tonumber) else null end),
                     entries: .server.records_before})
        | sort_by((.series as $x | $o | index($x)), .system == "engine", .entries)
        | {seed: (.[0].seed), growth: map(select(.system != "engine")),
           engine: map(select(.system == "engine"))}' $runs > "$OUT/ledger.json"
    jq -s '.' "$OUT/restart.jsonl" > "$OUT/restart.json"
    {
        echo "growth series: $LEDGER_OPS ops at c=$TALLY_CONNS P=$TALLY_PIPELINE after the" \
            "ledger reached each size; $LEDGER_ACCOUNTS accounts, $MERCHANTS merchants; seed $SEED"
        echo "size = the series' target; entries = in the ledger when the measured ops began"
        printf '%-10s %11s %11s %9s %8s %8s %8s %9s %9s %9s %9s %6s\n' series size entries \
            ops/s p50_ms p99_ms max_ms disk_B/e write_B/e anon_MB cpu_us/op errors
        jq -r '.growth[], .engine[] | [.series, (.size // "-"), .entries,
            (.ops_per_s | floor),
            (.latency_us.p50 / 1000 * 10 | round / 10), (.latency_us.p99 / 1000 * 10 | round / 10),
            (.latency_us.max / 1000 * 10 | round / 10),
            (.server.disk_bytes_per_entry | round), (.server.write_bytes_per_entry | round),
            (.server.rss_anon_bytes / 1048576 | round), (.server.cpu_us_per_op * 10 | round / 10),
            .errors, .system] | @tsv' "$OUT/ledger.json" |
            awk -F'\t' '{ s = $13 == "engine" ? $1 "/engine" : $1;
                printf "%-10s %11s %11s %9s %8s %8s %8s %9s %9s %9s %9s %6s\n",
                s, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12 }'
        if [ -s "$OUT/restart.jsonl" ]; then
            echo
            echo "restart after SNAPSHOT (s): stop = signal to exit;" \
                "ping / balance = start to first PING / to every shard answering BALANCE"
            printf '%-7s %11s %-5s %9s %7s %7s %8s %10s %9s\n' series size how snapshot \
                stop ping balance ops/s_after p99_ms
            jq -r '.[] | [.series, .size, .how, .snapshot_s, .stop_s, .first_ping_s,
                .all_shards_balance_s, (.ops_per_s_after | floor),
                (.p99_us_after / 1000 * 10 | round / 10)] | @tsv' "$OUT/restart.json" |
                awk -F'\t' '{ printf "%-7s %11s %-5s %9s %7s %7s %8s %10s %9s\n",
                    $1, $2, $3, $4, $5, $6, $7, $8, $9 }'
        fi
        echo
        echo "engine CPU per op: the .../engine rows (tally-bench engine on each filled directory);" \
            "the others: tallyd's utime+stime over the window / ops"
    } > "$OUT/ledger.txt"
    say ""
    tee -a "$LOG" < "$OUT/ledger.txt" >&2
    plot_ledger
}

# ---- plots -------------------------------------------------------------------

plot_peers() {
    command -v gnuplot >/dev/null || { say "(gnuplot missing: no charts)"; return 0; }
    jq -r '.runs | sort_by(.system != "tally", .system, .connections * .pipeline)[]
        | ["\(.system) \(.load)\(if .open_loop then " open" else "" end)", .ops_per_s,
           (.latency_us.p99 / 1000)] | @tsv' "$OUT/peers.json" > "$OUT/peers.dat"
    # ops/s per load, one column per system ("?" where a system has no run)
    jq -r '.runs | map(select(.open_loop == null)) as $r
        | ["tally", "redis", "postgres", "sqlite", "lmdb"] as $s
        | (["load"] + $s | @tsv),
          (($r | map(.load) | unique | sort_by(split("x") | map(tonumber) | .[0] * .[1]))[]
           | . as $l | [$l] + ($s | map(. as $x | ($r | map(select(.system == $x and .load == $l))
               | first | .ops_per_s) // "?")) | @tsv)' "$OUT/peers.json" > "$OUT/peers-equal.dat"
    # the headline ratios, printed on the first chart
    local labels; labels=$(jq -r '.headline | to_entries[]
        | "set label \(.key + 1) \"\(.value.text)\" at graph 0.01, graph \(0.97 - .key * 0.04) font \",9\" noenhanced"' \
        "$OUT/peers.json")
    for term in "pngcairo size 1200,650" "svg size 1200,650"; do
        local ext=${term%% *}; ext=${ext%cairo}
        gnuplot <<EOF
set terminal $term
set output "$OUT/peers.$ext"
set title "points-v1, durable writes: ops/s (log scale) and p99; label = system clients x pipeline"
set datafile separator "\t"
set style data histograms
set style fill solid 0.8
set boxwidth 0.8
set logscale y
set ylabel "ops/s"
set y2label "p99 ms"
set y2tics
set logscale y2
set xtics rotate by -40 font ",8" noenhanced
set key top right
$labels
plot "$OUT/peers.dat" using 2:xtic(1) title "ops/s", "" using 3 axes x1y2 title "p99 ms"
unset label
set output "$OUT/peers-equal.$ext"
set title "points-v1 at equal load: ops/s per system at each clients x pipeline (log scale)"
set datafile missing "?"
set style histogram clustered gap 1
unset y2label
unset y2tics
set xtics norotate font ",10"
set xlabel "load = clients x pipeline (SQLite, LMDB: 1 x ops per transaction)"
set key autotitle columnhead
plot for [i=2:6] "$OUT/peers-equal.dat" using i:xtic(1) noenhanced
EOF
    done
}

plot_xy() { # name xlabel: columns x ops/s p99_us
    command -v gnuplot >/dev/null || return 0
    for term in "pngcairo size 900,500" "svg size 900,500"; do
        local ext=${term%% *}; ext=${ext%cairo}
        gnuplot <<EOF
set terminal $term
set output "$OUT/$1.$ext"
set title "tally --sync always, points-v1"
set xlabel "$2"
set logscale x
set ylabel "ops/s"
set y2label "p99 ms"
set y2tics
set ytics nomirror
plot "$OUT/$1.dat" using 1:2 with linespoints title "ops/s", "" using 1:(\$3/1000) axes x1y2 with linespoints title "p99 ms"
EOF
    done
}

# ops/s, and disk and written bytes per entry, against the ledger's size
# (log x), one line per series.
plot_ledger() {
    command -v gnuplot >/dev/null || return 0
    local series plot1="" plot2="" lc=0 f
    for series in $LEDGER_SERIES; do
        f=$OUT/ledger-$series.dat
        [ -s "$f" ] || continue
        lc=$(( lc + 1 ))
        plot1="$plot1${plot1:+, }\"$f\" using 1:2 with linespoints lc $lc title \"$series\""
        plot2="$plot2${plot2:+, }\"$f\" using 1:3 with linespoints lc $lc title \"$series: disk\""
        plot2="$plot2, \"$f\" using 1:4 with linespoints lc $lc dt 2 title \"$series: written\""
    done
    [ -n "$plot1" ] || return 0
    for term in "pngcairo size 1000,800" "svg size 1000,800"; do
        local ext=${term%% *}; ext=${ext%cairo}
        gnuplot <<EOF
set terminal $term
set output "$OUT/ledger.$ext"
set multiplot layout 2,1 title "tally --sync always, points-v1 family, $LEDGER_OPS ops at each ledger size"
set logscale x
set xlabel "entries in the ledger"
set ylabel "ops/s"
set yrange [0:*]
plot $plot1
set logscale y
set yrange [*:*]
set ylabel "bytes per entry"
plot $plot2
unset multiplot
EOF
    done
}

# ---- main ----------------------------------------------------------------------

say "tally bench $(date -u +%FT%TZ) on $(nproc) CPUs; $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'); seed $SEED; data in $WORK ($("$BENCH" fscheck "$WORK" | awk '{ print $2 }'))"
"$BENCH" selftest >>"$LOG" || { say "tally-bench selftest failed"; exit 1; }
if [ "$SUITE" = 1 ]; then tally_suite; fi
if [ "$PEERS" = 1 ]; then peers_suite; fi
if [ "$SCALING" = 1 ]; then scaling_suite; fi
if [ -n "$LEDGER" ]; then ledger_suite; fi
if [ "$SINGLE" = 1 ]; then single_merchant; fi
if [ "$MEMORY" != 0 ]; then memory_suite; fi
if [ "$SUITE" = 1 ]; then
    n=$(nproc)
    suite_runs=""
    for r in tally-peak tally-redis-setting tally-half tally-earn-only tally-redeem-heavy \
        tally-read-heavy tally-hold-capture tally-points-mix tally-zipf engine-always-1 \
        "engine-always-$n" engine-none-1 "engine-none-$n"; do
        if [ -f "$OUT/runs/$r.json" ]; then suite_runs="$suite_runs $OUT/runs/$r.json"; fi
    done
    # shellcheck disable=SC2086
    jq -s . $suite_runs > "$OUT/suite.json"
    {
        printf '%-20s %-12s %-56s %10s %9s %9s %9s %7s %6s\n' run workload setting ops/s p50_ms \
            p99_ms cpu_us/op batch errors
        for r in $suite_runs; do
            jq -r --arg n "$(basename "$r" .json)" '[$n, .workload, .label, (.ops_per_s|floor),
                (.latency_us.p50/1000*100|round/100), (.latency_us.p99/1000*100|round/100),
                ((.server_cpu_us_per_op // -1)*10|round/10),
                ((.batch_entries_avg // 0)*10|round/10), .errors] | @tsv' "$r"
        done | awk -F'\t' '{printf "%-20s %-12s %-56s %10s %9s %9s %9s %7s %6s\n", $1, $2,
            substr($3,1,56), $4, $5, $6, $7, $8, $9}'
    } > "$OUT/suite.txt"
    say ""
    tee -a "$LOG" < "$OUT/suite.txt" >&2
fi
if [ "$PUBLISH" = 1 ]; then
    mkdir -p "$ROOT/bench/results"
    for f in peers.txt peers.json peers.png peers-equal.png suite.txt suite.json \
        ledger.txt ledger.json ledger.png restart.json single-merchant.txt \
        single-merchant.json scaling-conns.png scaling-pipeline.png memory.json; do
        if [ -f "$OUT/$f" ]; then cp "$OUT/$f" "$ROOT/bench/results/$f"; fi
    done
    say "copied the tables, JSON and charts into bench/results/"
fi
say "results in $OUT"
