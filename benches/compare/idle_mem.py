#!/usr/bin/env python3
"""Memory per idle connection, driven by benches/compare/idle_mem.sh.

`backend PORT`: a plain TCP server on 127.0.0.1:PORT that answers every
HTTP/1.1 request head with a 13-byte keep-alive 200 and echoes anything
else (so it serves both the HTTP clusters and the L4 cluster).

`measure KIND PORT PID N`: against meshgate (PID) listening on PORT:
  1. warm-up: CONC connections of KIND each do one exchange, then close;
  2. baseline VmRSS;
  3. N connections each do one exchange (CONC at a time) and stay open;
  4. VmRSS once it is stable -> bytes per idle connection = delta / N;
  5. all N close; VmRSS sampled every second for SETTLE s (no traffic).
KIND: h1 (HTTP/1.1 keep-alive), h2 (h2c, prior knowledge), tls (HTTP/1.1
over TLS 1.3), l4 (a tcp_proxy pair: one line echoed by the backend).
Prints one JSON line with every figure.
"""

import asyncio
import json
import ssl
import sys
import time

import h2.config
import h2.connection
import h2.events

CONC = 64
SETTLE = 10
REQ = b"GET / HTTP/1.1\r\nHost: idle\r\n\r\n"
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n\r\nhello, world\n"


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# ------------------------------------------------------------------ backend
async def serve_backend(port):
    async def handle(r, w):
        buf = b""
        try:
            while True:
                data = await r.read(65536)
                if not data:
                    break
                buf += data
                if buf.startswith((b"GET ", b"POST ", b"HEAD ")):
                    while b"\r\n\r\n" in buf:
                        _, buf = buf.split(b"\r\n\r\n", 1)
                        w.write(RESP)
                else:
                    w.write(buf)
                    buf = b""
                await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            w.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    async with srv:
        await srv.serve_forever()


# ------------------------------------------------------------------ clients
async def read_response(r):
    head = await r.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"unexpected response {head[:40]!r}")
    await r.readexactly(length)


def client_tls():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def open_one(kind, port, tls_ctx):
    """One connection, one exchange; returns what keeps it open."""
    if kind in ("h1", "tls"):
        r, w = await asyncio.open_connection(
            "127.0.0.1", port, ssl=tls_ctx if kind == "tls" else None
        )
        w.write(REQ)
        await read_response(r)
        return (r, w)
    if kind == "l4":
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"ping\n")
        await r.readexactly(5)
        return (r, w)
    # h2c with prior knowledge: one GET on stream 1, then idle.
    r, w = await asyncio.open_connection("127.0.0.1", port)
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    )
    conn.initiate_connection()
    conn.send_headers(
        1,
        [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "idle")],
        end_stream=True,
    )
    w.write(conn.data_to_send())
    done = False
    while not done:
        data = await r.read(65536)
        if not data:
            raise RuntimeError("h2 connection closed")
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.DataReceived):
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            if isinstance(ev, h2.events.StreamEnded) and ev.stream_id == 1:
                done = True
            if isinstance(ev, h2.events.StreamReset):
                raise RuntimeError("h2 stream reset")
        out = conn.data_to_send()
        if out:
            w.write(out)
    return (r, w, conn)


async def open_many(kind, port, n):
    tls_ctx = client_tls() if kind == "tls" else None
    sem = asyncio.Semaphore(CONC)
    held = []

    async def one():
        async with sem:
            held.append(await open_one(kind, port, tls_ctx))

    await asyncio.gather(*(one() for _ in range(n)))
    return held


async def close_all(held):
    for h in held:
        h[1].close()
    for h in held:
        try:
            await h[1].wait_closed()
        except (ConnectionError, OSError, ssl.SSLError):
            pass


async def stable_rss(pid, limit=30):
    """VmRSS once two samples 1 s apart differ by under 0.5 %."""
    prev = rss_kb(pid)
    for _ in range(limit):
        await asyncio.sleep(1)
        cur = rss_kb(pid)
        if abs(cur - prev) <= prev * 0.005:
            return cur
        prev = cur
    return prev


async def measure(kind, port, pid, n):
    await close_all(await open_many(kind, port, CONC))
    base = await stable_rss(pid)
    t0 = time.monotonic()
    held = await open_many(kind, port, n)
    opened_s = time.monotonic() - t0
    peak = await stable_rss(pid)
    await close_all(held)
    held = None
    closed_at = time.monotonic()
    samples = []
    for i in range(1, SETTLE + 1):
        await asyncio.sleep(max(0.0, closed_at + i - time.monotonic()))
        samples.append(rss_kb(pid))
    after = samples[-1]
    per = (peak - base) * 1024 / n
    print(
        json.dumps(
            {
                "kind": kind,
                "n": n,
                "open_s": round(opened_s, 1),
                "baseline_kb": base,
                "idle_kb": peak,
                "bytes_per_conn": round(per),
                "after_close_kb_per_s": samples,
                "after_10s_vs_baseline": round(after / base, 3),
            }
        ),
        flush=True,
    )


def main():
    if sys.argv[1] == "backend":
        asyncio.run(serve_backend(int(sys.argv[2])))
    elif sys.argv[1] == "measure":
        kind, port, pid, n = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
        asyncio.run(measure(kind, port, pid, n))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
