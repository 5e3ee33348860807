"""gRPC server for tests/tests/grpc_web.rs: Python grpcio with generic
handlers and hand-coded protobuf messages (no generated stubs):

  EchoRequest {string message = 1; int32 count = 2;}
  EchoReply   {string message = 1;}

  grpc_web_peer.py PORT    serve /echo.Echo/* on 127.0.0.1:PORT (0: any),
                           print "READY <port>"

Methods: Unary (echo, with the content type the server saw, and a custom
trailer), ServerStream (`count` replies), Fail (INVALID_ARGUMENT before any
message: a trailers-only response), StreamFail (two replies, then
RESOURCE_EXHAUSTED in the trailers).
"""
import sys
from concurrent import futures

import grpc

SERVICE = "echo.Echo"


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def read_varint(b, i):
    shift = n = 0
    while True:
        c = b[i]
        i += 1
        n |= (c & 0x7F) << shift
        shift += 7
        if not c & 0x80:
            return n, i


def decode_request(b):
    msg, count, i = "", 0, 0
    while i < len(b):
        key, i = read_varint(b, i)
        field, wire = key >> 3, key & 7
        if wire == 2:
            n, i = read_varint(b, i)
            if field == 1:
                msg = b[i : i + n].decode()
            i += n
        elif wire == 0:
            v, i = read_varint(b, i)
            if field == 2:
                count = v
        else:
            raise ValueError("unexpected wire type")
    return msg, count


def reply(text):
    data = text.encode()
    return b"\x0a" + varint(len(data)) + data


def ident(b):
    return b


def unary(req, ctx):
    msg, _ = decode_request(req)
    ctx.set_trailing_metadata((("x-trailer", "yes"),))
    return reply(f"echo: {msg}")


def server_stream(req, ctx):
    msg, count = decode_request(req)
    for i in range(count):
        yield reply(f"{msg}-{i}")


def fail(req, ctx):
    ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "the input was bad")


def stream_fail(req, ctx):
    yield reply("one")
    yield reply("two")
    ctx.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "no more")


def main():
    port = int(sys.argv[1])
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, ident, ident),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream, ident, ident),
        "Fail": grpc.unary_unary_rpc_method_handler(fail, ident, ident),
        "StreamFail": grpc.unary_stream_rpc_method_handler(stream_fail, ident, ident),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(f"READY {bound}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
