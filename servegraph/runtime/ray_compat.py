"""Ray's private and version-dependent APIs that servegraph uses, in one place.

Each entry says which Ray versions it was checked on and what happens where it is missing,
so a Ray upgrade is read here first. Everything was checked on Ray 2.60.0.

Token authentication: Ray 2.60 turns it on for every new local cluster ``ray.init()``
starts (``RAY_AUTH_MODE=token`` in that process and its children, with a token kept in
``~/.ray/auth_token``, or where ``RAY_AUTH_TOKEN_PATH`` says, or in ``RAY_AUTH_TOKEN``).
A second process reaches that cluster only with ``RAY_AUTH_MODE=token`` and the same
token; Ray sets the mode itself only for a local cluster it finds on its own
(``address="auto"``), never for an address it is given. Ray versions without token
authentication have none of these APIs: there the helpers report "no token needed"
and change nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

#: Ray's environment variables for token authentication (``ray._private.authentication``).
AUTH_MODE_ENV = "RAY_AUTH_MODE"
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"

#: Lines Ray itself writes into every worker's .out and .err files so its log monitor can say which job
#: and actor they belong to (``ray._private.ray_constants.LOG_PREFIX_*``, the same since Ray 2.0).
WORKER_LOG_MARKERS = (":job_id:", ":actor_name:", ":task_name:", ":event_summary:", ":info_message:")


# -- token authentication (ray._raylet, ray._private.authentication; Ray 2.60) -----------------------


def _raylet() -> Any:
    import ray._raylet

    return ray._raylet


def token_auth_supported() -> bool:
    """Whether this Ray knows token authentication at all (False on Ray without it)."""
    return hasattr(_raylet(), "AuthenticationTokenLoader")


def auth_mode() -> str:
    """``"token"`` or ``"disabled"``: the mode this process uses (``"disabled"`` on Ray without auth)."""
    raylet = _raylet()
    if not token_auth_supported():
        return "disabled"
    return "token" if raylet.get_authentication_mode() == raylet.AuthenticationMode.TOKEN else "disabled"


def default_token_path() -> Path:
    """Where Ray keeps the token it generates: ``~/.ray/auth_token`` (``_get_default_token_path``)."""
    return Path.home() / ".ray" / "auth_token"


def token_path_in_use() -> str | None:
    """The file this process reads its token from, when it names one (``RAY_AUTH_TOKEN_PATH``); else None."""
    return os.environ.get(TOKEN_PATH_ENV) or None


def token_available() -> bool:
    """Whether this process can find a token (the environment, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray``)."""
    if not token_auth_supported():
        return False
    loader = _raylet().AuthenticationTokenLoader.instance()
    loader.reset_cache()
    return bool(loader.has_token(ignore_auth_mode=True))


def use_token_auth(token_path: str | None = None) -> None:
    """Send this process's token to the cluster, as Ray's own ``_enable_token_auth`` does for a cluster it finds.

    ``token_path`` (the file the cluster's starter named) is used unless this process names its own token.
    """
    if not token_auth_supported():
        return
    os.environ[AUTH_MODE_ENV] = "token"
    if token_path and not os.environ.get(TOKEN_ENV) and not os.environ.get(TOKEN_PATH_ENV):
        os.environ[TOKEN_PATH_ENV] = token_path
    raylet = _raylet()
    raylet.Config.initialize("")  # RayConfig caches the mode: read the environment again
    raylet.AuthenticationTokenLoader.instance().reset_cache()


def token_metadata() -> tuple[tuple[str, str], ...]:
    """The gRPC metadata that carries this process's token (empty without one)."""
    if not token_auth_supported():
        return ()
    loader = _raylet().AuthenticationTokenLoader.instance()
    if not loader.has_token(ignore_auth_mode=True):
        return ()
    return tuple((k.lower(), v) for k, v in loader.get_token_for_http_header().items())


#: What :func:`ask_gcs` found.
ANSWERS, REFUSES_TOKEN, NO_ANSWER = "answers", "refuses", "no answer"


def ask_gcs(address: str, timeout: float, *, with_token: bool = False) -> str:
    """Ask the GCS at ``address`` for its cluster id, once: ``ANSWERS``, ``REFUSES_TOKEN`` or ``NO_ANSWER``.

    One gRPC call (``NodeInfoGcsService/GetClusterId``, the first thing Ray's own client asks)
    tells in milliseconds whether the cluster wants a token that this process would not send, where
    ``ray.init`` retries for 20 seconds printing a line a second. ``with_token`` sends this
    process's token, to learn whether it is the right one.
    """
    import grpc  # type: ignore[import-untyped]  # Ray's dependency; no stubs
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    metadata = token_metadata() if with_token else ()
    with grpc.insecure_channel(address) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            request = gcs_service_pb2.GetClusterIdRequest()  # type: ignore[attr-defined]  # generated, no stubs
            stub.GetClusterId(request, timeout=timeout, metadata=metadata)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            return REFUSES_TOKEN if code == grpc.StatusCode.UNAUTHENTICATED else NO_ANSWER
    return ANSWERS


# -- the node this process is connected to (ray._private.worker._global_node; Ray 2.40-2.60) -------------


def _node() -> Any:
    import ray._private.worker

    return ray._private.worker._global_node


def started_cluster() -> bool:
    """Whether this process started the cluster it is connected to (``ray.init()`` made a new head node)."""
    node = _node()
    return bool(node is not None and getattr(node, "head", False))


def session_dir() -> str | None:
    """Ray's session directory of the connected node (its ``logs/`` holds every process's output); None via Ray Client."""
    node = _node()
    return node.get_session_dir_path() if node is not None else None


def logs_dir() -> str | None:
    """The connected node's log directory, where workers write ``worker-*-<pid>.out``/``.err``; None via Ray Client."""
    node = _node()
    return node.get_logs_dir_path() if node is not None else None


# -- Ray's "current cluster" file (ray._common.utils; Ray 2.60, ray._private.utils before) --------------


def ray_address_file() -> Path:
    """The file where ``ray start`` leaves its address for every later ``ray.init()`` on this machine."""
    try:
        from ray._common.utils import get_ray_address_file
    except ImportError:  # Ray before 2.4x kept it in ray._private.utils
        from ray._private.utils import get_ray_address_file
    return Path(get_ray_address_file(None))


# -- Shipping an application's local code to replicas (ray._private.runtime_env; checked on Ray 2.60) --------


def upload_local_code(runtime_env: dict[str, Any]) -> dict[str, Any]:
    """``runtime_env`` with a local ``working_dir`` / ``py_modules`` uploaded to the cluster and replaced by
    their ``gcs://`` URIs, as ``ray.init(runtime_env=...)`` does for a job: an actor's runtime_env takes
    URIs only. Needs a connected driver.

    Raises:
        RuntimeError: this Ray lacks the upload helpers (then give remote URIs instead of directories).
    """
    if not (runtime_env.get("working_dir") or runtime_env.get("py_modules")):
        return runtime_env
    try:
        from ray._private.runtime_env.py_modules import upload_py_modules_if_needed
        from ray._private.runtime_env.working_dir import upload_working_dir_if_needed
    except ImportError as exc:  # a Ray that moved them: say so rather than start replicas without the code
        raise RuntimeError(
            f"this Ray ({ray_version()}) cannot ship a local working_dir or py_modules from servegraph; "
            "give them as remote URIs (s3://, https://...zip)"
        ) from exc
    node = _node()
    scratch = node.get_runtime_env_dir_path() if node is not None else None
    env = dict(runtime_env)
    env = upload_py_modules_if_needed(env, include_gitignore=True, scratch_dir=scratch)
    env = upload_working_dir_if_needed(env, include_gitignore=True, scratch_dir=scratch)
    env.pop("excludes", None)  # applied by the upload; not a field an actor's runtime_env takes
    return env


def ray_version() -> str:
    import ray

    return getattr(ray, "__version__", "unknown")
