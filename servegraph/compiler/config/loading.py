"""Read and validate deploy configs: YAML or JSON files, or the ``serveConfigV2`` of a KubeRay RayService.

Every problem is reported with the file and its path in the file
(``hello.yaml: applications[0].deployments[1].num_replicas: must be >= 1, got 0``).
"""

from __future__ import annotations

import os
from typing import Any

import yaml
from pydantic import ValidationError

from ..._validation import format_errors
from ...errors import ConfigError
from .schema import ServeConfig


def validate_config(data: Any, source: str = "<config>") -> ServeConfig:
    """Validate a parsed config (a dict) into a :class:`ServeConfig`.

    Raises:
        ConfigError: one line per problem, each ``SOURCE: path.in.file: what is wrong, got VALUE``.
    """
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping with 'applications' at the top level, got {type(data).__name__}"
        )
    try:
        config = ServeConfig.model_validate(data)
    except ValidationError as exc:
        lines = [f"{source}: {line}" for line in format_errors(exc, "", ServeConfig)]
        if "applications" not in data and "import_path" in data:
            lines.append(
                f"{source}: this looks like a single-application config; put it in a list under 'applications:'"
            )
        message = lines[0] if len(lines) == 1 else f"{len(lines)} problems in {source}:\n" + "\n".join(
            "  " + line for line in lines
        )
        raise ConfigError(message) from None
    for i, app in enumerate(config.applications):
        app._source, app._path = source, f"applications[{i}]"
    return config


def load_config(path: str | os.PathLike[str]) -> ServeConfig:
    """Read and validate a deploy config (YAML or JSON), or the ``serveConfigV2`` of a KubeRay RayService.

    Raises:
        ConfigError: the file cannot be read or parsed, or is not a valid config;
            the message lists every problem with the file name and its path in the file.
    """
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read the config: {exc.strerror}") from None
    data = _parse_yaml(text, source)
    if isinstance(data, dict) and data.get("kind") == "RayService":
        source = f"{source} (spec.serveConfigV2)"
        embedded = (data.get("spec") or {}).get("serveConfigV2")
        if not isinstance(embedded, str):
            raise ConfigError(f"{source}: the RayService has no serveConfigV2 string")
        data = _parse_yaml(embedded, source)
    return validate_config(data, source)


def _parse_yaml(text: str, source: str) -> Any:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None
    if data is None:
        raise ConfigError(f"{source}: the config is empty; expected a mapping with 'applications'")
    return data
