"""A gRPC server for the tests, on grpcio (PyPI), without generated code (raw bytes in and
out): `echo.Echo/Say` answers "echo:" + the request; `echo.Echo/Stream` sends three messages
300 ms apart. An interceptor answers UNAUTHENTICATED to the token "at-stale", as a server does
to an expired token (with GRPC_UPSTREAM_REFUSE=all, to every token). Plain HTTP/2 ("h2c"). Prints "port N" once listening.

  grpc_upstream.py
"""

import os
import time
from concurrent import futures

import grpc


class StaleTokenRefused(grpc.ServerInterceptor):
    def intercept_service(self, continuation, details):
        metadata = dict(details.invocation_metadata)
        if metadata.get("authorization") == "Bearer at-stale" or os.environ.get("GRPC_UPSTREAM_REFUSE") == "all":
            def refuse(request, context):
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "token expired")
            if details.method.endswith("/Stream"):
                return grpc.unary_stream_rpc_method_handler(refuse)
            return grpc.unary_unary_rpc_method_handler(refuse)
        return continuation(details)


def say(request, context):
    context.set_trailing_metadata((("x-authorization-seen", dict(context.invocation_metadata()).get("authorization", "")),))
    return b"echo:" + request


def stream(request, context):
    for index in range(3):
        yield b"part %d" % index
        time.sleep(0.3)


def main():
    handler = grpc.method_handlers_generic_handler("echo.Echo", {
        "Say": grpc.unary_unary_rpc_method_handler(say),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), interceptors=[StaleTokenRefused()])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print("port %d" % port, flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
