"""Every Kubernetes manifest servegraph writes passes KubeRay's own CRD schema.

``tests/kuberay/ray.io_rayservices.yaml`` is KubeRay's RayService CRD, copied
unchanged (see ``tests/kuberay/README.md`` for its commit and Apache-2.0 license).
The manifest is checked against the CRD's ``openAPIV3Schema`` with jsonschema,
and, because the API server silently prunes fields a structural schema does not
declare, also for fields the schema does not know.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from click.testing import CliRunner
from goldens import CASE_IDS, CASES, fresh_examples

from servegraph.cli import main
from servegraph.compiler.config.loading import validate_config
from servegraph.compiler.emit.deploy_config import dump_yaml
from servegraph.compiler.emit.kubernetes import rayservice

CRD = Path(__file__).resolve().parent / "kuberay" / "ray.io_rayservices.yaml"


@pytest.fixture
def examples(monkeypatch):
    fresh_examples(monkeypatch)


@functools.cache
def rayservice_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]


def unknown_fields(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Paths in ``value`` that ``schema`` does not declare (what the API server would prune)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found = []
    if isinstance(value, dict) and "properties" in schema:
        for key, item in value.items():
            if key in schema["properties"]:
                found += unknown_fields(item, schema["properties"][key], f"{path}.{key}")
            elif not schema.get("additionalProperties"):
                found.append(f"{path}.{key}")
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, item in value.items():
            found += unknown_fields(item, schema["additionalProperties"], f"{path}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            found += unknown_fields(item, schema["items"], f"{path}[{i}]")
    return found


def assert_valid_rayservice(manifest: dict[str, Any]) -> None:
    schema = rayservice_schema()
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(manifest), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)
    assert unknown_fields(manifest, schema) == []


def test_the_checker_catches_what_kuberay_would_refuse_or_prune():
    config = validate_config({"applications": [{"import_path": "m:g", "deployments": [{"name": "A"}]}]})
    manifest = rayservice(config, "applications: []\n")
    assert_valid_rayservice(manifest)
    bad = yaml.safe_load(yaml.safe_dump(manifest))
    bad["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] = "two"
    with pytest.raises(AssertionError, match="replicas: 'two' is not of type 'integer'"):
        assert_valid_rayservice(bad)
    typo = yaml.safe_load(yaml.safe_dump(manifest))
    typo["spec"]["rayClusterConfig"]["workerGroupSpec"] = []
    with pytest.raises(AssertionError, match="workerGroupSpec'"):
        assert_valid_rayservice(typo)


@pytest.mark.parametrize("stem,target", CASES, ids=CASE_IDS)
def test_build_kubernetes_passes_kuberays_schema(examples, stem, target, tmp_path):
    out = tmp_path / f"{stem}.yaml"
    result = CliRunner().invoke(main, ["build", target, "--format", "kubernetes", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert_valid_rayservice(yaml.safe_load(out.read_text()))


def test_several_applications_and_an_image_pass(examples, tmp_path):
    out = tmp_path / "two.yaml"
    args = ["build", "hello:language_classifier", "pipeline:app", "--format", "kubernetes", "--image", "registry/me:1"]
    result = CliRunner().invoke(main, [*args, "-o", str(out)])
    assert result.exit_code == 0, result.output
    manifest = yaml.safe_load(out.read_text())
    assert_valid_rayservice(manifest)
    head = manifest["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] == "registry/me:1"


def test_gpus_custom_resources_and_autoscaling_pass():
    """Every part of the sizing: a GPU group, custom resources in rayStartParams, the in-tree autoscaler."""
    config = validate_config(
        {
            "applications": [
                {
                    "import_path": "m:g",
                    "deployments": [
                        {"name": "Cpu", "num_replicas": 3, "ray_actor_options": {"num_cpus": 2, "memory": 6 * 1024**3}},
                        {
                            "name": "Gpu",
                            "autoscaling_config": {"min_replicas": 1, "max_replicas": 4},
                            "ray_actor_options": {"num_cpus": 1, "num_gpus": 1, "resources": {"TPU": 2}},
                        },
                        {"name": "Auto", "num_replicas": "auto"},
                    ],
                }
            ]
        }
    )
    manifest = rayservice(config, dump_yaml({"applications": []}))
    assert manifest["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True
    groups = {g["groupName"]: g for g in manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    assert set(groups) == {"cpu-workers", "gpu-workers"}
    assert groups["gpu-workers"]["rayStartParams"]["resources"] == '"{\\"TPU\\": 2}"'
    assert_valid_rayservice(yaml.safe_load(yaml.safe_dump(manifest)))
