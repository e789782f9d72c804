"""The bounded queue between the broker's reader and this server's delivery.

The NATS client's reader task hands every message it reads to ``put``, which
never blocks: past the bound the message is dropped and counted (and the
receivers see the hole as a gap). ``run`` delivers what is queued in
batches, yielding to the loop between them, so that a server busy with many
local clients never stalls the broker connection.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from .subscriptions import Sub

__all__ = ["Inbound"]

_BATCH = 256  # messages handled before yielding to the loop


class Inbound:
    """Messages from the broker waiting for delivery here.

    Args:
        limit: Messages queued at most.
        max_bytes: Bytes queued at most.
    """

    def __init__(self, limit: int, max_bytes: int) -> None:
        self.limit = limit
        self.max_bytes = max_bytes
        self.size = 0
        self.dropped = 0
        self._queue: deque[tuple[str, bytes, Sub | None]] = deque()
        self._wake = asyncio.Event()

    def __len__(self) -> int:
        return len(self._queue)

    def put(self, msg: Msg, sub: Sub | None) -> None:
        """Queue ``msg`` (that came by worker group subscription ``sub``, if any), or drop it."""
        data = msg.data
        if len(self._queue) >= self.limit or self.size > self.max_bytes:
            self.dropped += 1
            return
        self._queue.append((msg.subject, data, sub))
        self.size += len(data)
        self._wake.set()

    async def run(
        self,
        take: Callable[[str, bytes], None],
        take_group: Callable[[str, bytes, Sub], None],
    ) -> None:
        """Hand every queued message to ``take`` (or ``take_group``), for ever."""
        queue = self._queue
        while True:
            await self._wake.wait()
            self._wake.clear()
            handled = 0
            while queue:
                subject, data, sub = queue.popleft()
                self.size -= len(data)
                if sub is None:
                    take(subject, data)
                else:
                    take_group(subject, data, sub)
                handled += 1
                if handled >= _BATCH:
                    handled = 0
                    await asyncio.sleep(0)
