"""HTTP/2 peer for tests/tests/edge_ops.rs: connection timeouts.

usage: h2_timeouts.py PORT CASE
  header  send a HEADERS frame without END_HEADERS and nothing more; print
          the GOAWAY meshgate answers with and when, then wait for EOF
  idle    one GET, then only PINGs (answered by meshgate); print the
          GOAWAY that ends the idle connection and when
  busy    GETs back to back, one at a time, until meshgate's GOAWAY ends
          the connection; every request meshgate did not refuse by the
          GOAWAY's last stream id must be answered ("OK <n>" or "FAIL ...")
Prints "GOAWAY code=<n> last=<id> after=<seconds>" and "EOF" lines.
"""

import socket
import struct
import sys
import time

import h2.config
import h2.connection
import h2.events
import hpack


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def read_frames(sock, deadline):
    """Yields (kind, flags, stream, payload) until EOF or the deadline."""
    buf = b""
    while time.time() < deadline:
        sock.settimeout(max(0.05, deadline - time.time()))
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        if not data:
            return
        buf += data
        while len(buf) >= 9:
            n = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + n:
                break
            kind, flags = buf[3], buf[4]
            stream = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
            yield kind, flags, stream, buf[9 : 9 + n]
            buf = buf[9 + n :]


def header(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0))
    block = hpack.Encoder().encode(
        [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "a")]
    )
    # END_STREAM, no END_HEADERS: the block never completes. (Nothing
    # else may be sent meanwhile, not even a SETTINGS ACK.)
    start = time.time()
    s.sendall(frame(1, 0x1, 1, block))
    for kind, flags, stream, payload in read_frames(s, start + 30):
        if kind == 7:
            last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            code = int.from_bytes(payload[4:8], "big")
            debug = payload[8:].decode(errors="replace")
            print(f"GOAWAY code={code} last={last} debug={debug} after={time.time() - start:.2f}", flush=True)
    print(f"EOF after={time.time() - start:.2f}", flush=True)


def idle(port):
    s = socket.create_connection(("127.0.0.1", port))
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    c.send_headers(1, [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "a")], end_stream=True)
    s.sendall(c.data_to_send())
    done = False
    while not done:
        data = s.recv(65536)
        if not data:
            print("EOF before the response", flush=True)
            return
        for ev in c.receive_data(data):
            if isinstance(ev, h2.events.StreamEnded):
                done = True
        s.sendall(c.data_to_send())
    ended = time.time()
    print("RESPONSE", flush=True)
    # From here raw frames: PINGs every 200 ms from the client, and the
    # server's PINGs answered; an idle connection that pings is still idle.
    s.settimeout(0.2)
    buf = b""
    next_ping = 0.0
    while time.time() < ended + 30:
        if time.time() >= next_ping:
            try:
                s.sendall(frame(6, 0, 0, b"12345678"))
            except OSError:
                break
            next_ping = time.time() + 0.2
        try:
            data = s.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            break
        if not data:
            break
        buf += data
        while len(buf) >= 9:
            n = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + n:
                break
            kind, flags, payload = buf[3], buf[4], buf[9 : 9 + n]
            buf = buf[9 + n :]
            if kind == 6 and not flags & 1:
                try:
                    s.sendall(frame(6, 1, 0, payload))
                except OSError:
                    pass
            if kind == 7:
                last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
                code = int.from_bytes(payload[4:8], "big")
                print(f"GOAWAY code={code} last={last} after={time.time() - ended:.2f}", flush=True)
    print(f"EOF after={time.time() - ended:.2f}", flush=True)


def busy(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(20)
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0))
    enc = hpack.Encoder()
    buf = b""
    last = None  # the lowest last-stream-id of the GOAWAYs seen
    answered = 0
    stream = 1
    while True:
        if last is None:
            block = enc.encode([(":method", "GET"), (":scheme", "http"), (":path", f"/h2/{stream}"), (":authority", "a")])
            s.sendall(frame(1, 0x5, stream, block))
            pending = stream
        elif pending is None:
            break
        done = False
        while not done:
            try:
                data = s.recv(65536)
            except OSError as e:
                data = b""
            if not data:
                if pending is not None and (last is None or pending <= last):
                    print(f"FAIL stream {pending} unanswered (last={last})", flush=True)
                    return
                pending = None
                break
            buf += data
            while len(buf) >= 9:
                n = int.from_bytes(buf[:3], "big")
                if len(buf) < 9 + n:
                    break
                kind, flags = buf[3], buf[4]
                sid = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
                payload = buf[9 : 9 + n]
                buf = buf[9 + n :]
                if kind == 4 and not flags & 1:
                    s.sendall(frame(4, 1, 0))
                elif kind == 6 and not flags & 1:
                    s.sendall(frame(6, 1, 0, payload))
                elif kind == 7:
                    lid = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
                    last = lid if last is None else min(last, lid)
                    if pending is not None and pending > last:
                        pending = None  # refused: never processed
                        done = True
                elif kind == 3 and sid == pending:
                    print(f"FAIL stream {sid} reset", flush=True)
                    return
                if kind == 0 and n > 0:
                    # Give the connection's flow-control window back, as a
                    # real client does: without it meshgate may send only
                    # 65,535 bytes in all (RFC 9113 section 6.9), and the
                    # answer that crosses that (about the 257th of ~256
                    # bytes) stops half-sent, waiting for this update.
                    s.sendall(frame(8, 0, 0, n.to_bytes(4, "big")))
                if kind in (0, 1) and sid == pending and flags & 1:
                    answered += 1
                    pending = None
                    done = True
        stream += 2
        if last is not None and pending is None:
            # Read on until meshgate closes.
            try:
                while s.recv(65536):
                    pass
            except OSError:
                pass
            break
    print(f"OK {answered}", flush=True)


if __name__ == "__main__":
    {"header": header, "idle": idle, "busy": busy}[sys.argv[2]](int(sys.argv[1]))
