#!/usr/bin/env python3
"""A minimal OAuth token endpoint for the benchmarks: every POST gets a fresh token.

Usage: token_endpoint.py PORT_FILE [LIFETIME_SECONDS] [FAIL_EVERY]
Writes the port it listens on (127.0.0.1, chosen by the system) to PORT_FILE.
FAIL_EVERY=N answers every Nth call with 503 (0: never). Calls are counted in PORT_FILE.calls.
"""
import http.server
import json
import socket
import sys
import threading

port_file = sys.argv[1]
lifetime = int(sys.argv[2]) if len(sys.argv) > 2 else 3600
fail_every = int(sys.argv[3]) if len(sys.argv) > 3 else 0
lock = threading.Lock()
calls = 0


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        # Headers and body leave in separate writes: without TCP_NODELAY, delayed ACKs add 40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_POST(self):
        global calls
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with lock:
            calls += 1
            number = calls
            with open(port_file + ".calls", "w") as f:
                f.write(str(number))
        if fail_every and number % fail_every == 0:
            body = b'{"error":"temporarily_unavailable"}'
            self.send_response(503)
        else:
            body = json.dumps({"access_token": f"bench-{number}", "token_type": "Bearer",
                               "expires_in": lifetime, "refresh_token": f"rt-{number}"}).encode()
            self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(port_file, "w") as f:
    f.write(str(server.server_address[1]))
server.serve_forever()
