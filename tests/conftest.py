"""Shared test set-up: asyncio debug mode, and short socket directories."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Run every test's event loop in asyncio debug mode (STYLE.md, Tests)."""
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
