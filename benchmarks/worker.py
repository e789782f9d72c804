"""Entry point of every Python worker process (one server or one client).

    python -m benchmarks.worker '<json spec>'

The spec holds role, system, workload, sockdir, params and (for clients) the
server's pid.  A server prints ``READY`` on stdout once it listens and then
serves until it is killed; a client prints ``RESULT <json>`` and exits.  Both
exit on their own after ``params.deadline_s`` (SIGALRM, default action), so a
stuck worker never outlives its run.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import signal
import sys
import traceback
from typing import Any, Protocol, cast

from benchmarks.config import SYSTEMS_BY_NAME, Params
from benchmarks.impl.common import Result


class Impl(Protocol):
    def serve(
        self,
        workload: str,
        sockdir: str,
        params: Params,
        options: dict[str, Any],
        ready: Any,
    ) -> None: ...

    def client(
        self,
        workload: str,
        sockdir: str,
        params: Params,
        options: dict[str, Any],
        server_pid: int,
    ) -> Result: ...


def _ready() -> None:
    sys.stdout.write("READY\n")
    sys.stdout.flush()


def _emit(result: Result) -> None:
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    spec: dict[str, Any] = json.loads(argv[1])
    params = Params.from_json(spec["params"])
    # Default SIGALRM action terminates the process, even inside a blocking C call.
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(max(1, math.ceil(params.deadline_s)))
    system = SYSTEMS_BY_NAME[spec["system"]]
    role: str = spec["role"]
    try:
        if system.compiled and not importlib.import_module("ipc_server").compiled:
            raise RuntimeError("ipc_server here is the pure-Python package, not the compiled core")
        impl = cast(Impl, importlib.import_module(f"benchmarks.impl.{system.impl}"))
        if role == "server":
            impl.serve(spec["workload"], spec["sockdir"], params, dict(system.options), _ready)
            return 0
        result = impl.client(
            spec["workload"], spec["sockdir"], params, dict(system.options), int(spec["server_pid"])
        )
        _emit(result)
        return 0
    except BaseException as exc:  # report anything, including SystemExit from a library
        traceback.print_exc()
        if role == "client":
            _emit({"error": f"{type(exc).__name__}: {exc}"})
        return 1


if __name__ == "__main__":
    code = main(sys.argv)
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: open sockets, zmq contexts (linger) or loop
    # shutdown must never keep a finished worker alive.
    os._exit(code)
