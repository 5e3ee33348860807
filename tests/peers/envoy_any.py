#!/usr/bin/env python3
"""Envoy resources in Envoy's own JSON/YAML form (as control planes and
`egctl translate` / `istioctl proxy-config` print them) to protobuf `Any`
bytes, with Envoy's generated protos (PyPI xds-protos): the parsing is
Envoy's schema, not meshgate's. Reads a YAML list of resources, each with
its '@type'; prints a JSON list of {name, type_url, value_hex}. Imported,
it gives `pack` (tests/peers/ads_server.py)."""
import importlib
import json
import sys

import yaml
from google.protobuf import any_pb2, json_format, symbol_database

# The message types the resources and their nested '@type' Anys use
# must be registered: the modules of those the tests push.
for mod in (
    "envoy.config.listener.v3.listener_pb2",
    "envoy.config.cluster.v3.cluster_pb2",
    "envoy.config.route.v3.route_pb2",
    "envoy.config.endpoint.v3.endpoint_pb2",
    "envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2",
    "envoy.extensions.filters.network.tcp_proxy.v3.tcp_proxy_pb2",
    "envoy.extensions.filters.http.router.v3.router_pb2",
    "envoy.extensions.transport_sockets.tls.v3.tls_pb2",
    "envoy.extensions.upstreams.http.v3.http_protocol_options_pb2",
    "envoy.extensions.access_loggers.file.v3.file_pb2",
    "envoy.extensions.access_loggers.stream.v3.stream_pb2",
    "envoy.extensions.access_loggers.open_telemetry.v3.logs_service_pb2",
    "envoy.extensions.filters.udp.udp_proxy.v3.udp_proxy_pb2",
    "envoy.extensions.filters.udp.udp_proxy.v3.route_pb2",
    "envoy.extensions.transport_sockets.proxy_protocol.v3.upstream_proxy_protocol_pb2",
    "envoy.extensions.transport_sockets.raw_buffer.v3.raw_buffer_pb2",
    "envoy.extensions.transport_sockets.quic.v3.quic_transport_pb2",
    "envoy.config.trace.v3.opentelemetry_pb2",
    "envoy.config.trace.v3.zipkin_pb2",
    "envoy.extensions.filters.network.dubbo_proxy.v3.dubbo_proxy_pb2",
    "envoy.extensions.filters.network.dubbo_proxy.router.v3.router_pb2",
    "envoy.extensions.filters.network.generic_proxy.v3.generic_proxy_pb2",
    "envoy.extensions.filters.network.generic_proxy.codecs.dubbo.v3.dubbo_pb2",
    "envoy.extensions.filters.network.generic_proxy.matcher.v3.matcher_pb2",
    "envoy.extensions.filters.network.generic_proxy.action.v3.action_pb2",
    "envoy.extensions.filters.network.generic_proxy.router.v3.router_pb2",
    "envoy.extensions.load_balancing_policies.round_robin.v3.round_robin_pb2",
    "envoy.extensions.load_balancing_policies.least_request.v3.least_request_pb2",
    "envoy.extensions.load_balancing_policies.random.v3.random_pb2",
    "envoy.extensions.load_balancing_policies.ring_hash.v3.ring_hash_pb2",
    "envoy.extensions.load_balancing_policies.maglev.v3.maglev_pb2",
    "envoy.extensions.request_id.uuid.v3.uuid_pb2",
    "envoy.extensions.load_balancing_policies.client_side_weighted_round_robin.v3.client_side_weighted_round_robin_pb2",
    "xds.type.v3.typed_struct_pb2",
    "udpa.type.v1.typed_struct_pb2",
):
    importlib.import_module(mod)
# Istio's own extension configs (istiod's filters), not in xds-protos.
import istio_protos  # noqa: E402,F401

db = symbol_database.Default()


def pack(res):
    """One resource dict (with its '@type') to (name, Any), by Envoy's
    protos. ads_server.py serves what this returns."""
    res = dict(res)
    type_url = res.pop("@type")
    cls = db.GetSymbol(type_url.split("/")[-1])
    msg = json_format.ParseDict(res, cls())
    a = any_pb2.Any()
    a.Pack(msg)
    name = getattr(msg, "name", "") or getattr(msg, "cluster_name", "")
    return name, a


if __name__ == "__main__":
    out = []
    for res in yaml.safe_load(open(sys.argv[1])):
        name, a = pack(res)
        out.append({"name": name, "type_url": a.type_url, "value_hex": a.value.hex()})
    print(json.dumps(out))
