"""HTTP/3 clients on aioquic for tests/tests/edge_followups.rs.

    h3_followups.py MODE PORT CA_FILE [N]

MODE:
  idle     connects and sends no request; prints `goaway=yes|no closed
           code=0x..` when the server closed the connection, or `open` if it
           did not within 10 s.
  head     opens a request stream with an incomplete HEADERS frame; prints
           `reset code=0x..` (the server reset the stream) or `no reset`
           within 10 s, then `status=NNN` for a complete GET sent afterwards
           on the same connection.
  slow     GETs /slow; prints `status=NNN`, `closed` (the connection
           closed first) or `none` within 10 s.
  body     POSTs N bytes without content-length (N = 0: a GET); prints `status=NNN`,
           `reset code=0x..` or `none` within 10 s.
"""

import asyncio
import sys

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, StreamDataReceived, StreamReset


def read_varint(b: bytes, i: int):
    first = b[i]
    n = 1 << (first >> 6)
    v = first & 0x3F
    for k in range(1, n):
        v = (v << 8) | b[i + k]
    return v, i + n


def frame_types(control: bytes):
    """The frame types on the server's control stream (after its type)."""
    out = []
    try:
        _, i = read_varint(control, 0)
        while i < len(control):
            t, i = read_varint(control, i)
            n, i = read_varint(control, i)
            out.append(t)
            i += n
    except IndexError:
        pass
    return out


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.closed = None
        self.resets = {}
        self.status = {}
        # Server-initiated unidirectional streams (control, QPACK).
        self.uni = {}

    def quic_event_received(self, event):
        if isinstance(event, ConnectionTerminated):
            self.closed = event
        if isinstance(event, StreamReset):
            self.resets[event.stream_id] = event.error_code
        if isinstance(event, StreamDataReceived) and event.stream_id % 4 == 3:
            self.uni[event.stream_id] = self.uni.get(event.stream_id, b"") + event.data
        try:
            for e in self.h3.handle_event(event):
                if isinstance(e, HeadersReceived):
                    for k, v in e.headers:
                        if k == b":status":
                            self.status[e.stream_id] = v.decode()
        except Exception:
            pass

    def goaway(self):
        # The control stream starts with type 0x00; GOAWAY is frame 0x07.
        return any(
            d[:1] == b"\x00" and 0x07 in frame_types(d) for d in self.uni.values()
        )


async def until(cond, seconds=10.0):
    for _ in range(int(seconds * 50)):
        if cond():
            return True
        await asyncio.sleep(0.02)
    return False


def get_headers(method=b"GET"):
    return [
        (b":method", method),
        (b":scheme", b"https"),
        (b":authority", b"localhost"),
        (b":path", b"/p"),
    ]


async def main(mode: str, port: int, ca: str, n: int) -> None:
    cfg = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
    cfg.load_verify_locations(ca)
    cfg.server_name = "localhost"
    # The QUIC idle timeout must not be what closes the connection.
    cfg.idle_timeout = 60.0
    async with connect("127.0.0.1", port, configuration=cfg, create_protocol=Client) as p:
        if mode == "idle":
            if await until(lambda: p.closed is not None):
                g = "yes" if p.goaway() else "no"
                print(f"goaway={g} closed code={p.closed.error_code:#x}", flush=True)
            else:
                print("open", flush=True)
        elif mode == "head":
            sid = p._quic.get_next_available_stream_id()
            # HEADERS (0x01) announcing 32 bytes, only 3 of them sent.
            p._quic.send_stream_data(sid, b"\x01\x20\x00\x00\xd1", end_stream=False)
            p.transmit()
            if await until(lambda: sid in p.resets):
                print(f"reset code={p.resets[sid]:#x}", flush=True)
            else:
                print("no reset", flush=True)
            sid2 = p._quic.get_next_available_stream_id()
            p.h3.send_headers(sid2, get_headers(), end_stream=True)
            p.transmit()
            if await until(lambda: sid2 in p.status):
                print(f"status={p.status[sid2]}", flush=True)
            else:
                print("none", flush=True)
        elif mode == "slow":
            sid = p._quic.get_next_available_stream_id()
            h = [(k, b"/slow" if k == b":path" else v) for k, v in get_headers()]
            p.h3.send_headers(sid, h, end_stream=True)
            p.transmit()
            if await until(lambda: sid in p.status or p.closed is not None):
                print(f"status={p.status[sid]}" if sid in p.status else "closed", flush=True)
            else:
                print("none", flush=True)
        elif mode == "body":
            sid = p._quic.get_next_available_stream_id()
            if n == 0:
                p.h3.send_headers(sid, get_headers(), end_stream=True)
            else:
                p.h3.send_headers(sid, get_headers(b"POST"), end_stream=False)
                p.h3.send_data(sid, b"z" * n, end_stream=True)
            p.transmit()
            if await until(lambda: sid in p.status or sid in p.resets):
                if sid in p.status:
                    print(f"status={p.status[sid]}", flush=True)
                else:
                    print(f"reset code={p.resets[sid]:#x}", flush=True)
            else:
                print("none", flush=True)


if __name__ == "__main__":
    a = sys.argv
    asyncio.run(main(a[1], int(a[2]), a[3], int(a[4]) if len(a) > 4 else 0))
