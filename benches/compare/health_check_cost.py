#!/usr/bin/env python3
"""Rough cost of active health checking: one cluster of N endpoints
(127.0.x.y:PORT, all served by one asyncio HTTP server listening on
0.0.0.0:PORT) checked every second by HTTP/1.1 (or TCP) checks, and the
CPU meshgate uses meanwhile (utime+stime from /proc), as a share of one
core.

    python3 benches/compare/health_check_cost.py target/debug/meshgate [N] [http|tcp] [seconds]
"""

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time

binary = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
kind = sys.argv[3] if len(sys.argv) > 3 else "http"
seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 10.0


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


checks = 0


async def handle(reader, writer):
    global checks
    if kind == "tcp":
        checks += 1
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            while (await reader.readline()) not in (b"\r\n", b""):
                pass
            checks += 1
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            await writer.drain()
    except Exception:
        pass
    writer.close()


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def main():
    global checks
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: None)
    port = free_port()
    server = await asyncio.start_server(handle, "0.0.0.0", port, backlog=4096)
    eps = ", ".join(
        f'{{address: "127.0.{1 + i // 250}.{1 + i % 250}:{port}"}}' for i in range(n)
    )
    checker = (
        "http_health_check: {path: /healthz}" if kind == "http" else "tcp_health_check: {}"
    )
    cfg = f"""listeners: []
clusters:
  - name: many
    endpoints: [{eps}]
    health_checks:
      - {{timeout: 1s, interval: 1s, unhealthy_threshold: 2, healthy_threshold: 1, {checker}}}
"""
    d = tempfile.mkdtemp()
    path = os.path.join(d, "hc.yaml")
    with open(path, "w") as f:
        f.write(cfg)
    proc = subprocess.Popen(
        [binary, "run", "-c", path, "--log-level", "warn", "--concurrency", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Let the first round and the spreading settle.
    await asyncio.sleep(3)
    checks = 0
    c0, t0 = cpu_seconds(proc.pid), time.monotonic()
    await asyncio.sleep(seconds)
    c1, t1 = cpu_seconds(proc.pid), time.monotonic()
    done = checks
    proc.terminate()
    proc.wait()
    server.close()
    share = (c1 - c0) / (t1 - t0) * 100
    print(
        f"{n} endpoints, {kind} checks every 1s: {done / (t1 - t0):.0f} checks/s, "
        f"meshgate CPU {share:.2f}% of one core"
    )


asyncio.run(main())
