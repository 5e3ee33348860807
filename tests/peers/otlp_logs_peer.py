"""An OTLP logs receiver for tests/tests/obslogs.rs: grpcio serving
opentelemetry.proto.collector.logs.v1.LogsService/Export, the messages
decoded with the OpenTelemetry protos (PyPI opentelemetry-proto, or the
copy xds-protos bundles). Binds 127.0.0.1:0, prints "PORT <n>", and
appends each log record to LOG as one JSON line (its resource
attributes, scope, time, body and attributes) until killed.

  otlp_logs_peer.py LOG
"""
import json
import sys
import threading
from concurrent import futures

LOCK = threading.Lock()


def any_value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def main(log):
    import grpc
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2

    def export(req, _ctx):
        lines = []
        for rl in req.resource_logs:
            resource = {a.key: any_value(a.value) for a in rl.resource.attributes}
            # Field 2 of ResourceLogs: `scope_logs` in current OTLP,
            # `instrumentation_library_logs` (same wire layout) in older
            # protos.
            groups = (
                rl.scope_logs
                if hasattr(rl, "scope_logs")
                else rl.instrumentation_library_logs
            )
            for sl in groups:
                scope = sl.scope if hasattr(sl, "scope") else sl.instrumentation_library
                # `log_records` (current OTLP) or `logs` (older protos),
                # field 2 either way.
                records = sl.log_records if hasattr(sl, "log_records") else sl.logs
                for r in records:
                    lines.append(
                        {
                            "resource": resource,
                            "scope": scope.name,
                            "time": r.time_unix_nano,
                            "body": any_value(r.body),
                            "attributes": {
                                a.key: any_value(a.value) for a in r.attributes
                            },
                            "batch": len(records),
                        }
                    )
        with LOCK:
            with open(log, "a") as f:
                for line in lines:
                    f.write(json.dumps(line) + "\n")
        return logs_service_pb2.ExportLogsServiceResponse()

    handler = grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.logs.v1.LogsService",
        {
            "Export": grpc.unary_unary_rpc_method_handler(
                export,
                request_deserializer=logs_service_pb2.ExportLogsServiceRequest.FromString,
                response_serializer=logs_service_pb2.ExportLogsServiceResponse.SerializeToString,
            )
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"PORT {port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main(sys.argv[1])
