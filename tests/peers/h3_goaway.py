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
from aioquic.buffer import Buffer
from aioquic.h3.connection import H3_ALPN, FrameType, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated

START = time.monotonic()


def say(*words):
    print(f"{words[0]} {time.monotonic() - START:.3f}", *words[1:], flush=True)


class Watching(H3Connection):
    """aioquic keeps GOAWAY to itself: this reports it."""

    def _handle_control_frame(self, frame_type, frame_data):
        if frame_type == FrameType.GOAWAY:
            say("goaway", Buffer(data=frame_data).pull_uint_var())
        return super()._handle_control_frame(frame_type, frame_data)


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = Watching(self._quic)
        self.status = None
        self.body = b""
        self.closed = asyncio.Event()

    def quic_event_received(self, event):
        if isinstance(event, ConnectionTerminated):
            say("closed", f"{event.error_code:#x}", repr(event.reason_phrase))
            self.closed.set()
            return
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
