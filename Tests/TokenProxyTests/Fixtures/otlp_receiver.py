#!/usr/bin/env python3
"""A small OTLP/HTTP trace receiver for the trace tests (SPEC §2.6).

Listens on 127.0.0.1 (port 0 unless given), prints `port N` on its first line, and takes
`POST /v1/traces` bodies (protobuf ExportTraceServiceRequest, decoded with opentelemetry-proto
from PyPI, gzip accepted). `GET /spans` answers every span received so far as JSON; `GET /raw`
the request bodies as received, so that a test can look for secrets in the bytes themselves.
"""
import gzip
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

lock = threading.Lock()
spans = []
bodies = []


def value_of(any_value):
    kind = any_value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [value_of(v) for v in any_value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: value_of(kv.value) for kv in any_value.kvlist_value.values}
    if kind == "bytes_value":
        return any_value.bytes_value.hex()
    return getattr(any_value, kind)


def attributes(items):
    return {kv.key: value_of(kv.value) for kv in items}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if self.path != "/v1/traces":
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        received = []
        for resource_spans in request.resource_spans:
            resource = attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append({
                        "traceId": span.trace_id.hex(),
                        "spanId": span.span_id.hex(),
                        "parentSpanId": span.parent_span_id.hex(),
                        "traceState": span.trace_state,
                        "name": span.name,
                        "kind": span.kind,
                        "attributes": attributes(span.attributes),
                        "links": [{"traceId": l.trace_id.hex(), "spanId": l.span_id.hex(), "attributes": attributes(l.attributes)} for l in span.links],
                        "status": {"code": span.status.code, "message": span.status.message},
                        "resource": resource,
                    })
        with lock:
            spans.extend(received)
            bodies.append(body)
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def do_GET(self):
        with lock:
            if self.path == "/spans":
                answer = json.dumps(spans).encode()
                kind = "application/json"
            elif self.path == "/raw":
                answer = b"".join(bodies)
                kind = "application/octet-stream"
            else:
                answer, kind = b"", "text/plain"
        self.send_response(200 if answer or self.path in ("/spans", "/raw") else 404)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"port {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
