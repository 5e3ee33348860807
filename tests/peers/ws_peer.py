"""WebSocket peer for meshgate's end-to-end tests (the `websockets` package).

    ws_peer.py server PORT      echo server on 127.0.0.1:PORT; prints READY
    ws_peer.py client URL N     sends N messages (text and binary), checks
                                each echo, prints "OK <n>" or fails
"""
import asyncio
import sys

import websockets


async def echo(ws):
    async for msg in ws:
        await ws.send(msg)


async def serve(port):
    # Port 0: the kernel picks it; the test reads it from this line.
    async with websockets.serve(echo, "127.0.0.1", port, max_size=None) as server:
        bound = server.sockets[0].getsockname()[1]
        print(f"READY {bound}", flush=True)
        await asyncio.Future()


async def client(url, n):
    async with websockets.connect(url, max_size=None, open_timeout=5) as ws:
        for i in range(n):
            msg = f"hello {i}" if i % 2 == 0 else bytes([i % 256]) * (1000 * i + 1)
            await ws.send(msg)
            got = await asyncio.wait_for(ws.recv(), 5)
            assert got == msg, f"message {i} differs"
    print(f"OK {n}", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        asyncio.run(serve(int(sys.argv[2])))
    else:
        asyncio.run(client(sys.argv[2], int(sys.argv[3])))
