"""An HTTP/2 client for the tests, on the `h2` library (PyPI) and a plain socket: prior
knowledge ("h2c"), several streams on one connection, and the misbehaviour the limits are for
(rapid reset, oversized header lists). Prints one JSON object: what came back per stream, and
the GOAWAY if one came.

  h2_probe.py requests PORT [--count N] [--path P] [--method M] [--body B] [--header name:value]...
  h2_probe.py rapid-reset PORT [--count N]
  h2_probe.py big-header PORT --bytes N
  h2_probe.py too-many PORT --count N
  h2_probe.py idle PORT                          (sends no stream; reports when it was closed)
  h2_probe.py ping-flood PORT [--count N]
  h2_probe.py hold PORT [--count N] [--path P]   (prints "sent" once the streams are open)
"""

import argparse
import json
import socket
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings


# The h2 library takes a GOAWAY as the end of the connection, and raises on any frame after it:
# a graceful GOAWAY (RFC 9113 §6.8: the streams it names still complete, and the server may
# PING) would lose the answers of the streams in flight. The probe lets the connection stay open.
_transitions = h2.connection.H2ConnectionStateMachine._transitions
_OPEN = h2.connection.ConnectionState.CLIENT_OPEN
_transitions[(_OPEN, h2.connection.ConnectionInputs.RECV_GOAWAY)] = (None, _OPEN)


def connect(port):
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    config = h2.config.H2Configuration(
        client_side=True, header_encoding="utf-8", validate_outbound_headers=False, normalize_outbound_headers=False,
        validate_inbound_headers=False)
    conn = h2.connection.H2Connection(config=config)
    conn.initiate_connection()
    # A large window: the tests read whole bodies.
    conn.increment_flow_control_window(1 << 24)
    sock.sendall(conn.data_to_send())
    return sock, conn


class Outcome:
    def __init__(self):
        self.streams = {}
        self.goaway = None
        self.closed = False
        self.settings = {}

    def stream(self, stream_id):
        return self.streams.setdefault(stream_id, {"status": None, "headers": {}, "body": "", "trailers": {}, "reset": None, "ended": False})

    def feed(self, conn, events):
        for event in events:
            if isinstance(event, h2.events.ResponseReceived):
                entry = self.stream(event.stream_id)
                headers = dict(event.headers)
                entry["status"] = int(headers.get(":status", "0"))
                entry["headers"] = headers
            elif isinstance(event, h2.events.InformationalResponseReceived):
                self.stream(event.stream_id).setdefault("informational", []).append(dict(event.headers).get(":status"))
            elif isinstance(event, h2.events.DataReceived):
                entry = self.stream(event.stream_id)
                entry["body"] += event.data.decode("utf-8", "replace")
                entry.setdefault("chunks", []).append([round(time.monotonic(), 3), len(event.data)])
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.TrailersReceived):
                self.stream(event.stream_id)["trailers"] = dict(event.headers)
            elif isinstance(event, h2.events.StreamEnded):
                self.stream(event.stream_id)["ended"] = True
            elif isinstance(event, h2.events.StreamReset):
                self.stream(event.stream_id)["reset"] = int(event.error_code)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaway = {"error": int(event.error_code), "last_stream_id": event.last_stream_id}
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                for key, value in event.changed_settings.items():
                    self.settings[int(key)] = value.new_value

    def done(self, ids):
        return all(self.stream(i)["ended"] or self.stream(i)["reset"] is not None for i in ids)

    def report(self, ids, **extra):
        result = {"streams": [self.stream(i) for i in ids], "goaway": self.goaway, "closed": self.closed, "settings": self.settings}
        result.update(extra)
        print(json.dumps(result))


def pump(sock, conn, outcome, until, timeout=20):
    deadline = time.monotonic() + timeout
    while not until() and time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except socket.timeout:
            break
        except OSError:
            outcome.closed = True
            break
        if not data:
            outcome.closed = True
            break
        try:
            outcome.feed(conn, conn.receive_data(data))
        except h2.exceptions.ProtocolError as error:
            outcome.goaway = outcome.goaway or {"error": -1, "protocol_error": str(error)}
        pending = conn.data_to_send()
        if pending:
            try:
                sock.sendall(pending)
            except OSError:
                outcome.closed = True
                break


def request_headers(args, port):
    headers = [(":method", args.method), (":scheme", "http"), (":authority", "127.0.0.1:%d" % port), (":path", args.path)]
    for header in args.header or []:
        if header.startswith(":"):
            name, value = header[1:].split(":", 1)
            name = ":" + name
        else:
            name, value = header.split(":", 1)
        headers.append((name, value))
    return headers


def open_streams(sock, conn, args, port):
    ids = []
    for _ in range(args.count):
        stream_id = conn.get_next_available_stream_id()
        body = args.body.encode() if args.body is not None else None
        conn.send_headers(stream_id, request_headers(args, port), end_stream=body is None)
        if body is not None:
            conn.send_data(stream_id, body, end_stream=True)
        ids.append(stream_id)
    sock.sendall(conn.data_to_send())
    return ids


def flood(sock, conn, outcome, args, send_one):
    """`send_one(index)` --count times, sent in batches without reading; then reads until the
    proxy closes the connection, and reports."""
    sent = 0
    try:
        for index in range(args.count):
            send_one(index)
            sent += 1
            if sent % 50 == 0:
                sock.sendall(conn.data_to_send())
        sock.sendall(conn.data_to_send())
    except (OSError, h2.exceptions.ProtocolError):
        pass
    pump(sock, conn, outcome, lambda: outcome.closed, args.timeout)
    outcome.report([], sent=sent)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode")
    parser.add_argument("port", type=int)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--path", default="/")
    parser.add_argument("--method", default="GET")
    parser.add_argument("--body")
    parser.add_argument("--header", action="append")
    parser.add_argument("--bytes", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=20)
    args = parser.parse_args()
    sock, conn = connect(args.port)
    outcome = Outcome()

    if args.mode == "requests":
        ids = open_streams(sock, conn, args, args.port)
        pump(sock, conn, outcome, lambda: outcome.done(ids) or outcome.goaway is not None, args.timeout)
        outcome.report(ids)
    elif args.mode == "hold":
        ids = open_streams(sock, conn, args, args.port)
        print("sent", flush=True)
        pump(sock, conn, outcome, lambda: outcome.closed, args.timeout)
        outcome.report(ids)
    elif args.mode == "rapid-reset":
        # CVE-2023-44487: open a stream and cancel it at once, again and again.
        def open_and_cancel(_):
            stream_id = conn.get_next_available_stream_id()
            conn.send_headers(stream_id, request_headers(args, args.port), end_stream=True)
            conn.reset_stream(stream_id, error_code=8)
        flood(sock, conn, outcome, args, open_and_cancel)
    elif args.mode == "too-many":
        # More streams at once than the proxy's SETTINGS_MAX_CONCURRENT_STREAMS allow, once the
        # client has acknowledged them (before that, the limit is not in force: RFC 9113 §6.5.3).
        pump(sock, conn, outcome, lambda: bool(outcome.settings), args.timeout)
        # The h2 library would refuse to exceed the peer's limit itself: make it believe in more.
        conn.remote_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = args.count + 1
        conn.remote_settings.acknowledge()
        for _ in range(args.count):
            stream_id = conn.get_next_available_stream_id()
            conn.send_headers(stream_id, request_headers(args, args.port), end_stream=True)
        try:
            sock.sendall(conn.data_to_send())
        except OSError:
            pass
        pump(sock, conn, outcome, lambda: outcome.closed, args.timeout)
        outcome.report([], sent=args.count)
    elif args.mode == "idle":
        # The preface and SETTINGS, then nothing: how long until the proxy closes the connection.
        started = time.monotonic()
        pump(sock, conn, outcome, lambda: outcome.closed, args.timeout)
        outcome.report([], seconds=round(time.monotonic() - started, 3))
    elif args.mode == "ping-flood":
        # PING after PING: a flood of control frames (CVE-2019-9512).
        flood(sock, conn, outcome, args, lambda index: conn.ping(index.to_bytes(8, "big")))
    elif args.mode == "big-header":
        stream_id = conn.get_next_available_stream_id()
        headers = request_headers(args, args.port) + [("x-big", "a" * args.bytes)]
        conn.send_headers(stream_id, headers, end_stream=True)
        sock.sendall(conn.data_to_send())
        pump(sock, conn, outcome, lambda: outcome.done([stream_id]) or outcome.goaway is not None, args.timeout)
        outcome.report([stream_id])
    else:
        print("unknown mode " + args.mode, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
