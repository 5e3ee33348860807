#!/usr/bin/env bash
# User-space instructions per request of a proxy on the HTTP/1.1 keep-alive
# workload of http.sh (13-byte answers from an nginx backend on
# 127.0.0.1:9000), counted by callgrind. Instruction counts do not depend on
# what else the machine is doing, so this compares meshgate with nginx and
# HAProxy even on a busy machine (it says nothing about kernel time: see
# http.sh for CPU per request).
#
#   benches/compare/icount.sh meshgate|nginx|haproxy [SECONDS]
#   WORKLOAD=h2c|l4|dubbo|h1_auth|h1_rl|h1_trace|h1_trace_sampled benches/compare/icount.sh meshgate [SECONDS]
#   WORKLOAD=h1_routes ROUTES=10|10000 benches/compare/icount.sh meshgate [SECONDS]
#
# WORKLOAD (meshgate only for all but h1): h1 (default) as above; h2c:
# h2load -c10 -m10 with prior knowledge, HTTP/2 in and HTTP/1.1 out; l4:
# the same wrk keep-alive load through a tcp_proxy listener (a "request" is
# one HTTP exchange relayed as bytes); dubbo: benches' rpc_load (one
# connection, 16 calls in flight) to a sofa-rpc-node provider through
# rpc.yaml (route by service, multiplexed upstream); h1_auth: h1 through
# http1-auth.yaml (jwt_authn with a cached RS256 token, rbac on a claim;
# every request carries the token), to set against h1; h1_rl: h1 through
# http1-ratelimit.yaml (a route-level local_ratelimit bucket that never
# runs out), to set against h1; h1_trace: h1 through http1-trace.yaml
# (tracing configured, random_sampling 0: decided, not sampled, a
# traceparent added); h1_trace_sampled: h1 through http1-trace-sampled.yaml
# (every stream sampled, spans exported to tests/peers/tracing_peer.py's
# OTLP receiver logging to /dev/null), both to set against h1;
# h1_routes: h1 through a generated route table of ROUTES routes
# (gen_config.py routes: prefix and exact paths, one regex in ten, half of
# those without a literal prefix), every request matching only the last
# route, to set ROUTES=10000 against ROUTES=10 (issue 23's growth target).
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
WORKLOAD="${WORKLOAD:-h1}"
URL_PATH=/
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
    CONFIG="$HERE/http1.yaml"
    case "$WORKLOAD" in
    l4)
        PORT=5204
        sed 's/127.0.0.1:5201/127.0.0.1:9000/' "$HERE/tcp.yaml" >"$OUT/tcp.yaml"
        CONFIG="$OUT/tcp.yaml"
        ;;
    h1_rl)
        PORT=8087
        CONFIG="$HERE/http1-ratelimit.yaml"
        ;;
    h1_routes)
        PORT=8090
        ROUTES="${ROUTES:-10000}"
        python3 "$HERE/gen_config.py" routes "$ROUTES" "$PORT" 127.0.0.1:9000 >"$OUT/routes.yaml"
        CONFIG="$OUT/routes.yaml"
        URL_PATH=/hit/x
        ;;
    h1_trace | h1_trace_sampled)
        OTLP=127.0.0.1:9
        if [[ "$WORKLOAD" == h1_trace_sampled ]]; then
            PORT=8089
            NAME=http1-trace-sampled
            coproc COLLECTOR { exec taskset -c 1 python3 "$ROOT/tests/peers/tracing_peer.py" otlp /dev/null; }
            PIDS+=("$COLLECTOR_PID")
            read -r _ OTLP_PORT <&"${COLLECTOR[0]}"
            OTLP="127.0.0.1:$OTLP_PORT"
        else
            PORT=8088
            NAME=http1-trace
        fi
        sed "s/@OTLP@/$OTLP/" "$HERE/$NAME.yaml" >"$OUT/$NAME.yaml"
        CONFIG="$OUT/$NAME.yaml"
        ;;
    h1_auth)
        PORT=8086
        CONFIG="$HERE/http1-auth.yaml"
        TOKEN="$(python3 -c "import jwt,time;print(jwt.encode({'iss':'https://idp.meshgate.test','aud':'meshgate-demo','sub':'bench','role':'admin','exp':int(time.time())+86400},open('$ROOT/examples/certs/jwt-demo.key').read(),algorithm='RS256',headers={'kid':'demo'}))")"
        ;;
    dubbo)
        PORT=20880
        CONFIG="$HERE/rpc.yaml"
        LOAD_BIN="${LOAD_BIN:-$ROOT/target/release/rpc_load}"
        [[ -x "$LOAD_BIN" ]] || LOAD_BIN="$ROOT/target/debug/rpc_load"
        [[ -x "$LOAD_BIN" ]] || (cd "$ROOT" && cargo build -q -p meshgate-benches --bin rpc_load)
        taskset -c 1 node "$ROOT/tests/peers/rpc_peer.js" server dubbo 20881 P >"$OUT/provider.log" 2>&1 &
        PIDS+=($!)
        wait_port 20881
        ;;
    esac
    env -u RUST_LOG "${VG[@]}" "$MESHGATE_BIN" run -c "$CONFIG" >"$OUT/proxy.log" 2>&1 &
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
load() { # SECONDS OUTFILE
    case "$WORKLOAD" in
    h1 | l4 | h1_rl | h1_trace | h1_trace_sampled | h1_routes) taskset -c 1 wrk -t1 -c10 --timeout 20s -d"${1}s" "http://127.0.0.1:$PORT${URL_PATH:-/}" >"$2" ;;
    h1_auth) taskset -c 1 wrk -t1 -c10 --timeout 20s -d"${1}s" -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$PORT/" >"$2" ;;
    h2c) taskset -c 1 h2load -c10 -m10 -t1 -D "$1" "http://127.0.0.1:$PORT/" >"$2" ;;
    dubbo) taskset -c 1 "$LOAD_BIN" "127.0.0.1:$PORT" 16 "$1" >"$2" ;;
    *)
        echo "unknown WORKLOAD $WORKLOAD" >&2
        exit 2
        ;;
    esac
}
# Warm-up: connections, pools and lazy state, not counted.
load 2 /dev/null
callgrind_control -i on "$VG_PID" >/dev/null
load "$SECS" "$OUT/wrk.txt"
callgrind_control -i off "$VG_PID" >/dev/null
callgrind_control -d "$VG_PID" >/dev/null
kill "$VG_PID"
wait "$VG_PID" 2>/dev/null || true

case "$WORKLOAD" in
h2c)
    REQS=$(awk '/^requests:/ {print $8}' "$OUT/wrk.txt")
    [[ "$(awk '/^requests:/ {print ($10 + $12 == 0)}' "$OUT/wrk.txt")" == 1 ]] || { cat "$OUT/wrk.txt"; echo "errors in the run" >&2; exit 1; }
    ;;
dubbo)
    REQS=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["calls"]); sys.exit(1 if r.get("errors") else 0)' "$OUT/wrk.txt") ||
        { cat "$OUT/wrk.txt"; echo "errors in the run" >&2; exit 1; }
    ;;
*) REQS=$(awk '/requests in/ {print $1}' "$OUT/wrk.txt") ;;
esac
# The dump taken while counting was on; its totals line is the counted part.
IR=$(for f in "$OUT"/callgrind.out.*; do grep -h '^totals:' "$f" | awk '{print $2}'; done |
    sort -n | tail -1)
grep -q 'Non-2xx\|Socket errors' "$OUT/wrk.txt" && { cat "$OUT/wrk.txt"; echo "errors in the run" >&2; exit 1; }
echo "$PROXY ($WORKLOAD${ROUTES:+, $ROUTES routes}): $IR instructions, $REQS requests, $((IR / REQS)) instructions per request"
if [[ "${ATOMICS:-0}" == 1 ]]; then
    case "$PROXY" in
    meshgate) BIN="$MESHGATE_BIN" ;;
    *) BIN="$(command -v "$PROXY")" ;;
    esac
    DUMP=$(grep -l '^totals: '"$IR"'$' "$OUT"/callgrind.out.* | head -1)
    python3 "$HERE/atomics.py" "$BIN" "$DUMP" "$REQS" 25
fi
