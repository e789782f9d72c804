"""`ipc-server reply`: a server that answers each request from the shell, run for real."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator

import pytest

from clikit import Running, events, one_error_line, run

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="Unix socket paths and signals")

PY = sys.executable


@pytest.fixture
def path() -> Iterator[str]:
    """A socket path in a short folder under /tmp."""
    folder = tempfile.mkdtemp(prefix="ipc", dir="/tmp")
    try:
        yield os.path.join(folder, "s")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def running() -> Iterator[list[Running]]:
    """The long-running commands of a test, killed at its end."""
    procs: list[Running] = []
    try:
        yield procs
    finally:
        for proc in procs:
            proc.kill()


def start(running: list[Running], *args: str) -> Running:
    """`ipc-server reply ARGS`, ready."""
    replier = Running("reply", *args)
    running.append(replier)
    replier.wait_for("ready")
    return replier


def reply_to(path: str, data: str) -> object:
    """The answer `ipc-server request` got for ``data``."""
    result = run("request", "--path", path, data)
    assert result.returncode == 0, result.stderr
    return events(result.stdout)[0]["data"]


def test_echo_and_count(path: str, running: list[Running]) -> None:
    """Without a way to answer, `reply` echoes; --count 2 exits 0 after two answers."""
    replier = start(running, "--path", path, "--count", "2")
    assert reply_to(path, '{"a": 1}') == {"a": 1}
    assert replier.wait_for("request")["data"] == {"a": 1}
    assert replier.wait_for("reply")["data"] == {"a": 1}
    assert reply_to(path, "[2]") == [2]
    replier.wait_for("closed")
    assert replier.finish() == 0


def test_a_fixed_answer(path: str, running: list[Running]) -> None:
    """`reply DATA` answers every request with DATA."""
    start(running, "--path", path, '{"ok": true}')
    assert reply_to(path, "1") == {"ok": True}
    assert reply_to(path, '"anything"') == {"ok": True}


def test_a_command_answers_with_its_stdout(path: str, running: list[Running]) -> None:
    """--command gets the request as JSON on stdin, and the connection id; its stdout is the answer."""
    script = (
        "import json, os, sys; r = json.load(sys.stdin); "
        "print(json.dumps({'n': r['n'] + 1, 'id': os.environ['IPC_CONNECTION_ID']}))"
    )
    replier = start(running, "--path", path, "--command", f'{PY} -c "{script}"')
    answer = reply_to(path, '{"n": 41}')
    assert isinstance(answer, dict)
    assert answer["n"] == 42
    assert answer["id"] == replier.wait_for("request")["id"]


def test_a_command_answers_text_with_string(path: str, running: list[Running]) -> None:
    """--command with --string answers the command's stdout as text (its last line end cut)."""
    start(running, "--path", path, "--string", "--command", "echo hello; echo world")
    assert reply_to(path, "1") == "hello\nworld"


@pytest.mark.parametrize(
    ("command", "said"),
    [
        ("echo not json", "the command's output 'not json' is not JSON"),
        ("echo oops >&2; exit 4", "the command exited with code 4: oops"),
        ("sleep 30", "did not finish within --timeout 0.5 s"),
    ],
)
def test_a_failing_command_gives_the_requester_a_remote_error(
    path: str, running: list[Running], command: str, said: str
) -> None:
    """A command that fails, prints no JSON or runs too long: the requester gets a RemoteError."""
    replier = start(running, "--path", path, "--timeout", "0.5", "--command", command)
    result = run("request", "--path", path, "1")
    assert result.returncode == 1
    line = one_error_line(result.stderr, "request")
    assert "the server's handler raised RuntimeError" in line
    assert said in line
    assert said in replier.wait_for("failed")["error"]
    assert replier.proc.poll() is None  # still answering


def test_a_command_that_prints_nothing_answers_null(path: str, running: list[Running]) -> None:
    """A command with empty stdout answers null."""
    start(running, "--path", path, "--command", "true")
    assert reply_to(path, "1") is None


def test_reply_over_tcp_and_in_text(running: list[Running]) -> None:
    """`reply --port 0` answers over TCP; its ready line names the port."""
    replier = start(running, "--host", "127.0.0.1", "--port", "0")
    address = str(replier.seen[-1]["address"])
    port = address.rsplit(":", 1)[1]
    result = run("request", "--port", port, "-s", "tcp")
    assert result.returncode == 0, result.stderr
    assert events(result.stdout)[0]["data"] == "tcp"
