"""gRPC peer for tests/tests/grpc_e2e.rs, on Python grpcio with generic
handlers (raw bytes, no .proto).

  grpc_e2e_peer.py server PORT      serve /echo.Echo/* on 127.0.0.1:PORT
  grpc_e2e_peer.py client TARGET CASE [tls CA_PEM SNI]
                                   run one case; print "OK ..." or exit 1
  grpc_e2e_peer.py hold TARGET     one bidirectional stream pinging, and unary
                                   calls in a loop on a second channel, until
                                   a line on stdin; prints "READY" once both
                                   answered, then "DONE <json counts>"
"""
import sys
import threading
import time
from concurrent import futures

import grpc

SERVICE = "echo.Echo"


def ident(b):
    return b


def unary(req, ctx):
    return req


def server_stream(req, ctx):
    n = int(req.decode() or "0")
    for i in range(n):
        yield f"msg-{i}".encode()


def client_stream(it, ctx):
    total = b""
    count = 0
    for m in it:
        total += m
        count += 1
    return f"{count}:{len(total)}".encode()


def bidi(it, ctx):
    for m in it:
        yield b"pong:" + m


def fail(req, ctx):
    ctx.set_trailing_metadata((("x-error-detail", "bad-input"),))
    ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "the input was bad")


def slow(req, ctx):
    # Time on purpose: longer than the caller's 0.3 s deadline.
    time.sleep(3)
    return req


def remaining(req, ctx):
    # The deadline the server got (grpc-timeout as it arrived), in ms.
    left = ctx.time_remaining()
    return b"none" if left is None else str(int(left * 1000)).encode()


def serve(port):
    handlers = {
        "Remaining": grpc.unary_unary_rpc_method_handler(remaining, ident, ident),
        "Unary": grpc.unary_unary_rpc_method_handler(unary, ident, ident),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream, ident, ident),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream, ident, ident),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi, ident, ident),
        "Fail": grpc.unary_unary_rpc_method_handler(fail, ident, ident),
        "Slow": grpc.unary_unary_rpc_method_handler(slow, ident, ident),
    }
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=32),
        options=[
            ("grpc.max_receive_message_length", 16 << 20),
            ("grpc.max_send_message_length", 16 << 20),
        ],
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    # Port 0: the kernel picks it; the test reads it from this line.
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(f"READY {bound}", flush=True)
    server.wait_for_termination()


def method(ch, kind, name):
    path = f"/{SERVICE}/{name}"
    return getattr(ch, kind)(path, request_serializer=ident, response_deserializer=ident)


def run_case(ch, case):
    if case == "unary":
        r = method(ch, "unary_unary", "Unary")(b"hello", timeout=5)
        assert r == b"hello", r
        return "unary"
    if case == "server_stream":
        got = list(method(ch, "unary_stream", "ServerStream")(b"50", timeout=5))
        assert got == [f"msg-{i}".encode() for i in range(50)], got[:3]
        return f"server_stream {len(got)}"
    if case == "client_stream":
        r = method(ch, "stream_unary", "ClientStream")(iter([b"x" * 1000] * 40), timeout=5)
        assert r == b"40:40000", r
        return "client_stream"
    if case == "bidi":
        # Ping-pong: each request waits for the previous reply.
        replies = []
        ready = threading.Semaphore(1)

        def reqs():
            for i in range(20):
                ready.acquire()
                yield f"ping-{i}".encode()

        for r in method(ch, "stream_stream", "Bidi")(reqs(), timeout=5):
            replies.append(r)
            ready.release()
        assert replies == [f"pong:ping-{i}".encode() for i in range(20)], replies[:3]
        return "bidi 20"
    if case == "error":
        try:
            method(ch, "unary_unary", "Fail")(b"x", timeout=5)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.code()
            assert e.details() == "the input was bad", e.details()
            md = dict(e.trailing_metadata() or ())
            assert md.get("x-error-detail") == "bad-input", md
            return "error INVALID_ARGUMENT"
        raise AssertionError("no error")
    if case == "deadline":
        t = time.monotonic()
        try:
            method(ch, "unary_unary", "Slow")(b"x", timeout=0.3)
        except grpc.RpcError as e:
            took = time.monotonic() - t
            assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e.code()
            assert took < 2.0, took
            return f"deadline {took:.2f}s"
        raise AssertionError("no deadline")
    if case == "capped":
        # A 5 s deadline the proxy's grpc_timeout_header_max caps: the
        # upstream sees the capped grpc-timeout, and the slow call ends with
        # the proxy's DEADLINE_EXCEEDED long before the client's deadline.
        left = int(method(ch, "unary_unary", "Remaining")(b"x", timeout=5))
        t = time.monotonic()
        try:
            method(ch, "unary_unary", "Slow")(b"x", timeout=5)
        except grpc.RpcError as e:
            took = time.monotonic() - t
            assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e.code()
            assert "downstream duration timeout" in (e.details() or ""), e.details()
            return f"capped upstream-deadline={left}ms took={took:.2f}s"
        raise AssertionError("no deadline")
    if case == "large":
        big = bytes(range(256)) * (4 * 4096)  # 4 MiB
        r = method(ch, "unary_unary", "Unary")(big, timeout=10)
        assert r == big, len(r)
        return f"large {len(r)}"
    if case == "concurrent":
        call = method(ch, "unary_unary", "Unary")
        futs = [call.future(f"c-{i}".encode(), timeout=10) for i in range(200)]
        for i, f in enumerate(futs):
            assert f.result() == f"c-{i}".encode()
        return "concurrent 200"
    if case in ("unavailable", "unimplemented"):
        want = grpc.StatusCode.UNAVAILABLE if case == "unavailable" else grpc.StatusCode.UNIMPLEMENTED
        try:
            method(ch, "unary_unary", "Unary")(b"x", timeout=5)
        except grpc.RpcError as e:
            assert e.code() == want, e.code()
            return f"{case} {e.code().name}"
        raise AssertionError("no error")
    raise SystemExit(f"unknown case {case}")


def hold(target):
    """A client that lives through hot upgrades: one bidirectional stream
    (ping i -> pong:ping i, in order) and unary calls in a loop on a second
    channel, until the test writes a line on stdin."""
    import json
    import queue

    stop = threading.Event()
    counts = {"bidi": 0, "unary": 0, "failed": [], "reconnects": 0}
    ready = {"bidi": threading.Event(), "unary": threading.Event()}

    def bidi_loop():
        ch = grpc.insecure_channel(target)
        call = method(ch, "stream_stream", "Bidi")
        sent = queue.Queue()

        def reqs():
            i = 0
            while not stop.is_set():
                m = f"ping {i}".encode()
                sent.put(m)
                yield m
                i += 1
                stop.wait(0.02)

        try:
            for got in call(reqs()):
                want = b"pong:" + sent.get()
                if got != want:
                    counts["failed"].append(f"bidi: {got!r} != {want!r}")
                    return
                counts["bidi"] += 1
                ready["bidi"].set()
        except grpc.RpcError as e:
            counts["failed"].append(f"bidi: {e.code().name} {e.details()}")
        ch.close()

    def unary_loop():
        ch = grpc.insecure_channel(target)
        call = method(ch, "unary_unary", "Unary")
        i = 0
        while not stop.is_set():
            m = f"call {i}".encode()
            try:
                got = call(m, timeout=10)
                if got != m:
                    counts["failed"].append(f"unary: {got!r} != {m!r}")
                counts["unary"] += 1
                ready["unary"].set()
            except grpc.RpcError as e:
                counts["failed"].append(f"unary {i}: {e.code().name} {e.details()}")
            i += 1
        ch.close()

    threads = [threading.Thread(target=bidi_loop), threading.Thread(target=unary_loop)]
    for t in threads:
        t.start()
    for e in ready.values():
        e.wait(30)
    print("READY", flush=True)
    sys.stdin.readline()
    stop.set()
    for t in threads:
        t.join(30)
    print("DONE", json.dumps(counts), flush=True)


def main():
    if sys.argv[1] == "server":
        serve(int(sys.argv[2]))
        return
    if sys.argv[1] == "hold":
        hold(sys.argv[2])
        return
    target, case = sys.argv[2], sys.argv[3]
    opts = [
        ("grpc.max_receive_message_length", 16 << 20),
        ("grpc.max_send_message_length", 16 << 20),
        ("grpc.enable_retries", 0),
    ]
    if len(sys.argv) > 4 and sys.argv[4] == "tls":
        creds = grpc.ssl_channel_credentials(open(sys.argv[5], "rb").read())
        opts.append(("grpc.ssl_target_name_override", sys.argv[6]))
        ch = grpc.secure_channel(target, creds, options=opts)
    else:
        ch = grpc.insecure_channel(target, options=opts)
    try:
        print("OK", run_case(ch, case), flush=True)
    except AssertionError as e:
        print("FAIL", case, e, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
