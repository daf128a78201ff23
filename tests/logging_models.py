"""The hello graph, with deployments that log, for tests/test_request_logs.py (importable as a deploy config needs).

As examples/hello.py, except that the classifier greets in both languages, so one request reaches all three
deployments, and each writes a line through Ray Serve's logger.
"""

import logging

from starlette.requests import Request

import servegraph as serve

logger = logging.getLogger("ray.serve")


@serve.deployment
class SpanishResponder:
    def say_hello(self, name: str) -> str:
        logger.info(f"spanish greets {name}")
        return f"Hola {name}"


@serve.deployment
class FrenchResponder:
    def say_hello(self, name: str) -> str:
        logger.warning(f"french greets {name}")
        return f"Bonjour {name}"


@serve.deployment
class LanguageClassifier:
    def __init__(self, spanish_responder, french_responder):
        self.spanish_responder = spanish_responder
        self.french_responder = french_responder

    async def __call__(self, http_request: Request) -> str:
        name = (await http_request.json())["name"]
        logger.info(f"classifier got {name}")
        spanish = await (await self.spanish_responder.say_hello.remote(name))
        french = await (await self.french_responder.say_hello.remote(name))
        return f"{spanish} / {french}"


language_classifier = LanguageClassifier.bind(SpanishResponder.bind(), FrenchResponder.bind())
