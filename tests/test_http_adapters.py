"""servegraph.http_adapters behave as Ray Serve's, called directly (no cluster)."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest

from servegraph.http_adapters import (
    NdArray,
    image_to_ndarray,
    json_request,
    json_to_multi_ndarray,
    json_to_ndarray,
    pandas_read_json,
    starlette_request,
)
from servegraph.runtime.common.http_codec import make_request


def request(body: bytes, query: bytes = b"") -> object:
    scope = {"type": "http", "method": "POST", "path": "/", "query_string": query, "headers": []}
    return make_request(scope, body)


def test_json_to_ndarray_reshapes_and_casts():
    arr = json_to_ndarray(NdArray(array=[1, 2, 3, 4], shape=[2, 2], dtype="int32"))
    assert arr.dtype == np.int32 and arr.tolist() == [[1, 2], [3, 4]]


def test_json_to_multi_ndarray():
    out = json_to_multi_ndarray({"a": NdArray(array=[[1.0]]), "b": NdArray(array=[1, 2], dtype="float32")})
    assert out["a"].shape == (1, 1) and out["b"].dtype == np.float32


def test_starlette_request_and_json_request():
    req = request(b'{"x": 1}')
    assert starlette_request(req) is req
    assert asyncio.run(json_request(request(b'{"x": 1}'))) == {"x": 1}


def test_pandas_read_json_passes_query_parameters():
    pd = pytest.importorskip("pandas")
    frame = asyncio.run(pandas_read_json(request(b'{"a": {"0": 1, "1": 2}}', b"orient=columns")))
    assert isinstance(frame, pd.DataFrame) and frame["a"].tolist() == [1, 2]


def test_image_to_ndarray():
    image = pytest.importorskip("PIL.Image")
    buffer = io.BytesIO()
    image.new("RGB", (3, 2)).save(buffer, format="PNG")
    assert image_to_ndarray(buffer.getvalue()).shape == (2, 3, 3)


def test_requests_made_for_replicas_survive_pickling():
    import pickle

    req = pickle.loads(pickle.dumps(request(b'{"x": 2}', b"q=1")))
    assert asyncio.run(req.json()) == {"x": 2} and req.query_params["q"] == "1"
