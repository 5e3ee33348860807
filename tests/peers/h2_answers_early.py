"""An HTTP/2 (h2c) upstream for tests/tests/edge_followups.rs that answers a
request's head at once (200 and 5 bytes of a body it never ends) while it
keeps reading the request body.

    h2_answers_early.py

Prints `port=N` once listening; when the stream or connection ends, prints
one line `bytes=N reset=yes|no ended=yes|no` (request body bytes received,
whether meshgate reset the stream, whether the request body ended) and exits.
"""

import socket
import sys

import h2.config
import h2.connection
import h2.events

srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(1)
print(f"port={srv.getsockname()[1]}", flush=True)
srv.settimeout(30)
s, _ = srv.accept()
s.settimeout(30)
c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
c.initiate_connection()
s.sendall(c.data_to_send())
got, reset, ended = 0, False, False
try:
    while not (reset or ended):
        data = s.recv(65535)
        if not data:
            break
        for e in c.receive_data(data):
            if isinstance(e, h2.events.RequestReceived):
                c.send_headers(e.stream_id, [(":status", "200"), ("content-length", "100")])
                c.send_data(e.stream_id, b"first")
            elif isinstance(e, h2.events.DataReceived):
                got += len(e.data)
                c.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
            elif isinstance(e, h2.events.StreamReset):
                reset = True
            elif isinstance(e, h2.events.StreamEnded):
                ended = True
            elif isinstance(e, h2.events.ConnectionTerminated):
                reset = True
        s.sendall(c.data_to_send())
except OSError:
    pass
print(f"bytes={got} reset={'yes' if reset else 'no'} ended={'yes' if ended else 'no'}", flush=True)
sys.exit(0)
