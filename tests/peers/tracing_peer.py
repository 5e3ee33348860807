"""Peers for tests/tests/tracing.rs. Each binds 127.0.0.1:0, prints
"PORT <n>" and serves until killed.

  tracing_peer.py otlp LOG       an OTLP trace receiver: grpcio serving
                                 opentelemetry.proto.collector.trace.v1.
                                 TraceService/Export, the messages decoded
                                 with the OpenTelemetry protos that the PyPI
                                 xds-protos package ships; each span is
                                 appended to LOG as one JSON line (LOG
                                 /dev/null: answered OK, not decoded)
  tracing_peer.py app LOG NEXT   a traced HTTP app: continues the incoming
                                 traceparent with a span of its own (logged
                                 to LOG), calls http://127.0.0.1:NEXT/<path>
                                 with that span's context and answers with
                                 the callee's status and body
  tracing_peer.py echo LOG       an HTTP upstream that logs the headers it
                                 got; /fail/... answers 503
  tracing_peer.py grpc LOG       a gRPC upstream for any method: logs the
                                 call's metadata, answers the request bytes
"""
import json
import os
import sys
import threading
import urllib.request
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()


def record(log, entry):
    with LOCK:
        with open(log, "a") as f:
            f.write(json.dumps(entry) + "\n")


def any_value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def serve_otlp(log):
    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    def export(req, _ctx):
        for rs in req.resource_spans:
            service = {a.key: any_value(a.value) for a in rs.resource.attributes}.get(
                "service.name"
            )
            # Field 2 of ResourceSpans: `scope_spans` in current OTLP,
            # `instrumentation_library_spans` (same wire layout) in the
            # older protos xds-protos bundles.
            groups = (
                rs.scope_spans
                if hasattr(rs, "scope_spans")
                else rs.instrumentation_library_spans
            )
            for ss in groups:
                scope = ss.scope if hasattr(ss, "scope") else ss.instrumentation_library
                for s in ss.spans:
                    record(
                        log,
                        {
                            "service": service,
                            "scope": scope.name,
                            "trace_id": s.trace_id.hex(),
                            "span_id": s.span_id.hex(),
                            "parent_span_id": s.parent_span_id.hex(),
                            "trace_state": s.trace_state,
                            "name": s.name,
                            "kind": s.kind,
                            "start": s.start_time_unix_nano,
                            "end": s.end_time_unix_nano,
                            "status": s.status.code,
                            "attributes": {
                                a.key: any_value(a.value) for a in s.attributes
                            },
                        },
                    )
        return trace_service_pb2.ExportTraceServiceResponse()

    # Logging to /dev/null (benches/compare's icount.sh and tracing.sh):
    # the request is left undecoded, so the receiver takes little of the CPU
    # it shares with the load generator.
    discard = os.path.realpath(log) == os.devnull
    handler = grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.trace.v1.TraceService",
        {
            "Export": grpc.unary_unary_rpc_method_handler(
                (lambda _req, _ctx: trace_service_pb2.ExportTraceServiceResponse())
                if discard
                else export,
                request_deserializer=None
                if discard
                else trace_service_pb2.ExportTraceServiceRequest.FromString,
                response_serializer=trace_service_pb2.ExportTraceServiceResponse.SerializeToString,
            )
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"PORT {port}", flush=True)
    server.wait_for_termination()


def serve_grpc(log):
    import grpc

    class Any(grpc.GenericRpcHandler):
        def service(self, details):
            method = details.method
            meta = {k: v for k, v in details.invocation_metadata}

            def echo(req, _ctx):
                record(log, {"method": method, "headers": meta})
                return req

            return grpc.unary_unary_rpc_method_handler(
                echo, request_deserializer=None, response_serializer=None
            )

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((Any(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"PORT {port}", flush=True)
    server.wait_for_termination()


def serve_http(log, mode, nxt):
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def answer(self, status, body):
            self.send_response(status)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            headers = {k.lower(): v for k, v in self.headers.items()}
            if mode == "echo":
                record(log, {"path": self.path, "headers": headers})
                status = 503 if self.path.startswith("/fail/") else 200
                self.answer(status, json.dumps(headers).encode())
                return
            # The app: continue the incoming W3C context with a span of
            # its own and call the next hop with it.
            tp = headers.get("traceparent", "")
            parts = tp.split("-")
            span_id = os.urandom(8).hex()
            if len(parts) == 4:
                trace_id, parent, flags = parts[1], parts[2], parts[3]
            else:
                trace_id, parent, flags = os.urandom(16).hex(), "", "01"
            record(
                log,
                {
                    "trace_id": trace_id,
                    "span_id": span_id,
                    "parent_span_id": parent,
                    "flags": flags,
                    "headers": headers,
                },
            )
            req = urllib.request.Request(
                f"http://127.0.0.1:{nxt}{self.path}",
                headers={"traceparent": f"00-{trace_id}-{span_id}-{flags}"},
            )
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    self.answer(r.status, r.read())
            except urllib.error.HTTPError as e:
                self.answer(e.code, e.read())

    server = ThreadingHTTPServer(("127.0.0.1", 0), H)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    kind = sys.argv[1]
    if kind == "otlp":
        serve_otlp(sys.argv[2])
    elif kind == "grpc":
        serve_grpc(sys.argv[2])
    elif kind == "app":
        serve_http(sys.argv[2], "app", int(sys.argv[3]))
    else:
        serve_http(sys.argv[2], "echo", None)
