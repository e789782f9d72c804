"""Who answers at the path (issue 10): a client sends nothing to a server of another uid.

The impostor is a process that listens at the path as ``nobody``
(``tests/as_nobody.py``) and records what each connection sent it. Root on
Linux only: it needs a second uid.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from types import TracebackType

import pytest

from ipc_server.errors import HandshakeError

from .adapters import Front
from .peer import Peer
from .polling import Recorder

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0,
    reason="a second uid: needs root on Linux (the impostor switches to nobody)",
)

AS_NOBODY = Path(__file__).resolve().parent.parent / "as_nobody.py"
NOBODY = 65534


class Impostor:
    """A process of uid nobody listening at ``path``; ``received`` holds what each peer sent."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.received: Recorder[bytes] = Recorder()
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> Impostor:
        self.proc = subprocess.Popen(
            [sys.executable, str(AS_NOBODY), "impostor", self.path],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "READY":
            self.__exit__(None, None, None)
            raise RuntimeError("the impostor did not start")
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.received(bytes.fromhex(json.loads(line)["received"]))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
        if os.path.exists(self.path):
            os.unlink(self.path)


def test_a_server_of_another_uid_gets_nothing(front: Front, server: Peer) -> None:
    """At a path where a process of another uid listens, connect() raises HandshakeError naming its uid and sends it nothing."""
    server.close()
    with Impostor(server.path) as impostor:
        client = front.client(reconnect=False, connect_timeout=5)
        with pytest.raises(HandshakeError) as info:
            client.connect({"token": "secret"})
        assert f"runs as uid {NOBODY}" in str(info.value.reason)
        assert "server_uid" in str(info.value.reason)
        assert impostor.received.wait_for(1, "the refused connection") == [b""]


def test_server_uid_names_who_may_answer(front: Front, server: Peer) -> None:
    """With server_uid set to the impostor's uid, the client does talk to it (the check is what refused it)."""
    server.close()
    with Impostor(server.path) as impostor:
        client = front.client(reconnect=False, connect_timeout=0.5, server_uid=NOBODY)
        with pytest.raises(TimeoutError):
            client.connect({"token": "secret"})  # the impostor never answers
        sent = impostor.received.wait_for(1, "the connection that timed out")[0]
        assert sent.startswith(b"IPC")
        assert b"secret" in sent


def test_reconnecting_to_an_impostor_stops_there(front: Front, server: Peer) -> None:
    """After a restart another uid took the path: the reconnecting client sends it nothing, makes no further attempt, and closes with the HandshakeError."""
    client = front.connected({"token": "secret"}, retries=10, max_retry_time=1.0)
    closed: Recorder[object] = Recorder()
    client.on("close", closed)
    server.close(allow_reconnect=True)
    with Impostor(server.path) as impostor:
        (reason,) = closed.wait_for(1, "close after the refused attempt")
        assert isinstance(reason, HandshakeError)
        assert f"runs as uid {NOBODY}" in str(reason.reason)
        assert impostor.received.wait_for(1, "the reconnect attempt") == [b""]
        assert not client.is_ready
        assert impostor.received.items == [b""]
