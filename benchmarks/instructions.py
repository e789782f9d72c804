"""Instructions per operation on the hot paths, counted by valgrind's callgrind.

    python -m benchmarks.instructions                       # every workload, uvloop
    python -m benchmarks.instructions --loop asyncio --workloads request,oneway
    python -m benchmarks.instructions --python /root/.pyenv/versions/3.12.1/bin/python
    python -m benchmarks.instructions --installed /tmp/venv-compiled/bin/python
    python -m benchmarks.instructions --system pyzmq --split   # a baseline, by thread and object
    python -m benchmarks.instructions --python .../3.12.1/bin/python --functions   # per function

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

``--system floor|pyzmq|pyzmq-asyncio`` counts a baseline of the wall-clock
suite instead, its workloads of the same names built from its own code
(``benchmarks/instructions_baselines.py``).  pyzmq's process runs libzmq's
threads beside the Python one: callgrind counts each thread apart
(``--separate-threads=yes``) and the table gives each thread's share; the
process runs on one core under ``SCHED_FIFO``, so that the threads' turns,
and with them the count, repeat from run to run (the module says more).
``--split`` breaks every figure down by the object executing the
instructions: the interpreter (the python binary, libpython and the standard
library's extension modules), orjson, uvloop, libzmq, pyzmq's binding, libc
and the rest.  ``--functions`` (Python 3.12 or later) gives the budget per
Python function: each run is ``python -X perf``, whose per-function
trampolines callgrind sees as functions, so every Python function's
instructions with what it calls are counted (``benchmarks/callgrind.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.callgrind import CATEGORIES, TOTALS, category, function_costs, object_costs
from benchmarks.instructions_baselines import THREADED
from benchmarks.instructions_baselines import WORKLOADS as BASELINE_WORKLOADS
from benchmarks.instructions_baselines import child as baseline_child

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
SYSTEMS: dict[str, tuple[str, ...]] = {
    "ours": tuple(w.name for w in WORKLOADS),
    **BASELINE_WORKLOADS,
}


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
    system, workload, n, loop_name = argv[0], argv[1], int(argv[2]), argv[3]
    from benchmarks.impl.common import run_loop

    if system == "ours":
        run_loop(lambda: _child_main(workload, n), loop_name == "uvloop")
    else:
        sizes = {"warmup": WARMUP, "subscribers": FANOUT_SUBSCRIBERS, "batch": BATCH}
        baseline_child(system, workload, n, loop_name == "uvloop", **sizes)
    sys.stdout.flush()
    # No interpreter teardown: its cost is not the workload's, and sockets or
    # the loop's shutdown must not keep the process alive.
    os._exit(0)


# ---------------------------------------------------------------------------
# the runner


@dataclass(frozen=True)
class Count:
    """One run's instructions: per thread, and per thread and object when split."""

    threads: dict[str, int]  # thread name ("main" first) -> instructions
    objects: dict[str, dict[str, int]]  # thread name -> object file -> instructions, or {}
    functions: dict[str, int] = field(default_factory=dict)  # Python function -> inclusive

    @property
    def total(self) -> int:
        return sum(self.threads.values())


@dataclass(frozen=True)
class Setup:
    """What every measured run shares: the interpreter, the loop, the code it imports."""

    python: str
    loop: str
    src: Path | None  # the snapshot's copy of src/ (ipc_server); None: the installed package
    root: Path  # the snapshot's copy of the repository root (benchmarks/)
    out_dir: Path
    system: str = "ours"
    split: bool = False  # count every object's instructions too
    functions: bool = False  # count every Python function's too (-X perf, Python 3.12+)

    @property
    def threaded(self) -> bool:
        return self.system in THREADED

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

    def command(self, workload: str, n: int, perf: bool = False) -> list[str]:
        """The measured process's command line (``perf``: with ``-X perf``)."""
        return [
            self.python,
            *(["-X", "perf"] if perf else []),
            "-m",
            "benchmarks.instructions",
            "--child",
            self.system,
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
                if self.system != "ours":  # the baseline's module, from the snapshot
                    if not Path(module).resolve().is_relative_to(self.root.resolve()):
                        raise RuntimeError(f"the baseline was imported from {module}")
                    return
                where = self.src if self.src is not None else self.root
                if Path(module).resolve().is_relative_to(where.resolve()) != (self.src is not None):
                    wanted = "installed" if self.src is None else f"from {self.src}"
                    raise RuntimeError(f"ipc_server was imported from {module}, not {wanted}")
                return
        raise RuntimeError(f"{workload} {n}: the run did not finish")

    def prerun(self, workload: str) -> str:
        """Once without valgrind: the workload works, and its .pyc files exist before counting.

        Returns the build that ran: ``"pure"`` or ``"compiled"`` (a baseline: its versions).
        """
        done = self.run(self.command(workload, 10), timeout=120)
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-5:])
            raise RuntimeError(f"{workload} does not run on {self.python}:\n{tail}")
        self.check_done(done.stdout, workload, 10)
        return next(
            line.split(" ")[3] for line in done.stdout.splitlines() if line.startswith("DONE ")
        )

    def count(self, workload: str, n: int) -> Count:
        """Instructions executed by one run under callgrind."""
        tag = workload if self.system == "ours" else f"{workload}.{self.system}"
        out_file = self.out_dir / f"callgrind.{tag}.{self.loop}.{n}.{os.getpid()}"
        threads = ["--separate-threads=yes"] if self.threaded else []
        pid = ".%p" if self.functions else ""  # the perf map is named by the process id
        cmd = [
            "valgrind",
            "--tool=callgrind",
            *threads,
            f"--callgrind-out-file={out_file}{pid}",
            *self.command(workload, n, perf=self.functions),
        ]
        done = self.run(cmd, timeout=1800)
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-8:])
            raise RuntimeError(f"{workload} {n} under callgrind failed:\n{tail}")
        self.check_done(done.stdout, workload, n)
        functions: dict[str, int] = {}
        if self.functions:
            (found,) = out_file.parent.glob(out_file.name + ".[0-9]*")
            out_file = found.rename(out_file)
            perf = Path(f"/tmp/perf-{found.suffix[1:]}.map")
            functions = function_costs(out_file, int(found.suffix[1:]))
            perf.unlink(missing_ok=True)
        if not self.threaded:
            files = [out_file]
            names = ["main"]
        else:  # one file per thread, <out_file>-01, -02, ... in the order they started
            files = sorted(out_file.parent.glob(out_file.name + "-[0-9]*"))
            names = _thread_names(done.stdout, len(files))
        counts: dict[str, int] = {}
        objects: dict[str, dict[str, int]] = {}
        for name, path in zip(names, files, strict=True):
            text = path.read_text(encoding="utf-8", errors="replace")
            match = TOTALS.search(text)
            if match is None:
                raise RuntimeError(f"no instruction total in {path}")
            counts[name] = int(match.group(1))
            if self.split:
                objects[name] = object_costs(text)
                if sum(objects[name].values()) != counts[name]:
                    raise RuntimeError(f"{path}: the objects' costs do not add up to its total")
        return Count(counts, objects, functions)


def _thread_names(out: str, count: int) -> list[str]:
    """Names of the run's `count` threads, from its THREADS line ("main" first)."""
    names: list[str] = []
    for line in out.splitlines():
        if line.startswith("THREADS "):
            names = ["main", *json.loads(line[len("THREADS ") :])[1:]]
    if len(names) != count:
        names = ["main", *(f"thread {k}" for k in range(2, count + 1))]
    seen: dict[str, int] = {}
    for i, name in enumerate(names):  # unique names
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            names[i] = f"{name}#{seen[name]}"
    return names


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
    threads: list[dict[str, float]] = field(default_factory=list)  # per repetition: per op
    # per repetition: thread -> object file -> per op (with --split)
    objects: list[dict[str, dict[str, float]]] = field(default_factory=list)
    # per repetition: Python function -> inclusive instructions per op (with --functions)
    functions: list[dict[str, float]] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return sum(self.per_op) / len(self.per_op)

    @property
    def spread(self) -> float:
        """(max - min) / mean of the repetitions' figures."""
        return _spread(self.per_op)

    @property
    def stable(self) -> bool:
        return self.spread <= TOLERANCE

    def thread_means(self) -> dict[str, float]:
        return _means(self.threads)

    def thread_spread(self, name: str) -> float:
        return _spread([rep.get(name, 0.0) for rep in self.threads])

    def object_means(self) -> dict[str, dict[str, float]]:
        """thread -> object file -> instructions per op, the repetitions' mean."""
        names = list(self.thread_means())
        return {t: _means([rep.get(t, {}) for rep in self.objects]) for t in names}

    def split(self) -> dict[str, dict[str, float]]:
        """thread -> category -> instructions per op."""
        out: dict[str, dict[str, float]] = {}
        for thread, objects in self.object_means().items():
            cats = out[thread] = dict.fromkeys(CATEGORIES, 0.0)
            for obj, cost in objects.items():
                cats[category(obj)] += cost
        return out

    def to_json(self) -> dict[str, Any]:
        out = {
            "workload": self.workload,
            "unit": self.unit,
            "n": self.n,
            "instructions_per_op": round(self.mean, 1),
            "repetitions": [round(x, 1) for x in self.per_op],
            "spread": round(self.spread, 5),
            "stable": self.stable,
            "totals": self.totals,
            "threads": {t: round(v, 1) for t, v in self.thread_means().items()},
        }
        if self.functions:
            means = _means(self.functions)
            out["functions"] = {
                _where(n): round(c, 1)
                for n, c in sorted(means.items(), key=lambda item: -item[1])
                if c >= 0.005 * self.mean
            }
        if self.objects:
            out["split"] = {
                t: {c: round(v, 1) for c, v in cats.items()} for t, cats in self.split().items()
            }
            out["objects"] = {
                t: {o: round(v, 1) for o, v in objs.items() if abs(v) >= 0.05}
                for t, objs in self.object_means().items()
            }
        return out


def _spread(values: Sequence[float]) -> float:
    mean = sum(values) / len(values) if values else 0.0
    return (max(values) - min(values)) / abs(mean) if mean else 0.0


def _means(reps: Sequence[dict[str, float]]) -> dict[str, float]:
    keys = list(dict.fromkeys(k for rep in reps for k in rep))
    return {k: sum(rep.get(k, 0.0) for rep in reps) / len(reps) for k in keys}


def _per_op(small: dict[str, int], large: dict[str, int], n: int) -> dict[str, float]:
    keys = dict.fromkeys([*small, *large])
    return {k: (large.get(k, 0) - small.get(k, 0)) / n for k in keys}


def measure(
    setup: Setup, workload: Workload, n: int, repeat: int, log: Callable[[str], None]
) -> Figure:
    """The figure of one workload (run ``setup.prerun`` for it first)."""
    figure = Figure(workload.name, workload.unit, n, [], [])
    for rep in range(1, repeat + 1):
        small = setup.count(workload.name, n)
        large = setup.count(workload.name, 2 * n)
        figure.totals.append((small.total, large.total))
        figure.per_op.append((large.total - small.total) / n)
        threads = _per_op(small.threads, large.threads, n)
        figure.threads.append(threads)
        if setup.functions:
            figure.functions.append(_per_op(small.functions, large.functions, n))
        if setup.split:
            figure.objects.append(
                {t: _per_op(small.objects[t], large.objects[t], n) for t in threads}
            )
        by_thread = ""
        if len(threads) > 1:
            by_thread = " (" + ", ".join(f"{t} {_int(v)}" for t, v in threads.items()) + ")"
        log(
            f"  {workload.name} #{rep}: {small.total:,} / {large.total:,} instructions "
            f"-> {figure.per_op[-1]:,.0f} per {workload.unit}{by_thread}"
        )
    return figure


def _int(value: float) -> str:
    """A count per op, rounded to an int (so "0", not "-0", for a fraction below zero)."""
    return f"{round(value):,}"


def table(figures: Sequence[Figure], header: str) -> str:
    names = list(dict.fromkeys(t for f in figures for t in f.thread_means()))
    extra = names if len(names) > 1 else []  # a column per thread, if there are several
    lines = [header, ""]
    lines.append(
        f"  {'workload':<14}{'instructions/op':>16}  {'per':<10}{'N':>7}{'spread':>9}"
        + "".join(f"{t:>14}" for t in extra)
    )
    for f in figures:
        flag = "" if f.stable else "  UNSTABLE"
        means = f.thread_means()
        lines.append(
            f"  {f.workload:<14}{f.mean:>16,.0f}  {f.unit:<10}{f.n:>7,}{f.spread * 100:>8.2f}%"
            + "".join(f"{_int(means.get(t, 0.0)):>14}" for t in extra)
            + flag
        )
    return "\n".join(lines)


def _where(name: str) -> str:
    """``Class.method (package/module.py)`` for a perf map's ``Class.method:/path/module.py``."""
    function, _, path = name.partition(":")
    for marker in ("/site-packages/", "/lib/python3", "/src/", "/tree/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "/lib/python3":
                path = path.split("/", 1)[-1]
            break
    return f"{function} ({path})"


def functions_table(figures: Sequence[Figure], top: int) -> str:
    """Per workload: the Python functions that cost most per operation, with what they call.

    Inclusive costs nest (a function's figure holds its callees'); the
    functions that hold the whole run (the loop, the harness) are left out.
    """
    lines = [
        "By Python function (inclusive instructions per operation, with what each calls; "
        "the repetitions' mean)"
    ]
    for f in figures:
        means = _means(f.functions)
        shown = [(c, n) for n, c in means.items() if 0.005 * f.mean <= c < 0.99 * f.mean]
        lines += ["", f"  {f.workload}, per {f.unit} (all: {f.mean:,.0f})"]
        for cost, name in sorted(shown, reverse=True)[:top]:
            lines.append(f"    {cost:>10,.0f} {cost / f.mean:>7.1%}  {_where(name)}")
    return "\n".join(lines)


def split_table(figures: Sequence[Figure]) -> str:
    """Per workload: each thread's instructions per op by category, then the main objects."""
    lines = [
        "By object (instructions per operation, the repetitions' mean; spread: between "
        "the repetitions)"
    ]
    for f in figures:
        split = f.split()
        rows: list[tuple[str, dict[str, float], float]] = []
        if len(split) > 1:
            every = {c: sum(cats[c] for cats in split.values()) for c in CATEGORIES}
            rows.append(("all threads", every, f.spread))
        rows += [(t, cats, f.thread_spread(t)) for t, cats in split.items()]
        columns = [c for c in CATEGORIES if any(abs(row[c]) >= 0.5 for _, row, _ in rows)]
        lines += ["", f"  {f.workload}, per {f.unit}"]
        lines.append(
            f"    {'thread':<14}{'total':>10}{'spread':>9}" + "".join(f"{c:>13}" for c in columns)
        )
        for name, cats, spread in rows:
            lines.append(
                f"    {name:<14}{_int(sum(cats.values())):>10}{spread * 100:>8.2f}%"
                + "".join(f"{_int(cats[c]):>13}" for c in columns)
            )
        objects: dict[str, float] = {}
        for per_thread in f.object_means().values():
            for obj, cost in per_thread.items():
                objects[obj] = objects.get(obj, 0.0) + cost
        shown = [(c, o) for o, c in objects.items() if abs(c) >= max(1.0, 0.005 * abs(f.mean))]
        for cost, obj in sorted(shown, reverse=True):
            share = cost / f.mean if f.mean else 0.0
            lines.append(
                f"      {cost:>10,.0f} {share:>7.1%}  {category(obj):<12} {os.path.basename(obj)}"
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
        "--system",
        choices=tuple(SYSTEMS),
        default="ours",
        help="what is counted: ipc_server (ours), or a baseline of the wall-clock suite "
        "with its workloads of the same names (ours)",
    )
    p.add_argument(
        "--workloads",
        type=_csv,
        default=None,
        metavar="NAME,...",
        help="workloads to count (all of the system's): "
        + "; ".join(f"{system}: {', '.join(names)}" for system, names in SYSTEMS.items()),
    )
    p.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="(uvloop; blocking pyzmq has none)",
    )
    p.add_argument(
        "--python",
        default=sys.executable,
        metavar="PATH",
        help="interpreter of the measured runs (this one); it needs orjson, msgpack "
        "and, for --loop uvloop, uvloop (and pyzmq for the pyzmq systems)",
    )
    p.add_argument(
        "-n",
        type=int,
        default=None,
        metavar="N",
        help="operations in the smaller run of each pair (default per workload: "
        + ", ".join(f"{w.name} {w.n:,}" for w in WORKLOADS)
        + ", whatever the system)",
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
        "--split",
        action="store_true",
        help="also break every figure down by thread and by object (interpreter, orjson, "
        "uvloop, libzmq, libc, ...)",
    )
    p.add_argument(
        "--functions",
        type=int,
        nargs="?",
        const=30,
        default=0,
        metavar="TOP",
        help="also give the TOP (30) Python functions by instructions per operation, with what "
        "they call (needs Python 3.12 or later: runs it as python -X perf)",
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
    known = SYSTEMS[args.system]
    if args.workloads is None:
        args.workloads = list(known)
    for name in args.workloads:
        if name not in known:
            p.error(f"no workload {name!r} for --system {args.system}; known: {', '.join(known)}")
    if args.n is not None and args.n < FANOUT_SUBSCRIBERS:
        p.error(f"-n must be at least {FANOUT_SUBSCRIBERS}")
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    if args.installed is not None and (args.python != sys.executable or args.src != REPO / "src"):
        p.error("--installed names the interpreter and the package: not with --python or --src")
    if args.installed is not None and args.system != "ours":
        p.error("--installed counts ipc_server: only with --system ours")
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
    system = args.system
    loop = "blocking sockets" if system == "pyzmq" else args.loop
    if system == "ours":
        where = "ipc_server " + ("as installed" if args.installed else f"from {args.src}")
    else:
        where = f"{system} (benchmarks/instructions_baselines.py)"

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    log(f"Python {version} ({python}), {loop}, {where}")
    if args.functions and tuple(map(int, version.split(".")[:2])) < (3, 12):
        log("--functions needs Python 3.12 or later (python -X perf): use --python")
        return 2
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="ipccg") as tmp:
        out_dir = args.keep or Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        src, root = snapshot(args.src, Path(tmp) / "tree")
        imported = None if args.installed or system != "ours" else src
        setup = Setup(
            python, args.loop, imported, root, out_dir, system, args.split, args.functions > 0
        )
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
    build = "/".join(sorted(builds))
    if args.json:
        info = {
            "system": system,
            "python": version,
            "executable": python,
            "loop": loop,
            "src": "installed" if args.installed else str(args.src),
            "build": build,
        }
        if system != "ours":
            info["src"] = "benchmarks/instructions_baselines.py"
        print(json.dumps({**info, "figures": [f.to_json() for f in figures]}, indent=1))
    else:
        what = f"{build} build" if system == "ours" else f"{system} ({build.replace(',', ', ')})"
        header = (
            f"Instructions per operation, both ends, Python {version}, {loop}, {what} "
            f"((I(2N) - I(N)) / N, mean of {args.repeat} run(s) of each pair)"
        )
        print(table(figures, header))
        if args.split:
            print()
            print(split_table(figures))
        if args.functions:
            print()
            print(functions_table(figures, args.functions))
    if unstable:
        log(f"unstable (repetitions differ by more than {TOLERANCE:.1%}): " + ", ".join(unstable))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
