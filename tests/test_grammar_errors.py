"""One test per .sg error message: a table of bad snippets and the message each must give.

As lark's ``match_examples`` tables parse errors, the table here keeps every
message the language gives in the user's words; a reworded message or one that
points elsewhere fails its row. Each snippet is parsed as a file in tests/, so
``from sg_models import ...`` resolves.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from servegraph.errors import (
    BindError,
    CycleError,
    GraphError,
    ImportPathError,
    InputNodeError,
    OptionError,
    OptionValueError,
    RoutingError,
)
from servegraph.grammar import parse
from servegraph.grammar.errors import SgNameError, SgSyntaxError
from servegraph.grammar.syntax import SYNTAX_HINTS

TESTS = Path(__file__).resolve().parent
FILE = str(TESTS / "snippet.sg")

HEAD = "from sg_models import Model, Plain, Odd, combine\n"


def graph(body: str, head: str = HEAD) -> str:
    """A snippet: the usual imports and a graph around ``body``."""
    return head + "graph g {\n    input request\n" + textwrap.indent(textwrap.dedent(body).strip(), "    ") + "\n}\n"


# (id, text, exception class, regex the message matches, "line:col" it points at)
CASES = [
    # -- syntax ----------------------------------------------------------------------------------
    ("unclosed-call", "graph g {\n    x = A(\n", SgSyntaxError,
     r"'\(' is never closed: expected a value or '\)' before the end of the file", "2:10"),
    ("unclosed-before-next-statement", "graph g {\n    x = A(1\n    y = B()\n}\n", SgSyntaxError,
     r"'\(' is never closed: expected ',' or '\)' before name 'y' on line 3", "2:10"),
    ("mismatched-bracket", "graph g { x = A(1, 2] }", SgSyntaxError,
     r"'\]' does not match the '\(' at line 1, col 16; expected ',' or '\)'", "1:21"),
    ("missing-comma", "graph g { x = A(1 2) }", SgSyntaxError, r"unexpected number 2; expected ',' or '\)'", "1:19"),
    ("missing-value", "graph g { x = }", SgSyntaxError, r"unexpected '\}'; expected a value", "1:15"),
    ("bad-character", "graph g { x = A(1) ; }", SgSyntaxError, r"unexpected character ';'", "1:20"),
    ("unclosed-string", 'graph g { x = A("abc) }', SgSyntaxError,
     r'this string is not closed: end it with " on the same line', "1:17"),
    ("bad-escape", r'graph g { x = A("a\qb") }', SgSyntaxError, r"bad string: unknown escape '\\q'", "1:19"),
    ("short-hex-escape", r'graph g { x = A("\x4") }', SgSyntaxError, r"bad string: '\\x' needs 2 hex digits", "1:18"),
    ("float-too-large", "graph g { x = A(1e999) }", SgSyntaxError, r"the number 1e999 is too large for a float", "1:17"),
    ("int-too-long", "graph g { x = A(" + "9" * 5000 + ") }", SgSyntaxError, r"the number has too many digits", "1:17"),
    ("too-deep", "graph g { x = A(" + "[" * 70 + "]" * 70 + ") }", SgSyntaxError,
     r"brackets nest more than 64 deep here; give inner values a name", "1:79"),
    ("keyword-as-name", "from sg_models import Model as graph\n", SgSyntaxError,
     r"'graph' is a keyword, not a name; choose another name", "1:32"),
    ("python-literal-as-name", "from sg_models import Model as None\n", SgSyntaxError,
     r"'None' cannot be a name here; the language writes it null", "1:32"),
    ("no-output", HEAD + "graph g {\n    x = Model()\n}\n", SgSyntaxError,
     r"graph 'g' has no output; end it with `output VALUE`", "2:7"),
    ("two-outputs", graph("output Model()\noutput Model()"), SgSyntaxError,
     r"graph 'g' already has an output at line 4; a graph has one output statement", "5:5"),
    ("bad-route", HEAD + 'graph g at "g" {\n    output Model()\n}\n', SgSyntaxError,
     r"route prefix 'g' must start with a forward slash \('/'\); Ray Serve refuses it too, e.g. \"/g\"", "2:12"),
    ("route-trailing-slash", HEAD + 'graph g at "/g/" {\n    output Model()\n}\n', SgSyntaxError,
     r"route prefix '/g/' may not end with a trailing '/' \(unless it is just '/'\)", "2:12"),
    ("route-wildcard", HEAD + 'graph g at "/{x}" {\n    output Model()\n}\n', SgSyntaxError,
     r"route prefix '/\{x\}' may not contain wildcards", "2:12"),
    ("duplicate-map-key", graph("output Model({a: 1, a: 2})"), SgSyntaxError,
     r"key 'a' appears twice in this map \(first at line 4\); keep one", "4:25"),
    ("option-value-is-a-name", HEAD + "deployment Model {\n    user_config: Plain\n}\n", SgSyntaxError,
     r"an option value is a plain value \(string, number, true/false/null, list or map\), not the name 'Plain'", "3:18"),
    ("input-too-deep", graph("output combine(request" + ".a" * 70 + ")"), SgSyntaxError,
     r"the input is taken apart more than 64 levels deep here", "4:156"),
    # -- names -----------------------------------------------------------------------------------
    ("unknown-name-close", graph("output Modle()"), SgNameError, r"unknown name 'Modle'; did you mean 'Model'\?", "4:12"),
    ("unknown-name-far", graph("output Zebra()"), SgNameError,
     r"unknown name 'Zebra'; import it \(from MODULE import NAME\) or define it above \(NAME = \.\.\.\)", "4:12"),
    ("python-true", graph("output combine(True)"), SgNameError, r"unknown name 'True'; write true", "4:20"),
    ("duplicate-import", "from sg_models import Model, Model\n", SgNameError,
     r"duplicate name 'Model': already defined at line 1, col 23; give one of them another name", "1:30"),
    ("local-shadows-import", graph("Model = Plain(1)\noutput Model"), SgNameError,
     r"duplicate name 'Model': already defined at line 1, col 23; choose another name for this value", "4:5"),
    ("local-defined-twice", graph("x = Model()\nx = Model()\noutput x"), SgNameError,
     r"duplicate name 'x': already defined at line 4, col 5; a name is given a value once", "5:5"),
    ("duplicate-graph", HEAD + "graph g {\n    output Model()\n}\ngraph g {\n    output Model()\n}\n", SgNameError,
     r"duplicate graph name 'g': already used at line 2, col 7", "5:7"),
    ("builtin-redefined", graph("DAGDriver = Model()\noutput DAGDriver"), SgNameError,
     r"duplicate name 'DAGDriver': it is built in; choose another name", "4:5"),
    ("use-before-definition", graph("x = combine(y)\ny = combine(request)\noutput x"), SgNameError,
     r"'y' is used before its definition at line 5, col 5; move the definition above this line", "4:17"),
    ("configured-after-use", HEAD + "graph g {\n    output Model()\n}\ndeployment Model {\n    num_replicas: 2\n}\n",
     SgNameError, r"'Model' is configured here but already used at line 3, col 12; move this block above its first use", "5:12"),
    ("configured-twice", HEAD + "deployment Model {\n    num_replicas: 2\n}\ndeployment Model {\n    num_replicas: 3\n}\n",
     SgNameError, r"duplicate deployment block for 'Model': already configured at line 2, col 12", "5:12"),
    ("configure-unknown", HEAD + "deployment Modle {\n    num_replicas: 2\n}\n", SgNameError,
     r"unknown name 'Modle'; did you mean 'Model'\?", "2:12"),
    # -- cycles ----------------------------------------------------------------------------------
    ("cycle", graph("a = combine(b)\nb = combine(a)\noutput a"), CycleError,
     r"'a' depends on itself: a -> b -> a\. A node cannot depend on its own output", "4:17"),
    ("self-cycle", graph("a = combine(a)\noutput a"), CycleError, r"'a' depends on itself: a -> a\.", "4:17"),
    ("two-inputs", graph("input other\noutput combine(request, other)"), InputNodeError,
     r"graph 'g' already has an input \('request' at line 3\); a graph has one input", "4:11"),
    # -- options ---------------------------------------------------------------------------------
    ("unknown-option", HEAD + "deployment Model {\n    num_replica: 2\n}\n", OptionError,
     r"unknown deployment option 'num_replica'; did you mean 'num_replicas'\?", "3:5"),
    ("option-out-of-range", HEAD + "deployment Model {\n    num_replicas: 0\n}\n", OptionValueError,
     r"invalid deployment option: num_replicas: must be >= 1, got 0", "3:19"),
    ("actor-option-key", HEAD + "deployment Model {\n    ray_actor_options: {num_cpu: 1}\n}\n", OptionValueError,
     r"ray_actor_options: unknown key 'num_cpu'; did you mean 'num_cpus'\?", "3:24"),
    ("options-conflict", HEAD + "deployment Model {\n    num_replicas: 2\n    autoscaling_config: {max_replicas: 3}\n}\n",
     OptionValueError, r"set num_replicas or autoscaling_config, not both", "2:12"),
    ("placement-group-conflict", HEAD + "deployment Model {\n    placement_group_bundles: [{CPU: 1}]\n    max_replicas_per_node: 2\n}\n",
     OptionValueError, r"Setting max_replicas_per_node is not allowed when placement_group_bundles is provided\.", "2:12"),
    ("option-set-twice", HEAD + "deployment Model {\n    num_replicas: 2\n    num_replicas: 3\n}\n", OptionValueError,
     r"option 'num_replicas' is set twice \(first at line 3, col 5\); keep one", "4:5"),
    # -- imports ---------------------------------------------------------------------------------
    ("module-missing", "from sg_modles import Model\n", ImportPathError,
     r"cannot import module 'sg_modles': no module named 'sg_modles' in .*; did you mean 'sg_models'\?", "1:6"),
    ("name-missing", "from sg_models import Modle\n", ImportPathError,
     r"module 'sg_models' has no 'Modle'; did you mean 'Model'\?", "1:23"),
    ("not-a-deployment", "from sg_models import NOT_A_DEPLOYMENT\n", ImportPathError,
     r"'sg_models.NOT_A_DEPLOYMENT' is a number, not a class, function or deployment", "1:23"),
    ("bound-node", "from sg_models import bound\n", ImportPathError,
     r"'sg_models.bound' is a bound graph node, not a deployment; import the deployment classes", "1:23"),
    ("module-raises", "from sg_broken import Model\n", ImportPathError,
     r"importing module 'sg_broken' failed: RuntimeError: this module is broken on purpose", "1:6"),
    # -- bind arguments --------------------------------------------------------------------------
    ("missing-argument", graph("output Plain()"), BindError,
     r"Plain\(\.\.\.\): missing a required argument: 'weight'\. Expected Plain\.__init__\(self, weight: '?float'?\); "
     r"fix the arguments of the call", "4:12"),
    ("unexpected-keyword", graph("output Plain(1, wieght=2)"), BindError,
     r"Plain\(\.\.\.\): got an unexpected keyword argument 'wieght'", "4:21"),
    ("missing-method", graph("output Plain(1).predikt(request)"), BindError,
     r"Plain\.predikt\(\.\.\.\): Plain has no method 'predikt'; did you mean 'predict'\?", "4:21"),
    ("method-arguments", graph("output Plain(1).predict()"), BindError,
     r"Plain\.predict\(\.\.\.\): missing a required argument: 'text'", "4:21"),
    ("no-call-method", graph("output Plain(1)(request)"), BindError,
     r"Plain\(\.\.\.\)\(\.\.\.\) calls the deployment, but Plain has no __call__ method", "4:20"),
    ("private-method", graph("output Odd()._hidden()"), BindError,
     r"Odd\._hidden is private \(its name starts with '_'\)", "4:18"),
    ("method-named-like-node-attribute", graph("output Odd().options()"), BindError,
     r"servegraph cannot bind a method called 'options': graph nodes use that name themselves", "4:18"),
    ("positional-after-keyword", graph("output combine(k=1, request)"), BindError,
     r"a positional argument cannot follow keyword arguments; put it before them", "4:25"),
    ("keyword-twice", graph("output combine(k=1, k=2)"), BindError,
     r"keyword argument 'k' is given twice \(first at line 4, col 20\)", "4:25"),
    ("deployment-as-value", graph("output Model(Plain)"), BindError,
     r"'Plain' is a deployment, not a graph node; call it to bind it: Plain\(\.\.\.\)", "4:18"),
    ("method-of-unbound-deployment", graph("output Model.predict(request)"), BindError,
     r"'Model' is a deployment, not a graph node: bind it first, then call the method: Model\(\.\.\.\)\.predict\(\.\.\.\)", "4:18"),
    ("method-not-called", graph("x = Model().predict\noutput combine(x)"), BindError,
     r"Model\(\.\.\.\)\.predict is a method; call it: Model\(\.\.\.\)\.predict\(\.\.\.\)", "4:17"),
    ("input-has-no-methods", graph("output request.lower()"), BindError,
     r"cannot call \.lower\(\.\.\.\) on the input: the input has no methods", "4:20"),
    ("index-a-node", graph("output combine(Model()[0])"), BindError,
     r"cannot take \[\.\.\.\] of the deployment node Model\(\.\.\.\): only the input has parts", "4:27"),
    ("index-with-a-list", graph("output combine(request[[1]])"), BindError,
     r"a part of the input is picked with a string or number key, not a list", "4:28"),
    ("attribute-of-a-result", graph("output combine(combine(request).field)"), BindError,
     r"cannot take \.field of the result of combine\(\.\.\.\): only the input has parts", "4:37"),
    ("call-a-result", graph("output combine(request)(1)"), BindError,
     r"combine\(\.\.\.\) is the result of combine\(\.\.\.\), which cannot be called", "4:28"),
    ("output-a-literal", graph('output "hello"'), BindError,
     r"output takes graph nodes \(made by calling a deployment, or the input\), got a string", "4:12"),
    ("driver-arguments", graph("output DAGDriver(request, request)"), BindError,
     r'DAGDriver takes one graph node and an optional http_adapter string: DAGDriver\(NODE, http_adapter="module:function"\)', "4:12"),
    ("driver-adapter", graph('output DAGDriver(request, http_adapter="sg_models:nope")'), BindError,
     r"DAGDriver\(\.\.\.\): http_adapter 'sg_models:nope' does not resolve", "4:12"),
    ("multi-output-arguments", graph("output MultiOutputNode(request)"), BindError,
     r"MultiOutputNode takes one list of graph nodes: MultiOutputNode\(\[NODE, NODE, \.\.\.\]\)", "4:12"),
    ("multi-output-empty", graph("output MultiOutputNode([])"), BindError,
     r"MultiOutputNode\(\) takes a non-empty list of graph nodes", "4:12"),
    ("builtin-not-called", graph("output combine(DAGDriver)"), BindError,
     r'DAGDriver must be called: DAGDriver\(NODE, http_adapter="module:function"\)', "4:20"),
    # -- routing -------------------------------------------------------------------------------------
    ("switch-arguments", graph("output Switch(request)"), RoutingError,
     r"Switch takes 2 arguments and the keyword default=: write Switch\(VALUE, \{key: NODE, \.\.\.\}, default=NODE\)", "4:12"),
    ("switch-empty", graph("output Switch(request, {})"), RoutingError, r"Switch\(\.\.\.\): the switch has no branches", "4:12"),
    ("switch-branch-not-a-node", graph("output Switch(request, {a: 1})"), RoutingError,
     r"Switch\(\.\.\.\): branch a is 1, not a graph node with a value per request", "4:12"),
    ("split-weights-sum", graph("output Split({a: combine(request), b: combine(request)}, weights={a: 60, b: 60})"), RoutingError,
     r"Split\(\.\.\.\): weights must sum to 100, got 120 \(a 60, b 60\)", "4:12"),
    ("split-negative", graph("output Split({a: combine(request), b: combine(request)}, weights={a: 110, b: -10})"), RoutingError,
     r"the weight of 'b' is negative \(-10\)", "4:12"),
    ("split-unknown-keyword", graph("output Split({a: combine(request)}, weight={a: 100})"), RoutingError,
     r"Split takes 1 argument and the keywords name=, weights=: unknown argument weight=", "4:12"),
]


@pytest.mark.parametrize("text, cls, pattern, where", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_error_message(text, cls, pattern, where):
    with pytest.raises(cls, match=pattern) as info:
        parse(text, filename=FILE)
    (diagnostic,) = info.value.diagnostics
    assert f"{diagnostic.line}:{diagnostic.col}" == where
    assert str(info.value).startswith(f"{FILE}:{where}: error: ")
    # The source line (or, for a long one, the part around the spot), then a caret under the spot.
    shown, caret = diagnostic.message.split("\n")[-2:]
    line, column = map(int, where.split(":"))
    at = len(caret) - len(caret.lstrip())
    assert caret.strip().startswith("^") and shown.startswith("    ")
    assert shown[at : at + 5] == text.split("\n")[line - 1][column - 1 : column + 4]


@pytest.mark.parametrize(
    "message, snippet",
    [(message, snippet) for message, snippets in SYNTAX_HINTS.items() for snippet in snippets],
)
def test_syntax_hint(message, snippet):
    with pytest.raises(SgSyntaxError, match=re.escape(message)):
        parse(snippet, filename=FILE)


def test_no_message_uses_lark_terminal_names():
    broken = ["graph g { x = A(", "graph g { x = ) }", "from", "graph g { output x y }", "deployment A { a: 1 b }"]
    for text in broken:
        with pytest.raises(SgSyntaxError) as info:
            parse(text, filename=FILE)
        assert not re.search(r"\b(__ANON_\d+|RPAR|LPAR|RBRACE|LBRACE|LSQB|RSQB|COMMA|NAME|STRING|NUMBER|\$END)\b", str(info.value))


def test_every_error_in_a_file_is_reported():
    text = graph(
        """
        a = Modle()
        b = Plain()
        c = combine(d)
        output combine(a, b, c), Plain(1).predikt(request)
        """,
        head=HEAD + "from sg_modles import Thing\ndeployment Model {\n    num_replica: 2\n}\n",
    )
    with pytest.raises(GraphError) as info:
        parse(text, filename=FILE)
    found = [(d.line, d.code) for d in info.value.diagnostics]
    assert found == [
        (2, "import-path"),
        (4, "unknown-option"),
        (8, "name"),
        (9, "bind-arguments"),
        (10, "name"),
        (11, "bind-arguments"),
    ]
    assert str(info.value).startswith(f"6 errors in {FILE}:\n")
    assert isinstance(info.value, ImportPathError)  # the first error picks the class


def test_syntax_errors_in_several_items_are_all_reported():
    text = "from sg_models import Model\ngraph a {\n    output Model(\n}\ngraph b {\n    output = 1\n}\ndeployment Model { num_replicas 2 }\n"
    with pytest.raises(SgSyntaxError) as info:
        parse(text, filename=FILE)
    assert [d.line for d in info.value.diagnostics] == [4, 6, 8]


def test_a_file_that_is_not_utf8_is_a_located_error(tmp_path):
    from servegraph.grammar import load_file

    path = tmp_path / "latin1.sg"
    path.write_bytes(b"graph g { output A('\xe9') }\n")
    with pytest.raises(SgSyntaxError, match="not UTF-8 text"):
        load_file(path)
