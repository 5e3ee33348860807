#!/usr/bin/env bash
# What tracing costs in CPU time, side by side (issue 22: on but not sampled
# at most 0.5 us a request, sampled and exported at most 3 us). Three
# meshgate processes pinned to CPU 0, the nginx backend, wrk and the OTLP
# collector on CPU 1, the HTTP/1.1 keep-alive workload of http.sh:
#
#   off        http1.yaml                (127.0.0.1:8082) no tracing
#   unsampled  http1-trace.yaml          (127.0.0.1:8088) tracing configured,
#              random_sampling 0: every stream decided, traceparent added
#   sampled    http1-trace-sampled.yaml  (127.0.0.1:8089) every stream
#              sampled, server and client spans exported over OTLP/gRPC to
#              tests/peers/tracing_peer.py's receiver (as icount.sh does)
#
# Each round runs the three once, in an order rotated by one per round so
# no variant always follows another; a run waits for a quiet machine and is
# redone when other processes took CPU 0 (lib.sh). Prints each variant's
# CPU microseconds per request (median of RUNS, min-max; also the user-mode
# part alone), the deltas vs
# off (difference of the medians, and the median of the per-round
# differences with their range, which cancel drift between rounds), the
# load average before and after, and checks that the sampled variant
# exported a span per stream and per try with none dropped.
#
#   MESHGATE_BIN=target/release/meshgate benches/compare/tracing.sh
#
# The load is wrk's closed loop by default: each variant runs as fast as it
# can, so a costlier variant also serves fewer requests a second, and a
# proxy's CPU per request depends a little on its rate (how many requests
# one wake-up finds). RATE=N instead offers the same N requests a second to
# every variant (h2load --h1 --rps, CONNS connections), to take that out.
#
# Env: DURATION (s, default 8), RUNS (default 7), CONNS (default 50),
#      RATE (requests/s in total, default: unset, wrk closed loop),
#      QUIET_WAIT (s, default 60), FOREIGN_MAX (%, default 10), TRIES (3).
# Raw outputs: benches/compare/out-tracing/ (gitignored).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT="$HERE/out-tracing"
TAG=tracing
DURATION="${DURATION:-8}"
RUNS="${RUNS:-7}"
CONNS="${CONNS:-50}"
QUIET_WAIT="${QUIET_WAIT:-60}"
FOREIGN_MAX="${FOREIGN_MAX:-10}"
TRIES="${TRIES:-3}"
PROXY_CPU=0
LOAD_CPU=1
MESHGATE_BIN="${MESHGATE_BIN:-$ROOT/target/release/meshgate}"
VARIANTS=(off unsampled sampled)

# shellcheck source=lib.sh
source "$HERE/lib.sh"

RATE="${RATE:-}"
for cmd in nginx wrk h2load python3 taskset ss curl; do
    command -v "$cmd" >/dev/null || die "$cmd is missing (see http.sh for the peers)"
done
python3 -c 'import grpc, opentelemetry.proto.collector.trace.v1' 2>/dev/null ||
    die "the OTLP receiver needs python3 grpcio and xds-protos (tests/run.sh installs them)"
[[ -x "$MESHGATE_BIN" ]] || die "no $MESHGATE_BIN: cargo build --release --workspace --bin meshgate"
for port in 9000 8082 8088 8089; do
    port_in_use "$port" && die "127.0.0.1:$port is already in use"
done
rm -rf "$OUT"
mkdir -p "$OUT/backend/tmp"

taskset -c "$LOAD_CPU" nginx -p "$OUT/backend/" -e "$OUT/backend/error.log" \
    -c "$HERE/backend-http.conf" >"$OUT/backend.log" 2>&1 &
BACKEND_PID=$!
PIDS+=("$BACKEND_PID")
wait_port 9000 "$BACKEND_PID" backend

# The collector prints "PORT n" once it listens; it decodes every export and
# logs its spans to /dev/null. meshgate counts a span exported only once
# the collector has answered the export with OK.
coproc COLLECTOR { exec taskset -c "$LOAD_CPU" python3 "$ROOT/tests/peers/tracing_peer.py" otlp /dev/null; }
PIDS+=("$COLLECTOR_PID")
read -r _ OTLP_PORT <&"${COLLECTOR[0]}" || die "the OTLP receiver did not start"

# Each meshgate gets an admin listener on a free port (read back from the
# kernel) to read its tracing counters after the runs; nothing calls it
# during a run.
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
declare -A PID PORT ADMIN
PORT=([off]=8082 [unsampled]=8088 [sampled]=8089)
config() {
    case "$1" in
    off) echo "$HERE/http1.yaml" ;;
    unsampled) echo "$HERE/http1-trace.yaml" ;;
    sampled) echo "$HERE/http1-trace-sampled.yaml" ;;
    esac
}
for name in "${VARIANTS[@]}"; do
    ADMIN[$name]="$(free_port)"
    {
        sed "s/@OTLP@/127.0.0.1:$OTLP_PORT/" "$(config "$name")"
        printf 'admin:\n  address: 127.0.0.1:%s\n' "${ADMIN[$name]}"
    } >"$OUT/$name.yaml"
    taskset -c "$PROXY_CPU" env -u RUST_LOG "$MESHGATE_BIN" run -c "$OUT/$name.yaml" >"$OUT/$name.log" 2>&1 &
    PID[$name]=$!
    PIDS+=("$!")
done
for name in "${VARIANTS[@]}"; do
    wait_port "${PORT[$name]}" "${PID[$name]}" "$name"
    wait_port "${ADMIN[$name]}" "${PID[$name]}" "$name"
    body="$(curl -fsS "http://127.0.0.1:${PORT[$name]}/")" || die "$name does not proxy"
    [[ "$body" == "hello, world" ]] || die "$name answered '$body'"
done
proxy_pid() { echo "${PID[$1]}"; }
# User-mode CPU ticks (utime) of a process: tracing's own work is user
# space, while kernel time (the socket calls) also moves with how many
# requests one wake-up finds, i.e. with the request rate.
user_ticks() { # PID
    local stat
    stat="$(<"/proc/$1/stat")"
    stat="${stat##*) }"
    awk '{ print $12 }' <<<"$stat"
}
counter() { # NAME METRIC: the sum of the series of METRIC on NAME's admin
    curl -fsS "http://127.0.0.1:${ADMIN[$1]}/stats/prometheus" |
        awk -v m="$2" '$1 == m || index($1, m "{") == 1 { s += $NF } END { printf "%d\n", s }'
}

LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
log "load average before: $LOAD_BEFORE; $RUNS rounds of ${DURATION}s x ${#VARIANTS[@]}, ${RATE:-as many as possible} requests/s"
RESULTS="$OUT/results.tsv"
printf 'run\tname\trequests\tcpu_ticks\tcpu_us_per_req\tloadavg1\tforeign_cpu0_pct\tload_cpu1_pct\tquiet\tuser_us_per_req\n' >"$RESULTS"
for ((run = 1; run <= RUNS; run++)); do
    for ((k = 0; k < ${#VARIANTS[@]}; k++)); do
        name="${VARIANTS[$(((run - 1 + k) % ${#VARIANTS[@]}))]}"
        txt="$OUT/$run-$name.txt"
        for ((try = 1; ; try++)); do
            if ((QUIET_WAIT > 0)); then wait_quiet; else sleep 1; fi
            u0="$(user_ticks "${PID[$name]}")"
            if [[ -n "$RATE" ]]; then
                measure "$name" taskset -c "$LOAD_CPU" h2load --h1 -t1 -c"$CONNS" -D "$DURATION" \
                    --rps="$(awk -v r="$RATE" -v c="$CONNS" 'BEGIN { printf "%.3f", r / c }')" \
                    "http://127.0.0.1:${PORT[$name]}/" >"$txt" || die "h2load through $name failed; see $txt"
            else
                measure "$name" taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" \
                    "http://127.0.0.1:${PORT[$name]}/" >"$txt" || die "wrk through $name failed; see $txt"
            fi
            u1="$(user_ticks "${PID[$name]}")"
            accept_run "$name" "$try" && break
        done
        if [[ -n "$RATE" ]]; then
            # "requests: N total, N started, N done, N succeeded, F failed, E errored, T timeout"
            [[ "$(awk '/^requests:/ { print ($10 + $12 + $14 == 0) }' "$txt")" == 1 ]] ||
                die "errors through $name; see $txt"
            reqs="$(awk '/^requests:/ { print $8 }' "$txt")"
            grep -q '^status codes: [0-9]* 2xx, 0 3xx, 0 4xx, 0 5xx' "$txt" || die "non-2xx through $name; see $txt"
        else
            grep -q 'Non-2xx\|Socket errors' "$txt" && die "errors through $name; see $txt"
            reqs="$(awk '/requests in/ {print $1}' "$txt")"
        fi
        us="$(awk -v t="$M_TICKS" -v r="$reqs" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.3f", t * 1e6 / hz / r }')"
        uus="$(awk -v t="$((u1 - u0))" -v r="$reqs" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.3f", t * 1e6 / hz / r }')"
        printf '%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$run" "$name" "$reqs" "$M_TICKS" "$us" \
            "$(cut -d' ' -f1 /proc/loadavg)" "$M_FOREIGN" "$M_LOAD" "$M_QUIET" "$uus" >>"$RESULTS"
        log "  run $run $name: $reqs requests, ${us} us CPU per request, ${uus} in user mode (CPU$LOAD_CPU ${M_LOAD}% busy)"
    done
done
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"

# The sampled variant must have exported what it sampled: two spans a
# request (server, and one client span per try), none dropped; the
# unsampled one none at all. Exports are batched: wait for the last one.
served="$(counter sampled meshgate_tracing_decisions_total)"
for ((i = 0; i < 50; i++)); do
    exported="$(counter sampled meshgate_tracing_spans_exported_total)"
    ((exported >= 2 * served)) && break
    sleep 0.2
done
dropped="$(counter sampled meshgate_tracing_spans_dropped_total)"
leaked="$(counter unsampled meshgate_tracing_spans_exported_total)"
log "sampled: $served streams decided, $exported spans exported (answered OK by the collector), $dropped dropped"
((dropped == 0)) || die "the sampled variant dropped $dropped spans: its figure undercounts the export"
((exported >= 2 * served)) || die "the sampled variant exported $exported spans for $served streams"
((leaked == 0)) || die "the unsampled variant exported $leaked spans"

python3 - "$RESULTS" "$LOAD_BEFORE" "$LOAD_AFTER" "${RATE:-closed loop (wrk)}" <<'PY' | tee "$OUT/summary.txt"
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])][1:]
us, user, reqs, by_run, by_run_user = {}, {}, {}, {}, {}
for run, name, n, _ticks, v, _load, _foreign, _cpu1, _quiet, u in rows:
    us.setdefault(name, []).append(float(v))
    user.setdefault(name, []).append(float(u))
    reqs.setdefault(name, []).append(int(n))
    by_run.setdefault(run, {})[name] = float(v)
    by_run_user.setdefault(run, {})[name] = float(u)
labels = {
    "off": "tracing off",
    "unsampled": "on, not sampled",
    "sampled": "sampled, exported",
}
budget = {"unsampled": 0.5, "sampled": 3.0}
print(f"load: {sys.argv[4]} requests/s; load average (1/5/15 min) before {sys.argv[2]}, after {sys.argv[3]}")
print(f"{'variant':<20} {'us CPU/req (median)':>20} {'min-max':>14} {'user us/req':>12} {'req/run (median)':>17}")
for name in ("off", "unsampled", "sampled"):
    v = us[name]
    print(f"{labels[name]:<20} {statistics.median(v):>20.2f} {min(v):>6.2f}-{max(v):<7.2f} "
          f"{statistics.median(user[name]):>12.2f} {statistics.median(reqs[name]):>17.0f}")
for what, per, rounds in (("CPU", us, by_run), ("user-mode CPU", user, by_run_user)):
    off = statistics.median(per["off"])
    for name in ("unsampled", "sampled"):
        paired = sorted(r[name] - r["off"] for r in rounds.values() if name in r and "off" in r)
        d = statistics.median(per[name]) - off
        verdict = "within" if d <= budget[name] else "OVER"
        print(f"{what}, {labels[name]} vs off: {d:+.2f} us per request (medians; budget {budget[name]} us: {verdict}); "
              f"per round {statistics.median(paired):+.2f} (range {paired[0]:+.2f} to {paired[-1]:+.2f})")
PY
