"""Istio's own extension configs (istio/proxy's protos, which PyPI
xds-protos lacks), registered in the default descriptor pool so that
envoy_any.py parses resources whose '@type' Anys name them, as istiod
sends them: io.istio.http.peer_metadata.Config, stats.PluginConfig,
envoy.tcp.metadataexchange.config.MetadataExchange. Built here from
descriptors with the field names and numbers of istio/proxy's .proto
files (no protoc at test time)."""
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf import duration_pb2  # noqa: F401 (registers the dependency)

F = descriptor_pb2.FieldDescriptorProto
OPT, REP = F.LABEL_OPTIONAL, F.LABEL_REPEATED


def field(name, number, ftype, label=OPT, type_name=None, oneof=None):
    f = F(name=name, number=number, type=ftype, label=label, json_name=camel(name))
    if type_name:
        f.type_name = type_name
    if oneof is not None:
        f.oneof_index = oneof
    return f


def camel(name):
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def message(name, fields=(), nested=(), oneofs=()):
    m = descriptor_pb2.DescriptorProto(name=name)
    m.field.extend(fields)
    m.nested_type.extend(nested)
    for o in oneofs:
        m.oneof_decl.add(name=o)
    return m


def register(fdp):
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(fdp.name)
    except KeyError:
        pool.Add(fdp)


# source/extensions/filters/http/peer_metadata/config.proto
P = ".io.istio.http.peer_metadata.Config"
peer = descriptor_pb2.FileDescriptorProto(
    name="istio/peer_metadata/config.proto", package="io.istio.http.peer_metadata", syntax="proto3")
peer.message_type.append(message("Config", [
    field("downstream_discovery", 1, F.TYPE_MESSAGE, REP, P + ".DiscoveryMethod"),
    field("upstream_discovery", 2, F.TYPE_MESSAGE, REP, P + ".DiscoveryMethod"),
    field("downstream_propagation", 3, F.TYPE_MESSAGE, REP, P + ".PropagationMethod"),
    field("upstream_propagation", 4, F.TYPE_MESSAGE, REP, P + ".PropagationMethod"),
    field("shared_with_upstream", 5, F.TYPE_BOOL),
    field("additional_labels", 6, F.TYPE_STRING, REP),
], nested=[
    message("Baggage"),
    message("WorkloadDiscovery"),
    message("IstioHeaders", [field("skip_external_clusters", 1, F.TYPE_BOOL)]),
    message("DiscoveryMethod", [
        field("baggage", 1, F.TYPE_MESSAGE, type_name=P + ".Baggage", oneof=0),
        field("workload_discovery", 2, F.TYPE_MESSAGE, type_name=P + ".WorkloadDiscovery", oneof=0),
        field("istio_headers", 3, F.TYPE_MESSAGE, type_name=P + ".IstioHeaders", oneof=0),
    ], oneofs=["method_specifier"]),
    message("PropagationMethod", [
        field("istio_headers", 1, F.TYPE_MESSAGE, type_name=P + ".IstioHeaders", oneof=0),
    ], oneofs=["method_specifier"]),
]))
register(peer)

# source/extensions/filters/http/istio_stats/config.proto
stats = descriptor_pb2.FileDescriptorProto(
    name="istio/stats/config.proto", package="stats", syntax="proto3",
    dependency=["google/protobuf/duration.proto"])
stats.message_type.append(message("MetricConfig", [
    field("dimensions", 1, F.TYPE_MESSAGE, REP, ".stats.MetricConfig.DimensionsEntry"),
    field("name", 2, F.TYPE_STRING),
    field("tags_to_remove", 3, F.TYPE_STRING, REP),
    field("match", 4, F.TYPE_STRING),
    field("drop", 5, F.TYPE_BOOL),
], nested=[message("DimensionsEntry", [
    field("key", 1, F.TYPE_STRING), field("value", 2, F.TYPE_STRING)])]))
stats.message_type[-1].nested_type[0].options.map_entry = True
stats.message_type.append(message("MetricDefinition", [
    field("name", 1, F.TYPE_STRING),
    field("value", 2, F.TYPE_STRING),
    field("type", 3, F.TYPE_ENUM, type_name=".stats.MetricType"),
]))
stats.enum_type.add(name="MetricType").value.extend([
    descriptor_pb2.EnumValueDescriptorProto(name=n, number=i)
    for i, n in enumerate(["COUNTER", "GAUGE", "HISTOGRAM"])])
stats.enum_type.add(name="Reporter").value.extend([
    descriptor_pb2.EnumValueDescriptorProto(name=n, number=i)
    for i, n in enumerate(["UNSPECIFIED", "SERVER_GATEWAY"])])
stats.message_type.append(message("PluginConfig", [
    field("disable_host_header_fallback", 6, F.TYPE_BOOL),
    field("tcp_reporting_duration", 7, F.TYPE_MESSAGE, type_name=".google.protobuf.Duration"),
    field("metrics", 8, F.TYPE_MESSAGE, REP, ".stats.MetricConfig"),
    field("definitions", 9, F.TYPE_MESSAGE, REP, ".stats.MetricDefinition"),
    field("reporter", 10, F.TYPE_ENUM, type_name=".stats.Reporter"),
    field("rescoping_duration", 11, F.TYPE_MESSAGE, type_name=".google.protobuf.Duration"),
    field("scope_grace_period_duration", 12, F.TYPE_MESSAGE, type_name=".google.protobuf.Duration"),
]))
register(stats)

# source/extensions/filters/network/metadata_exchange/config/metadata_exchange.proto
mx = descriptor_pb2.FileDescriptorProto(
    name="istio/metadata_exchange/config.proto",
    package="envoy.tcp.metadataexchange.config", syntax="proto3")
mx.message_type.append(message("MetadataExchange", [
    field("protocol", 1, F.TYPE_STRING),
    field("enable_discovery", 2, F.TYPE_BOOL),
    field("additional_labels", 3, F.TYPE_STRING, REP),
]))
register(mx)
