"""A deployment's code version: the same in every process for the same code.

Taken from the user's ``version=`` option, else from the code that runs: the module and name of the
class (or function), and the compiled code of every function it and its bases define (bytecode,
constants, names; not line numbers, so moving code or editing a comment changes nothing). Never from
``inspect.getsource``, which finds the first of two classes of one name and reads the file as it is
now, not as it was imported; never from a pickle of the class, which differs from process to process.
Computed where the code was written (the driver, at compile time).
"""

from __future__ import annotations

import hashlib
import types
from typing import Any

import cloudpickle

from .._handle_era import DECIDED

#: Class attributes that are not the user's code: Python's own, and the handle API the driver recorded.
_NOT_CODE = frozenset({"__dict__", "__weakref__", "__doc__", "__module__", "__qualname__", DECIDED})


def code_version(target: Any, version: str | None) -> str:
    """The user's ``version=`` option, else a hash of the target's module, name and code objects."""
    if version is not None:
        return f"user:{version}"
    h = hashlib.sha256()
    h.update(f"{getattr(target, '__module__', '')}:{getattr(target, '__qualname__', '')}".encode())
    if not _hash_target(h, target):  # no code of its own to read (a callable object): its bytes
        h.update(cloudpickle.dumps(target))
    return h.hexdigest()[:16]


def _hash_target(h: Any, target: Any) -> bool:
    if isinstance(target, type):
        for klass in target.__mro__:
            if klass is object:  # builtin bases hold no code objects (their methods are ignored below)
                continue
            h.update(f"class {klass.__module__}:{klass.__qualname__}".encode())
            for name in sorted(vars(klass)):
                _hash_member(h, name, vars(klass)[name])
        return True
    code = _code_of(target)
    if code is None:
        return False
    _hash_code(h, code)
    _hash_value(h, getattr(target, "__defaults__", None))
    return True


def _code_of(value: Any) -> types.CodeType | None:
    value = getattr(value, "__wrapped__", value)  # functools.wraps decorators: the user's function
    code = getattr(value, "__code__", None)
    return code if isinstance(code, types.CodeType) else None


def _hash_member(h: Any, name: str, value: Any) -> None:
    if name in _NOT_CODE:
        return
    if isinstance(value, (staticmethod, classmethod)):
        value = value.__func__
    if isinstance(value, property):
        for part in (value.fget, value.fset, value.fdel):
            _hash_member(h, name, part)
        return
    code = _code_of(value)
    if code is not None:
        h.update(f"def {name}".encode())
        _hash_code(h, code)
        _hash_value(h, getattr(value, "__defaults__", None))
    elif isinstance(value, (int, float, str, bytes, bool, type(None), tuple, frozenset)):
        h.update(f"{name}=".encode())
        _hash_value(h, value)


def _hash_code(h: Any, code: types.CodeType) -> None:
    h.update(code.co_code)
    h.update(repr((code.co_name, code.co_names, code.co_varnames, code.co_freevars, code.co_argcount,
                   code.co_kwonlyargcount, code.co_flags)).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _hash_code(h, const)  # nested functions, comprehensions, lambdas
        else:
            _hash_value(h, const)


def _hash_value(h: Any, value: Any) -> None:
    if isinstance(value, (tuple, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, frozenset) else value
        h.update(b"(")
        for item in items:
            _hash_value(h, item)
        h.update(b")")
    else:
        shown = repr(value)
        if " at 0x" in shown:  # an object's identity differs from process to process: its type only
            shown = type(value).__qualname__
        h.update(f"{type(value).__name__}:{shown};".encode())
