"""Wrap a deploy config in a KubeRay ``RayService`` manifest, with a cluster sized for its replicas.

The cluster is sized from the deployments the config lists (every deployment,
when the config came from ``servegraph build``):

* the head runs Serve's controller and proxy only (``num-cpus: "0"``, as
  KubeRay recommends for RayServices), so replicas never land on it;
* replicas (each bundle of a replica's placement group, or the whole group under STRICT_PACK) that
  need no GPU are packed (first fit, largest first) onto
  ``cpu-workers`` pods of up to ``worker_cpus`` CPUs (more if one replica needs
  more); replicas that need GPUs onto ``gpu-workers`` pods;
* pods get 2 GiB of memory per CPU, or more when a replica reserves more;
* ``minReplicas`` fits the replicas a deployment starts with, ``maxReplicas``
  its autoscaling maximum, and KubeRay's autoscaler is enabled when they differ.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from importlib import metadata
from typing import Any

from ...dsl.options import DEFAULT_REPLICA_CPUS, AutoscalingConfig, bundles_resources, replica_resources
from ..config.schema import AUTO_AUTOSCALING_CONFIG, ServeConfig
from .deploy_config import dump_yaml, header

GIB = 1024**3
MEMORY_PER_CPU_GIB = 2
HEAD_CPUS = "2"
HEAD_MEMORY = "4Gi"


@dataclasses.dataclass(frozen=True, slots=True)
class Replica:
    """What one replica reserves."""

    cpus: float
    gpus: float
    memory: float
    resources: tuple[tuple[str, float], ...]
    #: Pods its placement group needs at least: one per bundle under STRICT_SPREAD (each bundle on its own node).
    spread: int = 1


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerGroup:
    """A KubeRay worker group: pod size and how many pods the replicas need."""

    name: str
    cpus: int
    gpus: int
    memory_gib: int
    resources: tuple[tuple[str, int], ...]
    min_pods: int
    max_pods: int


def replicas(config: ServeConfig) -> tuple[list[Replica], list[Replica]]:
    """Every replica the config starts, and every replica it may grow to (autoscaling maximum)."""
    start: list[Replica] = []
    most: list[Replica] = []
    for app in config.applications:
        for dep in app.deployments:
            actor = dep.ray_actor_options
            options = actor.model_dump(exclude_none=True) if actor is not None else {}
            options.setdefault("num_cpus", DEFAULT_REPLICA_CPUS)
            one = _units(options, dep.placement_group_bundles, dep.placement_group_strategy)
            auto = dep.autoscaling_config
            if dep.num_replicas == "auto":  # Ray Serve's default autoscaling, tuned by the config's
                given = auto.model_dump(exclude_unset=True) if auto is not None else {}
                auto = AutoscalingConfig(**{**AUTO_AUTOSCALING_CONFIG, **given})
            if auto is not None:
                low, high = auto.start_replicas(), auto.max_replicas
            else:
                low = high = dep.num_replicas if isinstance(dep.num_replicas, int) else 1
            start += one * low
            most += one * high
    return start, most


def _units(
    actor_options: dict[str, Any], bundles: list[dict[str, float]] | None, strategy: str | None
) -> list[Replica]:
    """What one replica needs placed on pods: its actor, or each bundle of its placement group (the actor runs
    inside bundle 0), or the whole group at once under STRICT_PACK, which keeps it on one node."""
    if bundles is None:
        per = replica_resources(actor_options)  # the one accounting rule, as the resource check and controller use
        return [_unit(per, float(actor_options.get("memory") or 0))]
    if strategy == "STRICT_PACK":
        bundles = [bundles_resources(bundles)]
    spread = len(bundles) if strategy == "STRICT_SPREAD" else 1
    return [_unit(bundles_resources([bundle]), float(bundle.get("memory") or 0), spread) for bundle in bundles]


def _unit(per: dict[str, float], memory: float, spread: int = 1) -> Replica:
    per = {k: v for k, v in per.items() if k != "memory"}
    cpus, gpus = per.pop("CPU"), per.pop("GPU")
    return Replica(cpus=cpus, gpus=gpus, memory=memory, resources=tuple(sorted(per.items())), spread=spread)


def _pack(items: list[Replica], cpus: int, gpus: int) -> int:
    """Pods of ``cpus``/``gpus`` needed to place ``items``: first fit, largest first."""
    free: list[list[float]] = []
    for item in sorted(items, key=lambda r: (r.gpus, r.cpus), reverse=True):
        for pod in free:
            if pod[0] + 1e-9 >= item.cpus and pod[1] + 1e-9 >= item.gpus:
                pod[0] -= item.cpus
                pod[1] -= item.gpus
                break
        else:
            free.append([cpus - item.cpus, gpus - item.gpus])
    return len(free)


def _group(name: str, start: list[Replica], most: list[Replica], worker_cpus: int) -> WorkerGroup | None:
    if not most:
        return None
    gpus = max((math.ceil(r.gpus) for r in most), default=0)
    biggest = max(math.ceil(r.cpus) for r in most)
    total = math.ceil(sum(r.cpus for r in most) - 1e-9)
    cpus = max(1, biggest, min(worker_cpus, total))
    max_pods = max(_pack(most, cpus, gpus), max(r.spread for r in most))
    min_pods = max(_pack(start, cpus, gpus), max(r.spread for r in start)) if start else 0
    memory = max(MEMORY_PER_CPU_GIB * cpus, max(math.ceil(r.memory / GIB) + 1 for r in most))
    # Custom resources are spread evenly over the pods, each pod holding at least one replica's worth.
    total_custom: dict[str, float] = {}
    single: dict[str, float] = {}
    for r in most:
        for key, amount in r.resources:
            total_custom[key] = total_custom.get(key, 0.0) + amount
            single[key] = max(single.get(key, 0.0), amount)
    per_pod = tuple(
        (key, max(math.ceil(amount / max_pods), math.ceil(single[key])))
        for key, amount in sorted(total_custom.items())
    )
    return WorkerGroup(name, cpus, gpus, memory, per_pod, min_pods, max_pods)


def worker_groups(config: ServeConfig, worker_cpus: int = 4) -> list[WorkerGroup]:
    start, most = replicas(config)
    groups = [
        _group("cpu-workers", [r for r in start if not r.gpus], [r for r in most if not r.gpus], worker_cpus),
        _group("gpu-workers", [r for r in start if r.gpus], [r for r in most if r.gpus], worker_cpus),
    ]
    return [g for g in groups if g is not None]


def service_name(import_path: str) -> str:
    """A DNS-1123 name for the RayService, from the first application's import path.

    >>> service_name("hello:language_classifier")
    'hello-language-classifier'
    """
    name = re.sub(r"[^a-z0-9]+", "-", import_path.lower()).strip("-")
    return name[:40].rstrip("-") or "servegraph"


def _container(name: str, image: str, cpus: str, memory: str, gpus: int = 0, ports: list | None = None) -> dict:
    limits: dict[str, str] = {"cpu": cpus, "memory": memory}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    container: dict[str, Any] = {"name": name, "image": image}
    if ports:
        container["ports"] = ports
    container["resources"] = {"limits": limits, "requests": dict(limits)}
    return container


def rayservice(
    config: ServeConfig,
    config_text: str,
    *,
    image: str | None = None,
    ray_version: str | None = None,
    worker_cpus: int = 4,
) -> dict[str, Any]:
    """The RayService manifest (a dict) serving ``config`` (whose YAML text is ``config_text``)."""
    if ray_version is None:
        try:
            ray_version = metadata.version("ray")
        except metadata.PackageNotFoundError:  # pragma: no cover - ray is a dependency
            ray_version = "2.40.0"
    image = image or f"rayproject/ray:{ray_version}"
    groups = worker_groups(config, worker_cpus)
    workers = []
    for g in groups:
        params: dict[str, str] = {}
        if g.resources:
            # KubeRay passes this to `ray start --resources=...` through a shell, hence the extra quoting.
            params["resources"] = json.dumps(json.dumps(dict(g.resources), sort_keys=True))
        workers.append(
            {
                "groupName": g.name,
                "replicas": g.min_pods,
                "minReplicas": g.min_pods,
                "maxReplicas": g.max_pods,
                "rayStartParams": params,
                "template": {
                    "spec": {
                        "containers": [
                            _container("ray-worker", image, str(g.cpus), f"{g.memory_gib}Gi", g.gpus)
                        ]
                    }
                },
            }
        )
    ports = [
        {"containerPort": 6379, "name": "gcs-server"},
        {"containerPort": 8265, "name": "dashboard"},
        {"containerPort": 10001, "name": "client"},
        {"containerPort": config.http_options.port, "name": "serve"},
    ]
    cluster: dict[str, Any] = {"rayVersion": ray_version}
    if any(g.min_pods != g.max_pods for g in groups):
        cluster["enableInTreeAutoscaling"] = True
    cluster["headGroupSpec"] = {
        "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
        "template": {"spec": {"containers": [_container("ray-head", image, HEAD_CPUS, HEAD_MEMORY, ports=ports)]}},
    }
    cluster["workerGroupSpecs"] = workers
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": service_name(config.applications[0].graph if config.applications else "")},
        "spec": {"serveConfigV2": config_text, "rayClusterConfig": cluster},
    }


def rayservice_yaml(config: ServeConfig, config_text: str, sources: list[str], **kwargs: Any) -> str:
    """The manifest as YAML with a header; ``serveConfigV2`` is the config as a ``|`` block."""
    manifest = rayservice(config, config_text, **kwargs)
    notes = (
        "A KubeRay RayService serving the Ray Serve config in spec.serveConfigV2.",
        "The image must have servegraph installed and hold the code args.graph names (or set",
        "runtime_env.working_dir to a remote URI and runtime_env.pip to [servegraph]):",
        "replace the image below with yours.",
    )
    return header(sources, *notes) + "\n" + dump_yaml(manifest, blank_lines=False)
