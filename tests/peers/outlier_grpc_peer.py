"""gRPC peer for tests/tests/outlier.rs, on Python grpcio with generic
handlers (raw bytes, no .proto).

  outlier_grpc_peer.py server NAME MODE   serve /o.Svc/{Unary,Stream} on
      127.0.0.1:0 and print "READY PORT". MODE ok: answers; MODE fail:
      Unary ends UNAVAILABLE with no message (trailers-only), Stream sends
      one message then ends UNAVAILABLE (grpc-status in trailers).
  outlier_grpc_peer.py client PORT METHOD N
      N sequential calls; prints one JSON line {"NAME-or-CODE": count}
"""
import json
import sys
from concurrent import futures

import grpc


def ident(b):
    return b


def serve(name, mode):
    def unary(req, ctx):
        if mode == "fail":
            ctx.abort(grpc.StatusCode.UNAVAILABLE, "failing")
        return name.encode()

    def stream(req, ctx):
        yield name.encode()
        if mode == "fail":
            ctx.abort(grpc.StatusCode.UNAVAILABLE, "failing")

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, ident, ident),
        "Stream": grpc.unary_stream_rpc_method_handler(stream, ident, ident),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("o.Svc", handlers),))
    bound = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"READY {bound}", flush=True)
    server.wait_for_termination()


def client(port, method, n):
    seen = {}
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        for _ in range(n):
            try:
                if method == "Unary":
                    key = ch.unary_unary("/o.Svc/Unary", ident, ident)(b"x", timeout=5).decode()
                else:
                    key = "".join(m.decode() for m in ch.unary_stream("/o.Svc/Stream", ident, ident)(b"x", timeout=5))
            except grpc.RpcError as e:
                key = e.code().name
            seen[key] = seen.get(key, 0) + 1
    print(json.dumps(seen), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve(sys.argv[2], sys.argv[3])
    else:
        client(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
