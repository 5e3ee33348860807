"""An HTTP/3 connection that reports its GOAWAY and its end
(tests/tests/max_connection_duration.rs).

    h3_goaway.py PORT CA_FILE [PATH]

Connects to localhost:PORT and, with PATH, sends `GET PATH` at once;
without, sends nothing. Prints one line per event, each with the seconds
since the handshake ended:

    goaway T ID            a GOAWAY frame on the server's control stream
    response T STATUS BODY the response to PATH, complete (BODY a repr)
    closed T CODE REASON   the QUIC connection closed
    none T                 nothing closed the connection within 20 s
"""

import asyncio
import sys
import time

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, StreamDataReceived

START = time.monotonic()


def say(*words):
    print(f"{words[0]} {time.monotonic() - START:.3f}", *words[1:], flush=True)


def pull_varint(data, at):
    """An RFC 9000 variable-length integer at `at`: (value, next) or None."""
    if at >= len(data):
        return None
    n = 1 << (data[at] >> 6)
    if at + n > len(data):
        return None
    v = data[at] & 0x3F
    for b in data[at + 1 : at + n]:
        v = (v << 8) | b
    return v, at + n


class ControlWatch:
    """Reads the server's control stream (stream id 3) itself: aioquic
    drops GOAWAY frames without an event (1.7 discards them unread)."""

    def __init__(self):
        self.buf = b""
        self.at = None  # after the stream type, once read

    def feed(self, data):
        self.buf += data
        if self.at is None:
            r = pull_varint(self.buf, 0)
            if r is None:
                return
            self.at = r[1]
        while True:
            t = pull_varint(self.buf, self.at)
            if t is None:
                return
            n = pull_varint(self.buf, t[1])
            if n is None or n[1] + n[0] > len(self.buf):
                return
            payload = self.buf[n[1] : n[1] + n[0]]
            self.at = n[1] + n[0]
            if t[0] == 0x07:  # GOAWAY
                say("goaway", pull_varint(payload, 0)[0])


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.control = ControlWatch()
        self.status = None
        self.body = b""
        self.closed = asyncio.Event()

    def quic_event_received(self, event):
        if isinstance(event, ConnectionTerminated):
            say("closed", f"{event.error_code:#x}", repr(event.reason_phrase))
            self.closed.set()
            return
        if isinstance(event, StreamDataReceived) and event.stream_id == 3:
            self.control.feed(event.data)
        for e in self.h3.handle_event(event):
            ended = False
            if isinstance(e, HeadersReceived):
                for k, v in e.headers:
                    if k == b":status":
                        self.status = v.decode()
                ended = e.stream_ended
            elif isinstance(e, DataReceived):
                self.body += e.data
                ended = e.stream_ended
            if ended:
                say("response", self.status, repr(self.body.decode(errors="replace")))


async def main(port, ca, path):
    global START
    cfg = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
    cfg.load_verify_locations(ca)
    cfg.server_name = "localhost"
    cfg.idle_timeout = 60
    async with connect("127.0.0.1", port, configuration=cfg, create_protocol=Client) as c:
        START = time.monotonic()
        if path is not None:
            sid = c._quic.get_next_available_stream_id()
            c.h3.send_headers(
                sid,
                [
                    (b":method", b"GET"),
                    (b":scheme", b"https"),
                    (b":authority", f"localhost:{port}".encode()),
                    (b":path", path.encode()),
                ],
                end_stream=True,
            )
            c.transmit()
        try:
            await asyncio.wait_for(c.closed.wait(), 20)
        except asyncio.TimeoutError:
            say("none")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None))
