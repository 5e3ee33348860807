#!/usr/bin/env bash
# HTTP/3 comparison: the same route through meshgate over HTTP/3 and over
# HTTPS with HTTP/2, and through Caddy over HTTP/3, to one nginx backend
# (benches/compare/backend-http.conf, 13 bytes) on 127.0.0.1:9000.
#
#   CPU 0: the proxy under test (meshgate or Caddy, each alone there)
#   CPU 1: the load generator and the backend
#
# Load: 10 connections x 10 concurrent streams for DURATION s:
#   HTTP/3: benches' h3load (quinn + h3; neither h2load nor wrk speaks it)
#   HTTP/2 over TLS: h2load -c10 -m10
# Prints req/s and p99 per run, the medians, and the ratios
# meshgate h3 / meshgate h2 (bar: >= 0.6) and meshgate h3 / Caddy h3.
#
# Env: DURATION (s, default 10)  RUNS (default 3)  MESHGATE_BIN, H3LOAD_BIN
# (skip cargo build). Raw outputs: benches/compare/out-http3/ (gitignored).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT="$HERE/out-http3"
TAG=http3
DURATION="${DURATION:-10}"
RUNS="${RUNS:-3}"
PROXY_CPU=0
LOAD_CPU=1
PIDS=()

# shellcheck source=lib.sh
source "$HERE/lib.sh"

for cmd in nginx caddy h2load taskset ss; do
    command -v "$cmd" >/dev/null 2>&1 || die "missing $cmd (apt-get install nginx caddy nghttp2-client util-linux iproute2)"
done
if [[ -z "${MESHGATE_BIN:-}" || -z "${H3LOAD_BIN:-}" ]]; then
    log "building release meshgate and h3load"
    (cd "$ROOT" && cargo build --release -p meshgate -p meshgate-benches --bin meshgate --bin h3load)
    MESHGATE_BIN="${MESHGATE_BIN:-$ROOT/target/release/meshgate}"
    H3LOAD_BIN="${H3LOAD_BIN:-$ROOT/target/release/h3load}"
fi

rm -rf "$OUT"
mkdir -p "$OUT/backend/tmp"
trap cleanup EXIT
trap 'exit 130' INT TERM
for port in 9000 8453 8454; do
    port_in_use "$port" && die "127.0.0.1:$port is already in use"
done

taskset -c "$LOAD_CPU" nginx -p "$OUT/backend/" -e "$OUT/backend/error.log" \
    -c "$HERE/backend-http.conf" >"$OUT/backend.log" 2>&1 &
BACKEND_PID=$!
PIDS+=("$BACKEND_PID")
wait_port 9000 "$BACKEND_PID" backend

CA="$ROOT/examples/certs/ca.pem"
TSV="$OUT/results.tsv"
printf 'name\trun\trps\tp99_ms\n' >"$TSV"

run_meshgate() { # RUN
    taskset -c "$PROXY_CPU" env -u RUST_LOG "$MESHGATE_BIN" run -c "$HERE/http3.yaml" >"$OUT/meshgate.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait_port 8453 "$pid" meshgate
    local o
    o="$(taskset -c "$LOAD_CPU" "$H3LOAD_BIN" https://localhost:8453/ --ca "$CA" -c 10 -m 10 -d "$DURATION")"
    echo "$o" >>"$OUT/meshgate-h3.txt"
    printf 'meshgate_h3\t%s\t%s\t%s\n' "$1" "$(sed -E 's/.*req\/s=([0-9.]+).*/\1/' <<<"$o")" \
        "$(sed -E 's/.*p99_ms=([0-9.]+).*/\1/' <<<"$o")" >>"$TSV"
    o="$(taskset -c "$LOAD_CPU" h2load -c10 -m10 -D "$DURATION" https://localhost:8453/ 2>&1)"
    echo "$o" >>"$OUT/meshgate-h2.txt"
    grep -q ' 0 failed' <<<"$o" || log "warning: h2load reported failures"
    # h2load prints no p99; its mean + 2 sd of request time is not one, so
    # the h2 row carries the mean request time in the p99 column's place.
    printf 'meshgate_h2_tls\t%s\t%s\t%s\n' "$1" \
        "$(sed -nE 's/^finished in [0-9.]+s, ([0-9.]+) req\/s.*/\1/p' <<<"$o")" \
        "$(awk '/^time for request:/ {print $6}' <<<"$o")" >>"$TSV"
    stop_pid "$pid"
}

run_caddy() { # RUN
    sed -e "s#@CERTS@#$ROOT/examples/certs#g" -e "s#@OUT@#$OUT#g" "$HERE/Caddyfile.h3" >"$OUT/Caddyfile"
    HOME="$OUT" XDG_DATA_HOME="$OUT" XDG_CONFIG_HOME="$OUT" \
        taskset -c "$PROXY_CPU" caddy run --adapter caddyfile --config "$OUT/Caddyfile" >"$OUT/caddy.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait_port 8454 "$pid" caddy
    sleep 1
    local o
    o="$(taskset -c "$LOAD_CPU" "$H3LOAD_BIN" https://localhost:8454/ --ca "$CA" -c 10 -m 10 -d "$DURATION")"
    echo "$o" >>"$OUT/caddy-h3.txt"
    printf 'caddy_h3\t%s\t%s\t%s\n' "$1" "$(sed -E 's/.*req\/s=([0-9.]+).*/\1/' <<<"$o")" \
        "$(sed -E 's/.*p99_ms=([0-9.]+).*/\1/' <<<"$o")" >>"$TSV"
    stop_pid "$pid"
}

for run in $(seq 1 "$RUNS"); do
    log "run $run/$RUNS"
    run_meshgate "$run"
    run_caddy "$run"
done

python3 - "$TSV" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
def ms(v):  # h3load prints ms; h2load us, ms or s with the unit
    for unit, f in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if v.endswith(unit):
            return float(v[: -len(unit)]) * f
    return float(v)
med = {}
for name in ("meshgate_h3", "meshgate_h2_tls", "caddy_h3"):
    r = [float(x["rps"]) for x in rows if x["name"] == name and x["rps"]]
    p = [ms(x["p99_ms"]) for x in rows if x["name"] == name and x["p99_ms"]]
    med[name] = (statistics.median(r), statistics.median(p))
    what = "mean" if name == "meshgate_h2_tls" else "p99"
    print(f"{name:16} req/s {med[name][0]:9.0f}   {what} ms {med[name][1]:7.2f}   runs {r}")
print(f"meshgate h3 / meshgate h2-TLS throughput: {med['meshgate_h3'][0] / med['meshgate_h2_tls'][0]:.2f}x (bar >= 0.6)")
print(f"meshgate h3 / Caddy h3 throughput:        {med['meshgate_h3'][0] / med['caddy_h3'][0]:.2f}x (bar >= 1)")
PY
