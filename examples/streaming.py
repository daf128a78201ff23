"""Streaming: a generator deployment, read as it yields through a handle and over HTTP.

    cd examples && servegraph run streaming:app
    curl -N -X POST 127.0.0.1:8000/ -d '{"words": 5}'      # the words arrive one by one
"""

import asyncio

from starlette.requests import Request
from starlette.responses import StreamingResponse

import servegraph as serve


@serve.deployment
class Words:
    async def stream(self, count: int):
        for i in range(count):
            await asyncio.sleep(0.05)  # a model producing tokens
            yield f"word{i} "


@serve.deployment
class Speaker:
    def __init__(self, words):
        self.words = words.options(stream=True)

    async def __call__(self, request: Request) -> StreamingResponse:
        count = (await request.json())["words"]
        return StreamingResponse(self.relay(count), media_type="text/plain")

    async def relay(self, count: int):
        async for word in self.words.stream.remote(count):
            yield word


app = Speaker.bind(Words.bind())
