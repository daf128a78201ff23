"""Text to syntax tree: the lark parser, the transformer to :mod:`.ast`, and syntax errors in plain words.

Nothing here imports user code; ``servegraph fmt`` needs only this module and
the printer. A syntax error names what was found and what was expected in the
user's words (never a terminal name like ``RPAR``), and :data:`SYNTAX_HINTS`
gives the usual mistakes a message of their own, found as lark's
``match_examples`` does: by the parser state the mistake leaves behind.
"""

from __future__ import annotations

import contextvars
import functools
import re
from collections.abc import Iterator
from typing import Any

from lark import Lark, Token, UnexpectedCharacters, UnexpectedInput, UnexpectedToken
from lark.visitors import Transformer_NonRecursive, v_args

from ..errors import Diagnostic
from . import ast
from .errors import Source, raise_located

#: Brackets may nest this deep; deeper values would only reach Python's recursion limit later.
MAX_DEPTH = 64

KEYWORDS = frozenset(
    {"from", "import", "as", "deployment", "graph", "at", "input", "output", "true", "false", "null"}
)
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

_OPENERS = {"LPAR": "RPAR", "LSQB": "RSQB", "LBRACE": "RBRACE"}
_CLOSERS = {v: k for k, v in _OPENERS.items()}

# Per-parse state the lexer callbacks fill in (the parser itself is built once and shared).
_comments: contextvars.ContextVar[list[Token]] = contextvars.ContextVar("sg_comments")
_depth: contextvars.ContextVar[list[Any]] = contextvars.ContextVar("sg_depth")


def _on_comment(token: Token) -> Token:
    found = _comments.get(None)
    if found is not None:
        found.append(token)
    return token


def _on_open(token: Token) -> Token:
    state = _depth.get(None)  # [current depth, first token past MAX_DEPTH]
    if state is None:
        return token
    state[0] += 1
    if state[0] > MAX_DEPTH and state[1] is None:
        state[1] = token
    return token


def _on_close(token: Token) -> Token:
    state = _depth.get(None)
    if state is not None:
        state[0] = max(0, state[0] - 1)
    return token


@functools.cache
def parser() -> Lark:
    """The LALR parser for ``servegraph.lark``, built once per process."""
    callbacks = {"COMMENT": _on_comment}
    callbacks.update({name: _on_open for name in _OPENERS})
    callbacks.update({name: _on_close for name in _CLOSERS})
    return Lark.open_from_package(
        "servegraph.grammar",
        "servegraph.lark",
        parser="lalr",
        lexer="contextual",
        keep_all_tokens=True,
        propagate_positions=True,
        maybe_placeholders=False,
        lexer_callbacks=callbacks,
    )


# Literals ---------------------------------------------------------------------

_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", '"': '"', "'": "'"}
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}


def unquote(token: str) -> tuple[str, tuple[int, str] | None]:
    """The value of a string literal, and (offset, problem) for a bad escape.

    >>> unquote(r'"a\\tb"')
    ('a\\tb', None)
    >>> unquote(r'"\\q"')[1]
    (1, "unknown escape '\\\\q'; write '\\\\\\\\' for a backslash")
    """
    body = token[1:-1]
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        esc = body[i + 1]
        if esc in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[esc])
            i += 2
        elif esc in _HEX_ESCAPES:
            digits = body[i + 2 : i + 2 + _HEX_ESCAPES[esc]]
            if len(digits) != _HEX_ESCAPES[esc] or not all(c in "0123456789abcdefABCDEF" for c in digits):
                return "", (i + 1, f"'\\{esc}' needs {_HEX_ESCAPES[esc]} hex digits")
            code = int(digits, 16)
            if code > 0x10FFFF:
                return "", (i + 1, f"'\\{esc}{digits}' is not a Unicode character")
            out.append(chr(code))
            i += 2 + len(digits)
        else:
            return "", (i + 1, f"unknown escape '\\{esc}'; write '\\\\' for a backslash")
    return "".join(out), None


def quote(value: str) -> str:
    """A string literal for ``value`` in canonical form: double quotes, escapes only where needed.

    >>> quote('say "hi"\\n')
    '"say \\\\"hi\\\\"\\\\n"'
    """
    out = ['"']
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    out.append('"')
    return "".join(out)


def number(text: str) -> tuple[Any, str | None]:
    """The value of a number literal (int unless it has a '.' or exponent), and a problem if any."""
    if "." in text or "e" in text or "E" in text:
        value = float(text)
        if value in (float("inf"), float("-inf")):
            return 0.0, f"the number {text[:20]} is too large for a float"
        return value, None
    try:
        return int(text), None
    except ValueError:  # more digits than int() accepts (sys.get_int_max_str_digits)
        return 0, "the number has too many digits"


# Tree -> AST ------------------------------------------------------------------


def _line(token: Token) -> int:
    return token.line or 0  # lark types positions as optional; every token the lexer makes has them


def _span(token: Token) -> ast.Span:
    return ast.Span(_line(token), token.column or 0, max(1, len(token.value)))


def _name(token: Token) -> ast.Name:
    return ast.Name(str(token), _span(token))


def _tokens(children: list, *types: str) -> list[Token]:
    return [c for c in children if isinstance(c, Token) and c.type in types]


def _values(children: list) -> list:
    return [c for c in children if not isinstance(c, Token)]


class _ToAst(Transformer_NonRecursive):
    """lark tree -> :mod:`.ast`; literal problems (bad escapes, huge numbers) are collected, not raised."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[tuple[str, ast.Span]] = []

    # literals
    def string(self, children: list) -> ast.Literal:
        (token,) = children
        value, problem = unquote(str(token))
        if problem is not None:
            offset, message = problem
            self.problems.append((f"bad string: {message}", ast.Span(_line(token), (token.column or 0) + offset, 2)))
        return ast.Literal(value, _span(token))

    def number(self, children: list) -> ast.Literal:
        (token,) = children
        value, problem = number(str(token))
        if problem is not None:
            self.problems.append((problem, _span(token)))
        return ast.Literal(value, _span(token))

    def true(self, children: list) -> ast.Literal:
        return ast.Literal(True, _span(children[0]))

    def false(self, children: list) -> ast.Literal:
        return ast.Literal(False, _span(children[0]))

    def null(self, children: list) -> ast.Literal:
        return ast.Literal(None, _span(children[0]))

    def bare_key(self, children: list) -> ast.Literal:
        return ast.Literal(str(children[0]), _span(children[0]), bare=True)

    def name(self, children: list) -> ast.NameRef:
        return ast.NameRef(_name(children[0]))

    def list_expr(self, children: list) -> ast.ListExpr:
        return ast.ListExpr(tuple(_values(children)), _span(children[0]))

    def map_expr(self, children: list) -> ast.MapExpr:
        return ast.MapExpr(tuple(_values(children)), _span(children[0]))

    def entry(self, children: list) -> tuple:
        key, value = _values(children)
        return (key, value)

    # postfix chains
    def call(self, children: list) -> ast.Call:
        args = tuple(v if isinstance(v, ast.Arg) else ast.Arg(v) for v in _values(children))
        return ast.Call(args, _span(children[0]))

    def kwarg(self, children: list) -> ast.Arg:
        return ast.Arg(_values(children)[0], _name(children[0]))

    def attr(self, children: list) -> ast.Attr:
        return ast.Attr(_name(_tokens(children, "NAME")[0]))

    def index(self, children: list) -> ast.Index:
        return ast.Index(_values(children)[0], _span(children[0]))

    def postfix(self, children: list) -> ast.Postfix:
        atom, *trailers = children
        if isinstance(atom, ast.Postfix):  # cannot happen with this grammar, but keep chains flat
            return ast.Postfix(atom.atom, atom.trailers + tuple(trailers))
        return ast.Postfix(atom, tuple(trailers))

    # statements
    def input_stmt(self, children: list) -> ast.InputStmt:
        keyword, name = children
        return ast.InputStmt(_name(name), _line(keyword), _line(name))

    @v_args(meta=True)
    def assign(self, meta: Any, children: list) -> ast.Assign:
        target = children[0]
        return ast.Assign(_name(target), _values(children)[0], _line(target), meta.end_line)

    @v_args(meta=True)
    def output_stmt(self, meta: Any, children: list) -> ast.OutputStmt:
        keyword = children[0]
        return ast.OutputStmt(tuple(_values(children)), _span(keyword), _line(keyword), meta.end_line)

    @v_args(meta=True)
    def option(self, meta: Any, children: list) -> ast.Option:
        key = children[0]
        return ast.Option(_name(key), _values(children)[0], _line(key), meta.end_line)

    def module(self, children: list) -> tuple[ast.Name, ...]:
        return tuple(_name(t) for t in _tokens(children, "NAME"))

    def import_name(self, children: list) -> tuple:
        names = [_name(t) for t in _tokens(children, "NAME")]
        return (names[0], names[1] if len(names) > 1 else None)

    @v_args(meta=True)
    def import_stmt(self, meta: Any, children: list) -> ast.ImportStmt:
        module, *names = _values(children)
        return ast.ImportStmt(module, tuple(names), _line(children[0]), meta.end_line)

    def deployment(self, children: list) -> ast.DeploymentDecl:
        names = _tokens(children, "NAME")
        lbrace, rbrace = _tokens(children, "LBRACE")[0], children[-1]
        return ast.DeploymentDecl(
            name=_name(names[0]),
            source=_name(names[1]) if len(names) > 1 else None,
            options=tuple(_values(children)),
            line=_line(children[0]),
            open_line=_line(lbrace),
            end_line=_line(rbrace),
        )

    def graph(self, children: list) -> ast.GraphDecl:
        name = _tokens(children, "NAME")[0]
        route = _tokens(children, "STRING")
        lbrace, rbrace = _tokens(children, "LBRACE")[0], children[-1]
        return ast.GraphDecl(
            name=_name(name),
            route=self.string(route) if route else None,
            body=tuple(_values(children)),
            line=_line(children[0]),
            open_line=_line(lbrace),
            end_line=_line(rbrace),
        )

    def start(self, children: list) -> tuple:
        return tuple(children)


# Syntax errors ----------------------------------------------------------------

_WORDS = {"NAME": "a name", "STRING": "a string", "NUMBER": "a number", "$END": "the end of the file"}
_VALUE_START = {"NAME", "STRING", "NUMBER", "LSQB", "LBRACE"}
_LITERAL_WORDS = {"TRUE", "FALSE", "NULL"}
_TRAILERS = {"DOT", "LPAR", "LSQB"}
_STATEMENT_START = {"INPUT", "OUTPUT"}
_NEW_STATEMENT = {"INPUT", "OUTPUT", "GRAPH", "DEPLOYMENT", "FROM"}

#: The usual mistakes and the message each gives, as lark's ``match_examples`` tables them:
#: a mistake is recognized by the parser state it leaves and the token it trips on.
#: tests/test_grammar_errors.py checks that every snippet still gives its message.
SYNTAX_HINTS: dict[str, tuple[str, ...]] = {
    "statements go inside a graph: graph NAME { ... }": (
        "x = A()",
        "input request",
        "output x",
    ),
    "imports are written: from MODULE import NAME": ("import hello",),
    "say what to import: from MODULE import NAME, NAME": ("from hello import",),
    "separate imported names with commas: from MODULE import A, B": ("from hello import A B",),
    "a graph needs a name: graph NAME { ... }": ("graph {", "graph at"),
    "options go in a block after the deployment's name: deployment NAME { num_replicas: 2 }": (
        "deployment A(num_replicas=2)",
    ),
    "a deployment option is written `name: value`, e.g. num_replicas: 2": (
        "deployment A { num_replicas = 2 }",
        "deployment A { num_replicas 2 }",
    ),
    "keyword arguments are written `name=value`, e.g. A(weight=0.5)": ("graph g { x = A(weight: 1) }",),
    "'input' and 'output' are keywords, not names; choose another name": (
        "graph g { output = A() }",
        "graph g { input = A() }",
    ),
    "a graph holds `name = value`, `input NAME` and `output VALUE` statements; "
    "options (name: value) go in a deployment block": (
        "graph g { num_replicas: 2 }",
        "graph g { x A() }",
    ),
    "a single '=' gives a name to a value; a graph has no comparisons": ("graph g { x == A() }",),
}


@functools.cache
def _hint_table() -> dict[tuple[Any, str], str]:
    table: dict[tuple[Any, str], str] = {}
    for message, snippets in SYNTAX_HINTS.items():
        for snippet in snippets:
            try:
                _raw_parse(snippet)
            except UnexpectedToken as exc:
                table.setdefault((exc.state.position, exc.token.type), message)
    return table


def _describe_terminal(name: str) -> str:
    if name in _WORDS:
        return _WORDS[name]
    try:
        pattern = parser().get_terminal(name).pattern
    except KeyError:  # pragma: no cover - every terminal the parser reports exists
        return name.lower()
    return f"'{pattern.value}'" if pattern.type == "str" else name.lower()


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def expected_words(expected: set[str] | frozenset[str]) -> str:
    """What the parser wanted, in words: ``a value or ')'`` rather than ``NAME, STRING, ..., RPAR``."""
    names = set(expected)
    words = []
    if _VALUE_START <= names:
        names -= _VALUE_START | _LITERAL_WORDS
        words.append("a value")
    if _STATEMENT_START <= names and "NAME" in names:
        names -= _STATEMENT_START | {"NAME"}
        words.append("a statement (name = ..., input NAME, output ...)")
    if not _VALUE_START <= set(expected) and names - _TRAILERS:
        names -= _TRAILERS  # a call, .attr or [key] may follow any value: true, but never the point
    order = ["NAME", "STRING", "NUMBER", "EQUAL", "COLON", "COMMA", "DOT", "AS", "AT", "IMPORT"]
    ranked = sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n))
    words.extend(_describe_terminal(n) for n in ranked if n != "$END")
    if "$END" in names:
        words.append(_WORDS["$END"])
    return _join(words) if words else "nothing more"


def _describe_token(token: Token) -> str:
    if token.type == "$END":
        return "the end of the file"
    value = str(token)
    if len(value) > 30:
        value = value[:27] + "..."
    if token.type == "NAME":
        return f"name '{value}'"
    if token.type == "STRING":
        return f"string {value}"
    if token.type == "NUMBER":
        return f"number {value}"
    return f"'{value}'"


def _all_tokens(text: str) -> list[Token]:
    """The file's tokens as far as they lex (for bracket matching in error messages)."""
    out: list[Token] = []
    try:
        for token in parser().lex(text):
            out.append(token)
    except UnexpectedInput:
        pass
    return out


def _open_brackets(tokens: list[Token], line: int, col: int) -> list[Token]:
    stack: list[Token] = []
    for token in tokens:
        if (token.line, token.column) >= (line, col):
            break
        if token.type in _OPENERS:
            stack.append(token)
        elif token.type in _CLOSERS and stack and stack[-1].type == _CLOSERS[token.type]:
            stack.pop()
    return stack


def _token_diagnostic(exc: UnexpectedToken, source: Source) -> Diagnostic:
    token = exc.token
    # The LALR table's expected set can be wider than what may really come next (lookaheads of
    # a reduction are merged across contexts); the interactive parser knows exactly.
    accepts = exc.accepts if exc.interactive_parser is not None else exc.expected
    expected = expected_words(accepts)
    hint = _hint_table().get((exc.state.position, token.type))
    tokens = _all_tokens(source.text)
    if token.type == "$END":
        at = _end_of_text(source.text)
        stack = _open_brackets(tokens, at.line, at.col + 1)
        if stack and hint is None:
            opener = stack[-1]
            return source.diagnostic(
                "syntax", f"'{opener}' is never closed: expected {expected} before the end of the file", _span(opener)
            )
        return source.diagnostic("syntax", f"unexpected end of file; {hint or 'expected ' + expected}", at)
    stack = _open_brackets(tokens, token.line, token.column)
    previous = [t for t in tokens if (t.line, t.column) < (token.line, token.column)]
    following = [t for t in tokens if (t.line, t.column) > (token.line, token.column)]
    starts_statement = token.type in _NEW_STATEMENT or (
        token.type == "NAME" and following and following[0].type == "EQUAL"
    )
    if (
        hint is None
        and stack
        and previous
        and previous[-1].line < token.line
        and starts_statement
        and _OPENERS[stack[-1].type] in accepts
    ):
        opener = stack[-1]
        return source.diagnostic(
            "syntax",
            f"'{opener}' is never closed: expected {expected} before {_describe_token(token)} on line {token.line}",
            _span(opener),
        )
    if hint is None and token.type in _CLOSERS and stack and stack[-1].type != _CLOSERS[token.type]:
        opener = stack[-1]
        return source.diagnostic(
            "syntax",
            f"'{token}' does not match the '{opener}' at line {opener.line}, col {opener.column}; "
            f"expected {expected}",
            _span(token),
        )
    message = f"unexpected {_describe_token(token)}; " + (hint or f"expected {expected}")
    return source.diagnostic("syntax", message, _span(token))


def _end_of_text(text: str) -> ast.Span:
    stripped = text.rstrip()
    lines = stripped.split("\n")
    return ast.Span(len(lines), len(lines[-1]) + 1)


def _characters_diagnostic(exc: UnexpectedCharacters, source: Source) -> Diagnostic:
    span = ast.Span(exc.line, exc.column)
    char = exc.char
    if char in "\"'":
        return source.diagnostic("syntax", f"this string is not closed: end it with {char} on the same line", span)
    shown = char if char.isprintable() and not char.isspace() else repr(char)[1:-1]
    allowed = {name for name in exc.allowed if name not in ("COMMENT", "WS")}
    message = f"unexpected character '{shown}'"
    if allowed:
        message += f"; expected {expected_words(allowed)}"
    return source.diagnostic("syntax", message, span)


def _diagnostic(exc: UnexpectedInput, source: Source) -> Diagnostic:
    if isinstance(exc, UnexpectedToken):
        return _token_diagnostic(exc, source)
    if isinstance(exc, UnexpectedCharacters):
        return _characters_diagnostic(exc, source)
    line, col = getattr(exc, "line", 1) or 1, getattr(exc, "column", 1) or 1  # pragma: no cover - LALR raises the two above
    return source.diagnostic("syntax", "unexpected end of file", ast.Span(line, col))  # pragma: no cover


_TOP_LEVEL = re.compile(r"(from|graph|deployment)\b")


def _chunks_after(text: str, line: int) -> Iterator[str]:
    """Top-level items starting at or after ``line``, each padded to keep its line numbers.

    A syntax error stops lark; parsing the items after it on their own finds their
    errors too, so one run reports every broken item, not just the first.
    """
    lines = text.split("\n")
    starts = [i for i, row in enumerate(lines) if _TOP_LEVEL.match(row) and i + 1 >= line]
    for n, start in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(lines)
        yield "\n" * start + "\n".join(lines[start:end])


def _raw_parse(text: str) -> Any:
    """Parse without collecting comments or depth (for error examples and later items)."""
    comments, depth = _comments.set([]), _depth.set([0, None])
    try:
        return parser().parse(text)
    finally:
        _comments.reset(comments)
        _depth.reset(depth)


def _first_error(text: str, source: Source) -> Diagnostic | None:
    try:
        _raw_parse(text)
    except UnexpectedInput as exc:
        return _diagnostic(exc, source)
    return None


def _syntax_errors(exc: UnexpectedInput, text: str, source: Source) -> list[Diagnostic]:
    """The error lark stopped at, and the first one of each top-level item after it."""
    found = [_diagnostic(exc, source)]
    if isinstance(exc, UnexpectedToken) and exc.token.type != "$END":
        seen = {(found[0].line, found[0].col)}
        for chunk in _chunks_after(text, exc.token.line):
            more = _first_error(chunk, source)
            if more is not None and (more.line, more.col) not in seen:
                seen.add((more.line, more.col))
                found.append(more)
    return found


def parse_module(text: str, filename: str = "<string>") -> ast.Module:
    """Parse ``.sg`` text into its syntax tree (no imports are run).

    Raises:
        SgSyntaxError: with a diagnostic per broken top-level item, each with a caret.
    """
    if text.startswith("\ufeff"):
        text = text[1:]
    source = Source(text, filename)
    comments: list[Token] = []
    depth: list[Any] = [0, None]
    comments_token, depth_token = _comments.set(comments), _depth.set(depth)
    try:
        tree = parser().parse(text)
    except UnexpectedInput as exc:
        errors = _syntax_errors(exc, text, source)
    else:
        errors = []
    finally:
        _comments.reset(comments_token)
        _depth.reset(depth_token)
    raise_located(errors)
    if depth[1] is not None:
        deep = depth[1]
        raise_located(
            [
                source.diagnostic(
                    "syntax",
                    f"brackets nest more than {MAX_DEPTH} deep here; give inner values a name "
                    "with `name = ...` and use the name",
                    _span(deep),
                )
            ]
        )
    transformer = _ToAst()
    items = transformer.transform(tree)
    if transformer.problems:
        raise_located([source.diagnostic("syntax", message, span) for message, span in transformer.problems])
    return ast.Module(
        items=items,
        comments=tuple(ast.Comment(str(t).rstrip(), _line(t), t.column or 0) for t in comments),
        filename=filename,
        source=text,
    )
