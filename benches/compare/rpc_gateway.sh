#!/usr/bin/env bash
# HTTP/JSON to Dubbo (route.http_to_rpc) against native Dubbo, both through
# meshgate to the same real provider (tests/peers/rpc_peer.js):
#   native:  rpc_load -> meshgate Dubbo listener -> provider, echo("hi")
#   gateway: wrk GET /echo?x=hi -> meshgate HTTP listener -> provider
# Meshgate's CPU time per call in each (CPU 0, alone), and the difference:
# what the translation costs (issue 24's budget: +15 us per call).
#
#   CPU 0: meshgate (alone)
#   CPU 1: the load generators and the provider
#
# Runs alternate native, gateway, ...; medians of RUNS.
# Env: DURATION (s, default 10)  RUNS (default 5)  QUICK=1 (3 s x 2 runs)
#      CONNS (default 16: Dubbo calls in flight / HTTP connections)
#      MESHGATE_BIN, LOAD_BIN (rpc_load; skip cargo build)  QUIET_WAIT, FOREIGN_MAX, TRIES: as in l4.sh.
# Raw outputs: benches/compare/out-rpc-gateway/ (gitignored).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT="$HERE/out-rpc-gateway"
TAG=rpc_gateway

if [[ "${QUICK:-0}" == 1 ]]; then
    DURATION="${DURATION:-3}"
    RUNS="${RUNS:-2}"
fi
DURATION="${DURATION:-10}"
RUNS="${RUNS:-5}"
CONNS="${CONNS:-16}"
QUIET_WAIT="${QUIET_WAIT:-300}"
FOREIGN_MAX="${FOREIGN_MAX:-10}"
TRIES="${TRIES:-3}"

PROXY_CPU=0
LOAD_CPU=1
PROVIDER_PORT=20881
DUBBO_PORT=20880
HTTP_PORT=18080

# shellcheck source=lib.sh
source "$HERE/lib.sh"

[[ "$(nproc --all)" -ge 2 ]] || die "needs at least 2 CPUs (proxy on CPU 0, load on CPU 1)"
for cmd in node wrk curl python3 taskset ss; do
    command -v "$cmd" >/dev/null || die "needs $cmd"
done
[[ -d "$ROOT/tests/peers/node_modules/dubbo-remoting" ]] ||
    npm ci --prefix "$ROOT/tests/peers" --no-audit --no-fund --silent

if [[ -z "${MESHGATE_BIN:-}" ]]; then
    log "building release meshgate"
    (cd "$ROOT" && cargo build --release -p meshgate)
    MESHGATE_BIN="$ROOT/target/release/meshgate"
fi
if [[ -z "${LOAD_BIN:-}" ]]; then
    (cd "$ROOT" && cargo build --release -p meshgate-benches --bin rpc_load)
    LOAD_BIN="$ROOT/target/release/rpc_load"
fi

rm -rf "$OUT"
mkdir -p "$OUT"
for p in $PROVIDER_PORT $DUBBO_PORT $HTTP_PORT 9903; do
    port_in_use "$p" && die "port $p is in use"
done

taskset -c "$LOAD_CPU" node "$ROOT/tests/peers/rpc_peer.js" server dubbo $PROVIDER_PORT P \
    >"$OUT/provider.log" 2>&1 &
PROVIDER_PID=$!
PIDS+=("$PROVIDER_PID")
wait_port $PROVIDER_PORT "$PROVIDER_PID" provider

taskset -c "$PROXY_CPU" env -u RUST_LOG "$MESHGATE_BIN" run -c "$HERE/rpc_gateway.yaml" --log-level warn \
    >"$OUT/meshgate.log" 2>&1 &
MESHGATE_PID=$!
PIDS+=("$MESHGATE_PID")
wait_port $DUBBO_PORT "$MESHGATE_PID" meshgate
wait_port $HTTP_PORT "$MESHGATE_PID" meshgate

proxy_pid() { echo "$MESHGATE_PID"; }

body="$(curl -fsS "http://127.0.0.1:$HTTP_PORT/echo?x=hi")" || die "the HTTP route does not answer"
[[ "$body" == '{"from":"P","x":"hi"}' ]] || die "the HTTP route answered '$body'"

# warm both paths (JIT of the provider, the upstream connection)
taskset -c "$LOAD_CPU" "$LOAD_BIN" 127.0.0.1:$DUBBO_PORT "$CONNS" 2 >/dev/null
taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$HTTP_PORT/echo?x=hi" >/dev/null

results="$OUT/results.jsonl"
for ((run = 1; run <= RUNS; run++)); do
    for name in native gateway; do
        txt="$OUT/$name-$run.txt"
        for ((try = 1; ; try++)); do
            wait_quiet
            if [[ "$name" == native ]]; then
                measure "$name" taskset -c "$LOAD_CPU" "$LOAD_BIN" "127.0.0.1:$DUBBO_PORT" "$CONNS" "$DURATION" \
                    >"$txt" || die "rpc_load failed"
            else
                measure "$name" taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency \
                    "http://127.0.0.1:$HTTP_PORT/echo?x=hi" >"$txt" || die "wrk failed"
            fi
            accept_run "$name" "$try" && break
        done
        python3 - "$txt" "$name" "$M_TICKS" "$(getconf CLK_TCK)" >>"$results" <<'PY'
import json, re, sys
path, name, ticks, hz = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
text = open(path).read()
if name == "native":
    r = json.loads(text)
    calls, errors = r["calls"], r["errors"] + r["lost"]
else:
    calls = int(re.search(r"(\d+) requests in", text).group(1))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = int(m.group(1)) if m else 0
print(json.dumps({"name": name, "calls": calls, "errors": errors,
                  "cpu_us_per_call": ticks / hz * 1e6 / calls if calls else 0}))
PY
        log "run $run $name: $(tail -n1 "$results")"
    done
done

python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = lambda n: statistics.median(r["cpu_us_per_call"] for r in rows if r["name"] == n)
errs = sum(r["errors"] for r in rows)
n, g = med("native"), med("gateway")
print("| native Dubbo CPU µs/call | HTTP/JSON→Dubbo CPU µs/call | added by the translation | errors |")
print("|---:|---:|---:|---:|")
print(f"| {n:.1f} | {g:.1f} | {g - n:+.1f} µs | {errs} |")
PY
