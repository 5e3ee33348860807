"""Peers of tests/tests/retries.rs.

retry_peer.py grpc-server        grpcio server; prints READY <port>.
    /test.Retry/Unary fails the first call of each request message, then
    echoes: with the status the message names (a grpc.StatusCode name,
    e.g. INTERNAL), else UNAVAILABLE.
retry_peer.py grpc-call <port> [message]   one call of Unary through
    <port> (message "hi" by default); prints OK <reply> or ERR <status>.
retry_peer.py h2-refuse          HTTP/2 (h2c) server; prints READY <port>.
    A stream whose path contains "refuse-once" is refused (RST_STREAM
    REFUSED_STREAM) the first time that path is seen; every other stream
    gets 200 "ok <path>". Prints "REFUSED <path>" / "SERVED <path>".
"""
import socket
import sys
import threading
from concurrent import futures


def grpc_server():
    import grpc

    calls = {}
    lock = threading.Lock()

    def unary(req, ctx):
        with lock:
            calls[req] = calls.get(req, 0) + 1
            n = calls[req]
        if n == 1:
            code = getattr(grpc.StatusCode, req.decode(errors="replace"), None)
            if not isinstance(code, grpc.StatusCode) or code == grpc.StatusCode.OK:
                code = grpc.StatusCode.UNAVAILABLE
            ctx.abort(code, "first call fails")
        return b"echo:" + req

    handler = grpc.method_handlers_generic_handler(
        "test.Retry", {"Unary": grpc.unary_unary_rpc_method_handler(unary)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"READY {port}", flush=True)
    server.wait_for_termination()


def grpc_call(port, message="hi"):
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        try:
            reply = ch.unary_unary("/test.Retry/Unary")(message.encode(), timeout=10)
            print(f"OK {reply.decode()}", flush=True)
        except grpc.RpcError as e:
            print(f"ERR {e.code().name}", flush=True)


def h2_refuse():
    import h2.config
    import h2.connection
    import h2.errors
    import h2.events

    seen = set()
    lock = threading.Lock()

    def handle(sock):
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        paths = {}
        refused = set()
        while True:
            try:
                data = sock.recv(65535)
            except OSError:
                return
            if not data:
                return
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.RequestReceived):
                    path = dict(ev.headers).get(b":path", b"").decode()
                    paths[ev.stream_id] = path
                    with lock:
                        first = path not in seen
                        seen.add(path)
                    if "refuse-once" in path and first:
                        refused.add(ev.stream_id)
                        conn.reset_stream(ev.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                        print(f"REFUSED {path}", flush=True)
                elif isinstance(ev, h2.events.DataReceived):
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                if isinstance(ev, (h2.events.StreamEnded, h2.events.RequestReceived)):
                    sid = ev.stream_id
                    ended = isinstance(ev, h2.events.StreamEnded) or ev.stream_ended is not None
                    if ended and sid not in refused:
                        body = f"ok {paths[sid]}\n".encode()
                        conn.send_headers(
                            sid, [(":status", "200"), ("content-length", str(len(body)))]
                        )
                        conn.send_data(sid, body, end_stream=True)
                        print(f"SERVED {paths[sid]}", flush=True)
            sock.sendall(conn.data_to_send())

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    print(f"READY {srv.getsockname()[1]}", flush=True)
    while True:
        s, _ = srv.accept()
        threading.Thread(target=handle, args=(s,), daemon=True).start()


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "grpc-server":
        grpc_server()
    elif mode == "grpc-call":
        grpc_call(int(sys.argv[2]), *sys.argv[3:4])
    elif mode == "h2-refuse":
        h2_refuse()
