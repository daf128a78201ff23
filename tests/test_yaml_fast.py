"""libyaml's path for config YAML writes exactly what PyYAML's pure-Python emitter writes."""

from __future__ import annotations

import yaml
from goldens import GOLDEN
from hypothesis import given, settings
from hypothesis import strategies as st

from servegraph.compiler.emit import yaml_fast
from servegraph.compiler.emit.deploy_config import dump_yaml

_tricky = st.sampled_from(
    ["", "yes", "No", "null", "~", "1", "0x1f", "1e3", ".5", "-", "- x", "a: b", "#c", "'", '"', "{", "&a", "*a",
     "!t", "%p", "@x", " s", "s ", "2026-11-27", "12:30", "+1", "-.inf", "x" * 130, "é", "\u00e9\u4e2d", "🎉",
     "multi\nline", "tab\t", "\x85", "\u2028"]
)
_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**25), max_value=10**25)
    | st.floats()
    | st.text(max_size=6)
    | _tricky
)
_keys = st.text(max_size=4) | _tricky | st.integers(-5, 5)
_values = st.recursive(
    _leaf,
    lambda inner: st.lists(inner, max_size=3)
    | st.tuples(inner, inner)
    | st.dictionaries(_keys, inner, max_size=3),
    max_leaves=10,
)


def _both(data: object, blank_lines: bool) -> tuple[str, str]:
    return dump_yaml(data, blank_lines=blank_lines, fast=False), dump_yaml(data, blank_lines=blank_lines)


def test_golden_configs_are_written_the_same():
    configs = sorted(GOLDEN.glob("*.yaml"))
    assert configs
    for path in configs:
        data = yaml.safe_load(path.read_text())
        assert yaml_fast.dump(data) is not None, path  # the fast path is taken for real configs
        for blank_lines in (True, False):
            slow, fast = _both(data, blank_lines)
            assert fast == slow, path


def test_shared_objects_keep_their_anchors():
    shared = {"num_cpus": 1}
    data = {"a": [shared, shared], "b": 1}
    assert yaml_fast.dump(data) is not None
    assert _both(data, True)[0] == _both(data, True)[1]
    assert "&id001" in dump_yaml(data)
    # Shared across top-level keys (written one by one): left to the pure-Python path.
    assert yaml_fast.dump({"a": shared, "b": shared}) is None


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(_keys, _values, min_size=1, max_size=4), st.booleans())
def test_random_data_is_written_the_same(data: dict, blank_lines: bool):
    slow, fast = _both(data, blank_lines)
    assert fast == slow
