#!/usr/bin/env python3
"""An upstream that accepts connections and reads, but never answers (for bench/hostile.sh).
Writes its port to PORTFILE."""
import socket
import sys
import threading

server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(64)
with open(sys.argv[1], "w") as f:
    f.write(str(server.getsockname()[1]))


def drain(connection):
    # Reads only the head, then stops reading: the proxy's writes back up.
    connection.recv(65536)
    threading.Event().wait()


while True:
    connection, _ = server.accept()
    threading.Thread(target=drain, args=(connection,), daemon=True).start()
