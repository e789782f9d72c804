"""`ipc-server demo`: a server and clients in separate processes, run for real."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ipc_server.cli.demo import DEADLINE, PAUSE, STEPS

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="Unix socket paths")

CLI = [sys.executable, "-m", "ipc_server"]
PAUSED = DEADLINE + PAUSE * STEPS
"""The longest a paced demo may take."""


def _lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def _find(
    lines: list[dict[str, Any]], actor: str, event: str, **match: Any
) -> list[dict[str, Any]]:
    return [
        line
        for line in lines
        if line["actor"] == actor
        and line["event"] == event
        and all(line.get(k) == v for k, v in match.items())
    ]


@pytest.fixture(scope="module")
def demo_json() -> tuple[subprocess.CompletedProcess[str], float]:
    """One JSON-lines run of the demo (paced, as a person sees it), shared by the tests that read it."""
    started = time.monotonic()
    result = subprocess.run([*CLI, "demo"], capture_output=True, text=True, timeout=PAUSED + 15)
    return result, time.monotonic() - started


def test_demo_exits_0_in_bounded_time(
    demo_json: tuple[subprocess.CompletedProcess[str], float],
) -> None:
    """The demo finishes with exit 0 well within its deadline."""
    result, seconds = demo_json
    assert result.returncode == 0, result.stdout + result.stderr
    assert seconds < PAUSED + 5
    lines = _lines(result.stdout)
    assert [line["step"] for line in lines if line["event"] == "step"] == list(range(1, STEPS + 1))
    assert lines[-1]["event"] == "done"


def test_demo_pauses_between_steps(
    demo_json: tuple[subprocess.CompletedProcess[str], float],
) -> None:
    """A person can follow it: each step starts at least PAUSE seconds after the one before."""
    result, seconds = demo_json
    starts = [line["t"] for line in _lines(result.stdout) if line["event"] == "step"]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= PAUSE * 0.95, gaps
    assert seconds >= PAUSE * (STEPS - 1)


def test_demo_shows_each_feature(demo_json: tuple[subprocess.CompletedProcess[str], float]) -> None:
    """The JSON lines show connect payloads, requests, survey, pub/sub, kill, reconnect, close."""
    result, _ = demo_json
    lines = _lines(result.stdout)
    assert all({"t", "actor", "event", "text"} <= line.keys() for line in lines)
    # Clients connect with a payload.
    names = {line["payload"]["name"] for line in _find(lines, "server", "connect")}
    assert names == {"alice", "bob", "carol"}
    ids = {
        name: _find(lines, name, "ready", again=False)[0]["id"]
        for name in ("alice", "bob", "carol")
    }
    # Request/response, and a handler that raises.
    assert _find(lines, "alice", "reply", data=5)
    assert _find(lines, "alice", "remote_error", type="ZeroDivisionError")
    # The server asks the clients.
    (survey,) = _find(lines, "server", "survey")
    assert {r["reply"]["name"] for r in survey["results"]} == {"alice", "bob", "carol"}
    assert len(_find(lines, "alice", "asked")) == 1
    # Pub/sub between clients, before and after the server restart.
    news = _find(lines, "bob", "message", topic="news")
    assert [m["data"]["headline"] for m in news] == ["hello from alice", "we are back"]
    # A killed client is noticed by the server.
    assert _find(lines, "server", "disconnect", id=ids["carol"])
    assert _find(lines, "carol", "exit")[0]["code"] != 0
    # The server restarts (a new process) and the clients come back with their ids.
    ready = _find(lines, "server", "ready")
    assert len(ready) == 2
    assert ready[0]["pid"] != ready[1]["pid"]
    assert _find(lines, "server", "closed", allow_reconnect=True)
    for name in ("alice", "bob"):
        assert _find(lines, name, "ready", again=True, id=ids[name])
    # Everything closes and exits cleanly.
    assert _find(lines, "server", "closed", allow_reconnect=False)
    for name in ("alice", "bob"):
        assert _find(lines, name, "close", reason="server closed")
    for actor in ("server", "alice", "bob"):
        assert _find(lines, actor, "exit")[-1]["code"] == 0


def test_demo_text_output() -> None:
    """`demo --format text --fast` narrates each step in readable lines, without pauses."""
    started = time.monotonic()
    result = subprocess.run(
        [*CLI, "demo", "--format", "text", "--fast"],
        capture_output=True,
        text=True,
        timeout=DEADLINE + 15,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert time.monotonic() - started < PAUSE * (STEPS - 1)
    out = result.stdout
    for expected in (
        "-- 1. a server in its own process",
        'payload {"name": "alice"',
        "reply in ",
        "RemoteError: ZeroDivisionError",
        "survey answered by 3 client(s)",
        "got a 'news' message",
        "process killed by the demo",
        "reconnected by itself",
        "topic 'news' has subscriber bob again",
        "closed for good: server closed",
        "every process exited cleanly",
    ):
        assert expected in out, expected
    assert "\x1b[" not in out  # no colours when stdout is not a terminal
    assert not out.lstrip().startswith("{")


@pytest.fixture
def sock_path() -> Iterator[str]:
    """A short socket path under /tmp."""
    folder = tempfile.mkdtemp(prefix="ipc", dir="/tmp")
    try:
        yield os.path.join(folder, "s")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_actor_exits_when_the_director_goes(sock_path: str) -> None:
    """A demo actor whose stdin closes (director gone) closes its server and exits."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ipc_server.cli.demo_actors", "server", "--path", sock_path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdin is not None
        assert json.loads(proc.stdout.readline())["event"] == "ready"
        proc.stdin.close()
        assert proc.wait(timeout=10) == 1
        assert json.loads(proc.stdout.readline())["event"] == "closed"
        assert not os.path.exists(sock_path)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
