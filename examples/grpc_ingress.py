"""gRPC ingress: a deployment serving Ray Serve's generated test service (it ships with ray[serve]).

    cd examples && python grpc_ingress.py      # serves it, calls it with a gRPC client, shuts down

The gRPC method's name picks the ingress deployment's method (``__call__``, ``Method1``, ``Streaming``),
called with the request message; the ``application`` metadata picks the application. ``Streaming`` is
declared server-streaming in the .proto, so its generator's items reach the client as they come.
With your own .proto, generate ``x_pb2.py`` / ``x_pb2_grpc.py`` (``python -m grpc_tools.protoc``) and
name ``x_pb2_grpc.add_XServicer_to_server`` in ``grpc_servicer_functions``.
"""

from __future__ import annotations

import sys

from ray.serve.generated import serve_pb2

import servegraph as serve

#: The generated function that registers the service; the proxies import it, so it must be importable there.
SERVICER = "ray.serve.generated.serve_pb2_grpc.add_UserDefinedServiceServicer_to_server"


@serve.deployment
class Greeter:
    def __call__(self, request: serve_pb2.UserDefinedMessage) -> serve_pb2.UserDefinedResponse:
        return serve_pb2.UserDefinedResponse(greeting=f"Hello {request.name} from {request.foo}", num_x2=request.num * 2)

    def Method1(self, request: serve_pb2.UserDefinedMessage) -> serve_pb2.UserDefinedResponse:
        return serve_pb2.UserDefinedResponse(greeting=f"Method1 greets {request.name}")

    def Streaming(self, request: serve_pb2.UserDefinedMessage):
        for i in range(request.num):
            yield serve_pb2.UserDefinedResponse(greeting=f"{i}: hello {request.name}", num_x2=i * 2)


app = Greeter.bind()


def main(grpc_port: int = 9000, http_port: int = 8000) -> None:
    import grpc
    from ray.serve.generated import serve_pb2_grpc

    serve.start(http_options={"port": http_port}, grpc_options={"port": grpc_port, "grpc_servicer_functions": [SERVICER]})
    serve.run(app, name="greeter", route_prefix="/greeter")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = serve_pb2_grpc.UserDefinedServiceStub(channel)
            metadata = (("application", "greeter"),)
            answer = stub.__call__(serve_pb2.UserDefinedMessage(name="Ada", foo="London", num=21), metadata=metadata)
            print(answer.greeting, answer.num_x2)
            print(stub.Method1(serve_pb2.UserDefinedMessage(name="Ada"), metadata=metadata).greeting)
            for item in stub.Streaming(serve_pb2.UserDefinedMessage(name="Ada", num=3), metadata=metadata):
                print(item.greeting)
    finally:
        serve.shutdown()


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
