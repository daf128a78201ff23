"""Config YAML through libyaml's emitter, byte for byte what the pure-Python emitter writes.

PyYAML's pure-Python representer and emitter take about 3 s for a config of 10,000 deployments.
Here the YAML node tree is built directly from plain data (no representer dispatch; shared
dicts and lists become the same node, so anchors come out as PyYAML gives them) and written by
libyaml's C emitter, with each scalar's implicit tag resolved once per distinct value. Where the
two emitters are known to differ, or the data is not plain, :func:`dump` returns None and the
caller uses the pure-Python path: strings that are not printable ASCII (libyaml escapes
characters beyond U+FFFF; the ``|`` block of a multi-line string is followed by a blank line in
one and not the other), empty or long keys (``? ''``), and objects shared between top-level keys.
``tests/test_yaml_fast.py`` compares the two on the golden configs and on random data.
"""

from __future__ import annotations

import gc
import io
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"

_INF = float("inf")


class _Unsure(Exception):
    """The data holds something only the pure-Python path writes as the code expects."""


def _float_text(value: float) -> str:
    # SafeRepresenter.represent_float, so both paths write the same digits.
    if value != value:
        return ".nan"
    if value == _INF:
        return ".inf"
    if value == -_INF:
        return "-.inf"
    text = repr(value).lower()
    if "." not in text and "e" in text:
        text = text.replace("e", ".0e", 1)
    return text


class _Builder:
    """Plain data -> YAML nodes, as SafeRepresenter would make them with ``default_flow_style=False``."""

    def __init__(self) -> None:
        #: id -> (section, node) for dicts and lists: a shared object is one node (PyYAML anchors it).
        self.shared: dict[int, tuple[int, Node | None]] = {}
        self.keep: list[Any] = []  # the objects whose ids are keys above stay alive meanwhile
        self.section = 0

    def node(self, value: Any) -> Node:
        kind = type(value)
        if kind is str:
            if not (value.isascii() and value.isprintable()):
                raise _Unsure
            return ScalarNode(_STR, value)
        if kind is bool:
            return ScalarNode(_BOOL, "true" if value else "false")
        if kind is int:
            return ScalarNode(_INT, str(value))
        if kind is float:
            return ScalarNode(_FLOAT, _float_text(value))
        if value is None:
            return ScalarNode(_NULL, "null")
        if kind is tuple and not value:  # deploy_config writes tuples as lists; () is never anchored
            return SequenceNode(_SEQ, [], flow_style=False)
        if kind is dict or kind is list or kind is tuple:
            found = self.shared.get(id(value))
            if found is not None:
                section, node = found
                if section != self.section or node is None:  # across top-level keys, or a cycle
                    raise _Unsure
                return node
            self.shared[id(value)] = (self.section, None)
            self.keep.append(value)
            node = self._mapping(value) if kind is dict else self._sequence(value)
            self.shared[id(value)] = (self.section, node)
            return node
        raise _Unsure  # subclasses and other types: the representer decides (or refuses)

    def _sequence(self, items: Any) -> SequenceNode:
        return SequenceNode(_SEQ, [self.node(item) for item in items], flow_style=False)

    def _mapping(self, mapping: dict[Any, Any]) -> MappingNode:
        pairs = []
        for key, value in mapping.items():
            if type(key) is str and not 0 < len(key) < 120:
                raise _Unsure
            pairs.append((self.node(key), self.node(value)))
        return MappingNode(_MAP, pairs, flow_style=False)


_Dumper: type | None = None
if getattr(yaml, "__with_libyaml__", False):

    class _CachedResolver(yaml.CSafeDumper):
        """libyaml's emitter asks the (Python) resolver twice per scalar; values repeat a lot."""

        def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
            if kind is not ScalarNode:
                return super().resolve(kind, value, implicit)
            key = (value, implicit)
            try:
                return self._resolved[key]
            except AttributeError:
                self._resolved: dict[Any, Any] = {}
            except KeyError:
                pass
            tag = self._resolved[key] = super().resolve(kind, value, implicit)
            return tag

        def descend_resolver(self, current_node: Any, current_index: Any) -> None:
            pass  # no path resolvers in a safe dumper: BaseResolver's returns at once too

        def ascend_resolver(self) -> None:
            pass

    _Dumper = _CachedResolver


def _emit(node: Node) -> str:
    assert _Dumper is not None
    stream = io.StringIO()
    dumper = _Dumper(
        stream, default_flow_style=False, sort_keys=False, width=1000, indent=2, allow_unicode=True
    )
    dumper.open()
    dumper.serialize(node)
    dumper.close()
    return stream.getvalue()


def dump(data: Any, *, blank_lines: bool = True) -> str | None:
    """``data`` as deploy_config's dumper writes it, or None where only the pure-Python path is sure.

    With ``blank_lines``, a blank line separates top-level keys (each key is written on its own).
    """
    if _Dumper is None or type(data) is not dict or not data:
        return None
    builder = _Builder()
    # The node tree is a few hundred thousand small objects with no cycles; the collector's passes
    # over them (and over the compiled graph behind them) would take half the time.
    paused = gc.isenabled()
    gc.disable()
    try:
        if not blank_lines:
            return _emit(builder.node(data))
        parts = []
        for section, (key, value) in enumerate(data.items()):
            builder.section = section
            parts.append(_emit(builder.node({key: value})))
    except _Unsure:
        return None
    finally:
        if paused:
            gc.enable()
    return "\n".join(parts)
