#!/usr/bin/env bash
# CPU per request with the heap on 4 KiB pages (meshgate's default since
# issue 23: transparent huge pages off for the process) against huge pages
# allowed (MIMALLOC_ALLOW_THP=1), same binary, runs alternated.
#
# meshgate (http1.yaml, pinned to CPU $PROXY_CPU) -> nginx backend on
# 127.0.0.1:9000 (CPU $LOAD_CPU); per run one fresh meshgate, then
# wrk -t1 -c50 (HTTP/1.1 keep-alive) and h2load -c10 -m10 (h2c) for
# DURATION s each; prints meshgate's CPU microseconds per request.
#
#   MESHGATE_BIN=target/release/meshgate benches/compare/thp_ab.sh
#
# Env: RUNS (pairs, default 3), DURATION (s, default 5).
# Raw outputs: benches/compare/out-thp/ (gitignored).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT="$HERE/out-thp"
TAG=thp_ab
RUNS="${RUNS:-3}"
DURATION="${DURATION:-5}"
PROXY_CPU="${PROXY_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"
MESHGATE_BIN="${MESHGATE_BIN:-$ROOT/target/release/meshgate}"
PORT=8082

# shellcheck source=lib.sh
source "$HERE/lib.sh"

[[ -x "$MESHGATE_BIN" ]] || die "no $MESHGATE_BIN"
rm -rf "$OUT"
mkdir -p "$OUT/backend/tmp"
port_in_use 9000 && die "port 9000 in use"
taskset -c "$LOAD_CPU" nginx -p "$OUT/backend/" -e "$OUT/backend/error.log" \
    -c "$HERE/backend-http.conf" >"$OUT/backend.log" 2>&1 &
PIDS+=($!)
wait_port 9000 "${PIDS[-1]}" backend

# One run: $1 = "small" (default) or "huge" (MIMALLOC_ALLOW_THP=1).
run() {
    local pages=$1 mg t0 t1 n
    if [[ "$pages" == huge ]]; then
        MIMALLOC_ALLOW_THP=1 taskset -c "$PROXY_CPU" "$MESHGATE_BIN" run -c "$HERE/http1.yaml" \
            --concurrency 1 >"$OUT/mg.log" 2>&1 &
    else
        env -u MIMALLOC_ALLOW_THP taskset -c "$PROXY_CPU" "$MESHGATE_BIN" run -c "$HERE/http1.yaml" \
            --concurrency 1 >"$OUT/mg.log" 2>&1 &
    fi
    mg=$!
    PIDS+=("$mg")
    wait_port "$PORT" "$mg" meshgate
    t0=$(cpu_ticks "$mg")
    taskset -c "$LOAD_CPU" wrk -t1 -c50 -d"${DURATION}s" "http://127.0.0.1:$PORT/" >"$OUT/wrk-$pages.txt"
    t1=$(cpu_ticks "$mg")
    n=$(awk '/requests in/ {print $1}' "$OUT/wrk-$pages.txt")
    printf '{"pages": "%s", "proto": "h1", "requests": %d, "cpu_us_per_request": %.2f}\n' \
        "$pages" "$n" "$(bc -l <<<"($t1 - $t0) * 1000000 / $(getconf CLK_TCK) / $n")"
    t0=$(cpu_ticks "$mg")
    taskset -c "$LOAD_CPU" h2load -c10 -m10 -D"$DURATION" "http://127.0.0.1:$PORT/" >"$OUT/h2load-$pages.txt"
    t1=$(cpu_ticks "$mg")
    n=$(awk '/^requests:/ {print $8}' "$OUT/h2load-$pages.txt")
    printf '{"pages": "%s", "proto": "h2c", "requests": %d, "cpu_us_per_request": %.2f}\n' \
        "$pages" "$n" "$(bc -l <<<"($t1 - $t0) * 1000000 / $(getconf CLK_TCK) / $n")"
    stop_pid "$mg"
}

for _ in $(seq "$RUNS"); do
    run small | tee -a "$OUT/results.jsonl"
    run huge | tee -a "$OUT/results.jsonl"
done
