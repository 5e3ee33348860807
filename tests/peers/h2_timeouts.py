"""HTTP/2 peer for tests/tests/edge_ops.rs: connection timeouts.

usage: h2_timeouts.py PORT CASE
  header  send a HEADERS frame without END_HEADERS and nothing more; print
          the GOAWAY meshgate answers with and when, then wait for EOF
  idle    one GET, then only PINGs (answered by meshgate); print the
          GOAWAY that ends the idle connection and when
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


if __name__ == "__main__":
    {"header": header, "idle": idle}[sys.argv[2]](int(sys.argv[1]))
