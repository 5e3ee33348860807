#!/usr/bin/env bash
# What the security filters cost, side by side: the same HTTP/1.1 route of
# http1.yaml (127.0.0.1:8082) and of http1-auth.yaml (127.0.0.1:8086, the
# route behind jwt_authn with a cached RS256 token and rbac on one of its
# claims), two meshgate processes pinned to CPU 0, wrk and the nginx backend
# on CPU 1, runs alternating plain, auth, plain, ... Every request carries
# the same Authorization header (the plain route ignores it). Prints the
# proxy's CPU microseconds per request for each (median of RUNS) and the
# difference: the filters' cost per request.
#
#   MESHGATE_BIN=target/release/meshgate benches/compare/filters.sh
#
# Env: DURATION (s, default 8), RUNS (default 5), CONNS (default 50),
#      QUIET_WAIT (s, default 60), FOREIGN_MAX (%, default 10), TRIES (3).
# Raw outputs: benches/compare/out-filters/ (gitignored).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT="$HERE/out-filters"
TAG=filters
DURATION="${DURATION:-8}"
RUNS="${RUNS:-5}"
CONNS="${CONNS:-50}"
QUIET_WAIT="${QUIET_WAIT:-60}"
FOREIGN_MAX="${FOREIGN_MAX:-10}"
TRIES="${TRIES:-3}"
PROXY_CPU=0
LOAD_CPU=1
MESHGATE_BIN="${MESHGATE_BIN:-$ROOT/target/release/meshgate}"

# shellcheck source=lib.sh
source "$HERE/lib.sh"

for cmd in nginx wrk python3 taskset ss curl; do
    command -v "$cmd" >/dev/null || die "$cmd is missing (see http.sh for the peers)"
done
[[ -x "$MESHGATE_BIN" ]] || die "no $MESHGATE_BIN: cargo build --release -p meshgate"
rm -rf "$OUT"
mkdir -p "$OUT/backend/tmp"

taskset -c "$LOAD_CPU" nginx -p "$OUT/backend/" -e "$OUT/backend/error.log" \
    -c "$HERE/backend-http.conf" >"$OUT/backend.log" 2>&1 &
BACKEND_PID=$!
PIDS+=("$BACKEND_PID")
wait_port 9000 "$BACKEND_PID" backend

taskset -c "$PROXY_CPU" env -u RUST_LOG "$MESHGATE_BIN" run -c "$HERE/http1.yaml" >"$OUT/plain.log" 2>&1 &
PLAIN_PID=$!
PIDS+=("$PLAIN_PID")
taskset -c "$PROXY_CPU" env -u RUST_LOG "$MESHGATE_BIN" run -c "$HERE/http1-auth.yaml" >"$OUT/auth.log" 2>&1 &
AUTH_PID=$!
PIDS+=("$AUTH_PID")
wait_port 8082 "$PLAIN_PID" plain
wait_port 8086 "$AUTH_PID" auth
proxy_pid() {
    case "$1" in
    plain) echo "$PLAIN_PID" ;;
    auth) echo "$AUTH_PID" ;;
    esac
}
port() { [[ "$1" == plain ]] && echo 8082 || echo 8086; }

TOKEN="$(python3 -c "import jwt,time;print(jwt.encode({'iss':'https://idp.meshgate.test','aud':'meshgate-demo','sub':'bench','role':'admin','exp':int(time.time())+86400},open('$ROOT/examples/certs/jwt-demo.key').read(),algorithm='RS256',headers={'kid':'demo'}))")" ||
    die "minting the token needs python3 pyjwt[crypto]"
AUTH="Authorization: Bearer $TOKEN"
for name in plain auth; do
    body="$(curl -fsS -H "$AUTH" "http://127.0.0.1:$(port "$name")/")" || die "$name does not proxy"
    [[ "$body" == "hello, world" ]] || die "$name answered '$body'"
done
code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:8086/")"
[[ "$code" == 401 ]] || die "the auth route answered $code without a token"

RESULTS="$OUT/results.tsv"
printf 'run\tname\trequests\tcpu_ticks\tcpu_us_per_req\n' >"$RESULTS"
for ((run = 1; run <= RUNS; run++)); do
    for name in plain auth; do
        txt="$OUT/$run-$name.txt"
        for ((try = 1; ; try++)); do
            if ((QUIET_WAIT > 0)); then wait_quiet; else sleep 1; fi
            measure "$name" taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" -H "$AUTH" \
                "http://127.0.0.1:$(port "$name")/" >"$txt" || die "wrk through $name failed; see $txt"
            accept_run "$name" "$try" && break
        done
        grep -q 'Non-2xx\|Socket errors' "$txt" && die "errors through $name; see $txt"
        reqs="$(awk '/requests in/ {print $1}' "$txt")"
        us="$(awk -v t="$M_TICKS" -v r="$reqs" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.3f", t * 1e6 / hz / r }')"
        printf '%d\t%s\t%s\t%s\t%s\n' "$run" "$name" "$reqs" "$M_TICKS" "$us" >>"$RESULTS"
        log "  run $run $name: $reqs requests, ${us} us CPU per request"
    done
done
python3 - "$RESULTS" <<'PY' | tee "$OUT/summary.txt"
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])][1:]
by = {}
for run, name, reqs, ticks, us in rows:
    by.setdefault(name, []).append(float(us))
plain, auth = statistics.median(by["plain"]), statistics.median(by["auth"])
print(f"plain route:           {plain:.2f} us CPU per request (median of {len(by['plain'])})")
print(f"jwt_authn + rbac route: {auth:.2f} us CPU per request (median of {len(by['auth'])})")
print(f"filters' cost:          {auth - plain:+.2f} us per request ({(auth / plain - 1) * 100:+.1f} %)")
PY
