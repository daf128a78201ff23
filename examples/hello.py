"""The hello app: a classifier that forwards to a Spanish or French responder.

Run it:  servegraph run hello:language_classifier   (from this directory)
Then:    python hello_client.py                      -> Hola Dora
"""

# __hello_start__
from starlette.requests import Request

import servegraph as serve


@serve.deployment
class SpanishResponder:
    def say_hello(self, name: str):
        return f"Hola {name}"


@serve.deployment
class FrenchResponder:
    def say_hello(self, name: str):
        return f"Bonjour {name}"


@serve.deployment
class LanguageClassifier:
    def __init__(self, spanish_responder, french_responder):
        self.spanish_responder = spanish_responder
        self.french_responder = french_responder

    async def __call__(self, http_request: Request) -> str:
        request = await http_request.json()
        language, name = request["language"], request["name"]

        if language == "spanish":
            ref = await self.spanish_responder.say_hello.remote(name)
        elif language == "french":
            ref = await self.french_responder.say_hello.remote(name)
        else:
            return "Please try again."

        return await ref


spanish_responder = SpanishResponder.bind()
french_responder = FrenchResponder.bind()
language_classifier = LanguageClassifier.bind(spanish_responder, french_responder)
# __hello_end__
