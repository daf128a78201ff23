"""Pass 4b, options: each deployment's final options, with a deploy config's overrides applied.

Runs after naming because a config names deployments by their final names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..._validation import closest
from ...dsl.nodes import DeploymentNode, FunctionNode
from ...dsl.options import DeploymentOptions, make_options
from ...errors import ConfigError
from .capture import Captured


def resolve_options(
    captured: Captured, names: dict[str, str], overrides: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, DeploymentOptions]:
    """Node key -> options; ``overrides`` maps deployment names to option overrides.

    Raises:
        ConfigError: an override names a deployment the graph does not have.
    """
    options: dict[str, DeploymentOptions] = {}
    for key in names:
        source = captured.sources[key]
        assert isinstance(source, (DeploymentNode, FunctionNode))
        options[key] = source._deployment.deployment_options
    if overrides:
        by_name = {name: key for key, name in names.items()}
        for name, values in overrides.items():
            found = by_name.get(name)
            if found is None:
                hint = closest(name, by_name)
                raise ConfigError(
                    f"the config overrides deployment {name!r}, which the graph does not have"
                    + (f"; did you mean {hint!r}?" if hint else "")
                    + f" Its deployments: {', '.join(sorted(by_name))}."
                )
            options[found] = make_options(options[found], **dict(values))
    return options
