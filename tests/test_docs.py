"""The documentation's examples run and the site builds, so the docs cannot rot.

Every ```python block of ``docs/*.md`` runs in a fresh interpreter and must
exit 0, except a block preceded by a ``<!-- no-test -->`` line (kept for the
few snippets that need a peer outside this repository, such as a Node
server). The README's blocks are run by ``tests/test_readme.py``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
BLOCK = re.compile(r"(<!-- no-test -->\n)?```python\n(.*?)```", re.S)
EXAMPLE_TIMEOUT = 30.0
BUILD_TIMEOUT = 120.0


def doc_blocks() -> list[tuple[str, str]]:
    """``(id, code)`` for every tested ```python block of docs/*.md, in file order."""
    blocks: list[tuple[str, str]] = []
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text(encoding="utf-8")
        for match in BLOCK.finditer(text):
            if match.group(1):
                continue
            line = text.count("\n", 0, match.start(2))
            blocks.append((f"{page.name}:{line}", match.group(2)))
    return blocks


BLOCKS = doc_blocks()


def test_docs_have_examples() -> None:
    """The guide shows runnable examples (the block pattern still matches the docs)."""
    assert sum(1 for name, _ in BLOCKS if name.startswith("guide.md")) >= 10


def test_no_test_markers_are_rare() -> None:
    """Untested blocks stay the exception: only snippets that need an outside peer."""
    skipped = sum(
        len(BLOCK.findall(page.read_text(encoding="utf-8"))) for page in DOCS.glob("*.md")
    ) - len(BLOCKS)
    assert skipped <= 2


@pytest.mark.parametrize(("name", "code"), BLOCKS, ids=[name for name, _ in BLOCKS])
def test_doc_example_runs(name: str, code: str) -> None:
    """Each example in the docs runs in a fresh interpreter, warnings as errors, and exits 0."""
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        timeout=EXAMPLE_TIMEOUT,
        cwd=ROOT,
    )
    assert proc.returncode == 0, f"{name}:\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, f"{name}:\n{proc.stderr}"


@pytest.mark.timeout(BUILD_TIMEOUT + 30)
def test_mkdocs_build_strict() -> None:
    """``mkdocs build --strict`` builds the site offline with no warning, API pages included."""
    site = tempfile.mkdtemp(prefix="ipc-site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "mkdocs",
                "build",
                "--strict",
                "--config-file",
                str(ROOT / "mkdocs.yml"),
                "--site-dir",
                site,
            ],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            cwd=ROOT,
            env=env,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        for page in ("index.html", "guide/index.html", "api/index.html", "protocol/index.html"):
            assert (Path(site) / page).is_file(), page
        api = (Path(site) / "api" / "index.html").read_text(encoding="utf-8")
        assert "IPCServer" in api
        assert "RequestTimeoutError" in api
        text = re.sub(r"<[^>]+>", "", api)  # the page's text, without its tags
        # Signatures formatted one parameter a line (ruff, line_length), defaults as written.
        assert "IPCServer(\n    *,\n    path: InitVar[str | None] = None," in text
        assert "socket_mode: int | None = 0o600," in text
        assert "max_topics_per_connection: int | None = 10_000," in text
        changelog = (Path(site) / "changelog" / "index.html").read_text(encoding="utf-8")
        assert "Compatibility" in changelog  # CHANGELOG.md is included, not just linked
        index = (Path(site) / "index.html").read_text(encoding="utf-8")
        assert "fonts.googleapis.com" not in index  # nothing to fetch when reading offline
    finally:
        shutil.rmtree(site, ignore_errors=True)
