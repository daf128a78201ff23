"""A canary release: 90% of requests go to the stable model, 10% to the candidate, chosen per request.

    servegraph run canary:app
    curl -d '{"text": "hello there", "lang": "en"}' localhost:8000/

The split's weights are written to the deploy config (`servegraph build canary:app`) as the
``user_config`` of its ``DAGDriver`` entry (``splits: {rollout: {stable: 90, canary: 10}}``); edit them
there and `servegraph deploy` the file again to shift traffic (to 50/50, then 0/100). No replica
restarts: only the routing changes. A switch in front picks the model
family by language, and only the branch a request takes runs.
"""

from typing import Literal

import servegraph as serve
from servegraph import InputNode, Split, Switch


@serve.deployment
class Summarizer:
    """A stand-in model: its version shows in every answer."""

    def __init__(self, version: str):
        self.version = version

    def __call__(self, text: str) -> dict:
        words = text.split()
        return {"model": self.version, "summary": " ".join(words[:3])}


@serve.deployment
def spanish_summarizer(text: str) -> dict:
    return {"model": "es-1", "summary": text.split(".")[0]}


@serve.deployment
def language(lang: str) -> Literal["en", "es"]:
    return "es" if lang.lower().startswith("es") else "en"


stable = Summarizer.options(name="stable").bind("v1")
candidate = Summarizer.options(name="candidate").bind("v2")

with InputNode() as request:
    english = Split(
        {"stable": stable.__call__.bind(request["text"]), "canary": candidate.__call__.bind(request["text"])},
        weights={"stable": 90, "canary": 10},
        name="rollout",
    )
    app = Switch(
        language.bind(request["lang"]),
        {"en": english, "es": spanish_summarizer.bind(request["text"])},
    )
