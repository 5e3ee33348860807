"""One h2c (prior knowledge) POST with a body in several DATA frames and,
optionally, trailers; prints the answer as JSON: status, headers, body,
and whether the stream was reset.

usage: h2_trailers.py PORT SPEC_JSON
SPEC: {"path": "/x", "headers": [[k, v]], "chunks": ["..."], "trailers": [[k, v]]}
"""
import json
import socket
import sys

import h2.config
import h2.connection
import h2.events


def main():
    port = int(sys.argv[1])
    spec = json.loads(sys.argv[2])
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(10)
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    s.sendall(c.data_to_send())
    sid = c.get_next_available_stream_id()
    head = [(":method", "POST"), (":path", spec["path"]), (":scheme", "http"),
            (":authority", "localhost")] + [tuple(h) for h in spec.get("headers", [])]
    c.send_headers(sid, head)
    for chunk in spec["chunks"]:
        c.send_data(sid, chunk.encode())
        s.sendall(c.data_to_send())
    if spec.get("trailers"):
        c.send_headers(sid, [tuple(t) for t in spec["trailers"]], end_stream=True)
    else:
        c.end_stream(sid)
    s.sendall(c.data_to_send())
    out = {"status": 0, "headers": {}, "body": "", "reset": False}
    body = b""
    done = False
    while not done:
        data = s.recv(65536)
        if not data:
            break
        for ev in c.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                for k, v in ev.headers:
                    k, v = k.decode(), v.decode()
                    if k == ":status":
                        out["status"] = int(v)
                    else:
                        out["headers"][k] = v
            elif isinstance(ev, h2.events.DataReceived):
                body += ev.data
                c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                done = True
            elif isinstance(ev, h2.events.StreamReset):
                out["reset"] = True
                done = True
        s.sendall(c.data_to_send())
    out["body"] = body.decode(errors="replace")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
