#!/usr/bin/env bash
# Memory per cluster (issue 23's growth target: with 10,000 clusters, at
# most 10 KB per cluster beyond its endpoints). For each count in COUNTS, a
# fresh meshgate (pinned to CPU $PROXY_CPU) loads gen_config.py's
# `clusters` config (static clusters of one endpoint each, nothing
# connected) and VmRSS is read once it has not moved for 3 s; per cluster
# = (VmRSS with the largest count - VmRSS with the smallest) / (difference
# of the counts). The endpoint is counted in, so the figure is an upper
# bound of the cost beyond the endpoints.
#
#   MESHGATE_BIN=target/release/meshgate benches/compare/cluster_mem.sh
#   COUNTS="1 1000 10000" benches/compare/cluster_mem.sh
#
# Raw outputs: benches/compare/out-clusters/ (gitignored).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT="$HERE/out-clusters"
TAG=cluster_mem
COUNTS="${COUNTS:-1 10000}"
PROXY_CPU="${PROXY_CPU:-0}"
MESHGATE_BIN="${MESHGATE_BIN:-$ROOT/target/release/meshgate}"
PORT=18195

# shellcheck source=lib.sh
source "$HERE/lib.sh"

[[ -x "$MESHGATE_BIN" ]] || die "no $MESHGATE_BIN"
rm -rf "$OUT"
mkdir -p "$OUT"

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

first="" first_rss=""
for n in $COUNTS; do
    python3 "$HERE/gen_config.py" clusters "$n" "$PORT" >"$OUT/clusters-$n.yaml"
    env -u RUST_LOG taskset -c "$PROXY_CPU" "$MESHGATE_BIN" run -c "$OUT/clusters-$n.yaml" \
        --concurrency 1 >"$OUT/mg-$n.log" 2>&1 &
    MG=$!
    PIDS+=("$MG")
    wait_port "$PORT" "$MG" "mg-$n"
    # Stable: the same VmRSS (within 0.5 %) over three one-second samples.
    prev=0 same=0
    while ((same < 3)); do
        sleep 1
        cur=$(rss_kb "$MG")
        if ((prev > 0 && (cur - prev) * 200 <= prev && (prev - cur) * 200 <= prev)); then
            same=$((same + 1))
        else
            same=0
        fi
        prev=$cur
    done
    stop_pid "$MG"
    if [[ -z "$first" ]]; then
        first=$n first_rss=$cur
        printf '{"clusters": %d, "vmrss_kb": %d}\n' "$n" "$cur" | tee -a "$OUT/results.jsonl"
    else
        per=$(((cur - first_rss) * 1024 / (n - first)))
        printf '{"clusters": %d, "vmrss_kb": %d, "bytes_per_cluster": %d}\n' "$n" "$cur" "$per" |
            tee -a "$OUT/results.jsonl"
    fi
done
