"""Model multiplexing: one deployment serving many models, each replica holding the few it was asked for.

    cd examples && servegraph run multiplexing:app
    curl -H 'serve_multiplexed_model_id: spanish' 127.0.0.1:8000/?name=Dora    # Hola Dora
    curl -H 'serve_multiplexed_model_id: french' 127.0.0.1:8000/?name=Dora     # Bonjour Dora

Requests for a model go to a replica that already holds it; each replica keeps at most two models and
unloads the least recently used one (calling its ``__del__``) to make room for a third.
"""

import asyncio
import os

from starlette.requests import Request

import servegraph as serve

GREETINGS = {"spanish": "Hola", "french": "Bonjour", "german": "Hallo", "italian": "Ciao"}


class Greeter:
    """Stands in for a model loaded from storage."""

    def __init__(self, language: str):
        self.greeting = GREETINGS.get(language, "Hello")

    def __call__(self, name: str) -> str:
        return f"{self.greeting} {name}"

    def __del__(self):
        print(f"unloaded the {self.greeting!r} model")


@serve.deployment(num_replicas=2)
class Greeters:
    @serve.multiplexed(max_num_models_per_replica=2)
    async def get_model(self, language: str) -> Greeter:
        await asyncio.sleep(0.1)  # loading a model takes a while: each replica does it once per model
        return Greeter(language)

    async def __call__(self, request: Request) -> str:
        model = await self.get_model(serve.get_multiplexed_model_id())
        return model(request.query_params.get("name", "there"))

    async def greet(self, name: str) -> dict:
        """For handle callers: which replica answered, to see the routing."""
        model = await self.get_model(serve.get_multiplexed_model_id())
        return {"text": model(name), "replica_pid": os.getpid()}


app = Greeters.bind()
