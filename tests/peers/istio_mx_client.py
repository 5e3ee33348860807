#!/usr/bin/env python3
"""A client speaking Istio's in-band TCP metadata exchange, as an Istio
sidecar's upstream `metadata_exchange` filter does: mTLS with the ALPN
`istio-peer-exchange`, then a header (magic 0x3D230467, length, both
32-bit big endian) and a google.protobuf.Any of a Struct (the node's
metadata), then the application's bytes. Reads the server's header the
same way, then the echo of its bytes.

Usage: istio_mx_client.py PORT CA CERT KEY METADATA_JSON DATA
Prints {"alpn", "peer": <server's Struct as JSON>, "data": <echo>}."""
import json
import socket
import ssl
import struct
import sys

from google.protobuf import any_pb2, json_format, struct_pb2

MAGIC = 0x3D230467

port, ca, cert, key, metadata, data = sys.argv[1:7]
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
ctx.set_alpn_protocols(["istio-peer-exchange", "istio"])
ctx.check_hostname = False

ours = struct_pb2.Struct()
ours.update(json.loads(metadata))
ours.update({"x-envoy-peer-metadata-id": "sidecar~client"})
a = any_pb2.Any()
a.Pack(ours)
body = a.SerializeToString()

with socket.create_connection(("127.0.0.1", int(port)), timeout=10) as raw:
    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(struct.pack(">II", MAGIC, len(body)) + body + data.encode())

        def read_exact(n):
            buf = b""
            while len(buf) < n:
                chunk = s.recv(n - len(buf))
                if not chunk:
                    raise SystemExit(f"closed after {len(buf)} of {n} bytes")
                buf += chunk
            return buf

        magic, length = struct.unpack(">II", read_exact(8))
        if magic != MAGIC:
            raise SystemExit(f"bad magic {magic:#x}")
        theirs = any_pb2.Any()
        theirs.ParseFromString(read_exact(length))
        peer = struct_pb2.Struct()
        if not theirs.Unpack(peer):
            raise SystemExit(f"not a Struct: {theirs.type_url}")
        echo = read_exact(len(data.encode()))
        print(json.dumps({
            "alpn": s.selected_alpn_protocol(),
            "peer": json_format.MessageToDict(peer),
            "data": echo.decode(),
        }))
