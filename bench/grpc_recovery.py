#!/usr/bin/env python3
"""What a gRPC 401 recovery costs (issue 22): a unary call whose first attempt the upstream
answers with a Trailers-Only UNAUTHENTICATED (grpc-status 16) is refreshed and replayed by the
proxy; its latency beyond a plain call through the proxy is compared with one token-endpoint
round trip plus one upstream round trip, the limit being their sum + 1 ms. The upstream round
trip is the one the recovery adds: a call straight to the upstream that it refuses. Runs a grpcio upstream itself (`upstream` mode) or measures (`measure` mode).

  grpc_recovery.py upstream PORT_FILE
      a grpcio server on 127.0.0.1 whose `echo.Echo/Say` refuses a call that carries
      `x-bench-refuse: 1` when its token was already used by an earlier call (so the replay,
      with a token never seen, passes): every such call costs exactly one recovery.
  grpc_recovery.py measure PROXY_PORT UPSTREAM_PORT TOKEN_PORT ROUNDS
"""
import http.client
import statistics
import sys
import threading
import time
from concurrent import futures

import grpc


def upstream(port_file):
    seen, lock = set(), threading.Lock()

    class OneUse(grpc.ServerInterceptor):
        def intercept_service(self, continuation, details):
            metadata = dict(details.invocation_metadata)
            token = metadata.get("authorization", "")
            with lock:
                used = token in seen
                seen.add(token)
            if used and metadata.get("x-bench-refuse") == "1":
                def refuse(request, context):
                    context.abort(grpc.StatusCode.UNAUTHENTICATED, "token expired")
                return grpc.unary_unary_rpc_method_handler(refuse)
            return continuation(details)

    handler = grpc.method_handlers_generic_handler("echo.Echo", {
        "Say": grpc.unary_unary_rpc_method_handler(lambda request, context: b"echo:" + request)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=[OneUse()])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with open(port_file, "w") as f:
        f.write(str(port))
    server.wait_for_termination()


def measure(proxy_port, upstream_port, token_port, rounds):
    def caller(port):
        channel = grpc.insecure_channel("127.0.0.1:%d" % port)
        return channel.unary_unary("/echo.Echo/Say", request_serializer=lambda raw: raw, response_deserializer=lambda raw: raw)

    proxy, direct = caller(proxy_port), caller(upstream_port)
    token = http.client.HTTPConnection("127.0.0.1", token_port)

    def timed(call, metadata=None):
        started = time.perf_counter()
        answer = call(b"hi", timeout=10, metadata=metadata)
        if answer != b"echo:hi":
            sys.exit("a call answered %r" % answer)
        return (time.perf_counter() - started) * 1000

    def refused_trip():
        started = time.perf_counter()
        try:
            direct(b"hi", timeout=10, metadata=[("authorization", "Bearer direct"), ("x-bench-refuse", "1")])
            sys.exit("the upstream answered a call it should have refused")
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAUTHENTICATED:
                sys.exit("the upstream failed a call with %s" % error.code())
        return (time.perf_counter() - started) * 1000

    def token_trip():
        started = time.perf_counter()
        token.request("POST", "/token", body="grant_type=client_credentials", headers={"Content-Type": "application/x-www-form-urlencoded"})
        token.getresponse().read()
        return (time.perf_counter() - started) * 1000

    for _ in range(20):  # warm up every path (the first proxied call also uses the store's token once)
        timed(proxy), timed(direct, [("authorization", "Bearer direct")]), refused_trip(), token_trip()
    plain, straight, refused, trips, recovered = [], [], [], [], []
    for _ in range(rounds):
        plain.append(timed(proxy))
        straight.append(timed(direct, [("authorization", "Bearer direct")]))
        refused.append(refused_trip())
        trips.append(token_trip())
        try:
            recovered.append(timed(proxy, [("x-bench-refuse", "1")]))
        except grpc.RpcError as error:
            sys.exit("a call to be recovered failed: %s %s" % (error.code(), error.details()))
    p, s, u, t, r = (statistics.median(values) for values in (plain, straight, refused, trips, recovered))
    overhead = r - p
    limit = t + u + 1
    print(f"plain call through the proxy {p:.2f} ms, straight to the upstream {s:.2f} ms (refused there: {u:.2f} ms), token round trip {t:.2f} ms, "
          f"recovered call {r:.2f} ms (medians of {rounds}); recovery overhead {overhead:.2f} ms against the limit "
          f"{limit:.2f} ms (token + upstream + 1 ms): {overhead / limit:.2f}× the limit")


if __name__ == "__main__":
    if sys.argv[1] == "upstream":
        upstream(sys.argv[2])
    else:
        measure(*(int(argument) for argument in sys.argv[2:6]))
