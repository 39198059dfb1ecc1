#!/usr/bin/env bash
# bench/run.sh — the tally benchmark suite (see bench/README.md).
#
#   bench/run.sh                 tally alone: points-v1 at peak and at half of peak
#                                (p99), the other mixes, the engine API benchmark
#   bench/run.sh --peers         the peer comparison: tally, Redis (AOF always),
#                                PostgreSQL (synchronous_commit on), SQLite (WAL,
#                                FULL), raw LMDB (synced), same workload, same run
#   bench/run.sh --scaling       throughput vs connections and vs pipeline depth
#   bench/run.sh --ledger SIZES  throughput vs ledger size (entries, e.g. "1e6 1e7")
#   bench/run.sh --memory N      RSS of tallyd per account after N accounts
#   bench/run.sh --all           all of the above (sizes from --ledger or 1e6 1e7)
#
# Every server it needs is started here on a free loopback port in a
# temporary directory and stopped on exit, whatever happens.  Results:
# out/bench/ (text, JSON, gnuplot PNG/SVG).  Needs `make all` and the peer
# programs built (make bench / make bench-peers do both).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${TALLY_BUILD:-$ROOT/build}
BENCH=$BUILD/tally-bench
OUT=$ROOT/out/bench
DURATION=20
SHORT=10
PEERS=0 SCALING=0 LEDGER="" MEMORY=0 SUITE=1
SHARDS=""
TALLY_CONNS=64 TALLY_PIPELINE=64   # tally's peak setting (README: how it was chosen)
REDIS_CONNS=50 REDIS_PIPELINE=16   # the usual Redis benchmark setting
PG_CLIENTS=32
ACCOUNTS=100000 MERCHANTS=100

usage() {
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    cat <<EOF

options:
  --duration S        seconds per measured run (default $DURATION; the short runs: half)
  --out DIR           results directory (default out/bench)
  --shards N          tallyd --shards (default: tallyd's, the CPU count)
  --tally-load C,P    tally's peak setting: connections,pipeline (default $TALLY_CONNS,$TALLY_PIPELINE)
  --redis-load C,P    Redis's setting (default $REDIS_CONNS,$REDIS_PIPELINE)
  --pg-clients N      pgbench clients (default $PG_CLIENTS)
  --accounts N        accounts (default $ACCOUNTS), --merchants N (default $MERCHANTS)
  --no-suite          with --scaling/--ledger/--memory: skip the default tally runs
EOF
}

while [ $# -gt 0 ]; do
    case $1 in
    --peers) PEERS=1; SUITE=0 ;;
    --scaling) SCALING=1 ;;
    --ledger) LEDGER=$2; shift ;;
    --memory) MEMORY=$2; shift ;;
    --all) PEERS=1; SCALING=1; ALL=1 ;;
    --no-suite) SUITE=0 ;;
    --duration) DURATION=$2; shift ;;
    --out) OUT=$2; shift ;;
    --shards) SHARDS=$2; shift ;;
    --tally-load) TALLY_CONNS=${2%,*}; TALLY_PIPELINE=${2#*,}; shift ;;
    --redis-load) REDIS_CONNS=${2%,*}; REDIS_PIPELINE=${2#*,}; shift ;;
    --pg-clients) PG_CLIENTS=$2; shift ;;
    --accounts) ACCOUNTS=$2; shift ;;
    --merchants) MERCHANTS=$2; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "run.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
if [ "${ALL:-0}" = 1 ]; then
    if [ "$MEMORY" = 0 ]; then MEMORY=1000000; fi
    LEDGER=${LEDGER:-1e6 1e7}
fi
SHORT=$(( DURATION / 2 > 0 ? DURATION / 2 : 1 ))
[ -x "$BENCH" ] && [ -x "$BUILD/tallyd" ] || { echo "run.sh: build first (make all)" >&2; exit 1; }

mkdir -p "$OUT/runs"
WORK=$(mktemp -d /tmp/tally-bench.XXXXXX)
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

start_tally() { # port sync [dir]: tallyd on a fresh directory
    local dir=${3:-$WORK/tally-$1}
    "$BUILD/tallyd" --dir "$dir" --bind 127.0.0.1 --port "$1" --sync "$2" \
        ${SHARDS:+--shards "$SHARDS"} >>"$WORK/tallyd.log" 2>&1 &
    PIDS[tally]=$!
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
    if [ "$(id -u)" = 0 ]; then chown postgres "$PG_DATA"; fi
    as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --auth=trust -E UTF8 >>"$LOG" 2>&1
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_DATA/server.log" -w start -o \
        "-p $1 -k $PG_DATA -c listen_addresses=127.0.0.1 -c fsync=on -c synchronous_commit=on \
         -c full_page_writes=on -c shared_buffers=1GB -c max_connections=200 \
         -c max_wal_size=4GB" >>"$LOG" 2>&1
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
    say "== $name: tally-bench $*"
    "$BENCH" "$@" -q --json "$OUT/runs/$name.json" | tee -a "$LOG" >&2
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
    run_bench "$name" $w -c "$c" -P "$p" -d "$DURATION" --rate "$half" \
        --label "tallyd --sync always; open loop at half of $best ($half ops/s), c=$c P=$p"
}

tally_suite() {
    local port; port=$(free_port)
    start_tally "$port" always
    local w="--accounts $ACCOUNTS --merchants $MERCHANTS -p $port --server-pid ${PIDS[tally]}"
    run_bench tally-peak $w -c "$TALLY_CONNS" -P "$TALLY_PIPELINE" -d "$DURATION" --warmup 2 \
        --label "tallyd --sync always, closed loop, c=$TALLY_CONNS P=$TALLY_PIPELINE"
    run_bench tally-redis-setting $w -c "$REDIS_CONNS" -P "$REDIS_PIPELINE" -d "$DURATION" \
        --warmup 2 --label "tallyd --sync always, closed loop, c=$REDIS_CONNS P=$REDIS_PIPELINE"
    half_of_best tally-half "$w" tally-peak tally-redis-setting
    for mix in earn-only redeem-heavy read-heavy hold-capture; do
        run_bench "tally-$mix" $w -w $mix -c "$TALLY_CONNS" -P "$TALLY_PIPELINE" -d "$SHORT" \
            --label "tallyd --sync always"
    done
    run_bench tally-zipf $w --zipf 0.99 -c "$TALLY_CONNS" -P "$TALLY_PIPELINE" -d "$SHORT" \
        --label "tallyd --sync always, Zipf 0.99 over accounts"
    stop_server tally
    local n; n=$(nproc)
    for sync in always none; do
        for shards in 1 "$n"; do
            run_bench "engine-$sync-$shards" engine --sync $sync --shards "$shards" \
                --accounts "$ACCOUNTS" --merchants "$MERCHANTS" -d "$SHORT" --warmup 1
        done
    done
}

peers_suite() {
    local port
    say "== peers: tally, Redis, PostgreSQL, SQLite, LMDB; ${DURATION}s each"
    port=$(free_port)
    start_tally "$port" always
    local w="--accounts $ACCOUNTS --merchants $MERCHANTS -p $port --server-pid ${PIDS[tally]}"
    run_bench peer-tally $w -c "$TALLY_CONNS" -P "$TALLY_PIPELINE" -d "$DURATION" --warmup 2 \
        --system tally --label "tallyd --sync always; c=$TALLY_CONNS P=$TALLY_PIPELINE"
    run_bench peer-tally-redis-setting $w -c "$REDIS_CONNS" -P "$REDIS_PIPELINE" -d "$DURATION" \
        --warmup 2 --system tally \
        --label "tallyd --sync always; Redis's setting c=$REDIS_CONNS P=$REDIS_PIPELINE"
    half_of_best peer-tally-half "$w --system tally" peer-tally peer-tally-redis-setting
    stop_server tally

    port=$(free_port)
    start_redis "$port"
    w="--accounts $ACCOUNTS --merchants $MERCHANTS -p $port --target redis --system redis"
    w="$w --server-pid ${PIDS[redis]}"
    run_bench peer-redis $w -c "$REDIS_CONNS" -P "$REDIS_PIPELINE" -d "$DURATION" --warmup 2 \
        --label "appendonly yes, appendfsync always; EVALSHA; c=$REDIS_CONNS P=$REDIS_PIPELINE"
    run_bench peer-redis-tally-setting $w -c "$TALLY_CONNS" -P "$TALLY_PIPELINE" -d "$DURATION" \
        --warmup 2 --label "appendonly yes, appendfsync always; EVALSHA; c=$TALLY_CONNS P=$TALLY_PIPELINE"
    stop_server redis

    port=$(free_port)
    pg_start "$port"
    cp "$ROOT/bench/peers/postgres.sql" "$ROOT/bench/peers/postgres.pgbench" "$WORK/"
    chmod 644 "$WORK/postgres.sql" "$WORK/postgres.pgbench"
    as_pg "$PG_BIN/psql" -q -h 127.0.0.1 -p "$port" -U postgres -v ON_ERROR_STOP=1 \
        -f "$WORK/postgres.sql" postgres >>"$LOG" 2>&1
    mkdir -p "$WORK/pgb" && chmod 777 "$WORK/pgb"
    say "== peer-postgres: pgbench -c $PG_CLIENTS -j 2 -M prepared -T $DURATION"
    local cpu0 cpu1; cpu0=$(pg_cpu_s)
    as_pg pgbench -h 127.0.0.1 -p "$port" -U postgres -n -M prepared -c "$PG_CLIENTS" -j 2 \
        -T "$DURATION" -D accounts="$ACCOUNTS" -D merchants="$MERCHANTS" -f "$WORK/postgres.pgbench" \
        -l --log-prefix="$WORK/pgb/log" postgres 2>&1 | tee -a "$LOG" >&2
    sleep 0.5 # let the postmaster reap the backends, so their CPU time is counted
    cpu1=$(pg_cpu_s)
    cat "$WORK"/pgb/log.* > "$WORK/pgb.all"
    local refused
    refused=$(as_pg "$PG_BIN/psql" -tA -h 127.0.0.1 -p "$port" -U postgres \
        -c "SELECT count(*) FROM entries WHERE kind = 'refused'" postgres)
    "$BENCH" summarize --file "$WORK/pgb.all" --column 3 --unit us --elapsed "$DURATION" \
        --system postgres --connections "$PG_CLIENTS" --pipeline 1 -q \
        --server-cpu "$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { printf "%.3f", b - a }')" \
        --label "synchronous_commit on, plpgsql per op; pgbench -c $PG_CLIENTS ($refused refused)" \
        --json "$OUT/runs/peer-postgres.json" | tee -a "$LOG" >&2
    pg_stop

    for batch in 1 1000; do
        say "== peer-sqlite-$batch"
        "$BUILD/peer-sqlite" --db "$WORK/sqlite-$batch.db" --batch $batch -d "$DURATION" -q \
            --accounts "$ACCOUNTS" --merchants "$MERCHANTS" \
            --json "$OUT/runs/peer-sqlite-$batch.json" | tee -a "$LOG" >&2
        say "== peer-lmdb-$batch"
        "$BUILD/peer-lmdb" --db "$WORK/lmdb-$batch" --batch $batch -d "$DURATION" -q \
            --accounts "$ACCOUNTS" --merchants "$MERCHANTS" \
            --json "$OUT/runs/peer-lmdb-$batch.json" | tee -a "$LOG" >&2
        rm -rf "$WORK/sqlite-$batch.db"* "$WORK/lmdb-$batch"
    done
    peers_table
}

# The comparison table: every peer against tally's peak in this same run.
peers_table() {
    local tally_best; tally_best=$(best_of peer-tally peer-tally-redis-setting)
    local tally_ops; tally_ops=$(field "$tally_best" .ops_per_s)
    local names="peer-tally peer-tally-redis-setting peer-tally-half peer-redis
        peer-redis-tally-setting peer-postgres peer-sqlite-1 peer-sqlite-1000 peer-lmdb-1
        peer-lmdb-1000"
    {
        printf '%-10s %-64s %10s %9s %9s %8s %9s\n' system setting ops/s p50_ms p99_ms \
            cpu_us/op tally/x
        for n in $names; do
            [ -f "$OUT/runs/$n.json" ] || continue
            jq -r --argjson t "$tally_ops" '[.system, .label, (.ops_per_s|floor),
                (.latency_us.p50/1000*100|round/100), (.latency_us.p99/1000*100|round/100),
                ((.server_cpu_us_per_op // -1)*10|round/10),
                (if .ops_per_s > 0 then ($t / .ops_per_s * 10 | round / 10) else 0 end)]
                | @tsv' "$OUT/runs/$n.json" |
                awk -F'\t' '{printf "%-10s %-64s %10s %9s %9s %9s %8sx\n", $1, substr($2,1,64), $3, $4, $5, $6, $7}'
        done
    } > "$OUT/peers.txt"
    jq -s --argjson t "$tally_ops" \
        'map(. + {ratio_tally_over: (if .ops_per_s > 0 then $t / .ops_per_s else null end)})' \
        $(for n in $names; do [ -f "$OUT/runs/$n.json" ] && echo "$OUT/runs/$n.json"; done) \
        > "$OUT/peers.json"
    say ""
    say "points-v1, every write durable before its ack; ratio = tally's best ($tally_best) / system"
    tee -a "$LOG" < "$OUT/peers.txt" >&2
    plot_peers "$names"
}

scaling_suite() {
    local port; port=$(free_port)
    start_tally "$port" always
    local w="--accounts $ACCOUNTS --merchants $MERCHANTS -p $port --server-pid ${PIDS[tally]}"
    w="$w -d $(( SHORT / 2 > 2 ? SHORT / 2 : 2 ))"
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

# Throughput after the ledger has grown to each size: filled with earn-only
# at full speed, then points-v1 measured for SHORT seconds.
ledger_suite() {
    local port; port=$(free_port)
    start_tally "$port" always
    local filled=0 size target
    : > "$OUT/ledger.dat"
    for size in $LEDGER; do
        target=$(awk -v s="$size" 'BEGIN { printf "%.0f", s }')
        if [ "$target" -gt "$filled" ]; then
            say "== filling the ledger to $target entries"
            "$BENCH" -p "$port" -w earn-only --accounts "$ACCOUNTS" --merchants "$MERCHANTS" \
                -c "$TALLY_CONNS" -P "$TALLY_PIPELINE" -d 0 -n $(( target - filled )) -q >>"$LOG"
            filled=$target
        fi
        run_bench "ledger-$target" -p "$port" --accounts "$ACCOUNTS" --merchants "$MERCHANTS" \
            -c "$TALLY_CONNS" -P "$TALLY_PIPELINE" -d "$SHORT" --label "after $target entries"
        filled=$(( filled + $(field "ledger-$target" .ops) ))
        echo "$target $(field "ledger-$target" '"\(.ops_per_s) \(.latency_us.p99)"')" >> "$OUT/ledger.dat"
    done
    stop_server tally
    plot_xy ledger "ledger size (entries)"
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

# ---- plots -------------------------------------------------------------------

plot_peers() {
    command -v gnuplot >/dev/null || { say "(gnuplot missing: no charts)"; return 0; }
    local n
    for n in $1; do
        [ -f "$OUT/runs/$n.json" ] || continue
        jq -r --arg n "${n#peer-}" '[$n, .ops_per_s, (.latency_us.p99 / 1000)] | @tsv' \
            "$OUT/runs/$n.json"
    done \
        > "$OUT/peers.dat"
    for term in "pngcairo size 1100,600" "svg size 1100,600"; do
        local ext=${term%% *}; ext=${ext%cairo}
        gnuplot <<EOF
set terminal $term
set output "$OUT/peers.$ext"
set title "points-v1, durable writes: ops/s (log scale) and p99"
set style data histograms
set style fill solid 0.8
set boxwidth 0.8
set logscale y
set ylabel "ops/s"
set y2label "p99 ms"
set y2tics
set logscale y2
set xtics rotate by -30 font ",9" noenhanced
set key top right
plot "$OUT/peers.dat" using 2:xtic(1) title "ops/s", "" using 3 axes x1y2 title "p99 ms"
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

# ---- main ----------------------------------------------------------------------

say "tally bench $(date -u +%FT%TZ) on $(nproc) CPUs; $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
"$BENCH" selftest >>"$LOG" || { say "tally-bench selftest failed"; exit 1; }
if [ "$SUITE" = 1 ]; then tally_suite; fi
if [ "$PEERS" = 1 ]; then peers_suite; fi
if [ "$SCALING" = 1 ]; then scaling_suite; fi
if [ -n "$LEDGER" ]; then ledger_suite; fi
if [ "$MEMORY" != 0 ]; then memory_suite; fi
if [ "$SUITE" = 1 ]; then
    n=$(nproc)
    suite_runs=""
    for r in tally-peak tally-redis-setting tally-half tally-earn-only tally-redeem-heavy \
        tally-read-heavy tally-hold-capture tally-zipf engine-always-1 "engine-always-$n" \
        engine-none-1 "engine-none-$n"; do
        if [ -f "$OUT/runs/$r.json" ]; then suite_runs="$suite_runs $OUT/runs/$r.json"; fi
    done
    # shellcheck disable=SC2086
    jq -s . $suite_runs > "$OUT/suite.json"
    {
        printf '%-20s %-12s %-56s %10s %9s %9s %9s %7s\n' run workload setting ops/s p50_ms \
            p99_ms cpu_us/op batch
        for r in $suite_runs; do
            jq -r --arg n "$(basename "$r" .json)" '[$n, .workload, .label, (.ops_per_s|floor),
                (.latency_us.p50/1000*100|round/100), (.latency_us.p99/1000*100|round/100),
                ((.server_cpu_us_per_op // -1)*10|round/10),
                ((.batch_entries_avg // 0)*10|round/10)] | @tsv' "$r"
        done | awk -F'\t' '{printf "%-20s %-12s %-56s %10s %9s %9s %9s %7s\n", $1, $2,
            substr($3,1,56), $4, $5, $6, $7, $8}'
    } > "$OUT/suite.txt"
    say ""
    tee -a "$LOG" < "$OUT/suite.txt" >&2
fi
say "results in $OUT"
