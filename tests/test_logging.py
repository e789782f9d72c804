"""Logging: named loggers per layer, connects at INFO with the peer, a handler's exception
at ERROR with its type and traceback, a peer's protocol error at WARNING."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from boundkit import raw_peer
from helpers import POSIX_ONLY, wait_until
from ipc_server import IPCClient, IPCServer, RemoteError
from ipc_server.codecs import msgpack_keys_warning
from ipc_server.protocol import frame

pytestmark = POSIX_ONLY


async def test_connects_and_disconnects_are_logged_at_info_with_the_peer(
    path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """ipc_server.server logs admissions and departures at INFO, naming pid and uid."""
    server = IPCServer(path=path)
    await server.start()
    with caplog.at_level(logging.INFO, logger="ipc_server"):
        client = await IPCClient(path=path).connect()
        await client.close()
        await wait_until(lambda: not server.connections, "the disconnect")
    await server.close()
    # (On CPython 3.12.0-3.12.5 the server also warns at start about msgpack's map keys.)
    known = msgpack_keys_warning(server.codec)
    server_lines = [
        r for r in caplog.records if r.name == "ipc_server.server" and r.getMessage() != known
    ]
    client_lines = [r for r in caplog.records if r.name == "ipc_server.client"]
    assert any("admitted" in r.getMessage() and "uid" in r.getMessage() for r in server_lines)
    assert any("gone" in r.getMessage() for r in server_lines)
    assert all(r.levelno == logging.INFO for r in server_lines)
    assert any("connected to" in r.getMessage() for r in client_lines)


async def test_a_handler_exception_is_logged_at_error_with_its_traceback(
    path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Nobody listens to error: the KeyError is logged once, with its type and traceback."""
    server = IPCServer(path=path)

    def handler(request: Any, respond: Any, connection: Any) -> None:
        raise KeyError("b")

    server.on("request", handler)
    await server.start()
    client = await IPCClient(path=path).connect()
    try:
        with caplog.at_level(logging.WARNING, logger="ipc_server"), pytest.raises(RemoteError):
            await client.request("x")
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1
        message = errors[0].getMessage()
        assert "KeyError" in message
        assert "'request' handler" in message
        assert "ipc_server: ipc_server" not in message
        assert errors[0].exc_info is not None
    finally:
        await client.close()
        await server.close()


async def test_a_protocol_error_is_a_warning_and_quiet_when_the_application_listens(
    path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A malformed packet: WARNING with the connection; DEBUG only once "error" has a listener."""
    server = IPCServer(path=path)
    await server.start()
    try:
        with caplog.at_level(logging.DEBUG, logger="ipc_server"):
            sock = await asyncio.to_thread(raw_peer, path)
            sock.sendall(frame(b"not json"))
            await wait_until(
                lambda: caplog.records and any("JSON" in r.getMessage() for r in caplog.records),
                "the warning",
            )
            warning = next(r for r in caplog.records if "JSON" in r.getMessage())
            assert warning.levelno == logging.WARNING
            assert "connection" in warning.getMessage()
            server.on("error", lambda error, connection: None)
            caplog.clear()
            sock.sendall(frame(b"still not json"))
            await wait_until(
                lambda: any("JSON" in r.getMessage() for r in caplog.records), "the line"
            )
            assert all(
                r.levelno == logging.DEBUG for r in caplog.records if "JSON" in r.getMessage()
            )
            sock.close()
    finally:
        await server.close()
