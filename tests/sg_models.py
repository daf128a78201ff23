"""Deployments the grammar tests import: from .sg snippets (``from sg_models import ...``) and generated graphs."""

from __future__ import annotations

import servegraph as serve


@serve.deployment
class Model:
    """Takes anything, so generated graphs always bind."""

    def __init__(self, *args, **kwargs):
        self.args = args

    def predict(self, *args, **kwargs):
        return args

    def __call__(self, *args, **kwargs):
        return args

    def reconfigure(self, config):  # generated graphs may set a user_config
        self.config = config


@serve.deployment(num_replicas=2, max_ongoing_requests=3)
class Scaled:
    def __init__(self, *args, **kwargs):
        self.args = args

    def run(self, *args, **kwargs):
        return args

    def reconfigure(self, config):
        self.config = config


@serve.deployment
def combine(*args, **kwargs):
    return args


class Plain:
    """Not decorated: a .sg import wraps it with servegraph.deployment()."""

    def __init__(self, weight: float):
        self.weight = weight

    def predict(self, text: str) -> float:
        return len(text) * self.weight


def plain_function(text: str) -> str:
    return text


class Odd:
    """Method names a graph cannot call."""

    def _hidden(self):
        return None

    def options(self):
        return None


def adapter(request):
    return request


NOT_A_DEPLOYMENT = 42

#: A bound node: importing it into a .sg file is an error (build the graph there instead).
bound = Model.bind()
