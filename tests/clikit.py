"""Running the ``ipc-server`` command in tests: to its end, in the background, or on a pty.

``run`` runs it to its end; ``Running`` keeps a long-running one (``serve``,
``subscribe``, ``reply``) and reads its JSON lines in a thread, waited on with
deadlines; ``run_async`` runs it while the test's own loop keeps serving;
``Terminal`` runs it on a pseudo-terminal (``top``), reading its screen;
``one_error_line`` checks that a failure said one line, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import pty
import queue
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from typing import Any

CLI = [sys.executable, "-m", "ipc_server"]
"""The command, as the tests run it (the package of this checkout, via PYTHONPATH)."""


def run(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run the command to its end (killed after ``timeout``)."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def events(stdout: str) -> list[dict[str, Any]]:
    """The JSON lines of a run."""
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


class Running:
    """A long-running command whose JSON lines are read by a thread, waited on with deadlines."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip():
                self.lines.put(json.loads(line))
        self.lines.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        self.stderr.extend(self.proc.stderr)

    def wait_for(self, event: str, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
        """The next line with ``event`` (and ``match``); fails after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                item = self.lines.get(timeout=max(0.0, remaining))
            except queue.Empty:
                raise AssertionError(f"no {event!r} line within {timeout} s: {self.seen}") from None
            if item is None:
                self.lines.put(None)
                raise AssertionError(f"output ended before {event!r}: {self.seen} {self.stderr}")
            self.seen.append(item)
            if item.get("event") == event and all(item.get(k) == v for k, v in match.items()):
                return item

    def finish(self, timeout: float = 10.0) -> int:
        """Wait for the exit code (fails after ``timeout``)."""
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """Make sure the process is gone."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


async def run_async(*args: str) -> tuple[int, str, str]:
    """Run the command while this test's loop keeps serving."""
    proc = await asyncio.create_subprocess_exec(
        *CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 30.0)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def one_error_line(stderr: str, command: str) -> str:
    """The one line a failed command wrote to stderr (fails on a traceback or more lines)."""
    lines = stderr.splitlines()
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    prefix = f"ipc-server {command}: error: "
    assert lines[0].startswith(prefix), stderr
    return lines[0]


class Terminal:
    """The command on a pseudo-terminal of ``columns`` x ``lines``: its output, keys to type."""

    def __init__(self, *args: str, columns: int = 100, lines: int = 30) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child: the command, with the pty as its terminal
            os.environ.update(COLUMNS=str(columns), LINES=str(lines))
            try:
                os.execv(CLI[0], [*CLI, *args])
            finally:
                os._exit(127)
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
        self.pid = pid
        self.fd = fd
        self.output = b""
        self.code: int | None = None

    def read_until(self, predicate: Any, timeout: float = 10.0) -> bytes:
        """Read the output until ``predicate(output)`` holds; fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not predicate(self.output):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"not seen within {timeout} s: {self.output[-2000:]!r}")
            ready, _, _ = select.select([self.fd], [], [], min(remaining, 0.1))
            if ready:
                try:
                    chunk = os.read(self.fd, 1 << 16)
                except OSError:  # the child is gone (EIO)
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"output ended: {self.output[-2000:]!r}")
                self.output += chunk
        return self.output

    def type(self, keys: bytes) -> None:
        """Type ``keys`` (b"q", b"\x03" for Ctrl-C)."""
        os.write(self.fd, keys)

    def wait(self, timeout: float = 10.0) -> int:
        """The exit code, reading (and keeping) what is still written; fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.code is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.code = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"still running after {timeout} s: {self.output[-2000:]!r}")
            ready, _, _ = select.select([self.fd], [], [], 0.05)
            if ready:
                with contextlib.suppress(OSError):  # EIO: the child is gone
                    self.output += os.read(self.fd, 1 << 16)
        return self.code

    def close(self) -> None:
        """Make sure the child is gone and the pty closed."""
        if self.code is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        os.close(self.fd)
