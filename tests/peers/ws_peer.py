"""WebSocket peer for meshgate's end-to-end tests (the `websockets` package).

    ws_peer.py server PORT      echo server on 127.0.0.1:PORT; prints READY
    ws_peer.py client URL N     sends N messages (text and binary), checks
                                each echo, prints "OK <n>" or fails
    ws_peer.py hold URL         opens, checks one echo, prints OPEN, holds
                                the connection until a line (or EOF) on
                                stdin, checks another echo, prints CLOSED;
                                a refused handshake prints
                                "STATUS <code> <x-envoy-overloaded>"
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


async def hold(url):
    try:
        ws = await websockets.connect(url, open_timeout=20)
    except websockets.exceptions.InvalidStatus as e:
        r = e.response
        overloaded = r.headers.get("x-envoy-overloaded", "-")
        print(f"STATUS {r.status_code} {overloaded}", flush=True)
        return
    async with ws:
        await ws.send("hello")
        assert await asyncio.wait_for(ws.recv(), 5) == "hello"
        print("OPEN", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await ws.send("bye")
        assert await asyncio.wait_for(ws.recv(), 5) == "bye"
    print("CLOSED", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        asyncio.run(serve(int(sys.argv[2])))
    elif sys.argv[1] == "hold":
        asyncio.run(hold(sys.argv[2]))
    else:
        asyncio.run(client(sys.argv[2], int(sys.argv[3])))
