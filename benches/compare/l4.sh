#!/usr/bin/env bash
# Side-by-side L4 (plain TCP) comparison: meshgate tcp_proxy vs nginx `stream`
# vs HAProxy `mode tcp`, same workload, same pinning.
#
#   CPU 0: the proxy under test (each proxy pinned alone there, idle when not measured)
#   CPU 1: load generator and backend (iperf3 client+server, or wrk + nginx http)
#
# Phase 1, throughput: one iperf3 stream for DURATION s, per run Gbit/s and the
#   proxy's CPU seconds per GB moved.
# Phase 2, short connections: wrk, one request per connection
#   (Connection: close) against a tiny nginx http backend, per run conn/s and
#   the proxy's CPU microseconds per connection.
# Runs alternate direct, meshgate, nginx, haproxy, direct, ... so that drift of
# the machine spreads over all of them; medians are reported.
#
# Env: DURATION (s, default 10)  RUNS (default 6)  QUICK=1 (3 s x 2 runs)
#      CONN_DURATION (s, default DURATION)  CONNS (wrk concurrency, default 50)
#      MESHGATE_BIN (skip the cargo build and use this binary)
#      QUIET_WAIT (s, default 300): before each run, wait up to this long for
#        both CPUs to be idle (< 10 % busy), so that a build or anything else
#        on the machine does not land in a measurement; 0 disables the wait.
#      FOREIGN_MAX (%, default 10), TRIES (default 3): a run is redone (up to
#        TRIES times) when more than FOREIGN_MAX % of CPU 0 went to anything
#        but the proxy under test during it.
# Raw outputs: benches/compare/out/ (gitignored).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT="$HERE/out"

if [[ "${QUICK:-0}" == 1 ]]; then
    DURATION="${DURATION:-3}"
    RUNS="${RUNS:-2}"
fi
DURATION="${DURATION:-10}"
RUNS="${RUNS:-6}"
CONN_DURATION="${CONN_DURATION:-$DURATION}"
CONNS="${CONNS:-50}"
QUIET_WAIT="${QUIET_WAIT:-300}"
FOREIGN_MAX="${FOREIGN_MAX:-10}"
TRIES="${TRIES:-3}"

PROXY_CPU=0
LOAD_CPU=1
BACKEND_PORT=5201 # iperf3 server in phase 1, nginx http in phase 2
MESHGATE_PORT=5204 # fixed by tcp.yaml
NGINX_PORT=5202    # fixed by nginx-l4.conf
HAPROXY_PORT=5203  # fixed by haproxy-l4.cfg
STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so

TAG=l4
# shellcheck source=lib.sh
source "$HERE/lib.sh"

# ---------------------------------------------------------------- peers
install_peers() {
    local missing=()
    local cmd
    for cmd in nginx haproxy iperf3 wrk python3 taskset ss; do
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
    done
    [[ -f "$STREAM_MODULE" ]] || missing+=("ngx_stream_module")
    [[ ${#missing[@]} -eq 0 ]] && return 0
    log "missing: ${missing[*]}; installing"
    local sudo=()
    if [[ "$(id -u)" != 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "need root (or sudo) to install: ${missing[*]}"
        sudo=(sudo)
    fi
    "${sudo[@]}" apt-get update
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y \
        nginx libnginx-mod-stream haproxy iperf3 wrk python3 util-linux iproute2
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
mkdir -p "$OUT/nginx-l4" "$OUT/backend/tmp"

trap cleanup EXIT
trap 'exit 130' INT TERM

for port in "$BACKEND_PORT" "$NGINX_PORT" "$HAPROXY_PORT" "$MESHGATE_PORT"; do
    port_in_use "$port" && die "127.0.0.1:$port is already in use"
done

# The proxies stay up for both phases; they always forward to :$BACKEND_PORT.
log "starting meshgate ($MESHGATE_BIN), nginx stream, haproxy on CPU $PROXY_CPU"
taskset -c "$PROXY_CPU" env -u RUST_LOG "$MESHGATE_BIN" run -c "$HERE/tcp.yaml" \
    >"$OUT/meshgate.log" 2>&1 &
MESHGATE_PID=$!
PIDS+=("$MESHGATE_PID")
taskset -c "$PROXY_CPU" nginx -p "$OUT/nginx-l4/" -e "$OUT/nginx-l4/error.log" \
    -c "$HERE/nginx-l4.conf" >"$OUT/nginx-l4.log" 2>&1 &
NGINX_MASTER_PID=$!
PIDS+=("$NGINX_MASTER_PID")
taskset -c "$PROXY_CPU" haproxy -db -f "$HERE/haproxy-l4.cfg" >"$OUT/haproxy.log" 2>&1 &
HAPROXY_PID=$!
PIDS+=("$HAPROXY_PID")

wait_port "$MESHGATE_PORT" "$MESHGATE_PID" meshgate
wait_port "$NGINX_PORT" "$NGINX_MASTER_PID" nginx-l4
wait_port "$HAPROXY_PORT" "$HAPROXY_PID" haproxy
NGINX_WORKER_PID="$(cat "/proc/$NGINX_MASTER_PID/task/$NGINX_MASTER_PID/children")"
NGINX_WORKER_PID="${NGINX_WORKER_PID%% *}"
[[ -n "$NGINX_WORKER_PID" ]] || die "no nginx worker process"

proxy_port() {
    case "$1" in
    direct) echo "$BACKEND_PORT" ;;
    meshgate) echo "$MESHGATE_PORT" ;;
    nginx) echo "$NGINX_PORT" ;;
    haproxy) echo "$HAPROXY_PORT" ;;
    esac
}
proxy_pid() { # the process whose CPU time is measured
    case "$1" in
    meshgate) echo "$MESHGATE_PID" ;;
    nginx) echo "$NGINX_WORKER_PID" ;;
    haproxy) echo "$HAPROXY_PID" ;;
    esac
}

ORDER=(direct meshgate nginx haproxy)
settle() {
    if ((QUIET_WAIT > 0)); then wait_quiet; else sleep 1; fi
}
RESULTS="$OUT/results.tsv"
printf 'phase\trun\tname\tvalue\tamount\tcpu_ticks\twall_s\terrors\tload_cpu_pct\tquiet\tforeign_cpu0_pct\n' >"$RESULTS"

# ---------------------------------------------------------------- phase 1
log "phase 1: iperf3, 1 stream, ${DURATION}s x $RUNS runs each, iperf3 on CPU $LOAD_CPU"
taskset -c "$LOAD_CPU" iperf3 -s -B 127.0.0.1 -p "$BACKEND_PORT" >"$OUT/iperf3-server.log" 2>&1 &
IPERF_PID=$!
PIDS+=("$IPERF_PID")
wait_port "$BACKEND_PORT" "$IPERF_PID" iperf3-server

for ((run = 1; run <= RUNS; run++)); do
    for name in "${ORDER[@]}"; do
        json="$OUT/tput-$run-$name.json"
        for ((try = 1; ; try++)); do
            settle
            measure "$name" taskset -c "$LOAD_CPU" iperf3 -c 127.0.0.1 -p "$(proxy_port "$name")" \
                -t "$DURATION" -J >"$json" || die "iperf3 through $name failed; see $json"
            accept_run "$name" "$try" && break
        done
        read -r bps bytes < <(python3 -c '
import json, sys
e = json.load(open(sys.argv[1]))["end"]["sum_received"]
print(e["bits_per_second"], e["bytes"])' "$json")
        printf 'tput\t%d\t%s\t%s\t%s\t%s\t%s\t0\t%s\t%s\t%s\n' "$run" "$name" "$bps" "$bytes" "$M_TICKS" "$M_WALL" "$M_LOAD" "$M_QUIET" "$M_FOREIGN" >>"$RESULTS"
        log "  run $run $name: $(awk -v b="$bps" 'BEGIN { printf "%.2f", b / 1e9 }') Gbit/s, proxy cpu ${M_TICKS} ticks, CPU $LOAD_CPU busy ${M_LOAD}%, foreign on CPU $PROXY_CPU ${M_FOREIGN}%"
    done
done
stop_pid "$IPERF_PID"

# ---------------------------------------------------------------- phase 2
cat >"$OUT/backend/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid nginx.pid;
error_log error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    server {
        listen 127.0.0.1:$BACKEND_PORT backlog=4096;
        location / { return 200 "ok\n"; }
    }
}
CONF
log "phase 2: short connections, wrk -c$CONNS Connection: close, ${CONN_DURATION}s x $RUNS runs each," \
    "wrk and nginx http backend on CPU $LOAD_CPU"
taskset -c "$LOAD_CPU" nginx -p "$OUT/backend/" -e "$OUT/backend/error.log" \
    -c "$OUT/backend/nginx.conf" >"$OUT/backend.log" 2>&1 &
BACKEND_PID=$!
PIDS+=("$BACKEND_PID")
wait_port "$BACKEND_PORT" "$BACKEND_PID" backend

for ((run = 1; run <= RUNS; run++)); do
    for name in "${ORDER[@]}"; do
        txt="$OUT/conn-$run-$name.txt"
        for ((try = 1; ; try++)); do
            settle
            measure "$name" taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${CONN_DURATION}s" \
                -H 'Connection: close' "http://127.0.0.1:$(proxy_port "$name")/" >"$txt" ||
                die "wrk through $name failed; see $txt"
            accept_run "$name" "$try" && break
        done
        read -r rps reqs errs < <(python3 -c '
import re, sys
t = open(sys.argv[1]).read()
rps = float(re.search(r"Requests/sec:\s*([\d.]+)", t).group(1))
reqs = int(re.search(r"(\d+) requests in", t).group(1))
errs = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", t))
m = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
print(rps, reqs, errs + (int(m.group(1)) if m else 0))' "$txt")
        printf 'conn\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$run" "$name" "$rps" "$reqs" "$M_TICKS" "$M_WALL" "$errs" "$M_LOAD" "$M_QUIET" "$M_FOREIGN" >>"$RESULTS"
        log "  run $run $name: $rps conn/s, proxy cpu ${M_TICKS} ticks, CPU $LOAD_CPU busy ${M_LOAD}%, foreign on CPU $PROXY_CPU ${M_FOREIGN}%, errors $errs"
    done
done
stop_pid "$BACKEND_PID"

# ---------------------------------------------------------------- report
python3 - "$RESULTS" "$(getconf CLK_TCK)" "$PROXY_CPU" "$LOAD_CPU" "$FOREIGN_MAX" <<'PY' | tee "$OUT/summary.txt"
import csv, statistics, sys

rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
hz = float(sys.argv[2])
pcpu, lcpu = sys.argv[3], sys.argv[4]
names = ["direct", "meshgate", "nginx", "haproxy"]


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def stats(phase, name):
    rs = [r for r in rows if r["phase"] == phase and r["name"] == name]
    cpu = [int(r["cpu_ticks"]) / hz for r in rs]
    val = [float(r["value"]) for r in rs]
    amount = [int(r["amount"]) for r in rs]
    return {
        "n": len(rs),
        "val": med(val),
        "min": min(val),
        "max": max(val),
        "cpu_per": med([c / a for c, a in zip(cpu, amount)]),
        "util": med([c / float(r["wall_s"]) for c, r in zip(cpu, rs)]),
        "load": med([int(r["load_cpu_pct"]) for r in rs]),
        "errors": sum(int(r["errors"]) for r in rs),
    }


def line(cells, head):
    return "| " + " | ".join(
        c.ljust(len(h)) if i == 0 else c.rjust(len(h))
        for i, (c, h) in enumerate(zip(cells, head))
    ) + " |"


def table(title, head, rowfn, keys):
    print(title)
    print()
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("-" * (len(h) + 2) for h in head) + "|")
    for k in keys:
        print(line(rowfn(k), head))
    print()


T = {n: stats("tput", n) for n in names}
C = {n: stats("conn", n) for n in names}
dash = "-"
print()
table(
    f"Throughput: iperf3, 1 stream, medians of {T['direct']['n']} runs"
    f" (proxy on CPU {pcpu}, iperf3 client + server on CPU {lcpu})",
    ["        ", "Gbit/s", "  min-max  ", "CPU s/GB", f"CPU{pcpu} %", f"CPU{lcpu} %"],
    lambda n: [
        n,
        f"{T[n]['val'] / 1e9:.2f}",
        f"{T[n]['min'] / 1e9:.1f}-{T[n]['max'] / 1e9:.1f}",
        dash if n == "direct" else f"{T[n]['cpu_per'] * 1e9:.3f}",
        dash if n == "direct" else f"{100 * T[n]['util']:.0f}",
        f"{T[n]['load']:.0f}",
    ],
    names,
)
table(
    f"Short connections: wrk, 1 request per connection, medians of {C['direct']['n']} runs"
    f" (proxy on CPU {pcpu}, wrk + backend on CPU {lcpu})",
    ["        ", " conn/s", "   min-max   ", "CPU us/conn", f"CPU{pcpu} %", f"CPU{lcpu} %", "errors"],
    lambda n: [
        n,
        f"{C[n]['val']:.0f}",
        f"{C[n]['min']:.0f}-{C[n]['max']:.0f}",
        dash if n == "direct" else f"{C[n]['cpu_per'] * 1e6:.1f}",
        dash if n == "direct" else f"{100 * C[n]['util']:.0f}",
        f"{C[n]['load']:.0f}",
        f"{C[n]['errors']}",
    ],
    names,
)
print(f"CPU{pcpu} % = the proxy's own CPU time / wall time (100 = its core is saturated);")
print(f"CPU{lcpu} % = how busy the load core was (iperf3, or wrk + backend).")
print("CPU s/GB, CPU us/conn = the proxy's CPU time per GB moved / per connection; lower is better.")
print()
m = "meshgate"
table(
    "Ratios (Gbit/s, conn/s > 1: meshgate faster; CPU per unit < 1: meshgate cheaper)",
    ["ratio           ", "Gbit/s", "CPU s/GB", "conn/s", "CPU us/conn"],
    lambda p: [
        f"{m}/{p}",
        f"{T[m]['val'] / T[p]['val']:.2f}",
        f"{T[m]['cpu_per'] / T[p]['cpu_per']:.2f}",
        f"{C[m]['val'] / C[p]['val']:.2f}",
        f"{C[m]['cpu_per'] / C[p]['cpu_per']:.2f}",
    ],
    ["nginx", "haproxy"],
)
busy = [f"{r['phase']}-{r['run']}-{r['name']}" for r in rows if r["quiet"] != "1"]
if busy:
    print(f"WARNING: {len(busy)} runs were disturbed by other load on the machine: {' '.join(busy)}")
else:
    print("Every run started on an idle machine and kept the proxy's CPU to itself"
          f" (foreign load on CPU{pcpu} <= {sys.argv[5]} %).")
PY
log "raw outputs in $OUT"
