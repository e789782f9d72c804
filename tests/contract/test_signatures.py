"""The same methods, parameters and defaults on both clients (compared with ``inspect.signature``)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest

import ipc_server
import ipc_server.client
import ipc_server.sync
from ipc_server.options import DEFAULT

from .adapters import FRONTS

CLIENTS: dict[str, type[Any]] = {
    "asyncio": ipc_server.IPCClient,
    "blocking": ipc_server.sync.IPCClient,
}
SUBSCRIPTIONS: dict[str, type[Any]] = {
    "asyncio": ipc_server.client.Subscription,
    "blocking": ipc_server.sync.Subscription,
}

TARGET = {
    "IPCClient.connect": "(payload=None, *, timeout=DEFAULT)",
    "IPCClient.request": "(data, timeout=DEFAULT)",
    "IPCClient.ping": "(data=None, timeout=DEFAULT)",
    "IPCClient.send": "(data, *, timeout=DEFAULT)",
    "IPCClient.subscribe": "(topic, *, group=None, timeout=DEFAULT)",
    "IPCClient.unsubscribe": "(topic, *, group=None, timeout=DEFAULT)",
    "IPCClient.publish": "(topic, message=None, *, timeout=DEFAULT)",
    "IPCClient.subscription": "(topic, *, maxsize=0, timeout=DEFAULT)",
    "IPCClient.close": "(reason=None, *, timeout=10.0)",
    "IPCClient.destroy": "(reason=None)",
    "IPCClient.on": "(event, handler=None)",
    "IPCClient.once": "(event, handler=None)",
    "IPCClient.off": "(event, handler=None)",
    "Subscription.get": "(timeout=10.0)",
}
"""What both clients have: parameter names, kinds (``*``: keyword-only after it) and defaults.

``DEFAULT`` is ``ipc_server.options.DEFAULT`` (the client's own default, such as
``request_timeout``); timeouts are finite by default.
"""

ASYNCIO_ONLY_OPTIONS = {"max_queued"}
"""Constructor options of the asyncio client alone (the blocking client has no write queue)."""


def described(fn: Callable[..., Any]) -> str:
    """``fn``'s signature without ``self`` and annotations, e.g. ``(data, timeout=DEFAULT)``."""
    sig = inspect.signature(fn)
    params = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()]
    if params and params[0].name == "self":
        params = params[1:]
    for p in params:
        if repr(p.default) == "DEFAULT":
            assert p.default is DEFAULT, f"{p.name}'s default is not ipc_server.options.DEFAULT"
    return str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))


def implementation(front: str, name: str) -> Callable[..., Any]:
    owner, method = name.split(".")
    classes = CLIENTS if owner == "IPCClient" else SUBSCRIPTIONS
    fn: Callable[..., Any] = getattr(classes[front], method)
    return fn


@pytest.mark.parametrize("name", list(TARGET))
@pytest.mark.parametrize("front", FRONTS)
def test_method_signature(front: str, name: str) -> None:
    """Each public method has the target parameters, kinds and defaults on both clients."""
    assert f"{name}{described(implementation(front, name))}" == f"{name}{TARGET[name]}"


def options(cls: type[Any]) -> dict[str, inspect.Parameter]:
    """The constructor's parameters but ``self``."""
    return {
        p.name: p for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"
    }


@pytest.mark.parametrize("front", FRONTS)
def test_constructor_options_are_keyword_only(front: str) -> None:
    """Every constructor option is keyword-only."""
    positional = [p.name for p in options(CLIENTS[front]).values() if p.kind is not p.KEYWORD_ONLY]
    assert positional == []


def test_constructor_options_match() -> None:
    """Both constructors take the same options with the same defaults, but max_queued (asyncio only)."""
    aio = {n: p.default for n, p in options(CLIENTS["asyncio"]).items()}
    blocking = {n: p.default for n, p in options(CLIENTS["blocking"]).items()}
    assert set(aio) - set(blocking) == ASYNCIO_ONLY_OPTIONS
    shared = {n: d for n, d in aio.items() if n not in ASYNCIO_ONLY_OPTIONS}
    assert shared == blocking
    assert list(shared) == list(blocking), "options in a different order"


@pytest.mark.parametrize("front", FRONTS)
def test_default_timeouts(front: str) -> None:
    """request_timeout and connect_timeout default to 10 s on both clients."""
    params = options(CLIENTS[front])
    assert params["request_timeout"].default == 10.0
    assert params["connect_timeout"].default == 10.0
