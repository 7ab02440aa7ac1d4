#!/usr/bin/env python3
"""Opens N keep-alive connections to 127.0.0.1:PORT, makes one request on each, holds them
open for HOLD seconds (so the caller can read the proxy's memory), then closes them."""
import socket
import sys
import time

port, count, hold = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
sockets = []
for _ in range(count):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    sockets.append(s)
ok = 0
for s in sockets:
    data = s.recv(65536)
    if data.startswith(b"HTTP/1.1 200"):
        ok += 1
print(f"{ok} of {count} connections answered 200 and stay open", flush=True)
time.sleep(hold)
for s in sockets:
    s.close()
