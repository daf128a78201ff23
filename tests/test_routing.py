"""Switch and Split without Ray: every check's message at the user's line, the plan running only the
chosen branch (local testing mode), diagrams, the JSON IR, deploy configs and the .sg language."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import typing
from collections import Counter

import pytest
import yaml
from conftest import ROOT, TESTS
from support import here

import servegraph as serve
from servegraph import InputNode, MultiOutputNode, NoRouteError, RoutingError, Split, Switch
from servegraph.compiler.emit.json_ir import load_compiled
from servegraph.compiler.fast_path import compiled_path_problem
from servegraph.runtime.client.local import run_local

CALLS: list[str] = []


@serve.deployment
def spanish(text: str) -> str:
    CALLS.append("spanish")
    return "hola " + text


@serve.deployment
def french(text: str) -> str:
    CALLS.append("french")
    return "salut " + text


@serve.deployment
def english(text: str) -> str:
    CALLS.append("english")
    return "hello " + text


@serve.deployment
def length(text: str) -> int:
    CALLS.append("length")
    return len(text)


@serve.deployment
def is_formal(text: str) -> bool:
    return text.endswith(".")


@serve.deployment
def language(text: str) -> typing.Literal["es", "fr", "en"]:
    return "es"


@serve.deployment
def shout(text: str) -> str:
    return text.upper()


@serve.deployment
def double(n: int) -> int:
    return 2 * n


def is_long(text: str) -> bool:
    return len(text) > 10


@pytest.fixture(autouse=True)
def _clear_calls():
    CALLS.clear()


# -- made wrong: refused where the user made it ------------------------------------------------------


def _refused(build) -> RoutingError:
    with pytest.raises(RoutingError) as info:
        build()
    return info.value


def test_an_empty_switch_is_refused_at_its_line():
    with InputNode() as inp:
        line = here() + 1
        error = _refused(lambda: Switch(inp["lang"], {}))
    assert f"test_routing.py:{line}" in str(error)
    assert "Switch(): the switch has no branches; give it at least one key" in str(error)


@pytest.mark.parametrize(
    ("cases", "message"),
    [
        ({"a": 3}, "branch a is 3, not a graph node with a value per request"),
        ({("a",): None}, "key ('a',) is a tuple; keys must be strings, whole numbers, booleans or None"),
        ([("not callable", None)], "case 1 is ('not callable', None), not a (predicate, node) pair"),
        ("spanish", "the cases are a str; give a dict of key -> node, or a list of (predicate, node) pairs"),
    ],
)
def test_a_malformed_switch_says_what_is_wrong(cases, message):
    with InputNode() as inp:
        line = here() + 1
        error = _refused(lambda: Switch(inp["lang"], cases))
    assert message in str(error) and f"test_routing.py:{line}" in str(error)


def test_a_switch_on_a_bound_deployment_is_refused():
    @serve.deployment
    class Model:
        def __call__(self, x: str) -> str:
            return x

    with InputNode() as inp:
        error = _refused(lambda: Switch(Model.bind(), {"a": spanish.bind(inp)}))
    assert "the value to switch on is Model (a bound deployment)" in str(error)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"stable": 120, "canary": -20}, "the weight of 'canary' is negative (-20)"),
        ({"stable": 80, "canary": 30}, "weights must sum to 100, got 110 (stable 80, canary 30)"),
        ({"stable": 100}, "no weight for branch 'canary'"),
        ({"stable": 80, "canary": 10, "beta": 10}, "a weight for 'beta', which is not a branch (branches: stable, canary)"),
        ({"stable": 80.0, "canary": 20}, "the weight of 'stable' must be a whole number, got 80.0"),
        ({"stable": True, "canary": 99}, "the weight of 'stable' must be a whole number, got True"),
    ],
)
def test_bad_weights_are_refused_at_the_split_line(weights, message):
    with InputNode() as inp:
        line = here() + 1
        error = _refused(lambda: Split({"stable": spanish.bind(inp), "canary": french.bind(inp)}, weights=weights))
    assert message in str(error) and f"test_routing.py:{line}" in str(error)
    assert "Split(): " in str(error)


def test_a_split_with_no_branches_or_a_bad_name_is_refused():
    assert "the split has no branches" in str(_refused(lambda: Split({}, weights={})))
    with InputNode() as inp:
        error = _refused(lambda: Split({"a": spanish.bind(inp)}, weights={"a": 100}, name="my rollout"))
    assert "name 'my rollout' is not an identifier" in str(error)


# -- checked against the graph: at the user's line ---------------------------------------------------


def _diagnostics(app) -> list:
    return list(serve.compile(app, strict=False).diagnostics)


def test_a_key_the_literal_annotation_never_takes_is_an_error_at_the_switch():
    with InputNode() as inp:
        line = here() + 1
        app = Switch(language.bind(inp), {"es": spanish.bind(inp), "de": french.bind(inp)}, default=english.bind(inp))
    (diag,) = _diagnostics(app)
    assert diag.severity == "error" and diag.code == "routing" and diag.line == line
    assert "Switch(): key 'de' can never match: its value comes from language" in diag.message
    assert "which returns Literal['es', 'fr', 'en'] (tests/test_routing.py:" in diag.message
    assert "got 'de'. Expected one of 'en', 'es', 'fr'" in diag.message
    with pytest.raises(RoutingError):
        serve.compile(app)


def test_keys_that_do_not_cover_a_bool_need_a_default():
    with InputNode() as inp:
        line = here() + 1
        app = Switch(is_formal.bind(inp), {True: english.bind(inp)})
    (diag,) = _diagnostics(app)
    assert diag.severity == "error" and diag.line == line
    assert "no branch takes False and the switch has no default" in diag.message
    with InputNode() as inp:
        covered = Switch(is_formal.bind(inp), {True: english.bind(inp), False: spanish.bind(inp)})
    assert _diagnostics(covered) == []


def test_a_key_of_a_type_the_value_never_has_is_an_error():
    with InputNode() as inp:
        line = here() + 1
        app = Switch(shout.bind(inp), {"A": english.bind(inp), 3: spanish.bind(inp)}, default=french.bind(inp))
    (diag,) = _diagnostics(app)
    assert diag.line == line and "key 3 can never match" in diag.message and "Expected a str" in diag.message


def test_keys_that_cannot_cover_a_str_without_a_default_warn_and_strict_refuses(tmp_path):
    with InputNode() as inp:
        line = here() + 1
        app = Switch(shout.bind(inp), {"A": english.bind(inp)})
    (diag,) = serve.compile(app).diagnostics  # a warning: the graph still compiles
    assert diag.severity == "warning" and diag.line == line
    assert "keys 'A' cannot cover every str and the switch has no default" in diag.message
    assert "fails with HTTP 400" in diag.message


def test_branch_outputs_that_cannot_meet_at_their_consumer_name_the_branch():
    with InputNode() as inp:
        chosen = Switch(inp["kind"], {"text": shout.bind(inp["text"]), "count": length.bind(inp["text"])})
        line = here() + 1
        app = double.bind(chosen)
    (diag,) = _diagnostics(app)
    assert diag.severity == "error" and diag.code == "annotation" and diag.line == line
    assert "n is annotated int" in diag.message
    assert "gets Switch branch text: shout (bound at tests/test_routing.py:" in diag.message
    assert "which returns str" in diag.message and "str never fits int" in diag.message


def test_two_splits_with_one_name_are_an_error():
    with InputNode() as inp:
        first = Split({"a": spanish.bind(inp), "b": french.bind(inp)}, weights={"a": 50, "b": 50})
        line = here() + 1
        second = Split({"a": english.bind(inp), "b": shout.bind(inp)}, weights={"a": 50, "b": 50})
        app = MultiOutputNode([first, second])
    (diag,) = _diagnostics(app)
    assert diag.line == line and "two splits are named 'split'" in diag.message and "Give each split its own name=" in diag.message


def test_a_predicate_that_cannot_be_sent_is_an_error():
    lock = threading.Lock()
    with InputNode() as inp:
        line = here() + 1
        app = Switch(inp, [(lambda text: lock.locked(), spanish.bind(inp))], default=french.bind(inp))
    (diag,) = _diagnostics(app)
    assert diag.code == "serialization" and diag.line == line
    assert "predicate case 1 cannot be serialized" in diag.message


# -- run: only the chosen branch is called --------------------------------------------------------


def test_a_switch_by_key_calls_only_the_chosen_branch_and_a_value_no_branch_takes_is_an_error():
    with InputNode() as inp:
        line = here() + 1
        app = Switch(inp["lang"], {"es": spanish.bind(inp["text"]), "fr": french.bind(inp["text"])})
    handle = run_local(app)
    assert handle.remote({"lang": "es", "text": "Ana"}).result() == "hola Ana"
    assert handle.remote({"lang": "fr", "text": "Ana"}).result() == "salut Ana"
    assert CALLS == ["spanish", "french"]
    with pytest.raises(NoRouteError) as info:
        handle.remote({"lang": "de", "text": "Ana"}).result()
    assert (info.value.got, info.value.keys) == ("de", ("'es'", "'fr'"))
    assert f"Switch (made at tests/test_routing.py:{line}): the request's value 'de' matches no branch" in str(info.value)
    assert "Expected one of 'es', 'fr'" in str(info.value)
    assert CALLS == ["spanish", "french"]  # nothing was sent for it


def test_predicates_are_tried_in_order_and_the_default_takes_the_rest():
    with InputNode() as inp:
        app = Switch(inp, [(is_long, spanish.bind(inp)), (lambda t: t.endswith("!"), french.bind(inp))], default=english.bind(inp))
    handle = run_local(app)
    assert handle.remote("a rather long text!").result() == "hola a rather long text!"
    assert handle.remote("short!").result() == "salut short!"
    assert handle.remote("short").result() == "hello short"
    assert CALLS == ["spanish", "french", "english"]


def test_a_switch_on_a_node_output_and_nested_in_a_graph():
    with InputNode() as inp:
        chosen = Switch(language.bind(inp), {"es": spanish.bind(inp), "fr": french.bind(inp)}, default=english.bind(inp))
        app = MultiOutputNode([chosen, length.bind(inp)])
    assert run_local(app).remote("Ana").result() == ["hola Ana", 3]
    assert sorted(CALLS) == ["length", "spanish"]


def test_a_branch_reading_input_the_request_lacks_fails_only_when_taken():
    with InputNode() as inp:
        app = Switch(inp["kind"], {"text": shout.bind(inp["text"]), "count": length.bind(inp["body"])})
    handle = run_local(app)
    assert handle.remote({"kind": "text", "text": "hi"}).result() == "HI"  # no "body": the other branch reads it


def test_a_split_sends_each_request_to_one_branch_by_weight():
    with InputNode() as inp:
        app = Split({"stable": spanish.bind(inp), "canary": french.bind(inp)}, weights={"stable": 100, "canary": 0})
    handle = run_local(app)
    assert {handle.remote("x").result() for _ in range(20)} == {"hola x"}
    assert CALLS == ["spanish"] * 20
    shifted = serve.compile(app, weights={"split": {"stable": 0, "canary": 100}})
    assert shifted.ir.plan.split_weights() == {"split": {"stable": 0, "canary": 100}}


def test_split_weights_from_a_config_are_held_to_the_same_rule():
    with InputNode() as inp:
        line = here() + 1
        app = Split({"stable": spanish.bind(inp), "canary": french.bind(inp)}, weights={"stable": 80, "canary": 20}, name="rollout")
    with pytest.raises(serve.ConfigError) as info:
        serve.compile(app, weights={"rollout": {"stable": -10, "canary": 110}})
    assert "split 'rollout': the weight of 'stable' is negative (-10)" in str(info.value)
    assert f"(the split is made at tests/test_routing.py:{line})" in str(info.value)
    with pytest.raises(serve.ConfigError, match="weights name split 'rolout', which the graph does not have; did you mean 'rollout'"):
        serve.compile(app, weights={"rolout": {"stable": 50, "canary": 50}})


# -- which path, drawn, written ---------------------------------------------------------------------


def _canary():
    import routing_models

    return routing_models.split_app


def test_routing_graphs_run_on_the_plan_and_check_says_why():
    compiled = serve.compile(_canary())
    assert compiled.ir.plan is not None and compiled.ir.plan.routed
    assert "it routes requests (a switch or split)" in (compiled_path_problem(compiled.ir) or "")
    env = {"PYTHONPATH": f"{ROOT}:{TESTS}", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-m", "servegraph", "check", "routing_models:split_app", "--resources", "CPU=4"],
        cwd=TESTS, env=env, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "requests run as a plan of actor calls: it routes requests (a switch or split)" in out.stdout


def test_diagrams_show_keys_and_weights_on_the_edges():
    import routing_models

    split = serve.compile(_canary()).with_app(import_path="routing_models:split_app")
    dot = split.to_dot()
    assert 'label="Split rollout\\nby weight", shape=diamond' in dot
    assert '-> n0 [label="stable 80%"];' in dot and '-> n0 [label="canary 20%"];' in dot
    mermaid = split.to_mermaid()
    assert 'n0{"Split rollout<br/>by weight"}' in mermaid and "-->|canary 20%| n0" in mermaid
    switch = serve.compile(routing_models.switch_app).with_app(import_path="routing_models:switch_app")
    assert "-->|spanish| n0" in switch.to_mermaid() and "-->|value| n0" in switch.to_mermaid()


def test_the_json_ir_carries_the_routing_rules():
    import routing_models

    for app in (routing_models.switch_app, routing_models.split_app):
        compiled = serve.compile(app).with_app(import_path="routing_models:x")
        data = json.loads(compiled.to_json())
        (route,) = [n["route"] for n in data["nodes"] if "route" in n]
        assert route["mode"] in ("keys", "weights")
        again = load_compiled(data)
        assert again.ir.plan == compiled.ir.plan  # the same plan, rules and all


def _config(tmp_path, **splits_entry):
    """The canary's config as `servegraph build` writes it, with the DAGDriver entry changed as given."""
    data = yaml.safe_load(serve.compile(_canary()).with_app(import_path="routing_models:split_app").to_yaml())
    (entry,) = [d for d in data["applications"][0]["deployments"] if d["name"] == "DAGDriver"]
    entry.update(splits_entry)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return data, path


def test_the_config_holds_the_weights_as_the_plan_drivers_user_config(tmp_path):
    data, _ = _config(tmp_path)
    app = data["applications"][0]
    assert app["args"] == {"graph": "routing_models:split_app"}  # Ray Serve restarts every replica when args change
    assert app["deployments"][-1] == {"name": "DAGDriver", "user_config": {"splits": {"rollout": {"stable": 80, "canary": 20}}}}


def _prepared(path):
    from servegraph.cli.ops import _prepare

    (prepared,) = _prepare(str(path))[1]
    return prepared


def test_servegraph_deploy_reads_the_weights_and_holds_them_to_the_rule(tmp_path):
    _, path = _config(tmp_path, user_config={"splits": {"rollout": {"stable": 0, "canary": 100}}})
    app, node, overrides, weights = _prepared(path)
    assert weights == {"rollout": {"stable": 0, "canary": 100}} and "DAGDriver" not in overrides
    assert serve.compile(node, weights=weights).ir.plan.split_weights() == weights
    _, bad = _config(tmp_path, user_config={"splits": {"rollout": {"stable": 90, "canary": 20}}})
    with pytest.raises(serve.ConfigError, match=r"split 'rollout': weights must sum to 100, got 110 \(stable 90, canary 20\)"):
        _prepared(bad)
    _, other = _config(tmp_path, num_replicas=2)
    with pytest.raises(serve.ConfigError, match=r"deployments\[2\]: DAGDriver runs the graph's plan; its entry holds only user_config.splits"):
        _prepared(other)


def test_a_plan_driver_entry_for_a_graph_without_a_split_is_refused(tmp_path):
    data = yaml.safe_load(serve.compile(_canary()).with_app(import_path="routing_models:switch_app").to_yaml())
    data["applications"][0]["args"]["graph"] = "routing_models:switch_app"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(serve.ConfigError, match="routing_models:switch_app has no Split, so there is no DAGDriver entry"):
        _prepared(path)


def test_the_ray_serve_driver_takes_weights_as_user_config_without_new_init_arguments():
    from servegraph.backends.rayserve import PlanDriver, _code_weights

    plan = serve.compile(_canary()).ir.plan
    shifted = serve.compile(_canary(), weights={"rollout": {"stable": 0, "canary": 100}}).ir.plan
    assert _code_weights(plan) == _code_weights(shifted)  # a weights-only edit: same constructor arguments
    driver = PlanDriver(_code_weights(shifted), {})
    driver.reconfigure({"splits": shifted.split_weights()})
    assert driver._plan == shifted
    with pytest.raises(serve.ConfigError, match="DAGDriver user_config.splits.rollout: no weight for branch 'canary'"):
        driver.reconfigure({"splits": {"rollout": {"stable": 100}}})
    assert driver._plan == shifted  # a refused config changes nothing


# -- the .sg language --------------------------------------------------------------------------------


SG = """\
from test_routing import spanish, french, english

graph routed {
    input request
    chosen = Switch(request["lang"], {es: spanish(request["text"]), fr: french(request["text"])}, default=english(request["text"]))
    output Split({stable: chosen, canary: english(request["text"])}, weights={stable: 90, canary: 10}, name="rollout")
}
"""


def test_sg_writes_both_nodes_and_export_writes_them_back(tmp_path):
    from servegraph.grammar import export, load_graph, parse

    path = tmp_path / "routed.sg"
    path.write_text(SG)
    node = load_graph(path, "routed").node
    compiled = serve.compile(node)
    assert compiled.ir.plan.split_weights() == {"rollout": {"stable": 90, "canary": 10}}
    assert [n.route.labels for n in compiled.ir.nodes if n.route] == [("stable", "canary"), ("es", "fr", "default")]
    text = export(node, "routed")
    again = serve.compile(parse(text, filename="again.sg").graph("routed").node)

    def rules(c):
        return sorted((r.mode, r.labels, r.choices, r.default, r.name) for r in (n.route for n in c.ir.nodes) if r)

    assert rules(again) == rules(compiled)
    counts = Counter(run_local(node).remote({"lang": "fr", "text": "Ana"}).result() for _ in range(5))
    assert set(counts) <= {"salut Ana", "hello Ana"}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('output Split({a: spanish(request)}, weights={a: 90})', "Split(...): weights must sum to 100, got 90 (a 90)"),
        ("output Switch(request, {})", "Switch(...): the switch has no branches"),
        ("output Switch(request)", "Switch takes 2 arguments and the keyword default=: write Switch(VALUE, {key: NODE, ...}, default=NODE)"),
        ('output Split({a: spanish(request)}, weight={a: 100})', "Split takes 1 argument and the keywords name=, weights=: unknown argument weight=;"),
    ],
)
def test_sg_routing_errors_point_at_the_call(tmp_path, line, message):
    from servegraph.grammar import load_file

    path = tmp_path / "bad.sg"
    path.write_text(f"from test_routing import spanish\n\ngraph bad {{\n    input request\n    {line}\n}}\n")
    with pytest.raises(serve.GraphError) as info:
        load_file(path)
    assert message in str(info.value)
    assert "bad.sg:5:12:" in str(info.value) and "^" in str(info.value)


def test_a_switch_by_predicates_cannot_be_exported_to_sg():
    from servegraph.grammar import export
    from servegraph.grammar.export import ExportError

    with InputNode() as inp:
        app = Switch(inp, [(is_long, spanish.bind(inp))], default=french.bind(inp))
    with pytest.raises(ExportError, match="a switch by predicates cannot be written in a .sg file"):
        export(app, "app")


def test_the_canary_example_runs_both_ways_and_its_text_twin_compiles_to_the_same_routing():
    import canary

    from servegraph.grammar import load_file

    handle = run_local(canary.app)
    models = Counter(handle.remote({"text": "a short text here", "lang": "en"}).result()["model"] for _ in range(200))
    assert set(models) <= {"v1", "v2"} and models["v1"] > models["v2"]  # 90/10
    assert handle.remote({"text": "Hola. Adios", "lang": "es"}).result() == {"model": "es-1", "summary": "Hola"}
    python = serve.compile(canary.app)
    text = serve.compile(load_file(ROOT / "examples" / "canary.sg"))

    def rules(c):
        return sorted((r.mode, r.labels, r.choices, r.default, r.name) for r in (n.route for n in c.ir.nodes) if r)

    assert rules(text) == rules(python)
    assert {d.name for d in text.ir.deployments} == {d.name for d in python.ir.deployments}


@pytest.mark.skipif(shutil.which("dot") is None, reason="needs Graphviz's dot")
def test_the_svg_shows_keys_and_weights_on_the_edges(tmp_path):
    import xml.etree.ElementTree as ET

    import canary

    out = tmp_path / "canary.svg"
    serve.compile(canary.app).with_app(import_path="canary:app").render(str(out))
    texts = [el.text for el in ET.parse(out).iter() if el.tag.endswith("text") and el.text]
    for label in ("stable 90%", "canary 10%", "en", "es", "value", "Split rollout", "Switch"):
        assert label in texts, (label, texts)
