"""A real gRPC peer for the breaker's gRPC tests: seed 004's school ValidateSchool hop.

Messages are raw bytes (no generated stubs, nothing to compile). The request payload says
how the server answers:
  "ok"                 -> OK
  "fail-headers:<n>"   -> status n, trailers-only (grpc-status in the response headers)
  "fail-trailers:<n>"  -> status n after the response headers (grpc-status in trailers)

  python school_grpc.py serve                          prints "grpc-school listening on <addr>"
  python school_grpc.py call <addr> <payload> [count]  one JSON line per call
  python school_grpc.py count <addr>                   calls that reached the server
"""
import json
import sys
import threading
import time
from concurrent import futures

import grpc

SERVICE = "school.SchoolService"
CODES = {code.value[0]: code for code in grpc.StatusCode}
served = 0
lock = threading.Lock()


def validate(request, context):
    global served
    with lock:
        served += 1
    command = request.decode()
    if command.startswith("fail-headers:"):
        context.abort(CODES[int(command.split(":")[1])], "school service failing")
    if command.startswith("fail-trailers:"):
        context.send_initial_metadata(())
        context.abort(CODES[int(command.split(":")[1])], "school service failing")
    return b"school exists"


def count(request, context):
    with lock:
        return str(served).encode()


def serve():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
        "ValidateSchool": grpc.unary_unary_rpc_method_handler(validate),
        "Count": grpc.unary_unary_rpc_method_handler(count),
    }),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"grpc-school listening on 127.0.0.1:{port}", flush=True)
    server.wait_for_termination()


def call(addr, payload, n):
    with grpc.insecure_channel(addr) as channel:
        method = channel.unary_unary(f"/{SERVICE}/ValidateSchool")
        for _ in range(n):
            started = time.monotonic()
            try:
                method(payload.encode(), timeout=5)
                result = {"code": "OK", "details": ""}
            except grpc.RpcError as e:
                result = {"code": e.code().name, "details": e.details() or ""}
            result["elapsed_ms"] = round((time.monotonic() - started) * 1000, 2)
            print(json.dumps(result), flush=True)


def served_count(addr):
    with grpc.insecure_channel(addr) as channel:
        print(channel.unary_unary(f"/{SERVICE}/Count")(b"", timeout=5).decode())


if __name__ == "__main__":
    verb = sys.argv[1]
    if verb == "serve":
        serve()
    elif verb == "call":
        call(sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 1)
    elif verb == "count":
        served_count(sys.argv[2])
