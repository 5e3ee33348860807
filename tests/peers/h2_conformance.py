"""HTTP/2 conformance and abuse cases against a meshgate h2c listener, with
raw frames (and hpack from hyper-h2's package for valid header blocks).
h2spec cannot be installed here; these cover what it covers for a proxy:
preface, SETTINGS, flow control, stream states, HPACK errors, frame size
limits, plus the abuse cases (rapid reset, floods, HPACK bombs).

  h2_conformance.py PORT CASE     prints "OK CASE detail" or "FAIL CASE why"
"""
import socket
import struct
import sys
import time

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST, SETTINGS, PUSH, PING, GOAWAY, WINDOW, CONT = range(10)
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
ERRORS = {
    0: "NO_ERROR", 1: "PROTOCOL_ERROR", 2: "INTERNAL_ERROR", 3: "FLOW_CONTROL_ERROR",
    4: "SETTINGS_TIMEOUT", 5: "STREAM_CLOSED", 6: "FRAME_SIZE_ERROR", 7: "REFUSED_STREAM",
    8: "CANCEL", 9: "COMPRESSION_ERROR", 10: "CONNECT_ERROR", 11: "ENHANCE_YOUR_CALM",
}


def frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


def settings(**kv):
    ids = {"enable_push": 2, "max_concurrent": 3, "window": 4, "max_frame": 5}
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", ids[k], v) for k, v in kv.items()))


class Conn:
    def __init__(self, port, window=None):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.s.settimeout(3)
        self.buf = b""
        self.enc = hpack.Encoder()
        self.dec = hpack.Decoder()
        self.dec.max_allowed_table_size = 65536
        self.closed = False
        if window is None:
            self.s.sendall(PREFACE + settings())
        else:
            self.s.sendall(PREFACE + settings(window=window))

    def send(self, data):
        try:
            self.s.sendall(data)
        except OSError:
            self.closed = True

    def headers(self, stream, path="/", end_stream=True, method="GET"):
        block = self.enc.encode([(":method", method), (":scheme", "http"), (":authority", "x"), (":path", path)])
        return frame(HEADERS, END_HEADERS | (END_STREAM if end_stream else 0), stream, block)

    def read_frame(self, timeout=3):
        """Next frame as (type, flags, stream, payload); None on EOF/timeout."""
        deadline = time.monotonic() + timeout
        while len(self.buf) < 9 or len(self.buf) < 9 + int.from_bytes(self.buf[:3], "big"):
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.s.settimeout(left)
            try:
                d = self.s.recv(65536)
            except socket.timeout:
                return None
            except OSError:
                # Reset by the peer: closed (what was queued was read).
                self.closed = True
                return None
            if not d:
                self.closed = True
                return None
            self.buf += d
        n = int.from_bytes(self.buf[:3], "big")
        f = (self.buf[3], self.buf[4], int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF, self.buf[9 : 9 + n])
        self.buf = self.buf[9 + n :]
        if f[0] == HEADERS and f[1] & END_HEADERS:
            # Decode every header block in order to keep the HPACK state.
            fields = dict(self.dec.decode(f[3]))
            f = f + (fields,)
        return f

    def wait_for(self, pred, timeout=3):
        """Reads frames (acking SETTINGS) until pred(frame) is true."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            f = self.read_frame(max(left, 0.01))
            if f is None:
                return None
            if f[0] == SETTINGS and not f[1] & ACK:
                self.send(frame(SETTINGS, ACK, 0))
            if pred(f):
                return f

    def goaway(self, timeout=3):
        f = self.wait_for(lambda f: f[0] == GOAWAY, timeout)
        if f is None:
            return None
        return ERRORS.get(struct.unpack(">I", f[3][4:8])[0], "?")

    def eof_after_goaway(self, timeout=3):
        """The error of a GOAWAY, and whether the connection then closed."""
        err = self.goaway(timeout)
        self.wait_for(lambda f: False, timeout)
        return err, self.closed


def expect_goaway(c, want, case):
    err, closed = c.eof_after_goaway()
    if err not in want:
        return f"FAIL {case} GOAWAY {err}, want {want}"
    if not closed:
        return f"FAIL {case} GOAWAY {err} but the connection stayed open"
    return f"OK {case} GOAWAY {err}, closed"


def flood(c, one, count):
    """Sends `one` frame `count` times (in batches) until the peer stops
    reading, closes, or we are done."""
    batch = one * 64
    try:
        c.s.settimeout(5)
        for _ in range(count // 64):
            c.s.sendall(batch)
    except (socket.timeout, OSError):
        pass


def run(port, case):
    if case == "bad_preface":
        s = socket.create_connection(("127.0.0.1", port))
        s.settimeout(5)
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n" + b"\x00" * 64)
        t = time.monotonic()
        try:
            while s.recv(4096):
                pass
        except socket.timeout:
            return "FAIL bad_preface still open after 5s"
        except OSError:
            pass
        return f"OK bad_preface closed in {time.monotonic() - t:.2f}s"
    if case == "settings_enable_push_2":
        c = Conn(port)
        c.send(settings(enable_push=2))
        return expect_goaway(c, ["PROTOCOL_ERROR"], case)
    if case == "settings_window_too_big":
        c = Conn(port)
        c.send(settings(window=2**31))
        # RFC 9113 6.5.2 names FLOW_CONTROL_ERROR; the h2 crate sends
        # PROTOCOL_ERROR. Either way the connection is refused.
        return expect_goaway(c, ["FLOW_CONTROL_ERROR", "PROTOCOL_ERROR"], case)
    if case == "settings_bad_length":
        c = Conn(port)
        c.send(frame(SETTINGS, 0, 0, b"\x00\x01\x00"))
        # RFC 9113 6.5: FRAME_SIZE_ERROR; the h2 crate sends PROTOCOL_ERROR.
        return expect_goaway(c, ["FRAME_SIZE_ERROR", "PROTOCOL_ERROR"], case)
    if case == "frame_too_large":
        c = Conn(port)
        c.send(c.headers(1, end_stream=False) + frame(DATA, 0, 1, b"x" * 20000))
        return expect_goaway(c, ["FRAME_SIZE_ERROR"], case)
    if case == "hpack_garbage":
        c = Conn(port)
        c.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, b"\xff\xff\xff\xff\xff\xff\x7f"))
        # An index far beyond the tables: COMPRESSION_ERROR per RFC 9113
        # 4.3; the h2 crate reports this one as PROTOCOL_ERROR.
        return expect_goaway(c, ["COMPRESSION_ERROR", "PROTOCOL_ERROR"], case)
    if case == "window_update_zero":
        c = Conn(port)
        c.send(frame(WINDOW, 0, 0, struct.pack(">I", 0)))
        return expect_goaway(c, ["PROTOCOL_ERROR"], case)
    if case == "data_on_idle_stream":
        c = Conn(port)
        c.send(frame(DATA, 0, 5, b"hello"))
        return expect_goaway(c, ["PROTOCOL_ERROR", "STREAM_CLOSED"], case)
    if case == "even_stream_id":
        c = Conn(port)
        c.send(c.headers(2))
        return expect_goaway(c, ["PROTOCOL_ERROR"], case)
    if case == "flow_control":
        # The client allows 100 bytes per stream: meshgate sends no more
        # until a WINDOW_UPDATE, then the rest.
        c = Conn(port, window=100)
        c.send(c.headers(1, "/flow"))
        got = 0
        while True:
            f = c.wait_for(lambda f: f[0] == DATA and f[2] == 1, 1.0)
            if f is None:
                break
            got += len(f[3])
        if got != 100:
            return f"FAIL flow_control {got} bytes before a WINDOW_UPDATE, want 100"
        c.send(frame(WINDOW, 0, 1, struct.pack(">I", 100000)))
        rest, ended = 0, False
        while not ended:
            f = c.wait_for(lambda f: f[0] == DATA and f[2] == 1, 3)
            if f is None:
                return f"FAIL flow_control stalled after the WINDOW_UPDATE ({rest} more bytes)"
            rest += len(f[3])
            ended = bool(f[1] & END_STREAM)
        return f"OK flow_control 100 then {rest} bytes"
    if case == "max_concurrent_streams":
        # The listener allows 10 concurrent streams; the 11th open one is
        # refused with RST_STREAM(REFUSED_STREAM).
        c = Conn(port)
        c.wait_for(lambda f: f[0] == SETTINGS and not f[1] & ACK, 3)
        for i in range(11):
            c.send(c.headers(1 + 2 * i, "/hold", end_stream=False, method="POST"))
        f = c.wait_for(lambda f: f[0] == RST, 3)
        if f is None:
            return "FAIL max_concurrent_streams no RST_STREAM"
        err = ERRORS.get(struct.unpack(">I", f[3])[0])
        if err not in ("REFUSED_STREAM", "PROTOCOL_ERROR") or f[2] != 21:
            return f"FAIL max_concurrent_streams RST {err} on stream {f[2]}"
        return f"OK max_concurrent_streams stream 21 {err}"
    if case == "rapid_reset":
        c = Conn(port)
        batch = b"".join(c.headers(1 + 2 * i) + frame(RST, 0, 1 + 2 * i, struct.pack(">I", 8)) for i in range(5000))
        c.send(batch)
        err, closed = c.eof_after_goaway(5)
        if err is None and not closed:
            return "FAIL rapid_reset neither GOAWAY nor close"
        return f"OK rapid_reset GOAWAY {err}, closed {closed}"
    if case == "ping_flood":
        # A client that pings without end and never reads: GOAWAY
        # ENHANCE_YOUR_CALM and a close, not just back-pressure.
        c = Conn(port)
        c.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        flood(c, frame(PING, 0, 0, b"\x00" * 8), 200000)
        return expect_goaway(c, ["ENHANCE_YOUR_CALM"], case)
    if case == "settings_flood":
        c = Conn(port)
        flood(c, settings(max_frame=16384), 100000)
        return expect_goaway(c, ["ENHANCE_YOUR_CALM"], case)
    if case == "priority_flood":
        # One stream open, then PRIORITY frames for it without end.
        c = Conn(port)
        c.send(c.headers(1, "/hold", end_stream=False, method="POST"))
        flood(c, frame(PRIORITY, 0, 1, struct.pack(">IB", 0, 15)), 100000)
        return expect_goaway(c, ["ENHANCE_YOUR_CALM"], case)
    if case == "window_update_flood":
        # Connection-level WINDOW_UPDATEs while meshgate sends no DATA.
        c = Conn(port)
        flood(c, frame(WINDOW, 0, 0, struct.pack(">I", 1)), 100000)
        return expect_goaway(c, ["ENHANCE_YOUR_CALM"], case)
    if case == "empty_data_flood":
        c = Conn(port)
        c.send(c.headers(1, "/hold", end_stream=False, method="POST"))
        flood(c, frame(DATA, 0, 1, b""), 100000)
        return expect_goaway(c, ["ENHANCE_YOUR_CALM"], case)
    if case in ("pings_50_ok", "pings_50_goaway"):
        # 50 PINGs in a burst, then a request: within the default limit
        # every PING is acked and the request answered; under a limit of
        # 10 the connection gets GOAWAY ENHANCE_YOUR_CALM.
        c = Conn(port)
        c.send(frame(PING, 0, 0, b"\x00" * 8) * 50 + c.headers(1, "/"))
        if case == "pings_50_goaway":
            return expect_goaway(c, ["ENHANCE_YOUR_CALM"], case)
        acks, answered = 0, False
        while acks < 50 or not answered:
            f = c.wait_for(lambda f: f[0] in (PING, GOAWAY) or (f[0] == HEADERS and f[2] == 1), 3)
            if f is None or f[0] == GOAWAY:
                return f"FAIL {case} {acks} acks, answered {answered}, then {'GOAWAY' if f else 'nothing'}"
            if f[0] == PING:
                acks += 1
            else:
                answered = True
        return f"OK {case} 50 acks and the response"
    if case == "pings_paid_by_data":
        # A PING with every request (as gRPC clients ping when data
        # arrives): 300 PINGs, over the limit of 100, but each answered
        # by a response; no GOAWAY.
        c = Conn(port)
        for i in range(300):
            c.send(c.headers(1 + 2 * i, "/") + frame(PING, 0, 0, struct.pack(">Q", i)))
            got_ack, got_end = False, False
            while not (got_ack and got_end):
                f = c.wait_for(lambda f: f[0] in (PING, GOAWAY, DATA), 3)
                if f is None or f[0] == GOAWAY:
                    return f"FAIL {case} request {i}: {'GOAWAY' if f else 'no answer'}"
                if f[0] == PING:
                    got_ack = True
                elif f[2] == 1 + 2 * i and f[1] & END_STREAM:
                    got_end = True
        return f"OK {case} 300 requests with a PING each"
    if case == "continuation_flood":
        c = Conn(port)
        c.send(frame(HEADERS, 0, 1, c.enc.encode([(":method", "GET"), (":scheme", "http"), (":path", "/")])))
        chunk = frame(CONT, 0, 1, b"\x40\x01a\x7f" + b"\x00" * 2)
        try:
            c.s.settimeout(5)
            for _ in range(100000):
                c.s.sendall(chunk)
        except (socket.timeout, OSError):
            pass
        f = c.wait_for(lambda f: f[0] in (GOAWAY, RST) or (f[0] == HEADERS and f[2] == 1), 3)
        if f is None and not c.closed:
            return "FAIL continuation_flood no reaction"
        return f"OK continuation_flood {('closed' if f is None else ['DATA','HEADERS','','RST_STREAM','','','','GOAWAY'][f[0]])}"
    if case == "hpack_bomb":
        # One 4 KiB header in the dynamic table, then referenced 1000
        # times: 4 MB decoded from a few KB on the wire. meshgate must
        # refuse the stream (431, RST_STREAM or GOAWAY), not decode it all.
        c = Conn(port)
        first = c.enc.encode([(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "x"), ("x-bomb", "a" * 4000)])
        c.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, first))
        block = c.enc.encode([(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "x")])
        block += bytes([0xBE]) * 1000  # indexed field 62: the newest dynamic entry
        c.send(frame(HEADERS, END_HEADERS | END_STREAM, 3, block))
        f = c.wait_for(lambda f: (f[0] in (RST, HEADERS) and f[2] == 3) or f[0] == GOAWAY, 3)
        if f is None:
            return "OK hpack_bomb closed" if c.closed else "FAIL hpack_bomb no reaction"
        if f[0] == HEADERS:
            status = f[4].get(":status") or f[4].get(b":status")
            status = status.decode() if isinstance(status, bytes) else status
            if status == "431":
                return "OK hpack_bomb 431"
            return f"FAIL hpack_bomb answered {status}"
        return f"OK hpack_bomb {'RST_STREAM' if f[0] == RST else 'GOAWAY'}"
    if case == "normal":
        c = Conn(port)
        c.send(c.headers(1, "/"))
        f = c.wait_for(lambda f: f[0] == HEADERS and f[2] == 1, 3)
        return "OK normal" if f else "FAIL normal no response"
    return f"FAIL unknown case {case}"


if __name__ == "__main__":
    print(run(int(sys.argv[1]), sys.argv[2]), flush=True)
