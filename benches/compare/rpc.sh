#!/usr/bin/env bash
# RPC comparison: Dubbo 2 calls per second and latency calling a real
# provider (sofa-rpc-node + dubbo-remoting, tests/peers/rpc_peer.js)
# directly against calling it through meshgate (rpc.yaml: route by service,
# multiplexed upstream connection), at 1, 16 and 256 calls in flight on one
# client connection (benches' rpc_load generator).
#
#   CPU 0: meshgate (alone)
#   CPU 1: the load generator and the provider
#
# Runs alternate direct, meshgate, direct, ...; medians of RUNS.
# Env: DURATION (s, default 10)  RUNS (default 5)  QUICK=1 (3 s x 2 runs)
#      CONCURRENCY (default "1 16 256")  MESHGATE_BIN (skip cargo build)
#      QUIET_WAIT, FOREIGN_MAX, TRIES: as in l4.sh.
# Raw outputs: benches/compare/out-rpc/ (gitignored).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT="$HERE/out-rpc"
TAG=rpc

if [[ "${QUICK:-0}" == 1 ]]; then
    DURATION="${DURATION:-3}"
    RUNS="${RUNS:-2}"
fi
DURATION="${DURATION:-10}"
RUNS="${RUNS:-5}"
CONCURRENCY="${CONCURRENCY:-1 16 256}"
QUIET_WAIT="${QUIET_WAIT:-300}"
FOREIGN_MAX="${FOREIGN_MAX:-10}"
TRIES="${TRIES:-3}"

PROXY_CPU=0
LOAD_CPU=1
PROVIDER_PORT=20881
MESHGATE_PORT=20880

# shellcheck source=lib.sh
source "$HERE/lib.sh"

[[ "$(nproc --all)" -ge 2 ]] || die "needs at least 2 CPUs (proxy on CPU 0, load on CPU 1)"
command -v node >/dev/null || die "needs node (tests/run.sh installs the peers)"
[[ -d "$ROOT/tests/peers/node_modules/dubbo-remoting" ]] ||
    npm ci --prefix "$ROOT/tests/peers" --no-audit --no-fund --silent

if [[ -z "${MESHGATE_BIN:-}" ]]; then
    log "building release meshgate and rpc_load"
    (cd "$ROOT" && cargo build --release -p meshgate)
    MESHGATE_BIN="$ROOT/target/release/meshgate"
fi
(cd "$ROOT" && cargo build --release -p meshgate-benches --bin rpc_load)
LOAD_BIN="$ROOT/target/release/rpc_load"

rm -rf "$OUT"
mkdir -p "$OUT"
for p in $PROVIDER_PORT $MESHGATE_PORT 9903; do
    port_in_use "$p" && die "port $p is in use"
done

taskset -c "$LOAD_CPU" node "$ROOT/tests/peers/rpc_peer.js" server dubbo $PROVIDER_PORT P \
    >"$OUT/provider.log" 2>&1 &
PROVIDER_PID=$!
PIDS+=("$PROVIDER_PID")
wait_port $PROVIDER_PORT "$PROVIDER_PID" provider

taskset -c "$PROXY_CPU" env -u RUST_LOG "$MESHGATE_BIN" run -c "$HERE/rpc.yaml" --log-level warn \
    >"$OUT/meshgate.log" 2>&1 &
MESHGATE_PID=$!
PIDS+=("$MESHGATE_PID")
wait_port $MESHGATE_PORT "$MESHGATE_PID" meshgate

proxy_pid() { echo "$MESHGATE_PID"; }

# warm both paths (JIT of the provider, the upstream connection)
taskset -c "$LOAD_CPU" "$LOAD_BIN" 127.0.0.1:$PROVIDER_PORT 16 2 >/dev/null
taskset -c "$LOAD_CPU" "$LOAD_BIN" 127.0.0.1:$MESHGATE_PORT 16 2 >/dev/null

results="$OUT/results.jsonl"
for c in $CONCURRENCY; do
    for ((run = 1; run <= RUNS; run++)); do
        for name in direct meshgate; do
            port=$PROVIDER_PORT
            [[ "$name" == meshgate ]] && port=$MESHGATE_PORT
            for ((try = 1; ; try++)); do
                wait_quiet
                txt="$OUT/$name-c$c-$run.json"
                measure "$name" taskset -c "$LOAD_CPU" "$LOAD_BIN" "127.0.0.1:$port" "$c" "$DURATION" \
                    >"$txt" || die "rpc_load to $name failed"
                accept_run "$name" "$try" && break
            done
            python3 - "$txt" "$name" "$c" "$M_TICKS" "$(getconf CLK_TCK)" >>"$results" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
r.update(name=sys.argv[2], conc=int(sys.argv[3]),
         cpu_us_per_call=(int(sys.argv[4]) / int(sys.argv[5]) * 1e6 / r["calls"]) if r["calls"] else 0)
print(json.dumps(r))
PY
            log "c=$c run $run $name: $(cat "$txt")"
        done
    done
done

python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(name, c, k):
    return statistics.median(r[k] for r in rows if r["name"] == name and r["conc"] == c)
print("| in flight | direct calls/s | meshgate calls/s | direct p50 ms | meshgate p50 ms | direct p99 ms | meshgate p99 ms | p99 added | meshgate CPU µs/call | errors |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for c in sorted({r["conc"] for r in rows}):
    d99, m99 = med("direct", c, "p99_ms"), med("meshgate", c, "p99_ms")
    errs = sum(r["errors"] + r["lost"] for r in rows if r["conc"] == c)
    print(f"| {c} | {med('direct', c, 'rate'):.0f} | {med('meshgate', c, 'rate'):.0f} | "
          f"{med('direct', c, 'p50_ms'):.3f} | {med('meshgate', c, 'p50_ms'):.3f} | "
          f"{d99:.3f} | {m99:.3f} | {(m99 / d99 - 1) * 100:+.0f} % | "
          f"{med('meshgate', c, 'cpu_us_per_call'):.1f} | {errs} |")
PY
