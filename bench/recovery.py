#!/usr/bin/env python3
"""Measures what a 401 recovery costs: a request whose first attempt is answered 401
(injected, so the upstream is not asked) is refreshed and replayed; compare its latency with
one token-endpoint round trip plus one plain request through the proxy.

Usage: recovery.py PROXY_PORT TOKEN_PORT ROUNDS"""
import http.client
import statistics
import sys
import time

proxy_port, token_port, rounds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
proxy = http.client.HTTPConnection("127.0.0.1", proxy_port)
token = http.client.HTTPConnection("127.0.0.1", token_port)


def timed(connection, method, path, headers=None, body=None):
    started = time.perf_counter()
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    response.read()
    return (time.perf_counter() - started) * 1000, response.status


for _ in range(20):  # warm up both paths
    timed(proxy, "GET", "/")
    timed(token, "POST", "/token", {"Content-Type": "application/x-www-form-urlencoded"}, "grant_type=client_credentials")

plain, recovered, token_trip = [], [], []
for _ in range(rounds):
    plain.append(timed(proxy, "GET", "/")[0])
    token_trip.append(timed(token, "POST", "/token", {"Content-Type": "application/x-www-form-urlencoded"}, "grant_type=client_credentials")[0])
    ms, status = timed(proxy, "GET", "/", {"X-TokenProxy-Fault": "401"})
    if status != 200:
        sys.exit(f"a recovered request answered {status}")
    recovered.append(ms)

p, t, r = statistics.median(plain), statistics.median(token_trip), statistics.median(recovered)
print(f"plain request {p:.2f} ms, token round trip {t:.2f} ms, 401 recovered {r:.2f} ms; "
      f"overhead beyond token + upstream round trips: {r - p - t:+.2f} ms (limit +1 ms)")
