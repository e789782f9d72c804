"""A Griffe extension for the API page: numbers shown as the source writes them.

Griffe reads values from the syntax tree, where ``0o600`` is already ``384``
and ``10_000`` is ``10000``; this puts back the source text of each number
given as an attribute's value (the option dataclasses' fields, and so the
defaults of the ``__init__`` made from them) or as a parameter's default.
Loaded by ``mkdocs.yml`` (``extensions:`` of the mkdocstrings handler).
"""

from __future__ import annotations

import ast
from typing import Any

import griffe


def _written(node: ast.expr | None, code: str) -> str | None:
    """The source text of ``node`` if it is a number literal written otherwise than ``str()`` gives."""
    if not isinstance(node, ast.Constant) or isinstance(
        node.value, (bool, str, bytes)
    ):
        return None
    text = ast.get_source_segment(code, node)
    return text if text is not None and text != repr(node.value) else None


class SourceValues(griffe.Extension):
    """Number literals as written: ``0o600``, ``10_000``, ``64 * 1024`` (the last one already is)."""

    def on_attribute_instance(
        self,
        *,
        node: ast.AST | griffe.ObjectNode,
        attr: griffe.Attribute,
        agent: Any,
        **kwargs: Any,
    ) -> None:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(
            agent, griffe.Visitor
        ):
            text = _written(node.value, agent.code)
            if text is not None:
                attr.value = text

    def on_function_instance(
        self,
        *,
        node: ast.AST | griffe.ObjectNode,
        func: griffe.Function,
        agent: Any,
        **kwargs: Any,
    ) -> None:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return
        if not isinstance(agent, griffe.Visitor):
            return
        args = node.args
        positional = [*args.posonlyargs, *args.args]
        pairs = [
            *zip(
                positional[len(positional) - len(args.defaults) :],
                args.defaults,
                strict=True,
            ),
            *zip(
                args.kwonlyargs, args.kw_defaults, strict=True
            ),  # None: no default
        ]
        for arg, default in pairs:
            text = _written(default, agent.code)
            if text is not None and arg.arg in func.parameters:
                func.parameters[arg.arg].default = text
