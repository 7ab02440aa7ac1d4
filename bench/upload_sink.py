#!/usr/bin/env python3
"""An upstream that reads a whole request body before it answers (nginx's `return` answers
first and discards the body, which would end an upload through a proxy early).

Usage: upload_sink.py PORT_FILE
Writes the port it listens on (127.0.0.1, chosen by the system) to PORT_FILE; answers each
request with the number of body bytes it received, then closes the connection.
"""
import socket
import sys

server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(8)
with open(sys.argv[1], "w") as port_file:
    port_file.write(str(server.getsockname()[1]))
scratch = bytearray(1 << 20)
while True:
    connection, _ = server.accept()
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, received = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0)
    count = len(received)
    while count < length:
        read = connection.recv_into(scratch)
        if read == 0:
            break
        count += read
    body = str(count).encode()
    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
    connection.close()
