"""What arrives from the broker, on its way to this server's connections.

nats-py's reader hands each message to the pending queue of its
subscription, bounded by ``inbound_limit`` messages and ``inbound_bytes``
bytes (past them it drops and reports a slow consumer, counted here; the
receivers see the hole as a gap), so a busy server never stalls the broker
reader. Each subscription's task then calls its handler, which delivers
here at once: delivery only buffers (a slow client is the output layer's
business), so no further queue and no task hop are needed. Every ``BATCH``
messages the handler yields to the loop, so a burst from the broker cannot
keep the local clients waiting.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from .subscriptions import Sub

__all__ = ["BATCH", "Inbound"]

BATCH = 256
"""Messages delivered before the handler yields to the loop."""


class Inbound:
    """Hands each message from the broker on; tells when to yield.

    Args:
        take: Where a topic's (or a broadcast's) message goes.
        take_group: Where a worker group's message goes.
    """

    def __init__(
        self, take: Callable[[str, bytes], None], take_group: Callable[[str, bytes, Sub], None]
    ) -> None:
        self._take = take
        self._take_group = take_group
        self._count = 0

    def put(self, msg: Msg, sub: Sub | None) -> bool:
        """Deliver ``msg`` (that came by worker group subscription ``sub``, if any);
        True when the caller should yield to the loop now."""
        if sub is None:
            self._take(msg.subject, msg.data)
        else:
            self._take_group(msg.subject, msg.data, sub)
        self._count += 1
        if self._count >= BATCH:
            self._count = 0
            return True
        return False
