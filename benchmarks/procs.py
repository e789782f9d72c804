"""Running one (system, workload) pair: a server process, a client process, cleanup.

Every child gets PR_SET_PDEATHSIG (Linux) so it dies with the runner, is given
its own deadline (it exits by itself), and is killed in ``finally`` whatever
happens.  The socket lives in a fresh short folder under /tmp.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from benchmarks.config import Params, System

REPO = Path(__file__).resolve().parent.parent
NODE_SCRIPT = REPO / "benchmarks" / "node" / "netipc_bench.js"

_PR_SET_PDEATHSIG = 1
_libc: Any = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover
        _libc = None


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class Outcome:
    ok: bool
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    wall_s: float = 0.0
    stderr_tail: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "result": self.result,
            "error": self.error,
            "wall_s": round(self.wall_s, 3),
            "stderr_tail": self.stderr_tail,
        }


def child_env(installed: bool = False) -> dict[str, str]:
    """Environment for workers: the repo's src/ first, so `ipc_server` is this checkout
    (with `installed`, the package installed for the worker's interpreter)."""
    env = dict(os.environ)
    paths = [str(REPO)] if installed else [str(REPO / "src"), str(REPO)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    return env


def raise_fd_limit(wanted: int = 65536) -> None:
    """Children inherit it: 1,000 connections need about 2,000 descriptors per side."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ImportError, ValueError, OSError):  # pragma: no cover
        pass


def _command(system: System, spec: dict[str, Any], python: str | None) -> list[str]:
    """The worker's command line; `python` runs the Python ones (a compiled system's own)."""
    if system.kind == "node":
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node not found on PATH")
        return [node, str(NODE_SCRIPT), json.dumps({**spec, "mode": system.impl})]
    return [python or sys.executable, "-m", "benchmarks.worker", json.dumps(spec)]


def _spawn(cmd: list[str], stderr: IO[bytes], installed: bool = False) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,
        cwd=REPO,
        env=child_env(installed),
        bufsize=0,
        preexec_fn=_die_with_parent,  # safe: the runner is single-threaded
    )


def _tail(f: IO[bytes], lines: int = 8) -> list[str]:
    f.flush()
    f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
    text = f.read().decode("utf-8", "replace")
    return [ln for ln in text.splitlines() if ln.strip()][-lines:]


def _reason(tail: list[str], default: str) -> str:
    # The last line of a Python or Node traceback names the exception.
    for line in reversed(tail):
        stripped = line.strip()
        if stripped and not stripped.startswith(("at ", "^", "Node.js v", "File ")):
            return stripped
    return default


def _wait_ready(proc: subprocess.Popen[bytes], timeout: float) -> None:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    end = time.monotonic() + timeout
    got = b""
    while b"\n" not in got:
        left = end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"server not ready after {timeout:.0f} s")
        readable, _, _ = select.select([fd], [], [], min(left, 0.5))
        if readable:
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError(f"server exited (code {proc.wait()}) before it was ready")
            got += chunk
        elif proc.poll() is not None:
            raise RuntimeError(f"server exited (code {proc.returncode}) before it was ready")
    if not got.startswith(b"READY"):
        raise RuntimeError(f"unexpected server output {got[:80]!r}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def run_pair(
    system: System,
    workload: str,
    params: Params,
    python: str | None = None,
    compiled: str | None = None,
) -> Outcome:
    """Start the server, run the client against it, return what the client measured.

    Python workers run on `python` (default: this interpreter); those of a
    `compiled` system on `compiled`, the interpreter the compiled core is installed for.
    """
    if system.compiled:
        if compiled is None:
            return Outcome(ok=False, error="no compiled core given (--compiled PYTHON)")
        python = compiled
    sockdir = tempfile.mkdtemp(prefix="ipcb", dir="/tmp")
    procs: list[subprocess.Popen[bytes]] = []
    started = time.monotonic()
    spec: dict[str, Any] = {
        "system": system.name,
        "workload": workload,
        "sockdir": sockdir,
        "params": params.to_json(),
    }
    with tempfile.TemporaryFile() as server_err, tempfile.TemporaryFile() as client_err:
        stage = "server"
        try:
            server = _spawn(
                _command(system, {**spec, "role": "server"}, python), server_err, system.compiled
            )
            procs.append(server)
            _wait_ready(server, timeout=min(60.0, params.deadline_s))
            stage = "client"
            client = _spawn(
                _command(system, {**spec, "role": "client", "server_pid": server.pid}, python),
                client_err,
                system.compiled,
            )
            procs.append(client)
            try:
                out, _ = client.communicate(timeout=params.deadline_s + 10)
            except subprocess.TimeoutExpired:
                raise TimeoutError(
                    f"client did not finish within {params.deadline_s:.0f} s"
                ) from None
            result: dict[str, Any] | None = None
            for line in out.decode("utf-8", "replace").splitlines():
                if line.startswith("RESULT "):
                    result = json.loads(line[len("RESULT ") :])
            tail = _tail(client_err)
            wall = time.monotonic() - started
            if result is None:
                reason = _reason(tail, f"client exited with code {client.returncode} and no result")
                if server.poll() is not None:
                    reason += f" (server exited with code {server.returncode})"
                return Outcome(False, error=reason, wall_s=wall, stderr_tail=tail)
            if "error" in result:
                return Outcome(False, error=str(result["error"]), wall_s=wall, stderr_tail=tail)
            return Outcome(True, result=result, wall_s=wall)
        except Exception as exc:
            tail = _tail(server_err if stage == "server" else client_err)
            if stage == "client" and procs[0].poll() is not None:
                tail = _tail(server_err) + tail
            reason = f"{exc}: {_reason(tail, '')}".rstrip(": ")
            return Outcome(False, error=reason, wall_s=time.monotonic() - started, stderr_tail=tail)
        finally:
            for proc in reversed(procs):
                _stop(proc)
            shutil.rmtree(sockdir, ignore_errors=True)
