"""The event types catch mistakes: mypy (strict, the project's config) over small programs.

Each case is a module; a line that must fail ends with ``# E: <code> <text>``
(the error code mypy gives, and a piece of its message), and every other
line must pass. The ```python blocks of docs/*.md preceded by a
``<!-- mypy -->`` line are checked too, with no error allowed. All cases go
through one mypy run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
MYPY_TIMEOUT = 240.0
EXPECTED = re.compile(r"# E: (?P<code>[\w-]+)(?: (?P<text>.*))?$")
REPORTED = re.compile(
    r"^(?P<file>[^:]+\.py):(?P<line>\d+): error: (?P<text>.*?)  \[(?P<code>[\w-]+)\]$"
)
TYPED_BLOCK = re.compile(r"<!-- mypy -->\n```python\n(.*?)```", re.S)

HEAD = """\
from __future__ import annotations

from typing import Any

from ipc_server import (
    STOP,
    IPCClient,
    IPCClientStatus,
    IPCConnection,
    IPCEvents,
    IPCServer,
    Respond,
    sync,
)
from ipc_server.events import Stop

server = IPCServer(path="/tmp/typing.sock")
client = IPCClient(path="/tmp/typing.sock")
blocking = sync.IPCClient(path="/tmp/typing.sock")
blocking_server = sync.IPCServer(path="/tmp/typing.sock")
"""

CASES: dict[str, str] = {
    "server_listeners": """
server.on("ready", lambda address: print(address.upper()))
server.on("error", lambda error, connection: None)
server.on("connect", lambda connection, payload: print(connection.id, payload))
server.on("disconnect", lambda connection, reason: None)
server.on("close", lambda: None)
server.on("message", lambda message, connection: None)
server.on("request", lambda request, respond, connection: respond(request))
server.once(IPCEvents.READY, lambda address: None)


@server.on("request")
async def answer(request: Any, respond: Respond, connection: IPCConnection) -> None:
    await respond({"echo": request, "from": connection.id})


@server.on("error")
def report(error: BaseException, connection: IPCConnection | None) -> None:
    print(error, connection.id if connection is not None else "-")


@server.once("connect")
async def first(connection: IPCConnection, payload: dict[str, str]) -> object:
    return STOP


def done() -> None:
    print("closed")


server.on("close", done)
server.off("close", done)
blocking_server.on("request", lambda request, respond, connection: respond(request))
blocking_server.once("disconnect", lambda connection, reason: None)
""",
    "client_listeners": """
client.on("ready", lambda info: print(info["id"]))
client.on("error", lambda error: None)
client.on("close", lambda reason: None)
client.on("status", lambda status: print(status.name))
client.on("message", lambda message: None)
client.on("request", lambda request, respond: respond(request))
client.on("news", lambda message: None)  # a topic: any other name
client.on("orders.*", lambda message, topic: print(topic.upper()))  # a pattern: and its topic
client.once(IPCEvents.STATUS, lambda status: None)


@client.on("status")
def changed(status: IPCClientStatus) -> None:
    print(status is IPCClientStatus.READY)


@client.on("request")
async def asked(request: Any, respond: Respond) -> None:
    await respond(request)


@client.on("jobs")
async def job(message: dict[str, int]) -> None:
    print(message["id"])


blocking.on("ready", lambda info: None)
blocking.on("request", lambda request, respond: respond(request))
blocking.on("news", print)


@blocking.on("message")
def got(message: Any) -> Stop | None:  # a plain function, None or STOP
    return STOP if message == "last" else None
""",
    "misspelt_event": """
server.on("conect", lambda connection, payload: None)  # E: call-overload No overload variant of "on"
server.on("news", lambda message: None)  # E: call-overload No overload variant of "on"
server.once("status", lambda status: None)  # E: call-overload No overload variant of "once"
blocking_server.on("requests", lambda r, respond, c: None)  # E: call-overload No overload variant
""",
    "wrong_arity": """
server.on("connect", lambda connection: None)  # E: call-overload No overload variant of "on"
server.on("close", lambda reason: None)  # E: call-overload No overload variant of "on"
client.on("ready", lambda: None)  # E: type-var "TopicListener"
client.on("request", lambda request, respond, connection: None)  # E: type-var "TopicListener"


@server.on("request")  # E: arg-type expected "Callable[[Any, Respond, IPCConnection], object]"
async def handle(request: Any, respond: Respond) -> None:
    await respond(request)
""",
    "wrong_types": """
@server.on("error")  # E: arg-type "Callable[[BaseException, IPCConnection | None], object]"
def failed(error: BaseException, connection: IPCConnection) -> None:
    print(connection.id)


@client.on("status")  # E: type-var "StatusListener"
def changed(status: str) -> None:
    print(status)


@client.on("error")  # E: type-var "ErrorListener"
def caught(error: ValueError) -> None:
    print(error)
""",
    "not_awaitable": """
async def on_ready(address: str) -> None:
    print(address)


server.on("ready", on_ready("now"))  # E: call-overload "Coroutine[Any, Any, None]"


@server.on("request")
async def forgot(request: Any, respond: Respond, connection: IPCConnection) -> None:
    await respond  # E: misc Incompatible types in "await" (actual type "Respond"


@blocking.on("message")  # E: type-var "PlainMessageListener"
async def got(message: Any) -> None:
    print(message)


async def news(message: Any) -> None:
    print(message)


blocking.on("news", news)  # E: type-var "PlainTopicListener"
""",
}


def doc_blocks() -> list[tuple[str, str]]:
    """``(name, code)`` of each ```python block of docs/*.md marked ``<!-- mypy -->``."""
    blocks = []
    for page in sorted(DOCS.glob("*.md")):
        for n, match in enumerate(TYPED_BLOCK.finditer(page.read_text(encoding="utf-8"))):
            blocks.append((f"doc_{page.stem}_{n}", match.group(1)))
    return blocks


def expected_errors(code: str, offset: int) -> Iterator[tuple[int, str, str]]:
    """``(line, code, text)`` for each line of ``code`` marked ``# E:``."""
    for number, line in enumerate(code.splitlines(), start=offset + 1):
        match = EXPECTED.search(line)
        if match:
            yield number, match["code"], match["text"] or ""


@pytest.fixture(scope="module")
def mypy_errors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[int, str, str]]]:
    """Every case written as a module and checked by one mypy run: the errors, by case."""
    folder = tmp_path_factory.mktemp("typing")
    files = []
    for name, code in [*CASES.items(), *doc_blocks()]:
        path = folder / f"{name}.py"
        path.write_text(HEAD + code if name in CASES else code, encoding="utf-8")
        files.append(str(path))
    # MYPYPATH first: the source in this checkout, whatever is installed.
    env = {**os.environ, "MYPYPATH": str(ROOT / "src")}
    # A cache of this run's own: each xdist worker that runs a case of this module
    # runs this fixture, and two mypy runs on one cache (SQLite from mypy 2) crash
    # with "database is locked".
    cache = folder / ".mypy_cache"
    command = [sys.executable, "-m", "mypy", "--show-traceback", "--cache-dir", str(cache)]
    proc = subprocess.run(
        [*command, "--config-file", str(ROOT / "pyproject.toml"), *files],
        capture_output=True,
        text=True,
        timeout=MYPY_TIMEOUT,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr  # 1: errors found; else a crash
    errors: dict[str, list[tuple[int, str, str]]] = {}
    for line in proc.stdout.splitlines():
        match = REPORTED.match(line)
        if match:
            name = Path(match["file"]).stem
            errors.setdefault(name, []).append((int(match["line"]), match["code"], match["text"]))
    return errors


@pytest.mark.timeout(MYPY_TIMEOUT + 30)
@pytest.mark.parametrize("name", list(CASES))
def test_case(name: str, mypy_errors: dict[str, list[tuple[int, str, str]]]) -> None:
    """Correct usages pass; each marked mistake fails with the error expected, and only those."""
    offset = HEAD.count("\n")
    expected = list(expected_errors(CASES[name], offset))
    got = mypy_errors.get(name, [])
    assert [(line, code) for line, code, _ in got] == [
        (line, code) for line, code, _ in expected
    ], got
    for (_, _, text), (_, _, want) in zip(got, expected, strict=True):
        assert want in text, (want, text)


def test_docs_have_a_typed_example() -> None:
    """The guide shows a typed example that mypy checks."""
    assert any(name.startswith("doc_guide_") for name, _ in doc_blocks())


@pytest.mark.timeout(MYPY_TIMEOUT + 30)
@pytest.mark.parametrize("name", [name for name, _ in doc_blocks()])
def test_doc_example_types(name: str, mypy_errors: dict[str, list[tuple[int, str, str]]]) -> None:
    """A ``<!-- mypy -->`` example of the docs passes mypy --strict."""
    assert mypy_errors.get(name, []) == []
