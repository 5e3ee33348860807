"""Hostile HTTP/3 clients on aioquic, for tests/tests/http3.rs.

    h3_abuse.py MODE HOST PORT CA_FILE

MODE:
  qpack    a request whose HEADERS frame carries a malformed QPACK block
  streams  opens more request streams than the server's limit allows
           (aioquic's own accounting of the peer's limit is bypassed)
  token    an Initial carrying a forged address-validation token, then a
           GET; prints `status=NNN` when the request is served

Prints one line: `closed code=0x.. reason=...` with the error code the
server closed the connection with, or `open` if it did not within 5 s.
"""

import asyncio
import sys

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated


class Probe(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.closed = asyncio.get_running_loop().create_future()
        # Set by the first response head: waited for, never polled.
        self.status = asyncio.get_running_loop().create_future()

    def quic_event_received(self, event):
        if isinstance(event, ConnectionTerminated) and not self.closed.done():
            self.closed.set_result(event)
        try:
            for h3_event in self.h3.handle_event(event):
                if isinstance(h3_event, HeadersReceived):
                    for k, v in h3_event.headers:
                        if k == b":status" and not self.status.done():
                            self.status.set_result(v.decode())
        except Exception:
            pass


def varint(v: int) -> bytes:
    if v < 0x40:
        return bytes([v])
    if v < 0x4000:
        return (v | 0x4000).to_bytes(2, "big")
    return (v | 0x80000000).to_bytes(4, "big")


async def main(mode: str, host: str, port: int, ca: str) -> None:
    cfg = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
    cfg.load_verify_locations(ca)
    cfg.server_name = "localhost"
    if mode == "token":
        cfg.token = b"\x02" + bytes(range(40))
    async with connect(host, port, configuration=cfg, create_protocol=Probe) as p:
        quic = p._quic
        if mode == "qpack":
            sid = quic.get_next_available_stream_id()
            # Required Insert Count 5 with an empty dynamic table, then junk:
            # a decoder must fail this block (RFC 9204 4.5.1.1).
            block = bytes([0x06, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F, 0x13])
            frame = varint(0x01) + varint(len(block)) + block
            quic.send_stream_data(sid, frame, end_stream=True)
        elif mode == "streams":
            # Pretend the server allowed 1000 streams, then use 200 of them.
            quic._remote_max_streams_bidi = 1000
            for _ in range(200):
                sid = quic.get_next_available_stream_id()
                p.h3.send_headers(
                    sid,
                    [
                        (b":method", b"GET"),
                        (b":scheme", b"https"),
                        (b":authority", b"localhost"),
                        (b":path", b"/api/flood"),
                    ],
                    end_stream=True,
                )
        elif mode == "token":
            sid = quic.get_next_available_stream_id()
            p.h3.send_headers(
                sid,
                [
                    (b":method", b"GET"),
                    (b":scheme", b"https"),
                    (b":authority", b"localhost"),
                    (b":path", b"/local"),
                ],
                end_stream=True,
            )
            p.transmit()
            try:
                status = await asyncio.wait_for(asyncio.shield(p.status), 5)
                print(f"status={status}", flush=True)
                return
            except asyncio.TimeoutError:
                pass
        else:
            raise SystemExit(f"unknown mode {mode}")
        p.transmit()
        try:
            ev = await asyncio.wait_for(asyncio.shield(p.closed), 5)
            print(f"closed code={ev.error_code:#x} reason={ev.reason_phrase}", flush=True)
        except asyncio.TimeoutError:
            print("open", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]))
