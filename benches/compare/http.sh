#!/usr/bin/env bash
# Side-by-side HTTP comparison: meshgate `proxy` vs nginx (`proxy_pass`,
# upstream keepalive 64) vs HAProxy (`http-reuse always`), same workload, same
# pinning, against one nginx backend answering 13 bytes on 127.0.0.1:9000.
#
#   CPU 0: the proxy under test (each proxy pinned alone there)
#   CPU 1: the load generator and the backend
#
# Phase 1, HTTP/1.1 keep-alive: wrk -t1 -c$CONNS --latency, DURATION s per run:
#   req/s, p50, p99 and the proxy's CPU microseconds per request.
# Phase 2, HTTP/2 (h2c prior knowledge) in, HTTP/1.1 out: h2load -c10 -m10.
# Phase 3 (tls_ka), HTTPS keep-alive: wrk as in phase 1, over TLS 1.3.
# Phase 4 (tls_hs), full TLS handshakes: wrk with `Connection: close` over
#   HTTPS, no session resumption on either server: one handshake per request.
#   Phases 3 and 4 compare meshgate with nginx (same ECDSA P-256 certificate).
# Runs alternate direct, meshgate, nginx, haproxy, direct, ...; medians.
#
# Env: DURATION (s, default 10)  RUNS (default 6)  QUICK=1 (3 s x 2 runs)
#      CONNS (wrk connections, default 50)  MESHGATE_BIN (skip cargo build)
#      QUIET_WAIT (s, default 300), FOREIGN_MAX (%, default 10), TRIES
#      (default 3): as in l4.sh.  PHASES (default "h1 h2 tls_ka tls_hs").
# Raw outputs: benches/compare/out-http/ (gitignored).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT="$HERE/out-http"
TAG=http

if [[ "${QUICK:-0}" == 1 ]]; then
    DURATION="${DURATION:-3}"
    RUNS="${RUNS:-2}"
fi
DURATION="${DURATION:-10}"
RUNS="${RUNS:-6}"
CONNS="${CONNS:-50}"
QUIET_WAIT="${QUIET_WAIT:-300}"
FOREIGN_MAX="${FOREIGN_MAX:-10}"
TRIES="${TRIES:-3}"
PHASES="${PHASES:-h1 h2 tls_ka tls_hs}"

PROXY_CPU=0
LOAD_CPU=1
BACKEND_PORT=9000
MESHGATE_PORT=8082 # http1.yaml; HTTP/1.1 and h2c on one port
NGINX_PORT=8081    # nginx-http.conf
NGINX_H2_PORT=8083
HAPROXY_PORT=8084 # haproxy-http.cfg
HAPROXY_H2_PORT=8085
MESHGATE_TLS_PORT=8443 # https.yaml
NGINX_TLS_PORT=8441

# shellcheck source=lib.sh
source "$HERE/lib.sh"

install_peers() {
    local missing=() cmd
    for cmd in nginx haproxy wrk h2load python3 taskset ss; do
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
    done
    python3 -c 'import yaml' 2>/dev/null || missing+=(python3-yaml)
    [[ ${#missing[@]} -eq 0 ]] && return 0
    log "missing: ${missing[*]}; installing"
    local sudo=()
    if [[ "$(id -u)" != 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "need root (or sudo) to install: ${missing[*]}"
        sudo=(sudo)
    fi
    "${sudo[@]}" apt-get update
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y \
        nginx haproxy wrk nghttp2-client python3 python3-yaml util-linux iproute2
}

[[ "$(nproc --all)" -ge 2 ]] || die "needs at least 2 CPUs (proxy on CPU 0, load on CPU 1)"
install_peers

if [[ -n "${MESHGATE_BIN:-}" ]]; then
    [[ -x "$MESHGATE_BIN" ]] || die "MESHGATE_BIN=$MESHGATE_BIN is not executable"
else
    log "building release meshgate"
    (cd "$ROOT" && cargo build --release -p meshgate)
    MESHGATE_BIN="$ROOT/target/release/meshgate"
fi

rm -rf "$OUT"
mkdir -p "$OUT/nginx-http/tmp" "$OUT/backend/tmp"
trap cleanup EXIT
trap 'exit 130' INT TERM

for port in "$BACKEND_PORT" "$MESHGATE_PORT" "$NGINX_PORT" "$NGINX_H2_PORT" "$HAPROXY_PORT" "$HAPROXY_H2_PORT" \
    "$MESHGATE_TLS_PORT" "$NGINX_TLS_PORT"; do
    port_in_use "$port" && die "127.0.0.1:$port is already in use"
done

log "starting the backend (nginx, CPU $LOAD_CPU) and meshgate ($MESHGATE_BIN), nginx, haproxy on CPU $PROXY_CPU"
taskset -c "$LOAD_CPU" nginx -p "$OUT/backend/" -e "$OUT/backend/error.log" \
    -c "$HERE/backend-http.conf" >"$OUT/backend.log" 2>&1 &
BACKEND_PID=$!
PIDS+=("$BACKEND_PID")
# One meshgate serves both configs' listeners: http1.yaml and https.yaml
# merged (the certificate paths are made absolute).
python3 - "$HERE" "$OUT/meshgate.yaml" <<'PY'
import sys, yaml, os
here, out = sys.argv[1], sys.argv[2]
a = yaml.safe_load(open(os.path.join(here, "http1.yaml")))
b = yaml.safe_load(open(os.path.join(here, "https.yaml")))
for c in b["listeners"][0]["filter_chains"][0]["tls"]["certificates"]:
    for k in c:
        c[k] = os.path.normpath(os.path.join(here, c[k]))
a["listeners"] += b["listeners"]
yaml.safe_dump(a, open(out, "w"))
PY
taskset -c "$PROXY_CPU" env -u RUST_LOG "$MESHGATE_BIN" run -c "$OUT/meshgate.yaml" \
    >"$OUT/meshgate.log" 2>&1 &
MESHGATE_PID=$!
PIDS+=("$MESHGATE_PID")
sed "s#@CERTS@#$ROOT/examples/certs#g" "$HERE/nginx-http.conf" >"$OUT/nginx-http.conf"
taskset -c "$PROXY_CPU" nginx -p "$OUT/nginx-http/" -e "$OUT/nginx-http/error.log" \
    -c "$OUT/nginx-http.conf" >"$OUT/nginx-http.log" 2>&1 &
NGINX_MASTER_PID=$!
PIDS+=("$NGINX_MASTER_PID")
taskset -c "$PROXY_CPU" haproxy -db -f "$HERE/haproxy-http.cfg" >"$OUT/haproxy.log" 2>&1 &
HAPROXY_PID=$!
PIDS+=("$HAPROXY_PID")

wait_port "$BACKEND_PORT" "$BACKEND_PID" backend
wait_port "$MESHGATE_PORT" "$MESHGATE_PID" meshgate
wait_port "$NGINX_PORT" "$NGINX_MASTER_PID" nginx-http
wait_port "$HAPROXY_PORT" "$HAPROXY_PID" haproxy
wait_port "$MESHGATE_TLS_PORT" "$MESHGATE_PID" meshgate
wait_port "$NGINX_TLS_PORT" "$NGINX_MASTER_PID" nginx-http
NGINX_WORKER_PID="$(cat "/proc/$NGINX_MASTER_PID/task/$NGINX_MASTER_PID/children")"
NGINX_WORKER_PID="${NGINX_WORKER_PID%% *}"
[[ -n "$NGINX_WORKER_PID" ]] || die "no nginx worker process"

proxy_port() { # PHASE NAME
    case "$1:$2" in
    h1:direct) echo "$BACKEND_PORT" ;;
    h1:meshgate | h2:meshgate) echo "$MESHGATE_PORT" ;;
    h1:nginx) echo "$NGINX_PORT" ;;
    h2:nginx) echo "$NGINX_H2_PORT" ;;
    h1:haproxy) echo "$HAPROXY_PORT" ;;
    h2:haproxy) echo "$HAPROXY_H2_PORT" ;;
    tls_*:meshgate) echo "$MESHGATE_TLS_PORT" ;;
    tls_*:nginx) echo "$NGINX_TLS_PORT" ;;
    esac
}
proxy_pid() {
    case "$1" in
    meshgate) echo "$MESHGATE_PID" ;;
    nginx) echo "$NGINX_WORKER_PID" ;;
    haproxy) echo "$HAPROXY_PID" ;;
    esac
}
settle() {
    if ((QUIET_WAIT > 0)); then wait_quiet; else sleep 1; fi
}

# Every proxy answers before anything is measured.
for name in meshgate nginx haproxy; do
    body="$(curl -fsS "http://127.0.0.1:$(proxy_port h1 "$name")/")" || die "$name does not proxy"
    [[ "$body" == "hello, world" ]] || die "$name answered '$body'"
done
for name in meshgate nginx; do
    body="$(curl -fsS --cacert "$ROOT/examples/certs/ca.pem" "https://localhost:$(proxy_port tls_ka "$name")/")" ||
        die "$name does not proxy HTTPS"
    [[ "$body" == "hello, world" ]] || die "$name answered '$body' over HTTPS"
done

RESULTS="$OUT/results.tsv"
printf 'phase\trun\tname\trps\trequests\tp50_us\tp99_us\tcpu_ticks\twall_s\terrors\tload_cpu_pct\tquiet\tforeign_cpu0_pct\n' >"$RESULTS"

for phase in $PHASES; do
    case "$phase" in
    h1) ORDER=(direct meshgate nginx haproxy) ;;
    h2) ORDER=(meshgate nginx haproxy) ;; # the backend speaks HTTP/1.1 only
    tls_ka | tls_hs) ORDER=(meshgate nginx) ;;
    *) die "unknown phase $phase" ;;
    esac
    log "phase $phase: ${DURATION}s x $RUNS runs each, load on CPU $LOAD_CPU"
    for ((run = 1; run <= RUNS; run++)); do
        for name in "${ORDER[@]}"; do
            txt="$OUT/$phase-$run-$name.txt"
            scheme=http
            [[ "$phase" == tls_* ]] && scheme=https
            url="$scheme://127.0.0.1:$(proxy_port "$phase" "$name")/"
            for ((try = 1; ; try++)); do
                settle
                if [[ "$phase" == h1 || "$phase" == tls_ka ]]; then
                    measure "$name" taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" \
                        --latency "$url" >"$txt" || die "wrk through $name failed; see $txt"
                elif [[ "$phase" == tls_hs ]]; then
                    measure "$name" taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" \
                        --latency -H 'Connection: close' "$url" >"$txt" || die "wrk through $name failed; see $txt"
                else
                    measure "$name" taskset -c "$LOAD_CPU" h2load -c10 -m10 -t1 -D "$DURATION" \
                        "$url" >"$txt" || die "h2load through $name failed; see $txt"
                fi
                accept_run "$name" "$try" && break
            done
            read -r rps reqs p50 p99 errs < <(python3 "$HERE/parse_load.py" "$phase" "$txt")
            printf '%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$phase" "$run" "$name" \
                "$rps" "$reqs" "$p50" "$p99" "$M_TICKS" "$M_WALL" "$errs" "$M_LOAD" "$M_QUIET" "$M_FOREIGN" >>"$RESULTS"
            log "  $phase run $run $name: $rps req/s, p50 ${p50} us, p99 ${p99} us, proxy cpu ${M_TICKS} ticks," \
                "CPU $LOAD_CPU busy ${M_LOAD}%, foreign on CPU $PROXY_CPU ${M_FOREIGN}%, errors $errs"
        done
    done
done

python3 "$HERE/report_http.py" "$RESULTS" "$(getconf CLK_TCK)" "$PROXY_CPU" "$LOAD_CPU" | tee "$OUT/summary.txt"
log "raw outputs in $OUT"
