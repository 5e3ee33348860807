"""An HTTP/2 (h2c, prior knowledge) upstream that announces
SETTINGS_MAX_CONCURRENT_STREAMS = 1 and holds every response until a gate
file exists; each request's path is logged as a JSON line with the
connection it came on and how many streams that connection had open.

    python3 h2_gated.py <gate-file> <log-file>

Prints `PORT <n>` first (port 0: the kernel picks it)."""

import json
import os
import socket
import sys
import threading

import h2.config
import h2.connection
import h2.events
import h2.settings

GATE, LOG = sys.argv[1], sys.argv[2]
lock = threading.Lock()
conn_ids = iter(range(1, 1 << 30))


def record(entry):
    with lock, open(LOG, "a") as f:
        f.write(json.dumps(entry) + "\n")


def serve(sock, cid):
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.local_settings = h2.settings.Settings(
        client=False,
        initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1},
    )
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    sock.settimeout(0.02)
    held, open_streams = [], set()
    while True:
        try:
            data = sock.recv(65536)
            if not data:
                return
        except socket.timeout:
            data = None
        except OSError:
            return
        if data:
            try:
                events = conn.receive_data(data)
            except Exception as e:  # a protocol violation: log it, close
                record({"error": repr(e), "conn": cid})
                return
            for ev in events:
                if isinstance(ev, h2.events.RequestReceived):
                    open_streams.add(ev.stream_id)
                    path = dict(ev.headers).get(b":path", b"").decode()
                    record({"path": path, "conn": cid, "open": len(open_streams)})
                    held.append(ev.stream_id)
                elif isinstance(ev, h2.events.StreamReset):
                    open_streams.discard(ev.stream_id)
                    if ev.stream_id in held:
                        held.remove(ev.stream_id)
        if held and os.path.exists(GATE):
            for sid in held:
                conn.send_headers(sid, [(":status", "200"), ("content-length", "2")])
                conn.send_data(sid, b"ok", end_stream=True)
                open_streams.discard(sid)
            held = []
        out = conn.data_to_send()
        if out:
            try:
                sock.sendall(out)
            except OSError:
                return


def main():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    print("PORT %d" % listener.getsockname()[1], flush=True)
    while True:
        s, _ = listener.accept()
        threading.Thread(target=serve, args=(s, next(conn_ids)), daemon=True).start()


main()
