#!/usr/bin/env python3
"""The chaos run's clients: CONNECTIONS keep-alive connections share TOTAL requests, half GET
and half POST, half of the POSTs with an Idempotency-Key. Prints counts of what the clients saw.

Usage: chaos_client.py PROXY_PORT TOTAL CONNECTIONS TIME_LIMIT_SECONDS"""
import http.client
import itertools
import json
import sys
import threading
import time

port, total, connections, limit = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
counter = itertools.count()
lock = threading.Lock()
seen = {"GET": {}, "POST keyed": {}, "POST unkeyed": {}}
started = time.monotonic()


def record(kind, outcome):
    with lock:
        seen[kind][outcome] = seen[kind].get(outcome, 0) + 1


def worker():
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while time.monotonic() - started < limit:
        number = next(counter)
        if number >= total:
            return
        headers = {"X-Chaos-Id": str(number)}
        if number % 2 == 0:
            kind, method, body = "GET", "GET", None
        else:
            method, body = "POST", b'{"n": %d}' % number
            headers["Content-Type"] = "application/json"
            if number % 4 == 1:
                kind = "POST keyed"
                headers["Idempotency-Key"] = "k-%d" % number
            else:
                kind = "POST unkeyed"
        try:
            connection.request(method, "/chaos/%d" % number, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            outcome = str(response.status)
            if response.status != 200:
                outcome += " " + (response.getheader("X-TokenProxy-Error") or "upstream")
        except Exception as error:  # a dropped connection is a client-visible failure too
            outcome = "connection error: " + type(error).__name__
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        record(kind, outcome)


threads = [threading.Thread(target=worker) for _ in range(connections)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
elapsed = time.monotonic() - started
print(json.dumps({"seconds": round(elapsed, 1), "seen": seen}))
