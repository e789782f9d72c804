"""Handlers a test gives a client (``serve``, ``on("request")``), in the style of its front.

A plain function runs on both fronts; one that waits must not block the
asyncio client's loop, so it is a coroutine function there (and a plain
function on the blocking client, whose handlers run on its listener thread).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from .adapters import Front
from .polling import DEADLINE, Recorder


def holding(
    front: Front, gate: threading.Event, seen: Recorder[Any], hold: Callable[[Any], bool]
) -> Callable[..., Any]:
    """A handler that records each request, and answers it at once, or, when ``hold(request)``,
    once ``gate`` is set; the answer is the request."""
    if front.name == "asyncio":

        async def async_handler(request: Any, respond: Any) -> None:
            seen(request)
            if hold(request):
                await asyncio.to_thread(gate.wait, DEADLINE)
            await respond(request)

        return async_handler

    def handler(request: Any, respond: Any) -> None:
        seen(request)
        if hold(request):
            gate.wait(DEADLINE)
        respond(request)

    return handler


def answering(value: Any) -> Callable[..., Any]:
    """A plain handler that answers ``[value, request]`` (both fronts)."""

    def handler(request: Any, respond: Any) -> None:
        respond([value, request])

    return handler
