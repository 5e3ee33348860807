#!/usr/bin/env python3
"""An xDS management server for the end-to-end tests, built on grpcio and
Envoy's generated protos (PyPI xds-protos), not on the Rust protos meshgate
uses: an encoding mismatch between meshgate and Envoy's real protos shows.

Serves envoy.service.discovery.v3.AggregatedDiscoveryService on
127.0.0.1:0 (or the port given as the one argument: a restarted server
on the port a client knows), both variants:
- StreamAggregatedResources (state of the world): per type URL a version
  and a list of resources; per stream the names each type subscribes (none:
  all); a response is sent when the (version, names) a stream has for a
  type changes; every request is reported with the version and nonce it
  answers and its error_detail (ACK or NACK).
- DeltaAggregatedResources: per stream and type the subscription (wildcard
  when the first request names nothing or '*'), the resources the client
  holds with their versions (a hash of the bytes; initial_resource_versions
  on a first request), only changed resources sent, gone ones named in
  removed_resources; requests reported like the state-of-the-world ones
  (version_info: the system version of the response their nonce answers).

Control: one JSON object per line on stdin, events as JSON lines on stdout.
The first line out is {"ev": "port", "port": N}. Commands (each answered
with {"ev": "ok", "id": ID} or {"ev": "error", "id": ID, "message": ...}):
  {"id": 1, "op": "set", "type": URL, "version": "v1", "yaml": "..."}
      replaces the type's resources: a YAML list in Envoy's JSON/YAML form,
      each with its '@type' (parsed by envoy_any.pack). A resource's type
      need not be the response's (a wrong type URL is a test case); names
      may repeat (so may a duplicate). A dict with '@type' may carry
      '@unknownField': N, a field number appended to its encoding (varint
      1), which Envoy's protos do not define.
  {"id": 2, "op": "remove", "type": URL, "version": "v2", "names": [...]}
Events: {"ev": "request", "api": "sotw"|"delta", "type", "version_info",
"nonce", "error" (message or null), "names", "unsubscribe", "node" (its id,
or null when the request carries no node), delta: "initial" (its
initial_resource_versions)};
{"ev": "sent", "api", "type", "version", "nonce", "resources", "removed"};
{"ev": "stream", "api", "state": "open"|"closed"}. EOF on stdin ends it.
"""
import base64
import hashlib
import json
import sys
import threading
from concurrent import futures

import grpc
import yaml
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import wrappers_pb2

import envoy_any

OUT = threading.Lock()
CV = threading.Condition()
# type URL -> (version, [(name, Any)])
RESOURCES = {}
# nonce -> system version of the response that carried it
NONCES = {}
COUNTER = [0]
# Bumped on every change of RESOURCES.
GEN = [0]
BYTES_URL = "type.googleapis.com/google.protobuf.BytesValue"
MARK = b"ads_server.py raw Any\0"


def emit(**ev):
    with OUT:
        sys.stdout.write(json.dumps(ev) + "\n")
        sys.stdout.flush()


def next_nonce(version):
    # Called with CV held.
    COUNTER[0] += 1
    nonce = "n%d" % COUNTER[0]
    NONCES[nonce] = version
    return nonce


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


def with_unknown(a, number):
    a.value = a.value + varint(number << 3) + varint(1)
    return a


def lower_nested(node, top=True):
    """Nested dicts carrying '@unknownField' are packed here, their bytes
    extended, and left as a marked BytesValue Any that `raise_marked`
    turns back into the real type after the whole resource is parsed
    (json_format has no way to write raw bytes into an Any)."""
    if isinstance(node, list):
        return [lower_nested(x, False) for x in node]
    if not isinstance(node, dict):
        return node
    node = {k: lower_nested(v, False) for k, v in node.items()}
    if not top and "@type" in node and "@unknownField" in node:
        number = node.pop("@unknownField")
        _, a = envoy_any.pack(node)
        with_unknown(a, number)
        raw = MARK + a.type_url.encode() + b"\0" + a.value
        return {"@type": BYTES_URL, "value": base64.b64encode(raw).decode()}
    return node


def repeated(fd):
    # protobuf 6.32+ has `is_repeated` (and dropped `label` in 7).
    if hasattr(fd, "is_repeated"):
        return fd.is_repeated
    return fd.label == fd.LABEL_REPEATED


def raise_marked(msg):
    """Rewrites the marked BytesValue Anys of `lower_nested` in place;
    True when something below changed."""
    changed = False
    for fd, value in msg.ListFields():
        if fd.message_type is None:
            continue
        if fd.message_type.GetOptions().map_entry:
            items = list(value.values()) if fd.message_type.fields_by_name["value"].message_type else []
        elif repeated(fd):
            items = list(value)
        else:
            items = [value]
        for m in items:
            if m.DESCRIPTOR.full_name == "google.protobuf.Any":
                changed |= raise_any(m)
            else:
                changed |= raise_marked(m)
    return changed


def raise_any(a):
    if a.type_url == BYTES_URL:
        b = wrappers_pb2.BytesValue()
        a.Unpack(b)
        if b.value.startswith(MARK):
            url, value = b.value[len(MARK):].split(b"\0", 1)
            a.type_url = url.decode()
            a.value = value
            return True
        return False
    cls = envoy_any.db.GetSymbol(a.type_url.split("/")[-1])
    inner = cls()
    a.Unpack(inner)
    if raise_marked(inner):
        a.Pack(inner)
        return True
    return False


def parse(text):
    out = []
    for res in yaml.safe_load(text) or []:
        number = res.pop("@unknownField", None)
        name, a = envoy_any.pack(lower_nested(res))
        raise_any(a)
        if number is not None:
            with_unknown(a, number)
        out.append((name, a))
    return out


def control():
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        try:
            if cmd["op"] == "set":
                items = parse(cmd["yaml"])
                with CV:
                    RESOURCES[cmd["type"]] = (cmd["version"], items)
                    GEN[0] += 1
                    CV.notify_all()
            elif cmd["op"] == "remove":
                with CV:
                    _, items = RESOURCES.get(cmd["type"], ("", []))
                    items = [x for x in items if x[0] not in cmd["names"]]
                    RESOURCES[cmd["type"]] = (cmd["version"], items)
                    GEN[0] += 1
                    CV.notify_all()
            else:
                raise ValueError("unknown op %r" % cmd["op"])
            emit(ev="ok", id=cmd["id"])
        except Exception as e:  # reported to the test, which fails on it
            emit(ev="error", id=cmd.get("id"), message="%s: %s" % (type(e).__name__, e))
    SERVER.stop(0)


class Stream:
    """A stream's inbound side: a thread reads the requests into a queue."""

    def __init__(self, request_iterator, context, api):
        self.pending = []
        self.done = False
        self.context = context
        emit(ev="stream", api=api, state="open")
        self.api = api
        self.gen = -1
        threading.Thread(target=self.read, args=(request_iterator,), daemon=True).start()

    def read(self, it):
        try:
            for r in it:
                with CV:
                    self.pending.append(r)
                    CV.notify_all()
        except Exception:
            pass
        with CV:
            self.done = True
            CV.notify_all()

    def wait(self):
        """With CV held: the requests that came since, or None once the
        stream is over."""
        if not self.pending and self.gen == GEN[0]:
            CV.wait(0.5)
        self.gen = GEN[0]
        if self.done or not self.context.is_active():
            emit(ev="stream", api=self.api, state="closed")
            return None
        got, self.pending = self.pending, []
        return got


def node_of(r):
    return r.node.id if r.HasField("node") else None


def error_of(r):
    return r.error_detail.message if r.HasField("error_detail") else None


class Ads(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def StreamAggregatedResources(self, request_iterator, context):
        s = Stream(request_iterator, context, "sotw")
        names, sent = {}, {}
        while True:
            out = []
            with CV:
                got = s.wait()
                if got is None:
                    return
                for r in got:
                    names[r.type_url] = list(r.resource_names)
                    emit(ev="request", api="sotw", type=r.type_url, version_info=r.version_info,
                         nonce=r.response_nonce, error=error_of(r), names=list(r.resource_names),
                         unsubscribe=[], node=node_of(r))
                for t, want in names.items():
                    if t not in RESOURCES:
                        continue
                    version, items = RESOURCES[t]
                    key = (version, tuple(want))
                    if sent.get(t) == key:
                        continue
                    sent[t] = key
                    chosen = [x for x in items if not want or x[0] in want]
                    nonce = next_nonce(version)
                    out.append(discovery_pb2.DiscoveryResponse(
                        version_info=version, type_url=t, nonce=nonce,
                        resources=[a for _, a in chosen]))
                    emit(ev="sent", api="sotw", type=t, version=version, nonce=nonce,
                         resources=[n for n, _ in chosen], removed=[])
            for resp in out:
                yield resp

    def DeltaAggregatedResources(self, request_iterator, context):
        s = Stream(request_iterator, context, "delta")
        # type URL -> {"wildcard", "fresh", "names", "held": {name: version}}
        subs = {}
        while True:
            out = []
            with CV:
                got = s.wait()
                if got is None:
                    return
                for r in got:
                    sub = subs.get(r.type_url)
                    if sub is None:
                        sub = subs[r.type_url] = {
                            "wildcard": not r.resource_names_subscribe,
                            "fresh": True,
                            "names": set(),
                            "held": dict(r.initial_resource_versions),
                        }
                    for n in r.resource_names_subscribe:
                        if n == "*":
                            sub["wildcard"] = True
                        else:
                            sub["names"].add(n)
                    for n in r.resource_names_unsubscribe:
                        if n == "*":
                            sub["wildcard"] = False
                        sub["names"].discard(n)
                        sub["held"].pop(n, None)
                    emit(ev="request", api="delta", type=r.type_url,
                         version_info=NONCES.get(r.response_nonce, ""), nonce=r.response_nonce,
                         error=error_of(r), names=list(r.resource_names_subscribe),
                         unsubscribe=list(r.resource_names_unsubscribe), node=node_of(r),
                         initial=dict(r.initial_resource_versions))
                for t, sub in subs.items():
                    if t not in RESOURCES:
                        continue
                    version, items = RESOURCES[t]
                    now, resources = set(), []
                    for name, a in items:
                        if not (sub["wildcard"] or name in sub["names"]):
                            continue
                        now.add(name)
                        v = hashlib.sha256(a.type_url.encode() + a.value).hexdigest()[:16]
                        if sub["held"].get(name) != v:
                            sub["held"][name] = v
                            resources.append(discovery_pb2.Resource(name=name, version=v, resource=a))
                    removed = sorted(n for n in sub["held"] if n not in now)
                    for n in removed:
                        del sub["held"][n]
                    if not resources and not removed and not sub["fresh"]:
                        continue
                    sub["fresh"] = False
                    nonce = next_nonce(version)
                    out.append(discovery_pb2.DeltaDiscoveryResponse(
                        system_version_info=version, type_url=t, nonce=nonce,
                        resources=resources, removed_resources=removed))
                    emit(ev="sent", api="delta", type=t, version=version, nonce=nonce,
                         resources=[x.name for x in resources], removed=removed)
            for resp in out:
                yield resp


SERVER = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(Ads(), SERVER)
PORT = SERVER.add_insecure_port("127.0.0.1:%d" % (int(sys.argv[1]) if len(sys.argv) > 1 else 0))
SERVER.start()
emit(ev="port", port=PORT)
control()
