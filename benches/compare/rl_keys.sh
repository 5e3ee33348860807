#!/usr/bin/env bash
# Memory per distinct rate-limit key: a route whose local_ratelimit has a
# wildcard descriptor on `x-user` (one token bucket per distinct value, at
# most max_dynamic_descriptors = KEYS, least recently used evicted past it);
# wrk sends requests that each carry a new x-user value for DURATION s.
# Prints meshgate's VmRSS before and after, the distinct keys sent, and the
# bytes per key (RSS delta / keys, allocator overhead included), and the
# projection to 1,000,000 keys.
#
#   MESHGATE_BIN=target/release/meshgate benches/compare/rl_keys.sh
#
# Env: DURATION (s, default 60), KEYS (cap, default 1000000), CONNS (20).
# Raw outputs: benches/compare/out-rlkeys/ (gitignored).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT="$HERE/out-rlkeys"
TAG=rl_keys
DURATION="${DURATION:-60}"
KEYS="${KEYS:-1000000}"
CONNS="${CONNS:-20}"
MESHGATE_BIN="${MESHGATE_BIN:-$ROOT/target/release/meshgate}"

# shellcheck source=lib.sh
source "$HERE/lib.sh"

for cmd in nginx wrk ss; do
    command -v "$cmd" >/dev/null || die "$cmd is missing"
done
[[ -x "$MESHGATE_BIN" ]] || die "no $MESHGATE_BIN: cargo build --release -p meshgate"
rm -rf "$OUT"
mkdir -p "$OUT/backend/tmp"

cat >"$OUT/backend.conf" <<CONF
worker_processes 1;
daemon off;
pid $OUT/backend/nginx.pid;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $OUT/backend/tmp; proxy_temp_path $OUT/backend/tmp;
    fastcgi_temp_path $OUT/backend/tmp; uwsgi_temp_path $OUT/backend/tmp; scgi_temp_path $OUT/backend/tmp;
    keepalive_requests 10000000;
    server { listen 127.0.0.1:19093; location / { return 200 "ok\n"; } }
}
CONF
cat >"$OUT/mg.yaml" <<CONF
listeners:
  - name: web
    address: 127.0.0.1:18093
    filter_chains:
      - filters:
          - name: proxy
            config:
              stream_filters:
                - name: local_ratelimit
                  config: {stat_prefix: web}
              route_config:
                virtual_hosts:
                  - name: api
                    domains: ["*"]
                    routes:
                      - match: {prefix: /}
                        route: {cluster: backend}
                        per_filter_config:
                          local_ratelimit:
                            stat_prefix: users
                            token_bucket: {max_tokens: 1000000000, fill_interval: 60s}
                            filter_enabled: {default_value: {numerator: 100}}
                            filter_enforced: {default_value: {numerator: 100}}
                            rate_limits:
                              - actions:
                                  - request_headers: {header_name: x-user, descriptor_key: user}
                            descriptors:
                              - entries: [{key: user}]
                                token_bucket: {max_tokens: 1000, fill_interval: 60s}
                            max_dynamic_descriptors: $KEYS
clusters:
  - name: backend
    endpoints: [{address: "127.0.0.1:19093"}]
CONF
cat >"$OUT/keys.lua" <<'LUA'
local n = 0
local prefix
function init(args)
    math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
    prefix = string.format("%08x", math.random(0, 0x7fffffff))
end
function request()
    n = n + 1
    return wrk.format("GET", "/u", { ["x-user"] = prefix .. "-" .. n })
end
LUA

nginx -p "$OUT/backend/" -e "$OUT/backend/error.log" -c "$OUT/backend.conf" >"$OUT/backend.log" 2>&1 &
PIDS+=($!)
wait_port 19093 "${PIDS[-1]}" backend
env -u RUST_LOG "$MESHGATE_BIN" run -c "$OUT/mg.yaml" >"$OUT/mg.log" 2>&1 &
MG=$!
PIDS+=("$MG")
wait_port 18093 "$MG" meshgate
rss() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }
# Warm up with one key (pools, buffers) so the delta is the keys only.
wrk -t1 -c"$CONNS" -d2s -H "x-user: warm" http://127.0.0.1:18093/u >/dev/null
before="$(rss "$MG")"
wrk -t2 -c"$CONNS" -d"${DURATION}s" -s "$OUT/keys.lua" http://127.0.0.1:18093/u >"$OUT/wrk.txt"
after="$(rss "$MG")"
reqs="$(awk '/requests in/ { print $1 }' "$OUT/wrk.txt")"
non2xx="$(awk '/Non-2xx/ { print $NF }' "$OUT/wrk.txt")"
keys=$(( reqs < KEYS ? reqs : KEYS ))
echo "keys sent: $reqs (cap $KEYS, kept $keys); non-2xx: ${non2xx:-0}"
echo "VmRSS before: $before kB, after: $after kB, delta: $(( after - before )) kB"
awk -v d="$(( after - before ))" -v k="$keys" 'BEGIN { b = d * 1024 / k; printf "bytes per key: %.0f; projected for 1,000,000 keys: %.0f MiB\n", b, b * 1e6 / 1048576 }'
