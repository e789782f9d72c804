"""Which build of the package runs: the compiled core, or the pure-Python package.

``IPC_SERVER_COMPILE=1 pip install .`` compiles the hot-path modules with mypyc
(see ``setup.py``); Python then imports their C extensions instead of their
sources. They are built together, as one library, or not at all.
"""

from __future__ import annotations

from importlib.machinery import EXTENSION_SUFFIXES

from . import endpoint

__all__ = ["compiled"]


def _is_extension(origin: str | None) -> bool:
    return origin is not None and origin.endswith(tuple(EXTENSION_SUFFIXES))


compiled: bool = _is_extension(endpoint.__file__)
"""True when the compiled core runs, False for the pure-Python package."""
