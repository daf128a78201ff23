"""Graphs with a switch or a split, for tests/test_routing_ray.py: importable by MODULE:ATTR as a deploy config needs.

Every branch is its own deployment that counts the calls it gets, so a test reads, from the replicas
themselves, which branches ran.
"""

from __future__ import annotations

import os
from typing import Literal

import servegraph as serve
from servegraph import InputNode, Split, Switch


@serve.deployment
class Branch:
    """Answers with its tag and pid, and counts the calls it gets."""

    def __init__(self, tag: str):
        self.tag = tag
        self.calls = 0

    def __call__(self, text: str) -> dict:
        self.calls += 1
        return {"branch": self.tag, "text": text, "pid": os.getpid()}

    def count(self) -> int:
        return self.calls


@serve.deployment
def detect(text: str) -> Literal["spanish", "french"]:
    return "spanish" if "hola" in text else "french"


# A switch on an InputNode read, with no default: a value it does not know is HTTP 400.
spanish, french = Branch.bind("spanish"), Branch.bind("french")
with InputNode() as inp:
    switch_app = Switch(inp["lang"], {"spanish": spanish.__call__.bind(inp["text"]), "french": french.__call__.bind(inp["text"])})

# A switch on a node's output: the plan waits for detect's answer, then calls one branch.
es, fr = Branch.bind("es"), Branch.bind("fr")
with InputNode() as inp:
    detected_app = Switch(detect.bind(inp), {"spanish": es.__call__.bind(inp), "french": fr.__call__.bind(inp)})

# A canary: 80/20 in the code; a deploy config's DAGDriver entry (user_config.splits.rollout) changes it.
stable, canary = Branch.bind("stable"), Branch.bind("canary")
with InputNode() as inp:
    split_app = Split(
        {"stable": stable.__call__.bind(inp), "canary": canary.__call__.bind(inp)},
        weights={"stable": 80, "canary": 20},
        name="rollout",
    )
