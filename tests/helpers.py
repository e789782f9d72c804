"""Small helpers shared by the integration tests: polling with a deadline, short socket paths."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager


async def eventually(predicate: Callable[[], object], timeout: float = 5.0, what: str = "") -> None:
    """Poll ``predicate`` until it is true; fail after ``timeout`` seconds (never a bare sleep)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"not true within {timeout} s: {what or predicate}")
        await asyncio.sleep(0.005)


@contextmanager
def short_socket_path(name: str = "s.sock") -> Iterator[str]:
    """A socket path in a fresh short folder under /tmp (pytest's tmp_path can exceed sun_path)."""
    folder = tempfile.mkdtemp(prefix="ipc", dir="/tmp")
    try:
        yield os.path.join(folder, name)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
