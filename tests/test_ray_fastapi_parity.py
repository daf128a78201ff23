"""Ray Serve's FastAPI ingress tests (test_fastapi.py), ported by changing imports and the old
``Deployment.deploy()`` calls to ``serve.run``; over real HTTP on the session's proxy."""

from __future__ import annotations

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


@pytest.fixture(scope="module")
def url(deploy, http_port) -> dict:
    handles = {
        "f": deploy(A.bind(), name="fastapi-cbv", route_prefix="/f"),
        "fastapi": deploy(Worker.bind(), name="fastapi-features", route_prefix="/fastapi"),
        "a": deploy(Redefined.bind(), name="fastapi-redefined", route_prefix="/a"),
        "cookies": deploy(Cookies.bind(), name="fastapi-cookies", route_prefix="/cookies"),
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
