"""An HTTP/3 request held open across a hot upgrade (tests/tests/hot_upgrade_quic.rs).

    h3_hold.py PORT CA_FILE

Connects to localhost:PORT, starts `POST /api/post` and sends half of its
body; prints `SENT` and waits for a line on stdin; then sends the other half
and ends the request, on the same QUIC connection. Prints `status=NNN
BODY` once the response is complete, or `closed ...` if the
connection closed first, or `none` after 15 s.
"""

import asyncio
import sys

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated

PART = b"a" * 5000


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.status = None
        self.body = b""
        self.done = asyncio.Event()
        self.closed = None

    def quic_event_received(self, event):
        if isinstance(event, ConnectionTerminated):
            self.closed = event
            self.done.set()
            return
        for e in self.h3.handle_event(event):
            if isinstance(e, HeadersReceived):
                for k, v in e.headers:
                    if k == b":status":
                        self.status = v.decode()
                if e.stream_ended:
                    self.done.set()
            elif isinstance(e, DataReceived):
                self.body += e.data
                if e.stream_ended:
                    self.done.set()


async def main(port, ca):
    cfg = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
    cfg.load_verify_locations(ca)
    cfg.server_name = "localhost"
    cfg.idle_timeout = 60
    async with connect("127.0.0.1", port, configuration=cfg, create_protocol=Client) as c:
        sid = c._quic.get_next_available_stream_id()
        c.h3.send_headers(
            sid,
            [
                (b":method", b"POST"),
                (b":scheme", b"https"),
                (b":authority", f"localhost:{port}".encode()),
                (b":path", b"/api/post"),
            ],
        )
        c.h3.send_data(sid, PART, end_stream=False)
        c.transmit()
        print("SENT", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        c.h3.send_data(sid, PART, end_stream=True)
        c.transmit()
        try:
            await asyncio.wait_for(c.done.wait(), 15)
        except asyncio.TimeoutError:
            print("none", flush=True)
            return
        if c.status is None:
            print(f"closed code={c.closed.error_code:#x} {c.closed.reason_phrase}", flush=True)
            return
        text = c.body.decode(errors="replace")
        print(f"status={c.status} {text!r}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
