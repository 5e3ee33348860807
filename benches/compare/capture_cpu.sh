#!/usr/bin/env bash
# The CPU cost of transparent capture: HTTP/1.1 through meshgate in a
# network namespace, captured (the client calls a service VIP, nftables
# REDIRECTs it to the outbound listener 15001, original_dst hands it to the
# VIP's virtual listener) against explicit (the client calls meshgate's own
# listener on 127.0.0.1:15080, which is never captured). Same route, same
# backend, same pinning as the other benches/compare scripts:
#
#   CPU 0: meshgate (in the app namespace, as uid 1337, exempt from capture)
#   CPU 1: wrk (app namespace) and an nginx backend (svc namespace)
#
# Two workloads, each for DURATION s: keep-alive (CONNS connections, many
# requests each: the per-request cost, where capture only adds its
# per-connection work spread thin) and `Connection: close` (one request per
# connection: the redirect, SO_ORIGINAL_DST and the hand-off every time).
# Per run: requests, meshgate's CPU µs per request (utime+stime from /proc,
# all threads), and the whole machine's busy CPU µs per request (both CPUs
# from /proc/stat: includes the kernel's NAT work for REDIRECT, which is not
# meshgate's process time). Runs alternate explicit, captured; medians.
#
#   sudo MESHGATE_BIN=target/release/meshgate benches/compare/capture_cpu.sh
#   sudo QUICK=1 MESHGATE_BIN=target/debug/meshgate benches/compare/capture_cpu.sh  # smoke run
#
# Figures from a debug binary are meaningless (unoptimised): a smoke run only
# proves that the namespaces, the capture rules and the peers work.
#
# Needs root (namespaces, nftables), ip, nft, setpriv, wrk, nginx.
# Env: DURATION (s, default 10), RUNS (default 5), QUICK=1 (3 s x 1 run),
#      CONNS (wrk connections, default 20), MODES (default "keepalive close"),
#      MESHGATE_BIN, QUIET_WAIT (s, default 300), FOREIGN_MAX (%, default 10),
#      TRIES (default 3), as l4.sh.
# Raw outputs: benches/compare/out-capture/ (gitignored).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT="$HERE/out-capture"
TAG=capture

if [[ "${QUICK:-0}" == 1 ]]; then
    DURATION="${DURATION:-3}"
    RUNS="${RUNS:-1}"
fi
DURATION="${DURATION:-10}"
RUNS="${RUNS:-5}"
CONNS="${CONNS:-20}"
MODES="${MODES:-keepalive close}"
QUIET_WAIT="${QUIET_WAIT:-300}"
FOREIGN_MAX="${FOREIGN_MAX:-10}"
TRIES="${TRIES:-3}"
PROXY_CPU=0
LOAD_CPU=1
MESHGATE_BIN="${MESHGATE_BIN:-$ROOT/target/release/meshgate}"
MESHGATE_UID=1337
APP="mgcap$$a"
SVC="mgcap$$s"
APP_IP=10.78.0.1
SVC_IP=10.78.0.2
VIP=10.96.0.10

# shellcheck source=lib.sh
source "$HERE/lib.sh"

[[ "$(id -u)" == 0 ]] || die "needs root (network namespaces, nftables)"
for cmd in ip nft setpriv wrk nginx python3 taskset; do
    command -v "$cmd" >/dev/null 2>&1 || die "$cmd is missing"
done
[[ "$(nproc --all)" -ge 2 ]] || die "needs at least 2 CPUs (meshgate on CPU 0, load on CPU 1)"
[[ -x "$MESHGATE_BIN" ]] || die "no $MESHGATE_BIN: cargo build --release -p meshgate"

in_app() { ip netns exec "$APP" "$@"; }
teardown() {
    cleanup
    # Deleting the namespaces removes the capture rules and the veth pair.
    ip netns del "$APP" 2>/dev/null || true
    ip netns del "$SVC" 2>/dev/null || true
}
trap teardown EXIT

rm -rf "$OUT"
mkdir -p "$OUT/backend/tmp"

ip netns add "$APP"
ip netns add "$SVC"
ip link add "${APP}v" netns "$APP" type veth peer name "${SVC}v" netns "$SVC"
ip -n "$APP" link set lo up
ip -n "$SVC" link set lo up
ip -n "$APP" addr add "$APP_IP/24" dev "${APP}v"
ip -n "$SVC" addr add "$SVC_IP/24" dev "${SVC}v"
ip -n "$APP" link set "${APP}v" up
ip -n "$SVC" link set "${SVC}v" up
ip -n "$APP" route add default via "$SVC_IP"

cat >"$OUT/backend/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid nginx.pid;
error_log error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path tmp/body; proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi; uwsgi_temp_path tmp/uwsgi; scgi_temp_path tmp/scgi;
    server {
        listen $SVC_IP:8080 backlog=4096;
        location / { return 200 "ok\n"; }
    }
}
CONF

cat >"$OUT/meshgate.yaml" <<YAML
admin:
  address: 127.0.0.1:15000
listeners:
  # Explicit: the client names meshgate (loopback is never captured).
  - name: explicit
    address: 127.0.0.1:15080
    filter_chains:
      - filters:
          - name: proxy
            config: &route
              route_config:
                virtual_hosts:
                  - name: backend
                    domains: ["*"]
                    routes:
                      - match: {prefix: /}
                        route: {cluster: backend}
  # Captured: REDIRECTed connections, handed to the VIP's listener.
  - name: outbound
    address: 0.0.0.0:15001
    use_original_dst: true
    listener_filters:
      - name: envoy.filters.listener.original_dst
    filter_chains:
      - filters:
          - name: tcp_proxy
            config: {cluster: passthrough}
  - name: vip
    address: $VIP:80
    bind_to_port: false
    filter_chains:
      - filters:
          - name: proxy
            config: *route
clusters:
  - name: backend
    connect_timeout: 1s
    endpoints: [{address: "$SVC_IP:8080"}]
  - name: passthrough
    type: original_dst
    lb_policy: cluster_provided
    connect_timeout: 1s
YAML
chmod -R a+rX "$OUT"

wait_listen() { # NS PORT PID NAME
    local i
    for ((i = 0; i < 100; i++)); do
        [[ -n "$(ip netns exec "$1" ss -Hltn "sport = :$2")" ]] && return 0
        kill -0 "$3" 2>/dev/null || die "$4 exited at start; see $OUT/$4.log"
        sleep 0.1
    done
    die "$4 does not listen on :$2 in $1; see $OUT/$4.log"
}

log "backend nginx in $SVC on CPU $LOAD_CPU; meshgate ($MESHGATE_BIN) in $APP on CPU $PROXY_CPU as uid $MESHGATE_UID"
taskset -c "$LOAD_CPU" ip netns exec "$SVC" nginx -p "$OUT/backend/" -e "$OUT/backend/error.log" \
    -c "$OUT/backend/nginx.conf" >"$OUT/backend.log" 2>&1 &
BACKEND_PID=$!
PIDS+=("$BACKEND_PID")
# `ip netns exec` and setpriv exec in turn: $! is meshgate's own pid.
taskset -c "$PROXY_CPU" ip netns exec "$APP" setpriv --reuid="$MESHGATE_UID" \
    --regid="$MESHGATE_UID" --clear-groups env -u RUST_LOG "$MESHGATE_BIN" run \
    -c "$OUT/meshgate.yaml" >"$OUT/meshgate.log" 2>&1 &
MESHGATE_PID=$!
PIDS+=("$MESHGATE_PID")
wait_listen "$SVC" 8080 "$BACKEND_PID" backend
wait_listen "$APP" 15080 "$MESHGATE_PID" meshgate
wait_listen "$APP" 15001 "$MESHGATE_PID" meshgate

in_app "$MESHGATE_BIN" capture --uid "$MESHGATE_UID" --inbound-ports "" >"$OUT/capture.txt"
log "capture rules installed (see $OUT/capture.txt)"

url() {
    case "$1" in
    explicit) echo "http://127.0.0.1:15080/" ;;
    captured) echo "http://$VIP/" ;;
    esac
}
proxy_pid() { echo "$MESHGATE_PID"; }
settle() {
    if ((QUIET_WAIT > 0)); then wait_quiet; else sleep 1; fi
}
# Both sides answer before measuring (and the captured one really is).
for name in explicit captured; do
    body="$(in_app curl -s --max-time 5 "$(url "$name")")" || die "$name: no answer"
    [[ "$body" == ok ]] || die "$name: unexpected answer: $body"
done
handoffs() {
    in_app curl -s http://127.0.0.1:15000/stats/prometheus |
        awk '/^meshgate_listener_original_dst_handoff_total\{.*target="vip"/ { s += $2 } END { print s + 0 }'
}
[[ "$(handoffs)" -ge 1 ]] || die "the captured request was not handed off by original_dst"

RESULTS="$OUT/results.tsv"
printf 'mode\trun\tname\trequests\terrors\tcpu_ticks\tmachine_ticks\twall_s\tquiet\tforeign_cpu0_pct\n' >"$RESULTS"
for mode in $MODES; do
    hdr=()
    [[ "$mode" == close ]] && hdr=(-H "Connection: close")
    log "$mode: wrk -t1 -c$CONNS ${hdr[*]} ${DURATION}s x $RUNS runs each"
    for ((run = 1; run <= RUNS; run++)); do
        for name in explicit captured; do
            txt="$OUT/$mode-$run-$name.txt"
            for ((try = 1; ; try++)); do
                settle
                read -r m0 _ < <(cpu_busy "$PROXY_CPU")
                read -r l0 _ < <(cpu_busy "$LOAD_CPU")
                measure "$name" taskset -c "$LOAD_CPU" ip netns exec "$APP" wrk -t1 -c"$CONNS" \
                    -d"${DURATION}s" "${hdr[@]}" "$(url "$name")" >"$txt" ||
                    die "wrk $name failed; see $txt"
                read -r m1 _ < <(cpu_busy "$PROXY_CPU")
                read -r l1 _ < <(cpu_busy "$LOAD_CPU")
                accept_run "$name" "$try" && break
            done
            read -r reqs errs < <(python3 -c '
import re, sys
t = open(sys.argv[1]).read()
reqs = int(re.search(r"(\d+) requests in", t).group(1))
errs = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", t))
m = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
print(reqs, errs + (int(m.group(1)) if m else 0))' "$txt")
            machine=$(((m1 - m0) + (l1 - l0)))
            printf '%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$mode" "$run" "$name" "$reqs" "$errs" \
                "$M_TICKS" "$machine" "$M_WALL" "$M_QUIET" "$M_FOREIGN" >>"$RESULTS"
            log "  run $run $name: $reqs requests, meshgate cpu ${M_TICKS} ticks, machine ${machine} ticks, errors $errs"
        done
    done
done

in_app "$MESHGATE_BIN" capture --remove >/dev/null

python3 - "$RESULTS" "$(getconf CLK_TCK)" <<'PY' | tee "$OUT/summary.txt"
import csv, statistics, sys

rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
hz = float(sys.argv[2])
print()
print("Captured vs explicit HTTP/1.1 through meshgate (meshgate on CPU 0; wrk + backend on CPU 1), medians")
print()
print("| mode      | path     | requests | errors | meshgate CPU us/req | machine CPU us/req |")
print("|-----------|----------|----------|--------|---------------------|--------------------|")
med = {}
for mode in dict.fromkeys(r["mode"] for r in rows):
    for name in ["explicit", "captured"]:
        rs = [r for r in rows if r["mode"] == mode and r["name"] == name]
        if not rs:
            continue
        per = lambda k: statistics.median(int(r[k]) / hz / max(int(r["requests"]), 1) * 1e6 for r in rs)
        med[(mode, name)] = (per("cpu_ticks"), per("machine_ticks"))
        reqs = statistics.median(int(r["requests"]) for r in rs)
        errs = sum(int(r["errors"]) for r in rs)
        print(f"| {mode:<9} | {name:<8} | {reqs:>8.0f} | {errs:>6} | {med[(mode, name)][0]:>19.2f} | {med[(mode, name)][1]:>18.2f} |")
print()
for mode in dict.fromkeys(r["mode"] for r in rows):
    if (mode, "explicit") in med and (mode, "captured") in med:
        d = [c - e for c, e in zip(med[(mode, "captured")], med[(mode, "explicit")])]
        print(f"{mode}: capture adds {d[0]:+.2f} us of meshgate CPU and {d[1]:+.2f} us of machine CPU per request")
PY
