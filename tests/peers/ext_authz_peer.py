"""Peers for tests/tests/ext_authz.rs. Each binds 127.0.0.1:0, prints
"PORT <n>" and serves until killed.

  ext_authz_peer.py grpc LOG   an envoy.service.auth.v3.Authorization server
                               (grpcio + Envoy's generated protos, PyPI
                               xds-protos); each CheckRequest is appended to
                               LOG as one JSON line
  ext_authz_peer.py http LOG   an HTTP authorization server (http.server);
                               each request appended to LOG as JSON
  ext_authz_peer.py echo       an upstream answering with the request it got
                               (method, path, headers, body) as JSON

What the authorization servers answer depends on the original path:
  .../deny...   denied: 401 (gRPC: DeniedHttpResponse) with a body and
                headers
  .../slow...   allowed after 2 s (past the filter's timeout)
  .../reroute.. allowed, setting x-route: b
  otherwise     allowed: x-authz-user set, x-authz-tag appended,
                x-remove-me removed, x-authz-resp on the response,
                dynamic metadata {"user": "alice"}
"""
import json
import sys
import threading
import time
import urllib.parse
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()


def record(log, entry):
    with LOCK:
        with open(log, "a") as f:
            f.write(json.dumps(entry) + "\n")


def serve_grpc(log):
    import grpc
    from envoy.config.core.v3 import base_pb2
    from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
    from envoy.type.v3 import http_status_pb2
    from google.protobuf import struct_pb2, wrappers_pb2
    from google.rpc import status_pb2

    def hvo(k, v, append=None, action=None):
        o = base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=k, value=v))
        if append is not None:
            o.append.CopyFrom(wrappers_pb2.BoolValue(value=append))
        if action is not None:
            o.append_action = action
        return o

    class Authz(external_auth_pb2_grpc.AuthorizationServicer):
        def Check(self, request, context):
            http = request.attributes.request.http
            record(
                log,
                {
                    "method": http.method,
                    "path": http.path,
                    "host": http.host,
                    "protocol": http.protocol,
                    "headers": dict(http.headers),
                    "body": http.body,
                    "raw_body": http.raw_body.decode("latin-1"),
                    "size": http.size,
                    "context_extensions": dict(request.attributes.context_extensions),
                    "source": request.attributes.source.address.socket_address.address,
                    "principal": request.attributes.source.principal,
                    "certificate": urllib.parse.unquote(request.attributes.source.certificate),
                    "scheme": http.scheme,
                    "sni": request.attributes.tls_session.sni,
                },
            )
            path = http.path
            if "/slow" in path:
                time.sleep(2)
            if "/deny" in path:
                return external_auth_pb2.CheckResponse(
                    status=status_pb2.Status(code=16),
                    denied_response=external_auth_pb2.DeniedHttpResponse(
                        status=http_status_pb2.HttpStatus(code=401),
                        headers=[
                            hvo("www-authenticate", 'Bearer realm="test"'),
                            hvo("x-deny-reason", "no token", append=False),
                        ],
                        body="denied by policy\n",
                    ),
                )
            if "/reroute" in path:
                return external_auth_pb2.CheckResponse(
                    status=status_pb2.Status(code=0),
                    ok_response=external_auth_pb2.OkHttpResponse(
                        headers=[hvo("x-route", "b", append=False)]
                    ),
                )
            md = struct_pb2.Struct()
            md.update({"user": "alice"})
            return external_auth_pb2.CheckResponse(
                status=status_pb2.Status(code=0),
                dynamic_metadata=md,
                ok_response=external_auth_pb2.OkHttpResponse(
                    headers=[
                        hvo("x-authz-user", "alice", append=False),
                        # APPEND_IF_EXISTS_OR_ADD
                        hvo("x-authz-tag", "from-authz", action=0),
                    ],
                    headers_to_remove=["x-remove-me"],
                    response_headers_to_add=[hvo("x-authz-resp", "yes", append=False)],
                ),
            )

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(Authz(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"PORT {port}", flush=True)
    server.wait_for_termination()


def serve_http(log, mode):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def handle_any(self):
            n = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(n) if n else b""
            headers = {}
            for k, v in self.headers.items():
                k = k.lower()
                headers[k] = headers[k] + ", " + v if k in headers else v
            entry = {
                "method": self.command,
                "path": self.path,
                "headers": headers,
                "body": body.decode("latin-1"),
            }
            if mode == "echo":
                self.answer(200, {"content-type": "application/json"}, json.dumps(entry))
                return
            record(log, entry)
            if "/slow" in self.path:
                time.sleep(2)
            if "/deny" in self.path:
                self.answer(
                    403,
                    {"x-reason": "not allowed", "x-secret": "hidden", "content-type": "text/plain"},
                    "http authz says no\n",
                )
                return
            self.answer(200, {"x-authz-user": "bob", "x-other": "dropped"}, "")

        def answer(self, status, headers, body):
            data = body.encode()
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = handle_any

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    kind = sys.argv[1]
    if kind == "grpc":
        serve_grpc(sys.argv[2])
    elif kind == "http":
        serve_http(sys.argv[2], "http")
    else:
        serve_http(None, "echo")
