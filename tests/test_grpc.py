"""gRPC ingress on a real cluster, with a real grpcio client: the example's deployment, in a child process with a
cluster of its own (so the session's proxy options stay as they are)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from conftest import EXAMPLES, free_port
from support import user_env

pytest.importorskip("grpc")

SCRIPT = textwrap.dedent("""
    import json, subprocess, sys
    import grpc, ray
    from ray.serve.generated import serve_pb2, serve_pb2_grpc
    import servegraph as serve
    from grpc_ingress import SERVICER, app

    CONFIG = '''
    http_options: {{host: 127.0.0.1, port: {http_port}}}
    grpc_options: {{port: {grpc_port}, grpc_servicer_functions: [{servicer}], enable_reflection: false}}
    applications:
    - name: greeter
      import_path: grpc_ingress:app
      route_prefix: /
    '''

    @serve.deployment
    class Broken:
        def __call__(self, request):
            raise ValueError(f"no greeting for {request.name}")

    grpc_port, http_port, second_port = (int(a) for a in sys.argv[1:4])
    ray.init(address="local", num_cpus=4, include_dashboard=False)
    serve.start(http_options={"port": http_port}, grpc_options={"port": grpc_port, "grpc_servicer_functions": [SERVICER]})
    serve.run(app, name="greeter", route_prefix="/greeter")   # names no proxy options: serve.start's stay
    serve.run(Broken.bind(), name="broken", route_prefix="/broken")
    out = {}

    def status_of(call):
        try:
            call()
            return "OK"
        except grpc.RpcError as exc:
            return [exc.code().name, exc.details()]

    message = serve_pb2.UserDefinedMessage
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = serve_pb2_grpc.UserDefinedServiceStub(channel)
        greeter = (("application", "greeter"),)
        answer = stub.__call__(message(name="Ada", foo="Paris", num=21), metadata=greeter)
        out["call"] = [answer.greeting, answer.num_x2]
        out["method1"] = stub.Method1(message(name="Ada"), metadata=greeter).greeting
        out["stream"] = [[r.greeting, r.num_x2] for r in stub.Streaming(message(name="Ada", num=3), metadata=greeter)]
        out["unknown"] = status_of(lambda: stub.__call__(message(name="x"), metadata=(("application", "nope"),)))
        out["error"] = status_of(lambda: stub.__call__(message(name="Bo"), metadata=(("application", "broken"),)))
        api = serve_pb2_grpc.RayServeAPIServiceStub(channel)
        out["apps"] = list(api.ListApplications(serve_pb2.ListApplicationsRequest()).application_names)
        out["healthz"] = api.Healthz(serve_pb2.HealthzRequest()).message
    out["proxy"] = serve.status().proxy

    # `servegraph deploy` with a config's grpc_options: the proxy (serving nothing else now) moves to them.
    serve.delete("greeter")
    serve.delete("broken")
    with open("grpc_app.yaml", "w") as f:
        f.write(CONFIG.format(http_port=http_port, grpc_port=second_port, servicer=SERVICER))
    address = ray.get_runtime_context().gcs_address
    deployed = subprocess.run([sys.executable, "-m", "servegraph", "deploy", "grpc_app.yaml", "--address", address],
                              capture_output=True, text=True, timeout=200)
    assert deployed.returncode == 0, deployed.stderr
    with grpc.insecure_channel(f"127.0.0.1:{second_port}") as channel:
        stub = serve_pb2_grpc.UserDefinedServiceStub(channel)
        out["config"] = stub.Method1(message(name="Cy")).greeting   # one application: no metadata needed
    print(json.dumps(out))
    serve.shutdown()
    ray.shutdown()
""")


@pytest.mark.ray  # a cluster of its own, in a child process
def test_grpc_clients_reach_deployments_through_the_proxy(tmp_path):
    ports = [str(free_port()) for _ in range(3)]
    work = tmp_path / "work"
    work.mkdir()
    # The example module and the config the script writes live in a folder of the test's own.
    (work / "grpc_ingress.py").write_text((EXAMPLES / "grpc_ingress.py").read_text())
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, *ports], capture_output=True, text=True, timeout=280,
        env=user_env(tmp_path), cwd=work,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["call"] == ["Hello Ada from Paris", 42]
    assert out["method1"] == "Method1 greets Ada"
    assert out["stream"] == [[f"{i}: hello Ada", i * 2] for i in range(3)]
    assert out["unknown"][0] == "NOT_FOUND"
    assert "Application 'nope' not found" in out["unknown"][1] and "broken, greeter" in out["unknown"][1]
    assert out["error"] == ["INTERNAL", "ValueError: no greeting for Bo"]
    assert out["apps"] == ["broken", "greeter"]
    assert out["healthz"] == "success"
    assert out["proxy"]["grpc_port"] == int(ports[0])
    assert out["config"] == "Method1 greets Cy"
