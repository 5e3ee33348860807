#!/usr/bin/env bash
# User-space instructions per request of a proxy on the HTTP/1.1 keep-alive
# workload of http.sh (13-byte answers from an nginx backend on
# 127.0.0.1:9000), counted by callgrind. Instruction counts do not depend on
# what else the machine is doing, so this compares meshgate with nginx and
# HAProxy even on a busy machine (it says nothing about kernel time: see
# http.sh for CPU per request).
#
#   benches/compare/icount.sh meshgate|nginx|haproxy [SECONDS]
#
# Counting starts after a warm-up (callgrind_control -i on) and stops before
# shutdown, so start-up and exit are not in the figure. The proxy runs under
# valgrind, about 50x slower: wrk with 10 connections keeps it busy.
# Env: MESHGATE_BIN (default target/release/meshgate); ATOMICS=1 also counts
# the atomic read-modify-write instructions per request and where they run
# (atomics.py). Output: the counted instructions, requests served, and
# instructions per request.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT="$HERE/out-icount"
PROXY="${1:?usage: icount.sh meshgate|nginx|haproxy [SECONDS]}"
SECS="${2:-6}"
MESHGATE_BIN="${MESHGATE_BIN:-$ROOT/target/release/meshgate}"

rm -rf "$OUT"
mkdir -p "$OUT/backend/tmp" "$OUT/nginx-http/tmp"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

wait_port() {
    for _ in $(seq 1 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "port $1 never opened" >&2
    exit 1
}

taskset -c 1 nginx -p "$OUT/backend/" -e "$OUT/backend/error.log" -c "$HERE/backend-http.conf" \
    >"$OUT/backend.log" 2>&1 &
PIDS+=($!)
wait_port 9000

# Pinned as in http.sh: the proxy alone on CPU 0 (so meshgate starts one
# tokio worker, as nginx and HAProxy run one worker), the rest on CPU 1.
VG_EXTRA=()
[[ "${ATOMICS:-0}" == 1 ]] && VG_EXTRA=(--dump-instr=yes)
VG=(taskset -c 0 valgrind --tool=callgrind "${VG_EXTRA[@]}" --instr-atstart=no --callgrind-out-file="$OUT/callgrind.out.%p")
case "$PROXY" in
meshgate)
    PORT=8082
    env -u RUST_LOG "${VG[@]}" "$MESHGATE_BIN" run -c "$HERE/http1.yaml" >"$OUT/proxy.log" 2>&1 &
    ;;
nginx)
    PORT=8081
    sed "s#@CERTS@#$ROOT/examples/certs#g" "$HERE/nginx-http.conf" >"$OUT/nginx-http.conf"
    # One process (no master), so callgrind sees the worker's work.
    "${VG[@]}" nginx -p "$OUT/nginx-http/" -e "$OUT/nginx-http/error.log" \
        -c "$OUT/nginx-http.conf" -g 'master_process off;' >"$OUT/proxy.log" 2>&1 &
    ;;
haproxy)
    PORT=8084
    "${VG[@]}" haproxy -db -f "$HERE/haproxy-http.cfg" >"$OUT/proxy.log" 2>&1 &
    ;;
*)
    echo "unknown proxy $PROXY" >&2
    exit 2
    ;;
esac
VG_PID=$!
PIDS+=("$VG_PID")
wait_port "$PORT"
# Warm-up: connections, pools and lazy state, not counted.
taskset -c 1 wrk -t1 -c10 -d2s "http://127.0.0.1:$PORT/" >/dev/null
callgrind_control -i on "$VG_PID" >/dev/null
taskset -c 1 wrk -t1 -c10 -d"${SECS}s" "http://127.0.0.1:$PORT/" >"$OUT/wrk.txt"
callgrind_control -i off "$VG_PID" >/dev/null
callgrind_control -d "$VG_PID" >/dev/null
kill "$VG_PID"
wait "$VG_PID" 2>/dev/null || true

REQS=$(awk '/requests in/ {print $1}' "$OUT/wrk.txt")
# The dump taken while counting was on; its totals line is the counted part.
IR=$(for f in "$OUT"/callgrind.out.*; do grep -h '^totals:' "$f" | awk '{print $2}'; done |
    sort -n | tail -1)
grep -q 'Non-2xx\|Socket errors' "$OUT/wrk.txt" && { cat "$OUT/wrk.txt"; echo "errors in the run" >&2; exit 1; }
echo "$PROXY: $IR instructions, $REQS requests, $((IR / REQS)) instructions per request"
if [[ "${ATOMICS:-0}" == 1 ]]; then
    case "$PROXY" in
    meshgate) BIN="$MESHGATE_BIN" ;;
    *) BIN="$(command -v "$PROXY")" ;;
    esac
    DUMP=$(grep -l '^totals: '"$IR"'$' "$OUT"/callgrind.out.* | head -1)
    python3 "$HERE/atomics.py" "$BIN" "$DUMP" "$REQS" 25
fi
