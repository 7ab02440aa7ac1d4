"""A client that reads nothing (issue 22's memory figure): one HTTP/2 connection, STREAMS
downloads of PATH, and never a WINDOW_UPDATE, so that only the initial flow-control windows'
worth of bytes may reach it. Samples the proxy's resident size (/proc/PID/status) for SECONDS
and prints one line: "rss_before_kib rss_max_kib bytes_received".

  h2_slow_reader.py PORT PID [STREAMS] [SECONDS] [PATH]
"""

import socket
import sys
import time

import h2.config
import h2.connection
import h2.events


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    port, pid = int(sys.argv[1]), int(sys.argv[2])
    streams = int(sys.argv[3]) if len(sys.argv) > 3 else 100
    seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 10
    path = sys.argv[5] if len(sys.argv) > 5 else "/big"
    before = rss_kib(pid)
    sock = socket.create_connection(("127.0.0.1", port))
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    for _ in range(streams):
        stream_id = conn.get_next_available_stream_id()
        conn.send_headers(stream_id, [(":method", "GET"), (":scheme", "http"), (":authority", "127.0.0.1:%d" % port), (":path", path)], end_stream=True)
    sock.sendall(conn.data_to_send())
    received = 0
    highest = before
    deadline = time.monotonic() + seconds
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    received += len(event.data)
            # SETTINGS and PING acknowledgements only: never a WINDOW_UPDATE.
            pending = conn.data_to_send()
            if pending:
                sock.sendall(pending)
        except socket.timeout:
            pass
        highest = max(highest, rss_kib(pid))
    print("%d %d %d" % (before, highest, received))


if __name__ == "__main__":
    main()
