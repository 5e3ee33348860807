"""Collectors for tests/tests/tracing_export.rs. Each binds 127.0.0.1:0,
prints "PORT <n>" and serves until killed.

  trace_export_peer.py otlp-http LOG   an OTLP/HTTP receiver: POST bodies
                                       decoded as ExportTraceServiceRequest
                                       (the OpenTelemetry protos xds-protos
                                       ships); each span is appended to LOG
                                       as one JSON line with the request's
                                       path and headers
  trace_export_peer.py zipkin LOG      a Zipkin v2 receiver: POST bodies
                                       parsed as a JSON array of spans;
                                       each logged with path and headers
"""
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()


def record(log, entry):
    with LOCK:
        with open(log, "a") as f:
            f.write(json.dumps(entry) + "\n")


def any_value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def otlp_spans(body):
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    req = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
    for rs in req.resource_spans:
        service = {a.key: any_value(a.value) for a in rs.resource.attributes}.get(
            "service.name"
        )
        groups = (
            rs.scope_spans
            if hasattr(rs, "scope_spans")
            else rs.instrumentation_library_spans
        )
        for ss in groups:
            for s in ss.spans:
                yield {
                    "service": service,
                    "trace_id": s.trace_id.hex(),
                    "span_id": s.span_id.hex(),
                    "parent_span_id": s.parent_span_id.hex(),
                    "name": s.name,
                    "kind": s.kind,
                    "status": s.status.code,
                    "attributes": {a.key: any_value(a.value) for a in s.attributes},
                }


def serve(mode, log):
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_POST(self):
            n = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(n)
            headers = {k.lower(): v for k, v in self.headers.items()}
            if mode == "otlp-http":
                spans = list(otlp_spans(body))
                status, answer, ctype = 200, b"", "application/x-protobuf"
            else:
                spans = json.loads(body)
                status, answer, ctype = 202, b"", "text/plain"
            for s in spans:
                record(log, {"path": self.path, "headers": headers, "span": s})
            self.send_response(status)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

    server = ThreadingHTTPServer(("127.0.0.1", 0), H)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2])
