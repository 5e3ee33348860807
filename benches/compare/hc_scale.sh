#!/usr/bin/env bash
# Cost of active health checking at scale: one cluster of N endpoints
# (default 1000), each its own port of one Python asyncio process that
# answers HTTP/1.1 keep-alive health checks, checked every second by
# meshgate. Waits until every endpoint is healthy (admin gauge
# meshgate_cluster_membership_healthy), then measures meshgate's CPU
# (utime + stime from /proc/PID/stat) over SECONDS (default 30) and prints
# it as a percent of one core, with the checks/s and connections the
# backend saw (with reuse_connection, the default, about N connections in
# all).
#
#   benches/compare/hc_scale.sh [BINARY] [N] [SECONDS] [http|tcp] [reuse: true|false]
#
# Issue 18's budget: under 2 % of one core for 1,000 endpoints on a
# release build (the lead records it in benches/RESULTS.md).
set -euo pipefail

BIN=${1:-target/release/meshgate}
N=${2:-1000}
SECONDS_RUN=${3:-30}
KIND=${4:-http}
REUSE=${5:-true}
DIR=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$DIR"
}
trap cleanup EXIT

[[ -x $BIN ]] || { echo "no binary at $BIN" >&2; exit 1; }
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# The endpoints: N listening ports in one asyncio process; it writes the
# ports to ports.txt, and its counts (checks, connections) to counts.txt
# on SIGUSR1.
cat >"$DIR/backend.py" <<'PY'
import asyncio, signal, socket, sys
n, out = int(sys.argv[1]), sys.argv[2]
checks = conns = 0
async def handle(reader, writer):
    global checks, conns
    conns += 1
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            if line.startswith(b"ping"):
                checks += 1
                writer.write(b"pong\n")
                await writer.drain()
                continue
            while (await reader.readline()) not in (b"\r\n", b""):
                pass
            checks += 1
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            await writer.drain()
    except Exception:
        pass
    writer.close()
def dump():
    with open(out + "/counts.txt", "w") as f:
        f.write(f"{checks} {conns}\n")
async def main():
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda l, c: None)
    loop.add_signal_handler(signal.SIGUSR1, dump)
    ports = []
    servers = []
    for _ in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        ports.append(s.getsockname()[1])
        servers.append(await asyncio.start_server(handle, sock=s, backlog=64))
    with open(out + "/ports.txt", "w") as f:
        f.write("\n".join(map(str, ports)) + "\n")
    await asyncio.Event().wait()
asyncio.run(main())
PY
python3 "$DIR/backend.py" "$N" "$DIR" &
BACKEND=$!
PIDS+=("$BACKEND")
for _ in $(seq 600); do [[ -s $DIR/ports.txt ]] && break; sleep 0.1; done
[[ -s $DIR/ports.txt ]] || { echo "backend did not start" >&2; exit 1; }

ADMIN_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
if [[ $KIND == tcp ]]; then
    # "ping\n" / "pong\n" in hex.
    CHECKER='tcp_health_check: {send: {text: "70696e670a"}, receive: [{text: "706f6e670a"}]}'
else
    CHECKER='http_health_check: {path: /healthz}'
fi
{
    echo "admin: {address: \"127.0.0.1:$ADMIN_PORT\"}"
    echo "listeners: []"
    echo "clusters:"
    echo "  - name: many"
    echo "    health_checks:"
    echo "      - {timeout: 1s, interval: 1s, initial_jitter: 1s, unhealthy_threshold: 2, healthy_threshold: 1, reuse_connection: $REUSE, $CHECKER}"
    echo "    endpoints:"
    while read -r p; do echo "      - {address: \"127.0.0.1:$p\"}"; done <"$DIR/ports.txt"
} >"$DIR/hc.yaml"

"$BIN" run -c "$DIR/hc.yaml" --log-level warn >"$DIR/meshgate.log" 2>&1 &
MG=$!
PIDS+=("$MG")

healthy() {
    curl -s "http://127.0.0.1:$ADMIN_PORT/stats/prometheus" |
        awk '/^meshgate_cluster_membership_healthy\{/ && /cluster="many"/ {print $NF}' | head -1
}
start=$(date +%s.%N)
for _ in $(seq 600); do
    h=$(healthy || true)
    [[ ${h%.*} == "$N" ]] && break
    sleep 0.1
done
[[ ${h%.*} == "$N" ]] || { echo "only ${h:-0} of $N endpoints healthy; see $DIR/meshgate.log" >&2; exit 1; }
echo "all $N endpoints healthy after $(echo "$(date +%s.%N) - $start" | bc) s"

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)
kill -USR1 "$BACKEND"; sleep 0.2
read -r checks0 conns0 <"$DIR/counts.txt"
c0=$(cpu "$MG"); t0=$(date +%s.%N)
sleep "$SECONDS_RUN"
c1=$(cpu "$MG"); t1=$(date +%s.%N)
kill -USR1 "$BACKEND"; sleep 0.2
read -r checks1 conns1 <"$DIR/counts.txt"
python3 - "$c0" "$c1" "$t0" "$t1" "$TICK" "$checks0" "$checks1" "$conns0" "$conns1" "$N" "$KIND" "$REUSE" "$BIN" <<'PY'
import sys
c0, c1, t0, t1, tick = map(float, sys.argv[1:6])
k0, k1, n0, n1 = map(int, sys.argv[6:10])
n, kind, reuse, binary = sys.argv[10], sys.argv[11], sys.argv[12], sys.argv[13]
dt = t1 - t0
print(f"{binary}: {n} endpoints, {kind} checks every 1s, reuse_connection {reuse}: "
      f"{(k1 - k0) / dt:.0f} checks/s, {(n1 - n0) / dt:.1f} new connections/s, "
      f"meshgate CPU {(c1 - c0) / tick / dt * 100:.2f}% of one core")
PY
