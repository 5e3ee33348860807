"""One HTTP/3 GET (aioquic) with a chosen :authority and an optional host
field, for tests/tests/edge_http.rs.

    edge_h3.py PORT CA_FILE AUTHORITY [HOST]

Prints `status=NNN`, `reset code=0x...` (the stream was reset), or `none` when no response head came within 5 s.
"""

import asyncio
import sys

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import StreamReset


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        # The first outcome (a response head or a reset): waited for.
        self.status = asyncio.get_running_loop().create_future()

    def outcome(self, text):
        if not self.status.done():
            self.status.set_result(text)

    def quic_event_received(self, event):
        if isinstance(event, StreamReset):
            self.outcome(f"reset code={event.error_code:#x}")
        for e in self.h3.handle_event(event):
            if isinstance(e, HeadersReceived):
                for k, v in e.headers:
                    if k == b":status":
                        self.outcome(f"status={v.decode()}")


async def main(port: int, ca: str, authority: str, host) -> None:
    cfg = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
    cfg.load_verify_locations(ca)
    cfg.server_name = "localhost"
    async with connect("127.0.0.1", port, configuration=cfg, create_protocol=Client) as p:
        headers = [
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":authority", authority.encode()),
            (b":path", b"/p"),
        ]
        if host is not None:
            headers.append((b"host", host.encode()))
        p.h3.send_headers(p._quic.get_next_available_stream_id(), headers, end_stream=True)
        p.transmit()
        try:
            print(await asyncio.wait_for(asyncio.shield(p.status), 5), flush=True)
        except asyncio.TimeoutError:
            print("none", flush=True)


if __name__ == "__main__":
    a = sys.argv
    asyncio.run(main(int(a[1]), a[2], a[3], a[4] if len(a) > 4 else None))
