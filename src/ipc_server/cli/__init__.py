"""The ``ipc-server`` command (also ``python -m ipc_server``), modelled on the ``nats`` CLI.

Commands: ``serve`` (an echo + pub/sub server), ``send``, ``request``,
``ping``, ``publish``, ``subscribe``, ``bench`` and ``demo``.

Output is JSON lines (one object with an ``"event"`` key per line) when
stdout is not a terminal, readable text on one; ``--format`` overrides.
Errors go to stderr. Exit codes: 0 ok, 1 error (no server, refused, remote
error), 2 usage, 3 timeout. Only the standard library is used here.

The modules: ``output`` (what every command shares), ``app`` (the parser and
``main``), ``commands`` (the client commands and ``serve``), ``bench``,
``demo`` and ``demo_actors`` (the demo's child processes).
"""

from __future__ import annotations

from .app import build_parser, json_arg, main
from .output import EXIT_ERROR, EXIT_OK, EXIT_TIMEOUT, EXIT_USAGE

__all__ = (
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "build_parser",
    "json_arg",
    "main",
)
