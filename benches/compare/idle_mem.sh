#!/usr/bin/env bash
# Memory per idle connection and memory given back after they close.
#
# For each KIND (h1: HTTP/1.1 keep-alive, h2: h2c, tls: HTTP/1.1 over TLS
# 1.3, l4: a tcp_proxy pair), a fresh meshgate (pinned to CPU $PROXY_CPU,
# so one worker, as in the other compare scripts) proxies to a Python
# backend (idle_mem.py backend); idle_mem.py then warms up with 64
# connections, reads VmRSS (baseline), opens N connections that each do one
# exchange and stay open, reads VmRSS once stable (per connection = delta /
# N), closes them all and samples VmRSS every second for 10 s with no
# traffic at all.
#
#   MESHGATE_BIN=target/release/meshgate benches/compare/idle_mem.sh
#   KINDS="h1 l4" N=2000 benches/compare/idle_mem.sh
#
# Env: KINDS (default "h1 h2 tls l4"), N (default 10000; l4 at most 9900:
# a pair holds two descriptors and the hard RLIMIT_NOFILE here is 20000),
# CONCURRENCY (meshgate --concurrency, default 1), PROXY_CPU (default 0).
# Raw outputs: benches/compare/out-idle/ (gitignored).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT="$HERE/out-idle"
TAG=idle_mem
KINDS="${KINDS:-h1 h2 tls l4}"
N="${N:-10000}"
CONCURRENCY="${CONCURRENCY:-1}"
PROXY_CPU="${PROXY_CPU:-0}"
MESHGATE_BIN="${MESHGATE_BIN:-$ROOT/target/release/meshgate}"

# shellcheck source=lib.sh
source "$HERE/lib.sh"

[[ -x "$MESHGATE_BIN" ]] || die "no $MESHGATE_BIN: cargo build --release -p meshgate"
python3 -c 'import h2' 2>/dev/null || die "python h2 is missing (pip install h2)"
ulimit -n "$(ulimit -Hn)"
rm -rf "$OUT"
mkdir -p "$OUT"

BACKEND=18190
declare -A PORT=([h1]=18191 [h2]=18192 [tls]=18193 [l4]=18194)

# Keep-alive and idle limits far above the run, so that only the
# measurement closes connections.
cat >"$OUT/mg.yaml" <<CONF
listeners:
  - name: idle_h1
    address: 127.0.0.1:${PORT[h1]}
    filter_chains:
      - filters:
          - name: proxy
            config: &proxy
              codec: auto
              generate_request_id: false
              codec_options: {http1: {request_headers_timeout: 600s}}
              route_config:
                name: idle
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {prefix: /}
                        route: {cluster: backend_http}
  - name: idle_h2
    address: 127.0.0.1:${PORT[h2]}
    filter_chains:
      - filters:
          - name: proxy
            config: *proxy
  - name: idle_tls
    address: 127.0.0.1:${PORT[tls]}
    filter_chains:
      - tls:
          certificates:
            - {certificate_chain: $ROOT/examples/certs/server.pem, private_key: $ROOT/examples/certs/server.key}
          alpn_protocols: [http/1.1]
        filters:
          - name: proxy
            config: *proxy
  - name: idle_l4
    address: 127.0.0.1:${PORT[l4]}
    filter_chains:
      - filters:
          - name: tcp_proxy
            config: {cluster: backend_l4, idle_timeout: 600s}
clusters:
  - name: backend_http
    protocol: http1
    connect_timeout: 1s
    endpoints: [{address: "127.0.0.1:$BACKEND"}]
  - name: backend_l4
    connect_timeout: 1s
    circuit_breakers: {thresholds: [{max_connections: 100000}]}
    endpoints: [{address: "127.0.0.1:$BACKEND"}]
CONF

python3 "$HERE/idle_mem.py" backend "$BACKEND" >"$OUT/backend.log" 2>&1 &
PIDS+=($!)
wait_port "$BACKEND" "${PIDS[-1]}" backend

for kind in $KINDS; do
    n="$N"
    [[ "$kind" != l4 ]] || ((n <= 9900)) || n=9900
    env -u RUST_LOG taskset -c "$PROXY_CPU" "$MESHGATE_BIN" run -c "$OUT/mg.yaml" \
        --concurrency "$CONCURRENCY" >"$OUT/mg-$kind.log" 2>&1 &
    MG=$!
    PIDS+=("$MG")
    wait_port "${PORT[$kind]}" "$MG" "mg-$kind"
    log "$kind: $n idle connections"
    python3 "$HERE/idle_mem.py" measure "$kind" "${PORT[$kind]}" "$MG" "$n" | tee -a "$OUT/results.jsonl"
    stop_pid "$MG"
done
