"""Helpers shared by the worker implementations (server and client processes)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from benchmarks.config import Params

T = TypeVar("T")

Result = dict[str, Any]

SERVER_SOCKET = "s.sock"  # file names inside the per-run socket folder
CONTROL_SOCKET = "c.sock"


def sock_path(sockdir: str, name: str = SERVER_SOCKET) -> str:
    return os.path.join(sockdir, name)


def big_payload(size: int) -> bytes:
    """A deterministic, incompressible-enough payload of `size` bytes."""
    block = bytes(range(256))
    return (block * (size // 256 + 1))[:size]


def run_loop(main: Callable[[], Coroutine[Any, Any, T]], use_uvloop: bool) -> T:
    """Run `main()` on a fresh default asyncio loop, or on uvloop."""
    if not use_uvloop:
        return asyncio.run(main())
    import uvloop

    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main())
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())  # pragma: no cover - 3.10
    return asyncio.run(main())  # pragma: no cover - 3.10


def vm_rss_kib(pid: int) -> int:
    """Resident set size of `pid` in KiB, from /proc/<pid>/status."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def countdown(total: int) -> tuple[Callable[[Any], None], asyncio.Future[None]]:
    """A message handler and a future that is done once the handler ran ``total`` times."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    left = total

    def on_message(message: Any) -> None:
        nonlocal left
        left -= 1
        if left == 0:
            done.set_result(None)

    return on_message, done


def check_count(count: int, n: int) -> None:
    """oneway: the server must have counted every message."""
    if count != n:
        raise RuntimeError(f"server counted {count} of {n} messages")


def now() -> float:
    return time.perf_counter()


def seq_result(latencies_ns: Sequence[int]) -> Result:
    """Median and p99 (nearest rank) of per-round-trip latencies, in µs."""
    ordered = sorted(latencies_ns)
    n = len(ordered)
    if n == 0:
        raise RuntimeError("no round trips measured")
    p50 = ordered[(n - 1) // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
    p99 = ordered[min(n - 1, max(0, -(-99 * n // 100) - 1))]
    return {
        "p50_us": p50 / 1000.0,
        "p99_us": p99 / 1000.0,
        "mean_us": sum(ordered) / n / 1000.0,
        "count": n,
    }


def rate_result(count: int, elapsed: float, **extra: Any) -> Result:
    if elapsed <= 0:
        raise RuntimeError("non-positive elapsed time")
    return {"rate": count / elapsed, "count": count, "elapsed_s": elapsed, **extra}


def big_more(params: Params, done: int, t0: float) -> bool:
    """Whether `big` goes on: up to big_n round trips, fewer (but 2) past big_budget_s."""
    return done < params.big_n and (done < 2 or now() - t0 < params.big_budget_s)


def big_result(params: Params, elapsed: float, rounds: int) -> Result:
    """MB/s of payload echoed: each round trip carries it there and back; counted once."""
    if elapsed <= 0:
        raise RuntimeError("non-positive elapsed time")
    return {
        "mb_per_s": params.big_size * rounds / elapsed / 1e6,
        "rounds": rounds,
        "elapsed_s": elapsed,
        "payload_bytes": params.big_size,
    }


def conn_result(n: int, rss_before_kib: int, rss_after_kib: int) -> Result:
    return {
        "kib_per_conn": (rss_after_kib - rss_before_kib) / n,
        "connections": n,
        "rss_before_kib": rss_before_kib,
        "rss_after_kib": rss_after_kib,
    }


SETTLE_S = 0.3  # pause before reading the server's RSS, so it has finished accepting
