"""An HTTP/2 upstream for the tests (prior knowledge, "h2c"), on the `h2` library (PyPI) and
asyncio: it answers every request with what it received, counts connections and the most
streams it had open at once, and plays the parts the tests need:

  /slow          answers after 300 ms (so that concurrent streams overlap)
  /stream        three DATA frames 300 ms apart, then trailers
  a request carrying "Bearer at-stale": 401 (or, for gRPC, Trailers-Only grpc-status 16)
  content-type application/grpc: one gRPC message back, then grpc-status 0 in trailers

With H2_UPSTREAM_CERT and H2_UPSTREAM_KEY it takes TLS, offering H2_UPSTREAM_ALPN by ALPN.
Prints "port N" once listening, then "stats CONNECTIONS MAX_OPEN_STREAMS" after every stream.
  h2_upstream.py [PORT]
"""

import asyncio
import json
import os
import ssl
import sys

import h2.config
import h2.connection
import h2.events
import h2.settings

stats = {"connections": 0, "open": 0, "max_open": 0}


def report():
    print("stats %d %d" % (stats["connections"], stats["max_open"]), flush=True)


async def serve(reader, writer):
    stats["connections"] += 1
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
    conn.initiate_connection()
    conn.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1000})
    writer.write(conn.data_to_send())
    requests = {}

    async def answer(stream_id, headers, body):
        headers = dict(headers)
        authorization = headers.get("authorization", "")
        grpc = headers.get("content-type", "").startswith("application/grpc")
        path = headers.get(":path", "")
        if path.startswith("/slow"):
            await asyncio.sleep(0.3)
        if "Bearer at-stale" in authorization:
            if grpc:
                conn.send_headers(stream_id, [(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "16"), ("grpc-message", "token expired")], end_stream=True)
            else:
                conn.send_headers(stream_id, [(":status", "401"), ("content-length", "7")])
                conn.send_data(stream_id, b"expired", end_stream=True)
        elif grpc:
            message = b"echo:" + body[5:]
            conn.send_headers(stream_id, [(":status", "200"), ("content-type", "application/grpc")])
            conn.send_data(stream_id, b"\x00" + len(message).to_bytes(4, "big") + message)
            conn.send_headers(stream_id, [("grpc-status", "0"), ("x-authorization-seen", authorization)], end_stream=True)
        elif path.startswith("/stream"):
            conn.send_headers(stream_id, [(":status", "200"), ("content-type", "text/plain")])
            for index in range(3):
                conn.send_data(stream_id, ("part %d\n" % index).encode())
                writer.write(conn.data_to_send())
                await writer.drain()
                await asyncio.sleep(0.3)
            conn.send_headers(stream_id, [("x-done", "yes")], end_stream=True)
        else:
            seen = {
                "method": headers.get(":method"), "path": path, "authority": headers.get(":authority"),
                "authorization": authorization, "te": headers.get("te"), "body": body.decode("utf-8", "replace"),
                "host": headers.get("host"), "connection": headers.get("connection"),
            }
            payload = json.dumps(seen).encode()
            conn.send_headers(stream_id, [(":status", "200"), ("content-type", "application/json"), ("content-length", str(len(payload)))])
            conn.send_data(stream_id, payload, end_stream=True)
        writer.write(conn.data_to_send())
        await writer.drain()
        stats["open"] -= 1
        report()

    while True:
        data = await reader.read(65536)
        if not data:
            break
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                requests[event.stream_id] = [event.headers, b""]
                stats["open"] += 1
                stats["max_open"] = max(stats["max_open"], stats["open"])
                if event.stream_ended:
                    asyncio.ensure_future(answer(event.stream_id, *requests.pop(event.stream_id)))
            elif isinstance(event, h2.events.DataReceived):
                requests[event.stream_id][1] += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                if event.stream_id in requests:
                    asyncio.ensure_future(answer(event.stream_id, *requests.pop(event.stream_id)))
            elif isinstance(event, h2.events.StreamReset):
                requests.pop(event.stream_id, None)
        writer.write(conn.data_to_send())
        await writer.drain()
    writer.close()


def tls_context():
    """TLS when H2_UPSTREAM_CERT and H2_UPSTREAM_KEY name PEM files; ALPN offers
    H2_UPSTREAM_ALPN (comma-separated, "h2" by default)."""
    certificate, key = os.environ.get("H2_UPSTREAM_CERT"), os.environ.get("H2_UPSTREAM_KEY")
    if not certificate:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate, key)
    context.set_alpn_protocols(os.environ.get("H2_UPSTREAM_ALPN", "h2").split(","))
    return context


async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 0, ssl=tls_context())
    print("port %d" % server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
