"""Ray Serve's FastAPI ingress tests (test_fastapi.py), ported by changing imports and the old
``Deployment.deploy()`` calls to ``serve.run``; over real HTTP on the session's proxy."""

from __future__ import annotations

import contextlib
import time
from typing import Any, Optional

import httpx
import pytest
import ray
from fastapi import APIRouter, BackgroundTasks, Cookie, Depends, FastAPI, Header, Query, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

import servegraph as serve

# test_class_based_view --------------------------------------------------------------------

cbv_app = FastAPI()


@cbv_app.get("/other")
def hello():
    return "hello"


@serve.deployment(name="f")
@serve.ingress(cbv_app)
class A:
    def __init__(self):
        self.val = 1

    @cbv_app.get("/calc/{i}")
    def b(self, i: int):
        return i + self.val

    @cbv_app.post("/calc/{i}")
    def c(self, i: int):
        return i - self.val

    def other(self, msg: str):
        return msg


# test_fastapi_features ----------------------------------------------------------------------

features = FastAPI(openapi_url="/my_api.json")


@features.on_event("startup")
def inject_state():
    features.state.state_one = "app.state"


@features.middleware("http")
async def add_process_time_header(request: Request, call_next):
    start_time = time.time()
    response = await call_next(request)
    response.headers["X-Process-Time"] = str(time.time() - start_time)
    return response


class Nested(BaseModel):
    val: int


class BodyType(BaseModel):
    name: str
    price: float = Field(None, gt=1.0, description="High price!")
    nests: Nested


class RespModel(BaseModel):
    ok: bool
    vals: list[Any]
    file_path: str


async def yield_db():
    yield "db"


async def common_parameters(q: Optional[str] = None):  # noqa: UP045 (Ray's code, as written)
    return {"q": q}


@features.exception_handler(ValueError)
async def custom_handler(_: Request, exc: ValueError):
    return JSONResponse(status_code=500, content={"custom_error": "true", "message": str(exc)})


def run_background(background_tasks: BackgroundTasks):
    import tempfile

    _, path = tempfile.mkstemp()

    def write_to_file(p):
        with open(p, "w") as f:
            f.write("hello")

    background_tasks.add_task(write_to_file, path)
    return path


features.add_middleware(CORSMiddleware, allow_origins="*")


@features.get("/{path_arg}", response_model=RespModel, status_code=201)
async def func(
    path_arg: str,
    query_arg: str,
    body_val: BodyType,
    backgrounds_tasks: BackgroundTasks,
    do_error: bool = False,
    query_arg_valid: Optional[str] = Query(None, min_length=3),  # noqa: UP045, B008
    cookie_arg: Optional[str] = Cookie(None),  # noqa: UP045, B008
    user_agent: Optional[str] = Header(None),  # noqa: UP045, B008
    commons: dict = Depends(common_parameters),  # noqa: B008
    db=Depends(yield_db),  # noqa: B008
):
    if do_error:
        raise ValueError("bad input")
    path = run_background(backgrounds_tasks)
    return RespModel(
        ok=True,
        vals=[
            path_arg,
            query_arg,
            body_val.price,
            body_val.nests.val,
            do_error,
            query_arg_valid,
            cookie_arg,
            user_agent.split("/")[0],
            commons,
            db,
            features.state.state_one,
        ],
        file_path=path,
    )


router = APIRouter(prefix="/prefix")


@router.get("/subpath")
def router_path():
    return "ok"


features.include_router(router)


@serve.deployment(name="fastapi")
@serve.ingress(features)
class Worker:
    pass


# test_fastapi_method_redefinition, test_fastapi_multiple_headers ---------------------------------

redefined = FastAPI()


@serve.deployment
@serve.ingress(redefined)
class Redefined:
    @redefined.get("/")
    def method(self):
        return "hi get"

    @redefined.post("/")
    def method(self):  # noqa: F811 method redefinition
        return "hi post"


cookies = FastAPI()


@cookies.get("/")
def set_cookies(resp: Response):
    resp.set_cookie(key="a", value="b")
    resp.set_cookie(key="c", value="d")
    return "hello"


@serve.deployment
@serve.ingress(cookies)
class Cookies:
    pass


# test_include_router: routes of the ingress class declared on an included APIRouter ---------------------

routed = FastAPI()
items = APIRouter(prefix="/items")
versioned = APIRouter()
late = APIRouter()


@items.get("/plain")
def items_plain():
    return "plain"


# Included before the class's routes are declared on them: FastAPI includes a router by reference.
routed.include_router(items)
routed.include_router(versioned, prefix="/v1")


@serve.deployment
@serve.ingress(routed)
class Routed:
    def __init__(self):
        self.offset = 100

    @late.get("/late")
    def late_route(self):
        return self.offset

    @items.get("/{i}")
    def item(self, i: int):
        return i + self.offset

    @versioned.post("/echo")
    def echo(self, body: Nested):
        return {"val": body.val + self.offset}


# Included after @serve.ingress ran: the deployment serves the app as it was then (as Ray Serve, which freezes a copy).
routed.include_router(late, prefix="/after")
routed.get("/too-late")(lambda: "never served")


# test_fastapi_same_app_multiple_deployments ----------------------------------------------------------

shared = FastAPI()


@shared.get("/common")
def common():
    return "common"


@serve.deployment
@serve.ingress(shared)
class CounterDeployment1:
    @shared.get("/incr")
    def incr(self):
        return "incr"

    @shared.get("/decr")
    def decr(self):
        return "decr"


@serve.deployment
@serve.ingress(shared)
class CounterDeployment2:
    @shared.get("/incr2")
    def incr2(self):
        return "incr2"

    @shared.get("/decr2")
    def decr2(self):
        return "decr2"


# test_fastapi_shutdown_hook, with a lifespan context manager --------------------------------------------------


def append_line(path: str, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    append_line(app.state.trace, "startup")
    yield
    append_line(app.state.trace, "shutdown")


with_lifespan = FastAPI(lifespan=lifespan)


@serve.deployment
@serve.ingress(with_lifespan)
class WithLifespan:
    def __init__(self, trace: str):
        with_lifespan.state.trace = trace

    def __del__(self):
        append_line(with_lifespan.state.trace, "del")

    @with_lifespan.get("/")
    def root(self):
        return "up"


@pytest.fixture(scope="module")
def url(deploy, http_port) -> dict:
    handles = {
        "f": deploy(A.bind(), name="fastapi-cbv", route_prefix="/f"),
        "fastapi": deploy(Worker.bind(), name="fastapi-features", route_prefix="/fastapi"),
        "a": deploy(Redefined.bind(), name="fastapi-redefined", route_prefix="/a"),
        "cookies": deploy(Cookies.bind(), name="fastapi-cookies", route_prefix="/cookies"),
        "routed": deploy(Routed.bind(), name="fastapi-routed", route_prefix="/routed"),
        "counter1": deploy(CounterDeployment1.bind(), name="fastapi-counter1", route_prefix="/counter1"),
        "counter2": deploy(CounterDeployment2.bind(), name="fastapi-counter2", route_prefix="/counter2"),
    }
    return {"base": f"http://127.0.0.1:{http_port}", **handles}


def test_class_based_view(url):
    base = url["base"]
    assert httpx.get(f"{base}/f/calc/41", timeout=60).json() == 42
    assert httpx.post(f"{base}/f/calc/41", timeout=60).json() == 40
    assert httpx.get(f"{base}/f/other", timeout=60).json() == "hello"
    handle = url["f"]
    assert ray.get(handle.b.remote(41), timeout=60) == 42
    assert ray.get(handle.c.remote(41), timeout=60) == 40
    assert ray.get(handle.other.remote("world"), timeout=60) == "world"


def test_fastapi_features(url):
    base = f"{url['base']}/fastapi"
    resp = httpx.get(f"{base}/", timeout=60)
    assert resp.status_code == 404
    assert "x-process-time" in resp.headers
    assert httpx.get(f"{base}/my_api.json", timeout=60).json()
    for page in ("docs", "redoc"):
        resp = httpx.get(f"{base}/{page}", timeout=60)
        assert resp.status_code == 200 and "<!DOCTYPE html>" in resp.text
    assert httpx.get(f"{base}/path_arg", timeout=60).status_code == 422
    params = {"query_arg": "query_arg", "query_arg_valid": "at-least-three-chars", "q": "common_arg"}
    body = {"name": "serve", "price": 12, "nests": {"val": 1}}
    headers = {"user-agent": "python-requests/2"}
    resp = httpx.request("GET", f"{base}/path_arg", json=body, params=params, headers=headers, timeout=60)
    assert resp.status_code == 201, resp.text
    assert resp.json()["ok"]
    assert resp.json()["vals"] == [
        "path_arg",
        "query_arg",
        12.0,
        1,
        False,
        "at-least-three-chars",
        None,
        "python-requests",
        {"q": "common_arg"},
        "db",
        "app.state",
    ]
    with open(resp.json()["file_path"]) as f:  # the replica runs on this machine
        assert f.read() == "hello"
    resp = httpx.request(
        "GET", f"{base}/path_arg", json=body, params={**params, "do_error": "true"}, headers=headers, timeout=60
    )
    assert resp.status_code == 500
    assert resp.json()["custom_error"] == "true"
    assert httpx.get(f"{base}/prefix/subpath", timeout=60).status_code == 200
    resp = httpx.get(
        f"{base}/docs", headers={"Access-Control-Request-Method": "GET", "Origin": "https://googlebot.com"}, timeout=60
    )
    assert resp.headers["access-control-allow-origin"] == "*", resp.headers


def test_fastapi_method_redefinition(url):
    assert httpx.get(f"{url['base']}/a/", timeout=60).json() == "hi get"
    assert httpx.post(f"{url['base']}/a/", timeout=60).json() == "hi post"


def test_fastapi_multiple_headers(url):
    resp = httpx.get(f"{url['base']}/cookies", timeout=60)
    assert dict(resp.cookies) == {"a": "b", "c": "d"}


def test_include_router(url):
    """Routes on an included APIRouter, the class's own among them, with the router's and the include's prefixes."""
    base = f"{url['base']}/routed"
    assert httpx.get(f"{base}/items/plain", timeout=60).json() == "plain"
    assert httpx.get(f"{base}/items/1", timeout=60).json() == 101
    assert httpx.post(f"{base}/v1/echo", json={"val": 1}, timeout=60).json() == {"val": 101}
    assert httpx.get(f"{base}/after/late", timeout=60).status_code == 404  # added after @serve.ingress
    assert httpx.get(f"{base}/too-late", timeout=60).status_code == 404
    schema = httpx.get(f"{base}/openapi.json", timeout=60).json()
    assert {"/items/plain", "/items/{i}", "/v1/echo"} <= set(schema["paths"])
    assert "/too-late" not in schema["paths"]
    assert [p["name"] for p in schema["paths"]["/items/{i}"]["get"]["parameters"]] == ["i"]  # no `self`


def test_fastapi_nested_field_in_response_model(deploy, http_port):
    """Ray's test, defined in the test (so pickled by value), with the routes on an included router."""

    class TestModel(BaseModel):
        a: str
        b: list[str]

    app = FastAPI()
    router = APIRouter(prefix="/r")

    @router.get("/", response_model=TestModel)
    def test_endpoint():
        return TestModel(a="a", b=["b"])

    app.include_router(router, prefix="/api")

    @serve.deployment
    @serve.ingress(app)
    class TestDeployment:
        def __init__(self):
            self.b = "inner"

        @router.get("/inner", response_model=TestModel)
        def test_endpoint_2(self):
            return TestModel(a="a", b=[self.b])

    deploy(TestDeployment.bind(), name="fastapi-nested", route_prefix="/nested")
    base = f"http://127.0.0.1:{http_port}/nested"
    assert httpx.get(f"{base}/api/r/", timeout=60).json() == {"a": "a", "b": ["b"]}
    assert httpx.get(f"{base}/api/r/inner", timeout=60).json() == {"a": "a", "b": ["inner"]}


def test_an_app_with_a_router_pickles_again_where_it_was_unpickled(ray_cluster):
    """The controller unpickles a deployment and pickles it again for each replica it starts, and may never
    have run @serve.ingress itself (an included router's lock stopped it); a new Ray worker stands in for it."""
    app = FastAPI()
    router = APIRouter(prefix="/r")
    app.include_router(router)

    @serve.ingress(app)
    class Ingress:
        @router.get("/")
        def root(self):
            return "root"

    # Its own runtime_env: a worker of its own, started for it (and ended after it, max_calls=1).
    @ray.remote(max_calls=1, runtime_env={"env_vars": {"SERVEGRAPH_TEST_WORKER": "pickles-again"}})
    def pickle_again(target) -> int:
        import ray.cloudpickle

        return len(ray.cloudpickle.dumps(target))

    assert ray.get(pickle_again.remote(Ingress), timeout=120) > 0


def test_fastapi_same_app_multiple_deployments(url):
    """Each deployment serves the app's own routes and its class's, not the other class's."""
    base = url["base"]
    should_work = [
        ("/counter1/incr", "incr"),
        ("/counter1/decr", "decr"),
        ("/counter2/incr2", "incr2"),
        ("/counter2/decr2", "decr2"),
        ("/counter1/common", "common"),
        ("/counter2/common", "common"),
    ]
    for path, body in should_work:
        assert httpx.get(base + path, timeout=60).json() == body, path
    for path in ("/counter2/incr", "/counter2/decr", "/counter1/incr2", "/counter1/decr2"):
        assert httpx.get(base + path, timeout=60).status_code == 404, path


def test_fastapi_duplicate_routes(deploy, http_port):
    """Two classes, one app, the same path: each deployment answers with its own class's route."""
    app = FastAPI()

    @serve.deployment
    @serve.ingress(app)
    class App1:
        @app.get("/")
        def func_v1(self):
            return "first"

    @serve.deployment
    @serve.ingress(app)
    class App2:
        @app.get("/")
        def func_v2(self):
            return "second"

    deploy(App1.bind(), name="fastapi-v1", route_prefix="/api/v1")
    deploy(App2.bind(), name="fastapi-v2", route_prefix="/api/v2")
    base = f"http://127.0.0.1:{http_port}/api"
    assert httpx.get(f"{base}/v1", timeout=60).json() == "first"
    assert httpx.get(f"{base}/v2", timeout=60).json() == "second"
    # Ray Serve also answers 404 for a route added to the app after both classes (it copies the app when
    # @serve.ingress runs); servegraph serves the app as it is when deployed, so that part is left out.


def test_fastapi_shutdown_hook(deploy, tmp_path):
    """Ray's test: the app's shutdown hook, then the class's __del__, run when the deployment is deleted."""
    trace = tmp_path / "trace"
    app = FastAPI()

    @app.on_event("shutdown")
    def call_signal():
        append_line(app.state.trace, "shutdown")

    @serve.deployment
    @serve.ingress(app)
    class A:
        def __init__(self, trace: str):
            app.state.trace = trace

        def __del__(self):
            append_line(app.state.trace, "del")

    deploy(A.bind(str(trace)), name="fastapi-shutdown")
    assert not trace.exists()
    serve.delete("fastapi-shutdown")
    assert trace.read_text().splitlines() == ["shutdown", "del"]  # delete waits until its replicas are gone


def test_fastapi_failing_shutdown_hook(deploy, tmp_path):
    """Ray's test_fastapi_init_lifespan_should_not_shutdown: a shutdown hook that raises does not stop the
    replica from starting, nor, when it stops, the class's __del__ from running."""
    trace = tmp_path / "trace"
    app = FastAPI()

    @app.on_event("shutdown")
    async def shutdown():
        raise ZeroDivisionError("the app fails as it shuts down")

    @serve.deployment
    @serve.ingress(app)
    class A:
        def __init__(self, trace: str):
            self.trace = trace

        def f(self):
            return 1

        def __del__(self):
            append_line(self.trace, "del")

    handle = deploy(A.bind(str(trace)), name="fastapi-failing-shutdown")
    assert handle.f.remote().result(timeout_s=60) == 1
    serve.delete("fastapi-failing-shutdown")
    assert trace.read_text().splitlines() == ["del"]


def test_fastapi_lifespan_exit_runs_on_delete(deploy, http_port, tmp_path):
    """A lifespan context manager's exit runs when the replica stops, before the class's __del__."""
    trace = tmp_path / "trace"
    deploy(WithLifespan.bind(str(trace)), name="fastapi-lifespan", route_prefix="/lifespan")
    assert httpx.get(f"http://127.0.0.1:{http_port}/lifespan/", timeout=60).json() == "up"
    assert trace.read_text().splitlines() == ["startup"]
    serve.delete("fastapi-lifespan")
    assert trace.read_text().splitlines() == ["startup", "shutdown", "del"]
