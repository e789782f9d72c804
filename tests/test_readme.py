"""The README's examples run, so the docs cannot rot."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def python_blocks(path: Path) -> list[str]:
    """Every ```python block of a Markdown file."""
    return BLOCK.findall(path.read_text(encoding="utf-8"))


README_BLOCKS = python_blocks(ROOT / "README.md")


def test_readme_has_examples() -> None:
    """The README shows at least the three examples it promises."""
    assert len(README_BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(README_BLOCKS)))
def test_readme_example_runs(index: int) -> None:
    """Each README example runs in a fresh interpreter and exits 0."""
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", README_BLOCKS[index]],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr


def test_readme_first_example_output() -> None:
    """The seed's tour prints every step: connect payload, reply, both publishes, close reason."""
    proc = subprocess.run(
        [sys.executable, "-c", README_BLOCKS[0]], capture_output=True, text=True, timeout=30
    )
    out = proc.stdout
    for line in (
        "connected: {'token': 'secret'}",
        "message: hello",
        "reply: hello",
        "event: hello from client",
        "event: hello from server",
        "event: hello to both",
        "disconnected: shutting down",
        "client closed: shutting down",
        "server closed",
    ):
        assert line in out, (line, out)
