"""Checks that read the deployments' code: handle calls inside it, and annotations across edges."""

from __future__ import annotations

import typing

import pydantic
import pytest
from support import here

import servegraph as serve
from servegraph import GraphError, InputNode, MultiOutputNode

# -- targets of handles ---------------------------------------------------------------------------


@serve.deployment
class Responder:
    def say_hello(self, name: str) -> str:
        return f"Hola {name}"

    def greet(self, name: str, *, polite: bool = False) -> str:
        return name

    def __call__(self, name: str) -> str:
        return name


@serve.deployment
class Loose:
    def anything(self, *args, **kwargs):
        return args

    def __getattr__(self, name):  # methods made on the fly
        return self.anything


@serve.deployment
def shout(text: str) -> str:
    return text.upper()


# -- callers --------------------------------------------------------------------------------------

TYPO_LINE = here() + 9


@serve.deployment
class Typo:
    def __init__(self, responder):
        self.responder = responder

    async def __call__(self, name: str):
        return await self.responder.say_helo.remote(name)


ARITY_LINE = here() + 9


@serve.deployment
class TooMany:
    def __init__(self, spanish):
        self.other_name = spanish  # stored under another name

    async def __call__(self, name: str):
        return await self.other_name.say_hello.remote(name, "extra")


OPTIONS_LINE = here() + 9


@serve.deployment
class ViaOptions:
    def __init__(self, responder):
        self.responder = responder

    async def __call__(self, name: str):
        return await self.responder.options(method_name="x").greet.remote(name, politely=True)


STREAM_LINE = here() + 9


@serve.deployment
class Streamer:
    def __init__(self, responder):
        self.responder = responder.options(stream=True)  # kept with other options

    async def __call__(self, name: str):
        async for word in self.responder.say_hello.remote():
            yield word


@serve.deployment
class Fine:
    """Everything here is right, or cannot be known: no diagnostic."""

    def __init__(self, responder, fn, loose, *handles):
        self.responder = responder
        self.fn = fn
        self.loose = loose
        self.many = handles
        self.swapped = responder
        self.swapped = None  # assigned twice: not followed

    async def __call__(self, name: str, args: tuple = ()):
        await self.responder.remote(name)  # __call__
        await self.responder.greet.remote(name, polite=True)
        await self.responder.greet.remote(*args)  # unpacked: arity unknown
        await self.fn.remote(name)  # a function deployment
        await self.fn.predict.remote(name)  # a function deployment answers to predict too
        await self.loose.made_up.remote(1, 2, 3)  # __getattr__
        await self.swapped.nope.remote()
        await getattr(self.responder, "say_" + name).remote(name)  # dynamic
        return await self.many[0].nope.remote()


def _diagnostics(app) -> list:
    return list(serve.compile(app, strict=False).diagnostics)


def test_unknown_method_through_a_handle_says_did_you_mean_and_points_at_the_call():
    bind_line = here() + 1
    app = Typo.bind(Responder.bind())
    with pytest.raises(GraphError, match=r"self\.responder\.say_helo\.remote\(\) calls Responder\.say_helo, which does not exist") as err:
        serve.compile(app)
    (diag,) = err.value.diagnostics
    assert diag.code == "handle-call"
    assert (diag.file, diag.line) == ("tests/test_check_code.py", TYPO_LINE)
    assert "did you mean 'say_hello'?" in diag.message
    assert f"Typo bound at tests/test_check_code.py:{bind_line}" in diag.message


def test_handle_call_arity_follows_attributes_stored_under_another_name():
    app = TooMany.bind(Responder.bind())
    with pytest.raises(GraphError, match=r"self\.other_name\.say_hello\.remote\(\) too many positional arguments .*Expected Responder\.say_hello\(self, name: '?str'?\) -> '?str'?") as err:
        serve.compile(app)
    assert err.value.diagnostics[0].line == ARITY_LINE
    assert "spanish is Responder" in str(err.value)


def test_handle_calls_through_options_are_checked():
    with pytest.raises(GraphError, match=r"greet\.remote\(\) got an unexpected keyword argument 'politely'; did you mean 'polite'\?") as err:
        serve.compile(ViaOptions.bind(Responder.bind()))
    assert err.value.diagnostics[0].line == OPTIONS_LINE


def test_handles_kept_with_options_are_checked():
    with pytest.raises(GraphError, match=r"self\.responder\.say_hello\.remote\(\) missing a required argument: 'name'") as err:
        serve.compile(Streamer.bind(Responder.bind()))
    assert err.value.diagnostics[0].line == STREAM_LINE


FUNCTION_CALL_LINE = here() + 9


@serve.deployment
class CallsAFunction:
    def __init__(self, fn):
        self.fn = fn

    async def __call__(self, name: str):
        return await self.fn.whatever.remote(name)


def test_a_function_deployment_called_by_another_method_name_fails():
    # The one rule replicas and local testing mode apply (signature.function_method_problem).
    with pytest.raises(GraphError, match=r"self\.fn\.whatever\.remote\(\): function deployment 'shout' has only __call__ and predict, not 'whatever'") as err:
        serve.compile(CallsAFunction.bind(shout.bind()))
    assert err.value.diagnostics[0].line == FUNCTION_CALL_LINE


def test_handle_calls_that_cannot_be_known_are_left_alone():
    responder = Responder.bind()
    app = Fine.bind(responder, shout.bind(), Loose.bind(), responder)
    assert _diagnostics(app) == []


def test_a_class_without_source_is_skipped():
    namespace: dict = {}
    exec(  # noqa: S102 - a class defined where inspect finds no source
        "class NoSource:\n"
        "    def __init__(self, responder):\n"
        "        self.responder = responder\n"
        "    async def __call__(self):\n"
        "        return await self.responder.nope.remote()\n",
        namespace,
    )
    app = serve.deployment(namespace["NoSource"]).bind(Responder.bind())
    assert [d for d in _diagnostics(app) if d.code == "handle-call"] == []


# -- annotations ----------------------------------------------------------------------------------


@serve.deployment
class Typed:
    def text(self, x: typing.Any) -> str:
        return str(x)

    def number(self, x: typing.Any) -> int:
        return 1

    def maybe(self, x: typing.Any) -> typing.Optional[int]:  # noqa: UP045 - the spelling under test
        return None

    def takes_int(self, v: int) -> int:
        return v

    def takes_float(self, v: float) -> float:
        return v

    def takes_optional_str(self, v: str | None) -> str:
        return v or ""

    def takes_list(self, v: list[int]) -> int:
        return 0

    def takes_forward(self, v: "int") -> int:  # noqa: UP037 - a string annotation, resolved by the check
        return v

    def takes_anything(self, v) -> int:
        return 0


def test_an_annotation_that_never_fits_is_an_error_with_both_lines():
    # Was a warning that deployed anyway: a str reaching ``v: int`` fails on every request.
    typed = Typed.bind()
    with InputNode() as inp:
        line = here() + 1
        app = typed.takes_int.bind(typed.text.bind(inp))
    with pytest.raises(serve.BindError) as info:
        serve.compile(app)
    (diag,) = info.value.diagnostics
    assert diag.severity == "error" and diag.code == "annotation"
    assert diag.line == line
    assert "v is annotated int (tests/test_check_code.py:" in diag.message
    assert "which returns str (tests/test_check_code.py:" in diag.message
    assert "str never fits int" in diag.message


def test_compatible_or_unknown_annotations_say_nothing():
    typed = Typed.bind()
    with InputNode() as inp:
        app = MultiOutputNode(
            [
                typed.takes_float.bind(typed.number.bind(inp)),  # int -> float: the numeric tower
                typed.takes_optional_str.bind(typed.text.bind(inp)),  # one member fits
                typed.takes_anything.bind(typed.text.bind(inp)),
                typed.takes_int.bind(inp),  # the input has no annotation
                shout.bind(typed.text.bind(inp)),
            ]
        )
    assert _diagnostics(app) == []


def test_a_union_with_a_fitting_member_deploys_with_a_warning_strict_refuses():
    typed = Typed.bind()
    with InputNode() as inp:
        line = here() + 1
        app = typed.takes_int.bind(typed.maybe.bind(inp))  # Optional[int] -> int: None would not fit
    compiled = serve.compile(app)  # a doubtful case does not stop the compile
    (diag,) = compiled.diagnostics
    assert diag.severity == "warning" and diag.line == line
    assert "which returns Optional[int]" in diag.message and "fits int only sometimes" in diag.message


def _relation(produced, wanted) -> str:
    from servegraph.compiler.checks.types import relation

    return relation(produced, wanted)


class _Model(pydantic.BaseModel):
    x: int


class _Child(_Model):
    pass


class _Other(pydantic.BaseModel):
    y: int


@pytest.mark.parametrize(
    ("produced", "wanted", "verdict"),
    [
        (list[int], str, "never"),  # generics: passed silently before
        (list[str], list[int], "never"),
        (list[int], typing.Sequence[int], "fits"),
        (typing.Sequence[int], list[int], "maybe"),
        (dict[str, list[int]], dict[str, list[str]], "never"),
        (tuple[int, str], tuple[int, ...], "never"),
        (tuple[int, int], tuple[int, ...], "fits"),
        (typing.Optional[int], int, "maybe"),  # noqa: UP045 - the spelling under test
        (int | str, bytes, "never"),
        (None, int, "never"),
        (None, typing.Optional[int], "fits"),  # noqa: UP045 - the spelling under test
        (typing.Literal["a"], str, "fits"),
        (str, typing.Literal["a", "b"], "maybe"),
        (typing.Literal["a"], typing.Literal["b"], "never"),
        (typing.Literal["a", "b"], typing.Literal["b", "c"], "maybe"),
        (typing.Annotated[int, "units"], int, "fits"),
        (int, typing.Annotated[float, "units"], "fits"),
        (typing.Annotated[str, "units"], int, "never"),
        (_Child, _Model, "fits"),
        (_Model, _Child, "maybe"),
        (_Model, _Other, "never"),
        (typing.Any, int, "fits"),
        (str, typing.Any, "fits"),
        (object, int, "maybe"),
        (typing.TypeVar("T"), int, "unknown"),
    ],
)
def test_annotations_are_compared_by_their_real_rules(produced, wanted, verdict):
    assert _relation(produced, wanted) == verdict


def test_numpy_and_pandas_annotations():
    np = pytest.importorskip("numpy")
    npt = pytest.importorskip("numpy.typing")
    pd = pytest.importorskip("pandas")
    assert _relation(npt.NDArray[np.float64], npt.NDArray[np.float64]) == "fits"
    assert _relation(npt.NDArray[np.float64], np.ndarray) == "fits"
    assert _relation(npt.NDArray[np.float64], npt.NDArray[np.int64]) == "never"
    assert _relation(pd.DataFrame, pd.Series) == "never"
    assert _relation(pd.DataFrame, pd.DataFrame) == "fits"


@serve.deployment
def listing(x: typing.Any) -> list[int]:
    return [1]


@serve.deployment
def takes_text(text: str) -> str:
    return text


def test_a_generic_into_a_plain_class_is_an_error_at_the_consumer_line():
    with InputNode() as inp:
        line = here() + 1
        app = takes_text.bind(listing.bind(inp))
    (diag,) = _diagnostics(app)
    assert diag.severity == "error" and diag.line == line
    assert "text is annotated str" in diag.message and "which returns list[int]" in diag.message


@serve.deployment
def takes_numbers(values: list[str]) -> int:
    return len(values)


def test_multi_output_values_are_judged_as_a_list_of_their_members():
    typed = Typed.bind()
    with InputNode() as inp:
        line = here() + 1
        app = takes_numbers.bind(MultiOutputNode([typed.number.bind(inp), typed.number.bind(inp)]))
    (diag,) = _diagnostics(app)
    assert diag.severity == "error" and diag.line == line
    assert "values is annotated list[str]" in diag.message and "MultiOutputNode" in diag.message


def test_string_annotations_are_resolved():
    typed = Typed.bind()
    with InputNode() as inp:
        app = typed.takes_forward.bind(typed.text.bind(inp))
    (diag,) = _diagnostics(app)
    assert "v is annotated int" in diag.message
