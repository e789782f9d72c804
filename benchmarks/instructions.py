"""Instructions per operation on the hot paths, counted by valgrind's callgrind.

    python -m benchmarks.instructions                       # every workload, uvloop
    python -m benchmarks.instructions --loop asyncio --workloads request,oneway
    python -m benchmarks.instructions --python /root/.pyenv/versions/3.12.1/bin/python
    python -m benchmarks.instructions --installed /tmp/venv-compiled/bin/python

Wall-clock figures on a shared machine move by more than most changes to a hot
path; instruction counts do not.  Each workload runs in one process holding
both ends (an ``IPCServer`` and its ``IPCClient``\\ s on a Unix socket in a
temporary folder, one event loop, the public API only), once for N operations
and once for 2N, each under ``valgrind --tool=callgrind``.  The figure is

    (instructions(2N) - instructions(N)) / N

so start-up, imports, connecting and the warm-up cancel out.  The pair runs
twice (``--repeat``) and the figures must agree within 0.5 %; the table shows
their mean and their spread.  The count covers both ends: a request is the
client's and the server's work for one round trip, including the event loop
and the system calls' user-space side.

The runs import ``ipc_server`` from ``src/`` of this checkout (or ``--src``),
so two checkouts can be compared workload by workload.  They import a copy of
it and of ``benchmarks/`` taken at the start, compiled once before counting:
editing the checkout while the tool runs changes nothing in its figures.
``--installed PYTHON`` counts the package as installed in that interpreter's
environment instead (the compiled core: ``IPC_SERVER_COMPILE=1 pip install .``
into a virtualenv), so the pure and the compiled build can be compared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

TOLERANCE = 0.005  # the repetitions' figures must agree within 0.5 %
WARMUP = 1_000  # operations before the counted ones, the same in both runs of a pair
FANOUT_SUBSCRIBERS = 10
TASKS = 100  # `request`: concurrent tasks, each awaiting its requests in turn
BATCH = 1_000  # `gather_*`: requests per gather


@dataclass(frozen=True)
class Workload:
    name: str
    n: int  # default N (operations counted per run of the smaller size)
    unit: str
    what: str


WORKLOADS: tuple[Workload, ...] = (
    Workload(
        "request",
        2_000,
        "request",
        f"{TASKS} tasks each looping `await client.request(payload)`, plain handler",
    ),
    Workload(
        "gather_plain",
        2_000,
        "request",
        f"`await asyncio.gather(*(client.request(payload) ...))` of {BATCH:,} per batch, "
        "plain handler",
    ),
    Workload(
        "gather_async",
        2_000,
        "request",
        f"the same batches of {BATCH:,}, against `async def` handler awaiting `respond`",
    ),
    Workload(
        "oneway",
        4_000,
        "message",
        "`await client.send(payload)` in a loop, counted by a `message` listener",
    ),
    Workload(
        "fanout",
        4_000,
        "delivery",
        f"{FANOUT_SUBSCRIBERS} subscribers, `await server.publish(topic, payload)` in a loop",
    ),
    Workload("seq", 1_000, "request", "one request at a time: `await client.request(payload)`"),
)
WORKLOADS_BY_NAME = {w.name: w for w in WORKLOADS}


# ---------------------------------------------------------------------------
# the measured process: both ends on one loop


async def _child_main(workload: str, n: int) -> None:
    import ipc_server
    from benchmarks.config import PAYLOAD, TOPIC

    sockdir = tempfile.mkdtemp(prefix="ipci", dir="/tmp")
    path = os.path.join(sockdir, "s.sock")
    server = ipc_server.IPCServer(path=path)
    loop = asyncio.get_running_loop()
    count = 0

    if workload == "gather_async":

        async def on_request(request: Any, respond: Any, connection: Any) -> None:
            await respond(request)

        server.on("request", on_request)
    elif workload == "oneway":

        def on_message(message: Any, connection: Any) -> None:
            nonlocal count
            count += 1

        def on_count(request: Any, respond: Any, connection: Any) -> None:
            nonlocal count
            done, count = count, 0
            respond(done)

        server.on("message", on_message)
        server.on("request", on_count)
    else:
        server.on("request", lambda request, respond, conn: respond(request))
    await server.start()

    clients = []
    for _ in range(FANOUT_SUBSCRIBERS if workload == "fanout" else 1):
        c = ipc_server.IPCClient(path=path)
        await c.connect()
        clients.append(c)
    client = clients[0]
    request, send = client.request, client.send

    async def run_request(k: int) -> None:
        async def task(m: int) -> None:
            for _ in range(m):
                await request(PAYLOAD)

        per, extra = divmod(k, TASKS)
        await asyncio.gather(*(task(per + (i < extra)) for i in range(TASKS)))

    async def run_gather(k: int) -> None:
        while k > 0:
            batch = min(BATCH, k)
            await asyncio.gather(*(request(PAYLOAD) for _ in range(batch)))
            k -= batch

    async def run_oneway(k: int) -> None:
        for _ in range(k):
            await send(PAYLOAD)
        got = await request(None)
        if got != k:
            raise RuntimeError(f"the server counted {got} of {k} messages")

    async def run_fanout(k: int) -> None:
        publishes = k // FANOUT_SUBSCRIBERS
        left = publishes * FANOUT_SUBSCRIBERS
        done: asyncio.Future[None] = loop.create_future()

        def on_topic(message: Any) -> None:
            nonlocal left
            left -= 1
            if left == 0:
                done.set_result(None)

        for c in clients:
            c.on(TOPIC, on_topic)
        for _ in range(publishes):
            await server.publish(TOPIC, PAYLOAD)
        await done
        for c in clients:
            c.off(TOPIC, on_topic)

    async def run_seq(k: int) -> None:
        for _ in range(k):
            await request(PAYLOAD)

    runs: dict[str, Callable[[int], Awaitable[None]]] = {
        "request": run_request,
        "gather_plain": run_gather,
        "gather_async": run_gather,
        "oneway": run_oneway,
        "fanout": run_fanout,
        "seq": run_seq,
    }
    if workload == "fanout":
        for c in clients:
            if await c.subscribe(TOPIC) is not True:
                raise RuntimeError("subscribe did not return True")
    first = None if workload == "oneway" else PAYLOAD
    if await request(first) != (0 if workload == "oneway" else PAYLOAD):
        raise RuntimeError("unexpected answer to the first request")
    await runs[workload](WARMUP)
    await runs[workload](n)
    build = "compiled" if ipc_server.compiled else "pure"
    sys.stdout.write(f"DONE {workload} {n} {build} {ipc_server.__file__}\n")
    sys.stdout.flush()
    shutil.rmtree(sockdir, ignore_errors=True)


def _child(argv: Sequence[str]) -> int:
    workload, n, loop_name = argv[0], int(argv[1]), argv[2]
    from benchmarks.impl.common import run_loop

    run_loop(lambda: _child_main(workload, n), loop_name == "uvloop")
    sys.stdout.flush()
    # No interpreter teardown: its cost is not the workload's, and sockets or
    # the loop's shutdown must not keep the process alive.
    os._exit(0)


# ---------------------------------------------------------------------------
# the runner


@dataclass(frozen=True)
class Setup:
    """What every measured run shares: the interpreter, the loop, the code it imports."""

    python: str
    loop: str
    src: Path | None  # the snapshot's copy of src/ (ipc_server); None: the installed package
    root: Path  # the snapshot's copy of the repository root (benchmarks/)
    out_dir: Path

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        # nothing but the snapshot and the interpreter's own packages
        paths = [str(self.root)] if self.src is None else [str(self.src), str(self.root)]
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env["PYTHONHASHSEED"] = "0"  # the same dict and set layouts in every run
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # the pre-run writes .pyc files once
        env.pop("IPC_SERVER_COMPILE", None)
        return env

    def command(self, workload: str, n: int) -> list[str]:
        return [
            self.python,
            "-m",
            "benchmarks.instructions",
            "--child",
            workload,
            str(n),
            self.loop,
        ]

    def run(self, cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            cwd=self.root,
            env=self.env,
            timeout=timeout,
            check=False,
        )

    def check_done(self, out: str, workload: str, n: int) -> None:
        for line in out.splitlines():
            if line.startswith("DONE "):
                _, name, count, _build, module = line.split(" ", 4)
                if name != workload or int(count) != n:
                    raise RuntimeError(f"the run did {name} {count}, not {workload} {n}")
                where = self.src if self.src is not None else self.root
                if Path(module).resolve().is_relative_to(where.resolve()) != (self.src is not None):
                    wanted = "installed" if self.src is None else f"from {self.src}"
                    raise RuntimeError(f"ipc_server was imported from {module}, not {wanted}")
                return
        raise RuntimeError(f"{workload} {n}: the run did not finish")

    def prerun(self, workload: str) -> str:
        """Once without valgrind: the workload works, and its .pyc files exist before counting.

        Returns the build that ran: ``"pure"`` or ``"compiled"``.
        """
        done = self.run(self.command(workload, 10), timeout=120)
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-5:])
            raise RuntimeError(f"{workload} does not run on {self.python}:\n{tail}")
        self.check_done(done.stdout, workload, 10)
        return next(
            line.split(" ")[3] for line in done.stdout.splitlines() if line.startswith("DONE ")
        )

    def count(self, workload: str, n: int) -> int:
        """Instructions executed by one run under callgrind."""
        out_file = self.out_dir / f"callgrind.{workload}.{self.loop}.{n}.{os.getpid()}"
        cmd = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out_file}",
            *self.command(workload, n),
        ]
        done = self.run(cmd, timeout=1800)
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-8:])
            raise RuntimeError(f"{workload} {n} under callgrind failed:\n{tail}")
        self.check_done(done.stdout, workload, n)
        match = _TOTALS.search(out_file.read_text(encoding="utf-8", errors="replace"))
        if match is None:
            raise RuntimeError(f"no instruction total in {out_file}")
        return int(match.group(1))


_TOTALS = re.compile(r"^(?:summary|totals):\s*(\d+)", re.MULTILINE)


def snapshot(src: Path, into: Path) -> tuple[Path, Path]:
    """Copy ipc_server (from `src`) and benchmarks/ into `into`: (its src dir, its root)."""
    skip = shutil.ignore_patterns("__pycache__", "results", "node")
    shutil.copytree(src / "ipc_server", into / "src" / "ipc_server", ignore=skip)
    shutil.copytree(REPO / "benchmarks", into / "root" / "benchmarks", ignore=skip)
    return into / "src", into / "root"


def real_python(python: str) -> tuple[str, str]:
    """The interpreter binary itself (valgrind does not follow pyenv's shell shims), its version."""
    if os.sep not in python:
        found = shutil.which(python)
        if found is None:
            raise SystemExit(f"{python}: not found")
        python = found
    probe = subprocess.run(
        [python, "-c", "import platform, sys; print(sys.executable, platform.python_version())"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0 or not probe.stdout.strip():
        raise SystemExit(f"{python}: does not run: {probe.stderr.strip()}")
    executable, version = probe.stdout.strip().rsplit(" ", 1)
    return executable, version


@dataclass
class Figure:
    workload: str
    unit: str
    n: int
    per_op: list[float]  # one figure per repetition
    totals: list[tuple[int, int]]  # (instructions(N), instructions(2N)) per repetition

    @property
    def mean(self) -> float:
        return sum(self.per_op) / len(self.per_op)

    @property
    def spread(self) -> float:
        """(max - min) / mean of the repetitions' figures."""
        return (max(self.per_op) - min(self.per_op)) / self.mean if self.mean else 0.0

    @property
    def stable(self) -> bool:
        return self.spread <= TOLERANCE

    def to_json(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "unit": self.unit,
            "n": self.n,
            "instructions_per_op": round(self.mean, 1),
            "repetitions": [round(x, 1) for x in self.per_op],
            "spread": round(self.spread, 5),
            "stable": self.stable,
            "totals": self.totals,
        }


def measure(
    setup: Setup, workload: Workload, n: int, repeat: int, log: Callable[[str], None]
) -> Figure:
    """The figure of one workload (run ``setup.prerun`` for it first)."""
    figure = Figure(workload.name, workload.unit, n, [], [])
    for rep in range(1, repeat + 1):
        small = setup.count(workload.name, n)
        large = setup.count(workload.name, 2 * n)
        figure.totals.append((small, large))
        figure.per_op.append((large - small) / n)
        log(
            f"  {workload.name} #{rep}: {small:,} / {large:,} instructions "
            f"-> {figure.per_op[-1]:,.0f} per {workload.unit}"
        )
    return figure


def table(figures: Sequence[Figure], header: str) -> str:
    lines = [header, ""]
    lines.append(f"  {'workload':<14}{'instructions/op':>16}  {'per':<10}{'N':>7}{'spread':>9}")
    for f in figures:
        flag = "" if f.stable else "  UNSTABLE"
        lines.append(
            f"  {f.workload:<14}{f.mean:>16,.0f}  {f.unit:<10}{f.n:>7,}{f.spread * 100:>8.2f}%{flag}"
        )
    return "\n".join(lines)


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.instructions",
        description="Instructions per operation (callgrind), both ends in one process: "
        "(instructions(2N) - instructions(N)) / N.",
    )
    p.add_argument(
        "--workloads",
        type=_csv,
        default=[w.name for w in WORKLOADS],
        metavar="NAME,...",
        help="workloads to count: " + ", ".join(w.name for w in WORKLOADS) + " (all)",
    )
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop", help="(uvloop)")
    p.add_argument(
        "--python",
        default=sys.executable,
        metavar="PATH",
        help="interpreter of the measured runs (this one); it needs orjson, msgpack "
        "and, for --loop uvloop, uvloop",
    )
    p.add_argument(
        "-n",
        type=int,
        default=None,
        metavar="N",
        help="operations in the smaller run of each pair (default per workload: "
        + ", ".join(f"{w.name} {w.n:,}" for w in WORKLOADS)
        + ")",
    )
    p.add_argument(
        "--repeat", type=int, default=2, help="runs of each N/2N pair, checked to agree (2)"
    )
    p.add_argument(
        "--src",
        type=Path,
        default=REPO / "src",
        metavar="DIR",
        help="where ipc_server is imported from (this checkout's src/)",
    )
    p.add_argument(
        "--installed",
        default=None,
        metavar="PYTHON",
        help="count ipc_server as installed in that interpreter's environment (the compiled "
        "core, say) instead of --src; it is the interpreter of the runs",
    )
    p.add_argument(
        "--keep",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep the callgrind output files there (for callgrind_annotate)",
    )
    p.add_argument("--json", action="store_true", help="print the figures as JSON on stdout")
    args = p.parse_args(argv)
    for name in args.workloads:
        if name not in WORKLOADS_BY_NAME:
            p.error(f"unknown workload {name!r}; known: {', '.join(WORKLOADS_BY_NAME)}")
    if args.n is not None and args.n < FANOUT_SUBSCRIBERS:
        p.error(f"-n must be at least {FANOUT_SUBSCRIBERS}")
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    if args.installed is not None and (args.python != sys.executable or args.src != REPO / "src"):
        p.error("--installed names the interpreter and the package: not with --python or --src")
    if not (args.src / "ipc_server").is_dir():
        p.error(f"no ipc_server package in {args.src}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        return _child(argv[1:])
    args = parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    python, version = real_python(args.installed or args.python)
    where = "as installed" if args.installed else f"from {args.src}"

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    log(f"Python {version} ({python}), {args.loop}, ipc_server {where}")
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="ipccg") as tmp:
        out_dir = args.keep or Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        src, root = snapshot(args.src, Path(tmp) / "tree")
        setup = Setup(python, args.loop, None if args.installed else src, root, out_dir)
        builds: set[str] = set()
        for name in args.workloads:
            workload = WORKLOADS_BY_NAME[name]
            n = args.n or workload.n
            if name == "fanout":
                n -= n % FANOUT_SUBSCRIBERS
            try:
                builds.add(setup.prerun(name))
                figures.append(measure(setup, workload, n, args.repeat, log))
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                log(f"{name}: {exc}")
                return 1
    unstable = [f.workload for f in figures if not f.stable]
    if args.json:
        info = {
            "python": version,
            "executable": python,
            "loop": args.loop,
            "src": "installed" if args.installed else str(args.src),
            "build": "/".join(sorted(builds)),
        }
        print(json.dumps({**info, "figures": [f.to_json() for f in figures]}, indent=1))
    else:
        header = (
            f"Instructions per operation, both ends, Python {version}, {args.loop}, "
            f"{'/'.join(sorted(builds))} build "
            f"((I(2N) - I(N)) / N, mean of {args.repeat} run(s) of each pair)"
        )
        print(table(figures, header))
    if unstable:
        log(f"unstable (repetitions differ by more than {TOLERANCE:.1%}): " + ", ".join(unstable))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
