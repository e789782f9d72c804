"""Shared test set-up: asyncio debug mode, short socket directories, POSIX-only modules."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from helpers import short_socket_path
from ipc_server import IPCServer

# Modules about Unix sockets, signals and /proc: on Windows the named-pipe
# paths are covered by the server, client, sync and platform tests instead.
collect_ignore = (
    [
        "test_benchmarks_smoke.py",
        "test_faults.py",
        "test_limits.py",
        "test_load.py",
        "test_security.py",
    ]
    if sys.platform == "win32"
    else []
)


def pytest_configure(config: pytest.Config) -> None:
    """Run every test's event loop in asyncio debug mode."""
    # pytest-asyncio's own switch, as if --asyncio-debug had been given.
    config.option.asyncio_debug = True


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A fresh directory under /tmp short enough for socket paths; removed afterwards.

    pytest's ``tmp_path`` can be longer than ``sun_path`` allows (107 bytes).
    """
    path = tempfile.mkdtemp(prefix="ipc", dir="/tmp" if os.path.isdir("/tmp") else None)
    try:
        yield Path(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def path() -> Iterator[str]:
    """A short Unix socket path (a named pipe name on Windows) for one test."""
    with short_socket_path() as p:
        yield p


@pytest.fixture
async def server(path: str) -> AsyncIterator[IPCServer]:
    """A started asyncio IPCServer on ``path``, closed after the test."""
    srv = IPCServer(path=path)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.close()


@pytest.fixture
def sock_path(path: str) -> str:
    """The same short socket path as ``path``, under the name some modules use."""
    return path
