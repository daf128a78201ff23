"""Ray Serve's HTTP adapters: functions that turn an HTTP request into a graph's input.

Pass one to ``DAGDriver.bind(graph, http_adapter=...)``. As in Ray Serve, an
adapter is a FastAPI dependency: it may take the ``starlette.requests.Request``,
typed query parameters, a pydantic model read from the JSON body, or a file
from a form. A pydantic model class is an adapter too (the body, validated).
The default, :func:`starlette_request`, hands the graph the Request itself.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any, Optional, Union

import starlette.requests
from pydantic import BaseModel, Field

_1DArray = list[float]
_2DArray = list[list[float]]
_3DArray = list[list[list[float]]]
_4DArray = list[list[list[list[float]]]]


class NdArray(BaseModel):
    """Schema for numeric array input: a nested list, optionally reshaped and cast."""

    array: Union[_1DArray, _2DArray, _3DArray, _4DArray] = Field(  # noqa: UP007 (pydantic reads it at runtime)
        ...,
        description="The array as a nested list (1D to 4D), or flattened together with `shape`.",
    )
    shape: Optional[list[int]] = Field(default=None, description="If present, the array is reshaped to it.")  # noqa: UP045
    dtype: Optional[str] = Field(default=None, description="If present, the array is cast with `astype`.")  # noqa: UP045


def json_to_ndarray(payload: NdArray) -> Any:
    """The NdArray JSON body as a numpy array."""
    import numpy as np

    arr = np.array(payload.array)
    if payload.shape:
        arr = arr.reshape(*payload.shape)
    if payload.dtype:
        arr = arr.astype(payload.dtype)
    return arr


def json_to_multi_ndarray(payload: dict[str, NdArray]) -> dict[str, Any]:
    """A JSON body ``{key: NdArray}`` as a dict of numpy arrays."""
    return {key: json_to_ndarray(arr) for key, arr in payload.items()}


def starlette_request(request: starlette.requests.Request) -> starlette.requests.Request:
    """The request itself (Ray Serve's default adapter)."""
    return request


async def json_request(request: starlette.requests.Request) -> Any:
    """The JSON body of the request."""
    return await request.json()


def _image_to_ndarray() -> Any:
    """``image_to_ndarray``, made on first use: its ``File(...)`` default needs FastAPI, whose import (0.2-0.3 s,
    most of it building OpenAPI's models) every process that imports this module would pay otherwise, replicas
    and the proxy among them."""
    from fastapi import File

    def image_to_ndarray(img: bytes = File(...)) -> Any:  # noqa: B008 (FastAPI reads the default)
        """A PIL-readable file from an HTTP form as a numpy array (needs Pillow: pip install pillow)."""
        try:
            from PIL import Image
        except ImportError:
            raise ImportError("image_to_ndarray needs Pillow: pip install pillow") from None
        import numpy as np

        return np.array(Image.open(BytesIO(img)))

    image_to_ndarray.__module__ = __name__
    image_to_ndarray.__qualname__ = "image_to_ndarray"
    return image_to_ndarray


def __getattr__(name: str) -> Any:
    if name == "image_to_ndarray":
        value = globals()[name] = _image_to_ndarray()  # kept: pickled by reference, it must be this one
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


async def pandas_read_json(raw_request: starlette.requests.Request) -> Any:
    """The JSON body as a pandas DataFrame: ``pandas.read_json(body, **query_params)`` (needs pandas)."""
    try:
        import pandas as pd  # type: ignore[import-untyped]
    except ImportError:
        raise ImportError("pandas_read_json needs pandas: pip install pandas") from None
    from io import StringIO

    raw_json = await raw_request.body()
    text = raw_json.decode("utf-8") if isinstance(raw_json, bytes) else raw_json
    return pd.read_json(StringIO(text), **raw_request.query_params)


__all__ = [
    "NdArray",
    "image_to_ndarray",  # noqa: F822 (made on first use, see __getattr__)
    "json_request",
    "json_to_multi_ndarray",
    "json_to_ndarray",
    "pandas_read_json",
    "starlette_request",
]
