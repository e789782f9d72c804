"""Small helpers shared by the integration tests: polling with a deadline, short socket paths."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import pytest

T = TypeVar("T")


async def eventually(predicate: Callable[[], object], timeout: float = 5.0, what: str = "") -> None:
    """Poll ``predicate`` until it is true; fail after ``timeout`` seconds (never a bare sleep)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"not true within {timeout} s: {what or predicate}")
        await asyncio.sleep(0.005)


POSIX_ONLY = pytest.mark.skipif(sys.platform == "win32", reason="Unix sockets only")
"""Marks a test about Unix socket files (modes, stale files, raw Unix connections)."""


@contextmanager
def short_socket_path(name: str = "s.sock") -> Iterator[str]:
    """A socket path in a fresh short folder under /tmp (pytest's tmp_path can exceed sun_path).

    On Windows it is a unique bare name, which the library maps to a named pipe.
    """
    if sys.platform == "win32":
        yield f"ipc-test-{uuid.uuid4().hex[:12]}"
    else:
        folder = tempfile.mkdtemp(prefix="ipc", dir="/tmp")
        try:
            yield os.path.join(folder, name)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


async def within(awaitable: Awaitable[T], timeout: float = 10.0) -> T:
    """Await with a deadline, so that a hang fails the test instead of stalling it."""
    return await asyncio.wait_for(awaitable, timeout)


async def wait_until(predicate: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Poll ``predicate`` until true; fail after ``timeout`` seconds, naming ``what``."""
    await eventually(predicate, timeout, what)


def rss_mib_of(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB: ``/proc`` on Linux, else ``ps`` (macOS)."""
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except FileNotFoundError:
        shown = subprocess.run(["ps", "-o", "rss=", "-p", str(pid)], capture_output=True, text=True)
        return int(shown.stdout.split()[0]) / 1024  # KiB
