"""placement_group_bundles / placement_group_strategy without Ray: refused where Ray Serve refuses them, in its
words and at the user's line; carried by configs (and through a config's overrides) and counted by the resource
check and the KubeRay sizing."""

from __future__ import annotations

import re

import pytest
import yaml
from support import assert_located, here

import servegraph as serve
from servegraph.compiler.config.loading import load_config, validate_config
from servegraph.compiler.config.overrides import check_overrides, deployment_overrides
from servegraph.compiler.emit.kubernetes import worker_groups
from servegraph.errors import ConfigError, OptionValueError, ResourceError
from servegraph.runtime.control.version import replica_version


class Model:
    def __call__(self, x: int) -> int:
        return x


GROUP = {"placement_group_bundles": [{"CPU": 1}, {"CPU": 2}], "placement_group_strategy": "STRICT_PACK"}

# What Ray Serve 2.60 says for each (ray/serve/_private/config.py, ray/util/placement_group.py).
REFUSED = [
    (
        {"placement_group_strategy": "SPREAD"},
        r"If `placement_group_strategy` is provided, `placement_group_bundles` must also be provided\.",
    ),
    (
        {"placement_group_bundles": [{"CPU": 1}], "max_replicas_per_node": 2},
        r"Setting max_replicas_per_node is not allowed when placement_group_bundles is provided\.",
    ),
    (
        {"placement_group_bundles": [{"CPU": 1}], "ray_actor_options": {"num_cpus": 2}},
        r"When using `placement_group_bundles`, the replica actor will be placed in the first bundle, so the resource "
        r"requirements for the actor must be a subset of the first bundle\. `num_cpus` for the actor is 2, but the "
        r"bundle only has 1 `CPU` specified\.",
    ),
    (
        # servegraph's default 0.1 CPU must fit too (Ray Serve's default 1 CPU would not fit either).
        {"placement_group_bundles": [{"GPU": 1}]},
        r"`num_cpus` for the actor is 0\.1, but the bundle only has 0 `CPU` specified\. .*num_cpus=0 asks for none",
    ),
    (
        {"placement_group_bundles": [{"CPU": 1}, {"GPU": 1}], "ray_actor_options": {"num_gpus": 1}},
        r"`num_gpus` for the actor is 1, but the bundle only has 0 `GPU` specified",
    ),
    (
        {"placement_group_bundles": [{"CPU": 1}], "ray_actor_options": {"resources": {"TPU": 1}}},
        r"`TPU` requirement for the actor is 1, but the bundle only has 0 `TPU` specified",
    ),
    (
        {"placement_group_bundles": [{"CPU": 1}], "placement_group_strategy": "pack"},
        r"Invalid placement group strategy pack\. Supported strategies are: \['PACK', 'SPREAD', 'STRICT_PACK', "
        r"'STRICT_SPREAD'\]\.",
    ),
    ({"placement_group_bundles": []}, r"Bundles must be a non-empty list of resource dictionaries\."),
    ({"placement_group_bundles": [{"CPU": 0}]}, r"Bundles cannot be an empty dictionary or resources with only 0 values"),
]


@pytest.mark.parametrize(("options", "message"), REFUSED, ids=[m[:40] for _, m in REFUSED])
def test_bad_placement_group_options_are_refused_at_the_users_line_in_ray_serves_words(options, message):
    with pytest.raises(OptionValueError, match=message) as err:
        line = here() + 1
        serve.deployment(**options)(Model)
    assert_located(err.value, line)
    assert isinstance(err.value, ValueError)  # what Ray Serve raises, so `except ValueError` still works


def test_options_that_break_the_group_later_are_refused_at_that_options_call():
    grouped = serve.deployment(placement_group_bundles=[{"CPU": 1}])(Model)
    with pytest.raises(OptionValueError, match=r"`num_cpus` for the actor is 4, but the bundle only has 1 `CPU`") as err:
        line = here() + 1
        grouped.options(ray_actor_options={"num_cpus": 4})
    assert_located(err.value, line)


def test_a_valid_group_is_kept_with_pack_as_the_default_strategy():
    options = serve.deployment(placement_group_bundles=[{"CPU": 1}], ray_actor_options={"num_cpus": 1})(Model)._options
    assert options.placement_group() == ([{"CPU": 1.0}], "PACK")
    options = serve.deployment(**GROUP)(Model)._options
    assert options.placement_group() == ([{"CPU": 1.0}, {"CPU": 2.0}], "STRICT_PACK")
    # A replica that reserves no CPU fits in a GPU-only bundle.
    gpu_only = serve.deployment(placement_group_bundles=[{"GPU": 1}], ray_actor_options={"num_cpus": 0, "num_gpus": 1})
    assert gpu_only(Model)._options.placement_group() == ([{"GPU": 1.0}], "PACK")


def test_a_replica_reserves_its_whole_group_in_the_resource_check():
    app = serve.deployment(num_replicas=2, **GROUP)(Model).bind()
    with pytest.raises(ResourceError, match=r"more CPU than the cluster has") as err:
        serve.compile(app, cluster_resources={"CPU": 5.0})  # two groups of 3 CPUs
    (row,) = [line.split() for line in str(err.value).splitlines() if line.startswith("Model ")]
    assert row[-3:] == ["2", "3", "6"]  # replicas, CPU per replica (both bundles), CPU in all
    assert "Lower num_replicas, ray_actor_options or placement_group_bundles" in str(err.value)
    serve.compile(app, cluster_resources={"CPU": 6.0})  # fits


TWO_NODES = ({"CPU": 2.0, "memory": 4e9}, {"CPU": 2.0, "GPU": 1.0})


@pytest.mark.parametrize(
    ("bundles", "strategy", "message"),
    [
        ([{"CPU": 1.5}, {"CPU": 1.5}], "STRICT_PACK", r"STRICT_PACK keeps its bundles on one node, and no node has CPU 3"),
        ([{"CPU": 0.5}] * 3, "STRICT_SPREAD", r"puts each of its 3 bundles on a node of its own, and at most 2"),
        ([{"CPU": 1}, {"CPU": 1, "GPU": 1}, {"GPU": 1}], "STRICT_SPREAD", r"at most 2 of them find one"),
        ([{"CPU": 1}, {"CPU": 3}], "PACK", r"bundle 1 \(CPU 3\) is bigger than any node"),
    ],
)
def test_a_group_no_arrangement_of_the_nodes_could_hold_is_refused_at_the_users_line(bundles, strategy, message):
    grouped = serve.deployment(Model)
    app, line = grouped.options(placement_group_bundles=bundles, placement_group_strategy=strategy).bind(), here()
    with pytest.raises(ResourceError, match=r"could never be placed on this cluster's 2 node\(s\): .*" + message) as err:
        serve.compile(app, cluster_resources={"CPU": 100.0, "GPU": 100.0}, cluster_nodes=TWO_NODES)
    assert_located(err.value, line)


@pytest.mark.parametrize(
    ("bundles", "strategy"),
    [
        ([{"CPU": 1}, {"CPU": 1}], "STRICT_PACK"),
        ([{"CPU": 1}, {"CPU": 1, "GPU": 1}], "STRICT_SPREAD"),  # only the second node has a GPU: the first takes the CPU
        ([{"CPU": 2}, {"CPU": 2}], "PACK"),  # a node each
        ([{"CPU": 2}, {"CPU": 2}], "SPREAD"),
    ],
)
def test_a_group_some_arrangement_holds_passes(bundles, strategy):
    app = serve.deployment(placement_group_bundles=bundles, placement_group_strategy=strategy)(Model).bind()
    serve.compile(app, cluster_resources={"CPU": 4.0, "GPU": 1.0}, cluster_nodes=TWO_NODES)


def test_changing_the_group_restarts_replicas_and_no_group_keeps_old_versions():
    plain = serve.deployment(Model)
    grouped = plain.options(placement_group_bundles=[{"CPU": 1}])
    spread = grouped.options(placement_group_strategy="SPREAD")
    versions = [replica_version(serve.compile(d.bind()).ir.deployments[0]) for d in (plain, grouped, spread)]
    assert len(set(versions)) == 3


def _config(app) -> dict:
    return serve.compile(app).with_app(import_path="m:g").to_config()


def test_configs_carry_the_group_and_read_back_the_same(tmp_path):
    app = serve.deployment(**GROUP)(Model).bind()
    config = _config(app)
    (dep,) = config["applications"][0]["deployments"]
    assert dep["placement_group_bundles"] == [{"CPU": 1.0}, {"CPU": 2.0}]
    assert dep["placement_group_strategy"] == "STRICT_PACK"
    path = tmp_path / "app.yaml"
    path.write_text(yaml.safe_dump(config))
    loaded = load_config(path)
    overrides = deployment_overrides(loaded.applications[0])
    assert overrides["Model"]["placement_group_bundles"] == [{"CPU": 1.0}, {"CPU": 2.0}]
    # Applied to a graph without a group, the config's own gives it one.
    bare = serve.deployment(Model).bind()
    compiled = serve.compile(bare, overrides=overrides)
    assert compiled.ir.deployments[0].options.placement_group() == ([{"CPU": 1.0}, {"CPU": 2.0}], "STRICT_PACK")
    assert _config(bare)["applications"][0]["deployments"][0].get("placement_group_bundles") is None


def test_a_config_that_breaks_the_codes_group_is_refused_with_its_place_in_the_file():
    app = serve.deployment(placement_group_bundles=[{"CPU": 1}])(Model).bind()
    compiled = serve.compile(app)
    config = validate_config(
        {
            "applications": [
                {
                    "import_path": "m:g",
                    "deployments": [{"name": "Model", "ray_actor_options": {"num_cpus": 2}}],
                }
            ]
        },
        source="app.yaml",
    )
    with pytest.raises(ConfigError, match=r"app\.yaml: applications\[0\]\.deployments\[0\]: .*`num_cpus` for the actor is 2"):
        check_overrides(compiled, deployment_overrides(config.applications[0]))


def test_a_config_entry_with_both_a_group_and_a_per_node_limit_is_refused():
    with pytest.raises(ConfigError, match=r"max_replicas_per_node is not allowed when placement_group_bundles is provided"):
        validate_config(
            {
                "applications": [
                    {
                        "import_path": "m:g",
                        "deployments": [
                            {"name": "Model", "placement_group_bundles": [{"CPU": 1}], "max_replicas_per_node": 1}
                        ],
                    }
                ]
            }
        )


def test_kuberay_sizing_places_each_bundle_or_a_strict_pack_group_whole():
    def sized(strategy: str) -> list:
        config = validate_config(
            {
                "applications": [
                    {
                        "import_path": "m:g",
                        "deployments": [
                            {
                                "name": "Model",
                                "num_replicas": 1,
                                "ray_actor_options": {"num_cpus": 1},
                                "placement_group_bundles": [{"CPU": 3}, {"CPU": 3}],
                                "placement_group_strategy": strategy,
                            }
                        ],
                    }
                ]
            }
        )
        return [(g.name, g.cpus, g.min_pods) for g in worker_groups(config, worker_cpus=4)]

    assert sized("PACK") == [("cpu-workers", 4, 2)]  # a bundle of 3 a pod
    assert sized("STRICT_PACK") == [("cpu-workers", 6, 1)]  # the group whole, on one pod
    assert sized("STRICT_SPREAD") == [("cpu-workers", 4, 2)]  # a pod per bundle


def test_kuberay_sizing_gives_a_strict_spread_group_a_pod_per_bundle_however_small():
    config = validate_config(
        {
            "applications": [
                {
                    "import_path": "m:g",
                    "deployments": [
                        {
                            "name": "Model",
                            "placement_group_bundles": [{"CPU": 0.1}] * 3,
                            "placement_group_strategy": "STRICT_SPREAD",
                        }
                    ],
                }
            ]
        }
    )
    (group,) = worker_groups(config)
    assert (group.min_pods, group.max_pods) == (3, 3)  # three small bundles would fit one pod, but each needs its own


#: Refused by both, for the same reason (a GPU-only bundle is refused by both too, but Ray Serve's replica reserves 1 CPU).
SAME_REASON = [case for case in REFUSED if case[0] != {"placement_group_bundles": [{"GPU": 1}]}]


@pytest.mark.parametrize(("options", "message"), SAME_REASON, ids=[m[:40] for _, m in SAME_REASON])
def test_ray_serve_refuses_the_same_options_with_the_same_words(options, message):
    ray_serve = pytest.importorskip("ray.serve")  # the `ray[serve]` extra; no cluster is started
    with pytest.raises(ValueError) as theirs:
        ray_serve.deployment(**options)(Model)
    with pytest.raises(OptionValueError) as ours:
        serve.deployment(**options)(Model)
    # Compared up to what Ray prints as the user wrote it (a set of strategies, in no fixed order; bundles).
    assert re.split(r" Supported strategies| Bundles: \[", str(theirs.value))[0] in str(ours.value)
