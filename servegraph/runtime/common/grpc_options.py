"""Ray Serve's ``grpc_options``, checked on the driver's side (no grpcio needed here).

gRPC is on when ``grpc_servicer_functions`` names at least one generated ``add_XServicer_to_server``
function, as in Ray Serve; then every HTTP proxy also serves gRPC on ``port`` (see grpc_proxy.py).
"""

from __future__ import annotations

from typing import Any

#: The options the gRPC ingress applies, with Ray Serve's names and defaults (``ray.serve.config.gRPCOptions``).
GRPC_OPTION_DEFAULTS: dict[str, Any] = {
    "port": 9000,
    "grpc_servicer_functions": [],
    "request_timeout_s": None,
    "enable_reflection": True,
}


def grpc_options_dict(value: Any) -> dict[str, Any]:
    """``grpc_options`` (a dict, Ray's ``gRPCOptions``, or any object with its attributes) as a checked dict.

    The answer is ``{}`` when no servicer function is named (gRPC off, as in Ray Serve), else every
    option of :data:`GRPC_OPTION_DEFAULTS`, filled in.

    >>> grpc_options_dict({"grpc_servicer_functions": ["m.add_S_to_server"]})["port"]
    9000
    >>> grpc_options_dict(None)
    {}

    Raises:
        TypeError: an option the gRPC ingress does not know, or a value of the wrong type.
        ValueError: a value out of range, or a servicer function that is not ``module.function``.
    """
    if value is None:
        return {}
    if isinstance(value, dict):
        given = dict(value)
        unknown = sorted(set(given) - set(GRPC_OPTION_DEFAULTS))
        if unknown:
            raise TypeError(
                f"grpc_options got {', '.join(unknown)}, which servegraph's gRPC ingress does not know; it takes "
                f"{', '.join(GRPC_OPTION_DEFAULTS)}"
            )
    else:  # Ray's gRPCOptions, or anything shaped like it
        given = {k: getattr(value, k) for k in GRPC_OPTION_DEFAULTS if hasattr(value, k)}
        if "grpc_servicer_functions" not in given:
            raise TypeError(f"grpc_options must be a dict or a gRPCOptions, got {type(value).__name__}")
    options = {**GRPC_OPTION_DEFAULTS, **{k: v for k, v in given.items() if v is not None or k == "request_timeout_s"}}
    functions = options["grpc_servicer_functions"]
    if isinstance(functions, str) or not all(isinstance(f, str) for f in functions):
        raise TypeError(
            "grpc_options.grpc_servicer_functions must be a list of import paths, e.g. "
            f"['my_pb2_grpc.add_MyServiceServicer_to_server'], got {functions!r}"
        )
    for path in functions:
        module, _, name = path.rpartition(".")
        if not module or not name:
            raise ValueError(
                f"grpc_options.grpc_servicer_functions: {path!r} is not an import path; write "
                "'module.add_XServicer_to_server' (the function protoc generated in module_pb2_grpc)"
            )
    port = options["port"]
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"grpc_options.port must be an int, got {port!r}")
    if not 1 <= port <= 65535:
        raise ValueError(f"grpc_options.port must be between 1 and 65535, got {port}")
    timeout = options["request_timeout_s"]
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise ValueError(f"grpc_options.request_timeout_s must be a positive number of seconds, got {timeout!r}")
    if not isinstance(options["enable_reflection"], bool):
        raise TypeError(f"grpc_options.enable_reflection must be true or false, got {options['enable_reflection']!r}")
    if not functions:
        return {}
    return {**options, "grpc_servicer_functions": list(dict.fromkeys(functions))}
