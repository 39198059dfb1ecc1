#!/usr/bin/env bash
# bench/import.sh — `tally import` speed (issue 14): a ledger of N entries
# (points-mix with random ids over 1M accounts, written by the engine
# benchmark, durable), dumped with `tally dump --refusals`, then imported
# into a fresh directory: lines/s from the start of the import to its
# commit (durable, read back and verified), and the CPU it took.  The
# imported directory's dump must equal the source's but for seq.
#
#   bench/import.sh [--lines N] [--workload W] [--workdir DIR] [--keep]
#
# Defaults: 10M lines, points-mix, $TMPDIR or /tmp (not tmpfs).  Prints one
# summary line and writes out/bench/import.json.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${TALLY_BUILD:-$ROOT/build}
LINES=10000000 WORKLOAD=points-mix KEEP=0
WORKDIR=${TMPDIR:-/tmp}
OUT=$ROOT/out/bench
while [ $# -gt 0 ]; do
    case $1 in
        --lines) LINES=$2; shift ;;
        --workload) WORKLOAD=$2; shift ;;
        --workdir) WORKDIR=$2; shift ;;
        --out) OUT=$2; shift ;;
        --keep) KEEP=1 ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench/import.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
mkdir -p "$OUT" "$WORKDIR"
"$BUILD/tally-bench" fscheck "$WORKDIR" >/dev/null
W=$(mktemp -d "$WORKDIR/tally-import-bench-XXXXXX")
cleanup() { [ "$KEEP" = 1 ] || rm -rf "$W"; }
trap cleanup EXIT

echo "import bench: writing a ledger of $LINES entries ($WORKLOAD, random ids) in $W/src" >&2
"$BUILD/tally-bench" engine --dir "$W/src" -w "$WORKLOAD" --ids random -n "$LINES" -d 0 \
    --accounts 1000000 --seed 14 -q >/dev/null
"$BUILD/tally" dump "$W/src" --refusals > "$W/src.jsonl"
lines=$(wc -l < "$W/src.jsonl")
bytes=$(stat -c %s "$W/src.jsonl")
echo "import bench: $lines lines, $bytes bytes; importing" >&2
# The dump just written is still being written back: flushed first, so the
# import is not timed sharing the disk with the harness's own file.
sync
t0=$(date +%s.%N)
/usr/bin/time -f "%U %S %M" -o "$W/time" "$BUILD/tally" import "$W/dst" "$W/src.jsonl" \
    > "$W/import.out" 2> "$W/import.err" || { cat "$W/import.err" >&2; exit 1; }
t1=$(date +%s.%N)
read -r user sys maxrss < "$W/time"
secs=$(echo "$t1 - $t0" | bc -l)
rate=$(echo "$lines / $secs" | bc -l)
cpu_us=$(echo "($user + $sys) * 1000000 / $lines" | bc -l)
# The round trip: the same entries but for seq (and the imported mark).
"$BUILD/tally" dump "$W/dst" --refusals > "$W/dst.jsonl"
strip() { sed -e 's/^{"seq":[0-9]*,/{/' -e 's/,"imported":true}$/}/' "$1" | sort; }
if ! cmp -s <(strip "$W/src.jsonl") <(strip "$W/dst.jsonl"); then
    echo "import bench: the imported directory does not dump the same entries" >&2
    exit 1
fi
du_src=$(du -sb "$W/src" | cut -f1)
du_dst=$(du -sb "$W/dst" | cut -f1)
printf 'import: %d lines in %.1f s = %.0f lines/s; CPU %.2f us/line (user %.1f s, sys %.1f s); max RSS %d MiB; disk %s B (source %s B); round trip identical\n' \
    "$lines" "$secs" "$rate" "$cpu_us" "$user" "$sys" $((maxrss / 1024)) "$du_dst" "$du_src"
cat > "$OUT/import.json" <<EOF
{"lines": $lines, "bytes": $bytes, "seconds": $secs, "lines_per_s": $rate,
 "cpu_us_per_line": $cpu_us, "user_s": $user, "sys_s": $sys, "max_rss_kib": $maxrss,
 "disk_bytes": $du_dst, "source_disk_bytes": $du_src, "workload": "$WORKLOAD",
 "command": "bench/import.sh --lines $LINES --workload $WORKLOAD"}
EOF
