"""An HTTP/3 upstream that resets request streams (tests/tests/http_limits.rs).

    h3_reset_server.py CERT KEY

Listens on 127.0.0.1, port 0, prints `PORT n`. Each request stream is
answered by its path: `/reject` resets it with H3_REQUEST_REJECTED
(0x10b, a refusal before processing), `/reset` with H3_INTERNAL_ERROR
(0x102), anything else gets `200 ok`. The connection stays open.
"""

import asyncio
import sys

from aioquic.asyncio import serve
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import HeadersReceived
from aioquic.quic.configuration import QuicConfiguration


class Server(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)

    def quic_event_received(self, event):
        for e in self.h3.handle_event(event):
            if not isinstance(e, HeadersReceived):
                continue
            path = dict(e.headers).get(b":path", b"")
            sid = e.stream_id
            if path == b"/reject":
                self._quic.reset_stream(sid, 0x10B)
                self._quic.stop_stream(sid, 0x10B)
            elif path == b"/reset":
                self._quic.reset_stream(sid, 0x102)
                self._quic.stop_stream(sid, 0x102)
            else:
                self.h3.send_headers(sid, [(b":status", b"200"), (b"content-length", b"3")])
                self.h3.send_data(sid, b"ok\n", end_stream=True)
            self.transmit()


async def main(cert, key):
    cfg = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN)
    cfg.load_cert_chain(cert, key)
    server = await serve("127.0.0.1", 0, configuration=cfg, create_protocol=Server)
    print("PORT", server._transport.get_extra_info("sockname")[1], flush=True)
    await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
