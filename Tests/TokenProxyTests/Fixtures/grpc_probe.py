"""A gRPC client for the tests, on grpcio (PyPI): one unary call with raw bytes (no generated
code), through the proxy. Prints the outcome as JSON: the status code's number, its details and
the trailing metadata.

  grpc_probe.py PORT METHOD [MESSAGE]      (a METHOD ending in /Stream is a server-streaming call)
"""

import json
import sys
import time

import grpc


def stream(port, method, message):
    """A server-streaming call: each message with the moment it arrived."""
    with grpc.insecure_channel("127.0.0.1:%d" % port) as channel:
        call = channel.unary_stream(method, request_serializer=lambda raw: raw, response_deserializer=lambda raw: raw)
        started = time.monotonic()
        messages = []
        try:
            for answer in call(message, timeout=20):
                messages.append([answer.decode("utf-8", "replace"), round(time.monotonic() - started, 3)])
            print(json.dumps({"code": 0, "details": "", "messages": messages, "trailing": {}}))
        except grpc.RpcError as error:
            print(json.dumps({"code": error.code().value[0], "details": error.details() or "", "messages": messages, "trailing": dict(error.trailing_metadata() or [])}))


def main():
    port, method = int(sys.argv[1]), sys.argv[2]
    message = (sys.argv[3] if len(sys.argv) > 3 else "hello").encode()
    if method.endswith("/Stream"):
        return stream(port, method, message)
    with grpc.insecure_channel("127.0.0.1:%d" % port) as channel:
        call = channel.unary_unary(method, request_serializer=lambda raw: raw, response_deserializer=lambda raw: raw)
        try:
            answer, state = call.with_call(message, timeout=20)
            print(json.dumps({"code": 0, "details": "", "answer": answer.decode("utf-8", "replace"), "trailing": dict(state.trailing_metadata() or [])}))
        except grpc.RpcError as error:
            print(json.dumps({"code": error.code().value[0], "details": error.details() or "", "trailing": dict(error.trailing_metadata() or [])}))


if __name__ == "__main__":
    main()
