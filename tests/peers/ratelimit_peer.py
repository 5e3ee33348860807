"""A rate limit service for tests/tests/ratelimit_global.rs: an
envoy.service.ratelimit.v3.RateLimitService (grpcio + Envoy's generated
protos, PyPI xds-protos) binding 127.0.0.1:0, printing "PORT <n>" and
serving until killed.

  ratelimit_peer.py LIMIT LOG

Each ShouldRateLimit request is appended to LOG as one JSON line
({"domain", "descriptors": [[[key, value], ...], ...]}). Every descriptor
(domain + its entries) has its own counter; a request is OVER_LIMIT when
one of its descriptors has been seen more than LIMIT times. Statuses carry
the limit (LIMIT per minute) and what is left; an allowed request gets
the request header `x-rls-seen: <count>` and the response header
`x-rls: ok`, a refused one the response header `x-rls: over`.
"""
import json
import sys
import threading
from concurrent import futures

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.protobuf import duration_pb2

LIMIT = int(sys.argv[1])
LOG = sys.argv[2]
LOCK = threading.Lock()
COUNTS = {}


class Rls(rls_pb2_grpc.RateLimitServiceServicer):
    def ShouldRateLimit(self, request, context):
        descs = [[[e.key, e.value] for e in d.entries] for d in request.descriptors]
        statuses = []
        over = False
        top = 0
        with LOCK:
            with open(LOG, "a") as f:
                f.write(json.dumps({"domain": request.domain, "descriptors": descs}) + "\n")
            for d in descs:
                key = (request.domain, tuple(tuple(e) for e in d))
                n = COUNTS.get(key, 0) + 1
                COUNTS[key] = n
                top = max(top, n)
                code = rls_pb2.RateLimitResponse.OK
                if n > LIMIT:
                    code = rls_pb2.RateLimitResponse.OVER_LIMIT
                    over = True
                statuses.append(
                    rls_pb2.RateLimitResponse.DescriptorStatus(
                        code=code,
                        current_limit=rls_pb2.RateLimitResponse.RateLimit(
                            requests_per_unit=LIMIT,
                            unit=rls_pb2.RateLimitResponse.RateLimit.MINUTE,
                        ),
                        limit_remaining=max(LIMIT - n, 0),
                        duration_until_reset=duration_pb2.Duration(seconds=30),
                    )
                )
        resp = rls_pb2.RateLimitResponse(
            overall_code=rls_pb2.RateLimitResponse.OVER_LIMIT
            if over
            else rls_pb2.RateLimitResponse.OK,
            statuses=statuses,
        )
        resp.response_headers_to_add.append(
            base_pb2.HeaderValue(key="x-rls", value="over" if over else "ok")
        )
        if not over:
            resp.request_headers_to_add.append(
                base_pb2.HeaderValue(key="x-rls-seen", value=str(top))
            )
        return resp


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(Rls(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"PORT {port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
