#!/usr/bin/env bash
# A/B of two meshgate binaries on HTTP/2 (h2c) downstream work only:
# direct responses (no upstream), so the codec path - where the HTTP/2
# flood guard sits - is all the proxy does. meshgate pinned on CPU 0,
# h2load (-c10 -m10 -t1) on CPU 1; runs alternate A, B, A, B, ...
#
#   benches/compare/h2guard_ab.sh BIN_A BIN_B    (env: DURATION=5 RUNS=3)
# Prints req/s and MB/s per run for a 3-byte and a 64 KiB response body.
set -euo pipefail
A="$1"
B="$2"
DURATION="${DURATION:-5}"
RUNS="${RUNS:-3}"
PORT="${PORT:-18182}"
tmp=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$tmp"' EXIT
pid=
big=$(head -c 65536 /dev/zero | tr '\0' 'x')
cat >"$tmp/mg.yaml" <<YAML
listeners:
  - name: h2
    address: 127.0.0.1:$PORT
    filter_chains:
      - filters:
          - name: proxy
            config:
              codec: http2
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {path: /big}
                        direct_response: {status: 200, body: "$big"}
                      - match: {prefix: /}
                        direct_response: {status: 200, body: "ok\n"}
YAML
run() { # BIN PATH
    taskset -c 0 "$1" run -c "$tmp/mg.yaml" >"$tmp/log" 2>&1 &
    pid=$!
    for _ in $(seq 50); do
        (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break
        sleep 0.1
    done
    taskset -c 1 h2load -c10 -m10 -t1 -D "$DURATION" "http://127.0.0.1:$PORT$2" 2>&1 |
        awk '/^finished in/ {rps=$4; mbs=$6} END {printf "%s req/s %s\n", rps, mbs}'
    kill "$pid"
    wait "$pid" 2>/dev/null || true
}
for path in / /big; do
    for i in $(seq "$RUNS"); do
        echo "$path run $i A $(run "$A" "$path")"
        echo "$path run $i B $(run "$B" "$path")"
    done
done
