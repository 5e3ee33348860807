"""One HTTP/2 (h2c prior knowledge) request with a chosen :authority and an
optional host header, with hyper-h2's outbound validation off so that the
conflicting or malformed fields really go on the wire.

  edge_h2.py PORT AUTHORITY [HOST]    prints "STATUS <code>" and the body
"""
import socket
import sys

import h2.config
import h2.connection
import h2.events


def main():
    port, authority = int(sys.argv[1]), sys.argv[2]
    host = sys.argv[3] if len(sys.argv) > 3 else None
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(5)
    cfg = h2.config.H2Configuration(
        client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False
    )
    c = h2.connection.H2Connection(config=cfg)
    c.initiate_connection()
    headers = [(":method", "GET"), (":scheme", "http"), (":authority", authority), (":path", "/p")]
    if host is not None:
        headers.append(("host", host))
    c.send_headers(1, headers, end_stream=True)
    s.sendall(c.data_to_send())
    status, body, done = None, b"", False
    while not done:
        data = s.recv(65536)
        if not data:
            break
        for e in c.receive_data(data):
            if isinstance(e, h2.events.ResponseReceived):
                status = dict(e.headers).get(b":status", b"").decode()
            elif isinstance(e, h2.events.DataReceived):
                body += e.data
                c.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
            elif isinstance(e, h2.events.StreamReset):
                status, done = "RESET %d" % e.error_code, True
            elif isinstance(e, (h2.events.StreamEnded, h2.events.ConnectionTerminated)):
                done = True
        s.sendall(c.data_to_send())
    print("STATUS %s" % status)
    print(body.decode(errors="replace"))


if __name__ == "__main__":
    main()
