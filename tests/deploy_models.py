"""Deployments for tests/test_deploy.py, importable by MODULE:ATTR as a deploy config needs."""

import os

import servegraph as serve


@serve.deployment(user_config={"greeting": "Hola"})
class Greeter:
    def __init__(self):
        self.greeting = None

    def reconfigure(self, config: dict) -> None:
        self.greeting = config["greeting"]

    def __call__(self, name: str) -> dict:
        return {"text": f"{self.greeting} {name}", "pid": os.getpid()}


@serve.deployment
class Front:
    def __init__(self, greeter):
        self.greeter = greeter

    async def __call__(self, name: str) -> dict:
        reply = await (await self.greeter.remote(name))
        return {**reply, "front_pid": os.getpid()}


app = Front.bind(Greeter.bind())
