#!/usr/bin/env bash
# gzip side by side: CPU per MB compressed and compression ratio, meshgate's
# `compressor` filter against nginx's gzip module at the same level, on the
# same 1 MiB JSON body. Per level (1 and 6) and per run:
#   - nginx-gzip: an nginx (1 worker) serving the file with `gzip on;
#     gzip_comp_level L`; its worker's CPU is read around N requests, and
#     around N requests with `accept-encoding: identity` (the same nginx
#     serving plainly): the difference is gzip's cost;
#   - meshgate: the `compressor` filter (gzip, COMPRESSION_LEVEL_L) in front
#     of a plain nginx backend; meshgate's CPU around N gzip requests, and
#     around N identity requests (the filter passes them untouched): the
#     difference is gzip's cost.
# CPU time is utime+stime from /proc/PID/stat (all threads), never wall
# time: other builds share the machine. Each figure is the median of RUNS;
# both proxies are pinned to CPU 0, curl and the backend to CPU 1.
#
#   MESHGATE_BIN=target/release/meshgate benches/compare/compress.sh
#
# Env: N (requests per measurement, default 100), RUNS (default 5),
#      LEVELS (default "1 6").
# Raw outputs: benches/compare/out-compress/ (gitignored).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT="$HERE/out-compress"
TAG=compress
N="${N:-100}"
RUNS="${RUNS:-5}"
LEVELS="${LEVELS:-1 6}"
PROXY_CPU=0
LOAD_CPU=1
MESHGATE_BIN="${MESHGATE_BIN:-$ROOT/target/release/meshgate}"

# shellcheck source=lib.sh
source "$HERE/lib.sh"

for cmd in nginx python3 taskset ss curl; do
    command -v "$cmd" >/dev/null || die "$cmd is missing"
done
[[ -x "$MESHGATE_BIN" ]] || die "no $MESHGATE_BIN: cargo build --release -p meshgate"
rm -rf "$OUT"
mkdir -p "$OUT/www" "$OUT/backend/tmp"
TICK="$(getconf CLK_TCK)"

# The body: 1 MiB of JSON records (deterministic).
python3 - "$OUT/www/body.json" <<'PY'
import json, random, sys
random.seed(7)
words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
out, size = [], 0
i = 0
while size < 1 << 20:
    rec = json.dumps({"id": i, "name": " ".join(random.choice(words) for _ in range(4)),
                      "score": round(random.random() * 1000, 3), "tags": random.sample(words, 3),
                      "active": i % 3 == 0})
    out.append(rec)
    size += len(rec) + 2
    i += 1
data = ("[" + ",\n".join(out) + "]")[: 1 << 20]
open(sys.argv[1], "w").write(data)
PY
BODY_BYTES="$(stat -c %s "$OUT/www/body.json")"

nginx_conf() { # PORT LEVEL PREFIX
    cat <<CONF
worker_processes 1;
daemon off;
pid $3/nginx.pid;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $3/tmp; proxy_temp_path $3/tmp;
    fastcgi_temp_path $3/tmp; uwsgi_temp_path $3/tmp; scgi_temp_path $3/tmp;
    types { application/json json; }
    keepalive_requests 100000;
    server {
        listen 127.0.0.1:$1;
        root $OUT/www;
        gzip $([[ "$2" == 0 ]] && echo off || echo on);
        gzip_comp_level $([[ "$2" == 0 ]] && echo 1 || echo "$2");
        gzip_types application/json;
        gzip_min_length 0;
    }
}
CONF
}

meshgate_conf() { # LEVEL
    cat <<CONF
listeners:
  - name: web
    address: 127.0.0.1:18091
    filter_chains:
      - filters:
          - name: proxy
            config:
              stream_filters:
                - name: compressor
                  config:
                    compressor_library:
                      gzip: {compression_level: COMPRESSION_LEVEL_$1}
                    response_direction_config:
                      common_config: {content_type: [application/json]}
              route_config:
                virtual_hosts:
                  - name: all
                    domains: ["*"]
                    routes:
                      - match: {prefix: /}
                        route: {cluster: backend}
clusters:
  - name: backend
    endpoints: [{address: "127.0.0.1:19091"}]
CONF
}

# The worker of an nginx master (the process that does the work).
nginx_worker() { pgrep -P "$1" | head -1; }

# CPU ticks PID spends serving N requests with accept-encoding AE on PORT;
# also writes the size of one response to $OUT/size.
measure() { # PID PORT AE
    local before after urls=() i
    for ((i = 0; i < N; i++)); do urls+=(-o /dev/null "http://127.0.0.1:$2/body.json"); done
    curl -sS -H "accept-encoding: $3" -o "$OUT/one" "http://127.0.0.1:$2/body.json"
    stat -c %s "$OUT/one" >"$OUT/size"
    before="$(cpu_ticks "$1")"
    taskset -c "$LOAD_CPU" curl -sS -H "accept-encoding: $3" "${urls[@]}"
    after="$(cpu_ticks "$1")"
    echo $((after - before))
}

median() { tr ' ' '\n' | sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

mkdir -p "$OUT/plain/tmp"
nginx_conf 19091 0 "$OUT/plain" >"$OUT/plain.conf"
taskset -c "$LOAD_CPU" nginx -p "$OUT/plain/" -e "$OUT/plain/error.log" -c "$OUT/plain.conf" >"$OUT/plain.log" 2>&1 &
PIDS+=($!)
wait_port 19091 "${PIDS[-1]}" backend

printf '| level | proxy | ms CPU per MB (median of %s, %s x 1 MiB each) | ratio (compressed/original) |\n|---|---|---|---|\n' "$RUNS" "$N"
for level in $LEVELS; do
    mkdir -p "$OUT/ng$level/tmp"
    nginx_conf 19092 "$level" "$OUT/ng$level" >"$OUT/ng$level.conf"
    taskset -c "$PROXY_CPU" nginx -p "$OUT/ng$level/" -e "$OUT/ng$level/error.log" -c "$OUT/ng$level.conf" >"$OUT/ng$level.log" 2>&1 &
    NG=$!
    PIDS+=("$NG")
    wait_port 19092 "$NG" "nginx-gzip-$level"
    NGW="$(nginx_worker "$NG")"
    meshgate_conf "$level" >"$OUT/mg$level.yaml"
    taskset -c "$PROXY_CPU" env -u RUST_LOG "$MESHGATE_BIN" run -c "$OUT/mg$level.yaml" >"$OUT/mg$level.log" 2>&1 &
    MG=$!
    PIDS+=("$MG")
    wait_port 18091 "$MG" "meshgate-$level"
    ng=() mg=()
    for ((r = 0; r < RUNS; r++)); do
        g="$(measure "$NGW" 19092 gzip)"; ng_size="$(<"$OUT/size")"
        p="$(measure "$NGW" 19092 identity)"
        ng+=("$(( g - p ))")
        g="$(measure "$MG" 18091 gzip)"; mg_size="$(<"$OUT/size")"
        p="$(measure "$MG" 18091 identity)"
        mg+=("$(( g - p ))")
        log "level $level run $r: nginx ${ng[-1]} ticks, meshgate ${mg[-1]} ticks (gzip minus identity, $N requests)"
    done
    for who in nginx meshgate; do
        if [[ "$who" == nginx ]]; then t="${ng[*]}"; s="$ng_size"; else t="${mg[*]}"; s="$mg_size"; fi
        m="$(median <<<"$t")"
        awk -v m="$m" -v tick="$TICK" -v n="$N" -v body="$BODY_BYTES" -v s="$s" -v who="$who" -v l="$level" \
            'BEGIN { printf "| %s | %s | %.2f | %.4f |\n", l, who, m * 1000 / tick / (n * body / 1048576), s / body }'
    done
    stop_pid "$MG"
    stop_pid "$NG"
done
