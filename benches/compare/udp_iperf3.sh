#!/usr/bin/env bash
# UDP side by side: iperf3 -u through meshgate's `udp_proxy` against nginx's
# `stream` UDP proxy (and direct), same workload, same pinning as l4.sh:
#
#   CPU 0: the proxy under test (each alone there, idle when not measured)
#   CPU 1: iperf3 client and server
#
# One iperf3 UDP stream at a fixed offered rate (BITRATE, datagrams of
# LEN bytes) for DURATION s; per run the received Mbit/s, the loss %, and the
# proxy's CPU seconds per GB received (utime+stime from /proc, all threads).
# iperf3's TCP control connection goes through the same port of each proxy
# (tcp_proxy / stream TCP), and costs nothing measurable beside the data.
# Runs alternate direct, meshgate, nginx so that drift spreads over all of
# them; medians are reported.
#
#   MESHGATE_BIN=target/release/meshgate benches/compare/udp_iperf3.sh
#   QUICK=1 MESHGATE_BIN=target/debug/meshgate benches/compare/udp_iperf3.sh   # smoke run
#
# Figures from a debug binary are meaningless (10x slower, unoptimised): a
# smoke run only proves that the script and the peers work.
#
# Env: DURATION (s, default 10), RUNS (default 5), QUICK=1 (3 s x 1 run),
#      BITRATE (iperf3 -b, default 1G), LEN (datagram bytes, default 1400,
#      below udp_proxy's default max_rx_datagram_size 1500),
#      MESHGATE_BIN (default target/release/meshgate),
#      QUIET_WAIT (s, default 300), FOREIGN_MAX (%, default 10), TRIES (3):
#      as l4.sh (wait for an idle machine; redo a run that was disturbed).
# Raw outputs: benches/compare/out-udp/ (gitignored).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT="$HERE/out-udp"
TAG=udp

if [[ "${QUICK:-0}" == 1 ]]; then
    DURATION="${DURATION:-3}"
    RUNS="${RUNS:-1}"
fi
DURATION="${DURATION:-10}"
RUNS="${RUNS:-5}"
BITRATE="${BITRATE:-1G}"
LEN="${LEN:-1400}"
QUIET_WAIT="${QUIET_WAIT:-300}"
FOREIGN_MAX="${FOREIGN_MAX:-10}"
TRIES="${TRIES:-3}"
PROXY_CPU=0
LOAD_CPU=1
BACKEND_PORT=5211  # iperf3 server
NGINX_PORT=5212    # fixed by nginx-udp.conf
MESHGATE_PORT=5214 # fixed by udp.yaml
STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so
MESHGATE_BIN="${MESHGATE_BIN:-$ROOT/target/release/meshgate}"

# shellcheck source=lib.sh
source "$HERE/lib.sh"

missing=()
for cmd in nginx iperf3 python3 taskset ss; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
done
[[ -f "$STREAM_MODULE" ]] || missing+=("ngx_stream_module")
if [[ ${#missing[@]} -gt 0 ]]; then
    log "missing: ${missing[*]}; installing"
    sudo=()
    [[ "$(id -u)" == 0 ]] || sudo=(sudo)
    "${sudo[@]}" apt-get update
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y \
        nginx libnginx-mod-stream iperf3 python3 util-linux iproute2
fi
[[ "$(nproc --all)" -ge 2 ]] || die "needs at least 2 CPUs (proxy on CPU 0, load on CPU 1)"
[[ -x "$MESHGATE_BIN" ]] || die "no $MESHGATE_BIN: cargo build --release -p meshgate"

for port in "$BACKEND_PORT" "$NGINX_PORT" "$MESHGATE_PORT"; do
    port_in_use "$port" && die "127.0.0.1:$port is already in use"
done
rm -rf "$OUT"
mkdir -p "$OUT/nginx"

log "starting meshgate ($MESHGATE_BIN) and nginx stream on CPU $PROXY_CPU"
taskset -c "$PROXY_CPU" env -u RUST_LOG "$MESHGATE_BIN" run -c "$HERE/udp.yaml" \
    >"$OUT/meshgate.log" 2>&1 &
MESHGATE_PID=$!
PIDS+=("$MESHGATE_PID")
taskset -c "$PROXY_CPU" nginx -p "$OUT/nginx/" -e "$OUT/nginx/error.log" \
    -c "$HERE/nginx-udp.conf" >"$OUT/nginx.log" 2>&1 &
NGINX_MASTER_PID=$!
PIDS+=("$NGINX_MASTER_PID")
taskset -c "$LOAD_CPU" iperf3 -s -B 127.0.0.1 -p "$BACKEND_PORT" >"$OUT/iperf3-server.log" 2>&1 &
IPERF_PID=$!
PIDS+=("$IPERF_PID")
wait_port "$MESHGATE_PORT" "$MESHGATE_PID" meshgate
wait_port "$NGINX_PORT" "$NGINX_MASTER_PID" nginx
wait_port "$BACKEND_PORT" "$IPERF_PID" iperf3-server
NGINX_WORKER_PID="$(cat "/proc/$NGINX_MASTER_PID/task/$NGINX_MASTER_PID/children")"
NGINX_WORKER_PID="${NGINX_WORKER_PID%% *}"
[[ -n "$NGINX_WORKER_PID" ]] || die "no nginx worker process"

proxy_port() {
    case "$1" in
    direct) echo "$BACKEND_PORT" ;;
    meshgate) echo "$MESHGATE_PORT" ;;
    nginx) echo "$NGINX_PORT" ;;
    esac
}
proxy_pid() {
    case "$1" in
    meshgate) echo "$MESHGATE_PID" ;;
    nginx) echo "$NGINX_WORKER_PID" ;;
    esac
}
settle() {
    if ((QUIET_WAIT > 0)); then wait_quiet; else sleep 1; fi
}

ORDER=(direct meshgate nginx)
RESULTS="$OUT/results.tsv"
printf 'run\tname\tbps\tbytes\tlost_pct\tcpu_ticks\twall_s\tload_cpu_pct\tquiet\tforeign_cpu0_pct\n' >"$RESULTS"
log "iperf3 -u -b $BITRATE -l $LEN, 1 stream, ${DURATION}s x $RUNS runs each, iperf3 on CPU $LOAD_CPU"
for ((run = 1; run <= RUNS; run++)); do
    for name in "${ORDER[@]}"; do
        json="$OUT/udp-$run-$name.json"
        for ((try = 1; ; try++)); do
            settle
            measure "$name" taskset -c "$LOAD_CPU" iperf3 -u -c 127.0.0.1 -p "$(proxy_port "$name")" \
                -b "$BITRATE" -l "$LEN" -t "$DURATION" -J >"$json" ||
                die "iperf3 -u through $name failed; see $json"
            accept_run "$name" "$try" && break
        done
        # The receiver's figures (iperf3 >= 3.9 reports them in sum_received).
        read -r bps bytes lost < <(python3 -c '
import json, sys
e = json.load(open(sys.argv[1]))["end"]
r = e.get("sum_received") or e["sum"]
print(r["bits_per_second"], r["bytes"], e["sum"].get("lost_percent", 0))' "$json")
        printf '%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$run" "$name" "$bps" "$bytes" "$lost" \
            "$M_TICKS" "$M_WALL" "$M_LOAD" "$M_QUIET" "$M_FOREIGN" >>"$RESULTS"
        log "  run $run $name: $(awk -v b="$bps" 'BEGIN { printf "%.0f", b / 1e6 }') Mbit/s received, lost ${lost}%, proxy cpu ${M_TICKS} ticks"
    done
done

python3 - "$RESULTS" "$(getconf CLK_TCK)" "$BITRATE" "$LEN" <<'PY' | tee "$OUT/summary.txt"
import csv, statistics, sys

rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
hz = float(sys.argv[2])
print()
print(f"UDP: iperf3 -u -b {sys.argv[3]} -l {sys.argv[4]}, 1 stream, medians of runs"
      " (proxy on CPU 0, iperf3 client + server on CPU 1)")
print()
print("| proxy    | Mbit/s received | lost % | CPU s/GB | CPU0 % |")
print("|----------|-----------------|--------|----------|--------|")
for name in ["direct", "meshgate", "nginx"]:
    rs = [r for r in rows if r["name"] == name]
    if not rs:
        continue
    mbps = statistics.median(float(r["bps"]) / 1e6 for r in rs)
    lost = statistics.median(float(r["lost_pct"]) for r in rs)
    if name == "direct":
        cpu, util = "-", "-"
    else:
        cpu = "%.3f" % statistics.median(
            int(r["cpu_ticks"]) / hz / max(int(r["bytes"]), 1) * 1e9 for r in rs)
        util = "%.0f" % statistics.median(
            100 * int(r["cpu_ticks"]) / hz / float(r["wall_s"]) for r in rs)
    print(f"| {name:<8} | {mbps:>15.0f} | {lost:>6.2f} | {cpu:>8} | {util:>6} |")
PY
