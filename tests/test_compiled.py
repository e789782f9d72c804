"""Which build runs: ``ipc_server.compiled`` tells the truth about the modules imported.

The compiled core (``IPC_SERVER_COMPILE=1 pip install .``) is the modules that
``setup.py`` names, compiled together or not at all; ``.ci/run`` runs the
whole suite against the pure package and the hot path's tests (this file
among them) against the compiled one.
"""

from __future__ import annotations

import ast
import importlib
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import ipc_server

SETUP = Path(__file__).resolve().parent.parent / "setup.py"


def compiled_names() -> tuple[str, ...]:
    """``setup.COMPILED``, read from its source (setup.py is not imported)."""
    for node in ast.parse(SETUP.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "COMPILED":
            names = ast.literal_eval(node.value)
            assert isinstance(names, tuple)
            return names
    raise AssertionError("no COMPILED in setup.py")


def is_extension(module: str) -> bool:
    origin = importlib.import_module(module).__file__
    return origin is not None and origin.endswith(tuple(EXTENSION_SUFFIXES))


def test_compiled_is_a_bool() -> None:
    """``ipc_server.compiled`` is a plain bool, exported."""
    assert ipc_server.compiled is True or ipc_server.compiled is False
    assert "compiled" in ipc_server.__all__


def test_compiled_says_which_modules_run() -> None:
    """Compiled: every module setup.py names is an extension; pure: none is."""
    names = compiled_names()
    assert names, "setup.py compiles nothing"
    found = {name: is_extension(f"ipc_server.{name}") for name in names}
    assert found == dict.fromkeys(names, ipc_server.compiled)


def test_only_the_named_modules_are_compiled() -> None:
    """No other module of the package is an extension (the rest stays interpreted)."""
    package = Path(ipc_server.__file__).parent
    named = set(compiled_names())
    others = [
        path.name
        for path in package.rglob("*")
        if path.name.endswith(tuple(EXTENSION_SUFFIXES)) and path.name.split(".")[0] not in named
    ]
    assert others == []


def test_no_await_in_a_finally_or_except_of_a_compiled_module() -> None:
    """In a compiled module, an ``await`` inside a ``finally`` (or an ``except``) that an
    exception passes through leaves that exception to be raised again later in
    another coroutine (seen: a stream's cancellation came back in the connection's
    next stream). The compiled modules keep such awaits out of those blocks."""
    source = SETUP.parent / "src" / "ipc_server"
    found = []
    for name in compiled_names():
        tree = ast.parse((source / f"{name}.py").read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Try):
                continue
            blocks = [node.finalbody, *(handler.body for handler in node.handlers)]
            for statement in (s for block in blocks for s in block):
                for inner in ast.walk(statement):
                    if isinstance(inner, (ast.Await, ast.AsyncFor, ast.AsyncWith)):
                        found.append(f"{name}:{inner.lineno}")
    assert found == []
