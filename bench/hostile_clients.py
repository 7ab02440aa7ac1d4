#!/usr/bin/env python3
"""Hostile clients for bench/hostile.sh; prints one line of results.

  slowloris PORT COUNT SECONDS   COUNT connections each sending a request head a byte a second;
                                 reports how many the proxy closed (with or without a 408).
  flood PORT MIB SECONDS         an upgrade request, then up to MIB MiB of filler as fast as the
                                 proxy takes it, for at most SECONDS; reports how much it took.
"""
import select
import socket
import sys
import time

mode, port = sys.argv[1], int(sys.argv[2])
if mode == "slowloris":
    count, seconds = int(sys.argv[3]), float(sys.argv[4])
    head = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"x" * 100
    sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    for s in sockets:
        s.setblocking(False)
    closed, answered = set(), 0
    deadline = time.time() + seconds
    position = 0
    while time.time() < deadline and len(closed) < count:
        for index, s in enumerate(sockets):
            if index in closed:
                continue
            try:
                s.send(head[position % len(head):position % len(head) + 1])
            except OSError:
                closed.add(index)
                continue
            try:
                data = s.recv(65536)
                if data.startswith(b"HTTP/1.1 408"):
                    answered += 1
                if data == b"" or data:
                    closed.add(index)
            except BlockingIOError:
                pass
            except OSError:
                closed.add(index)
        position += 1
        time.sleep(1)
    print(f"{len(closed)} of {count} slow connections closed by the proxy ({answered} with a 408)", flush=True)
    time.sleep(1)  # the caller samples memory after the closes
elif mode == "flood":
    mib, seconds = int(sys.argv[3]), float(sys.argv[4])
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    s.setblocking(False)
    chunk = b"x" * 65536
    sent, limit = 0, mib << 20
    deadline = time.time() + seconds
    while sent < limit and time.time() < deadline:
        _, writable, _ = select.select([], [s], [], 0.1)
        if not writable:
            continue
        try:
            sent += s.send(chunk)
        except BlockingIOError:
            pass
        except OSError:
            break
    print(f"the proxy took {sent / (1 << 20):.1f} MiB of {mib} MiB sent after an upgrade request in {seconds:.0f} s", flush=True)
    s.close()
