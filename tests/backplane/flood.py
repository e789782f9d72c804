"""A made-up server that floods topics from a process of its own, as fast as nats-py can send.

Run as ``python tests/backplane/flood.py URL NAMESPACE TOPICS COUNT BURST``:
``COUNT`` envelopes of one small message each from origin ``ghost``, numbered
per topic, to topics ``t.0`` .. ``t.<TOPICS-1>`` in bursts of ``BURST`` to one
topic before the next; prints ``done`` once the broker has them all.
"""

from __future__ import annotations

import asyncio
import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "src"))

import nats

from ipc_server.backplane.subjects import Subjects
from ipc_server.backplane.wire import Envelopes


async def flood(url: str, namespace: str, topics: int, count: int, burst: int) -> None:
    raw = await nats.connect(url, no_echo=True, pending_size=64 << 20)
    subjects = Subjects(namespace, "unknown")
    names = [subjects.topic(f"t.{n}") for n in range(topics)]
    ghost = Envelopes("ghost")
    body = [ghost.body("x")]
    numbers = [0] * topics
    for n in range(count):
        which = n // burst % topics
        numbers[which] += 1
        await raw.publish(names[which], ghost.publish(1, numbers[which], body, False, 0))
    # nats-py's flush() puts its PING ahead of what its buffer still holds, and
    # close() may leave bytes unsent: the PONG proves the broker has it all
    # only once the buffer is empty (under load, 20,000 went missing that way).
    deadline = asyncio.get_running_loop().time() + 60
    while raw.pending_data_size:
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("the flood never left nats-py's buffer")
        await asyncio.sleep(0.01)
    await raw.flush(timeout=60)
    await raw.close()
    print("done", flush=True)


if __name__ == "__main__":
    url, namespace, *numbers = sys.argv[1:]
    topics, count, burst = (int(n) for n in numbers)
    asyncio.run(flood(url, namespace, topics, count, burst))
