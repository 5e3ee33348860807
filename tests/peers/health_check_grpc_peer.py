"""A gRPC server with the standard health service (grpcio-health-checking)
for meshgate's gRPC health check tests. Binds 127.0.0.1:0 and prints
`PORT <n>`. The status of the service named by argv[2] follows the
content of the file argv[1] (SERVING / NOT_SERVING), polled every 50 ms,
so the test switches it by writing that file."""

import sys
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

control, service = sys.argv[1], sys.argv[2]
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
servicer = health.HealthServicer()
health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(f"PORT {port}", flush=True)
last = None
while True:
    try:
        with open(control) as f:
            want = f.read().strip() or "SERVING"
    except OSError:
        want = "SERVING"
    if want != last:
        status = getattr(health_pb2.HealthCheckResponse, want)
        servicer.set(service, status)
        last = want
    time.sleep(0.05)
