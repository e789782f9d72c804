"""``ipc-server serve --backplane``: two commands on two sockets share a topic through the broker."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from clikit import Running, run
from helpers import eventually
from ipc_server import IPCClient

from .broker import Broker

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def folder() -> Iterator[str]:
    made = tempfile.mkdtemp(prefix="bpc", dir="/tmp")
    try:
        yield made
    finally:
        shutil.rmtree(made, ignore_errors=True)


async def test_serve_with_a_backplane(broker: Broker, folder: str) -> None:
    """Two ``serve`` commands with --backplane share a topic; each logs its backplane "up"."""
    paths = [os.path.join(folder, name) for name in ("a", "b")]
    commands = [
        Running("serve", "--path", p, "--backplane", broker.url, "--namespace", "app")
        for p in paths
    ]
    try:
        for command, path in zip(commands, paths, strict=True):
            line = command.wait_for("backplane", kind="up")  # start() returns once it is up
            assert line["info"]["server"] == broker.url
            command.wait_for("ready", address=path)
        publisher, subscriber = IPCClient(path=paths[0]), IPCClient(path=paths[1])
        await publisher.connect()
        await subscriber.connect()
        got: list[Any] = []
        subscriber.on("news", got.append)
        assert await subscriber.subscribe("news")
        assert await publisher.publish("news", {"n": 1})
        await eventually(lambda: got == [{"n": 1}])
        await publisher.close()
        await subscriber.close()
        for command in commands:
            command.proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(command.finish) == 0
    finally:
        for command in commands:
            command.kill()


def test_backplane_needs_a_namespace(folder: str) -> None:
    """--backplane without --namespace (or the reverse) is a usage error, in one line."""
    path = os.path.join(folder, "s")
    done = run("serve", "--path", path, "--backplane", "nats://127.0.0.1:1")
    assert done.returncode == 2
    assert "--namespace" in done.stderr.strip().splitlines()[-1]
    done = run("serve", "--path", path, "--namespace", "app")
    assert done.returncode == 2
    assert "--backplane" in done.stderr
