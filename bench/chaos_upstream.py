#!/usr/bin/env python3
"""The chaos run's upstream: answers 200, resets RESET_PERCENT of connections right after reading
a request (no answer, RST), and counts how often it saw each X-Chaos-Id of a POST without an
Idempotency-Key. GET /__stats answers those counts as JSON.

Usage: chaos_upstream.py PORT_FILE RESET_PERCENT"""
import http.server
import json
import random
import socket
import struct
import sys
import threading

port_file, reset_percent = sys.argv[1], float(sys.argv[2])
lock = threading.Lock()
unkeyed_posts = {}
stats = {"requests": 0, "resets": 0}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle_one(self, method):
        length = int(self.headers.get("Content-Length", "0"))
        if length:
            self.rfile.read(length)
        if self.path == "/__stats":
            with lock:
                twice = sum(1 for count in unkeyed_posts.values() if count > 1)
                body = json.dumps({**stats, "unkeyed_posts": len(unkeyed_posts), "unkeyed_posts_seen_twice": twice}).encode()
            return self.answer(body)
        with lock:
            stats["requests"] += 1
            if method == "POST" and "Idempotency-Key" not in self.headers:
                chaos_id = self.headers.get("X-Chaos-Id", "?")
                unkeyed_posts[chaos_id] = unkeyed_posts.get(chaos_id, 0) + 1
        if random.random() * 100 < reset_percent:
            with lock:
                stats["resets"] += 1
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        self.answer(b'{"ok":true}')

    def answer(self, body):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.handle_one("GET")

    def do_POST(self):
        self.handle_one("POST")

    def log_message(self, *args):
        pass

    def handle(self):
        try:
            super().handle()
        except OSError:
            pass


http.server.ThreadingHTTPServer.daemon_threads = True
http.server.ThreadingHTTPServer.request_queue_size = 1024
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(port_file, "w") as f:
    f.write(str(server.server_address[1]))
server.serve_forever()
