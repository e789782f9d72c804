"""The server's publish/subscribe (docs/protocol.md): answering pub/sub requests, fan-out.

``PubSub`` is a mixin of ``server.IPCServer``. It keeps no state of its own:
the subscriptions are the server's ``topics.TopicRegistry``, and a fan-out
writes through each connection's ``Endpoint.write_shared``, so that a
message is encoded once per codec.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Generic, TypeVar

from .endpoint import Endpoint
from .errors import IPCError
from .events import shorten
from .packets import MESSAGE, delivery, pubsub_reply, topic_list
from .topics import TopicRegistry, check_topic, publishable
from .writes import Responder

__all__ = ["PubSub"]

logger = logging.getLogger("ipc_server.server")

C = TypeVar("C", bound=Endpoint)


def _uncongested(conn: Endpoint) -> bool:
    """Whether a worker group may pick ``conn``: its output is not backed up."""
    return not conn.congested


class PubSub(Generic[C]):
    """Publish, subscribe and broadcast over a server's connections (a mixin)."""

    # Set by the server that inherits this (server.IPCServer).
    _registry: TopicRegistry[C]
    _connections: dict[C, None]

    def _report_error(self, exc: BaseException, connection: C | None) -> None:
        raise NotImplementedError

    def pubsub_request(self, conn: C, request: tuple[str, Any, Any], respond: Responder) -> None:
        """Answer a pub/sub request of ``conn`` (``packets.read_pubsub``): sub, unsub or pub.

        Called by the server's connections (``IPCConnection``); not for applications.
        """
        kind, named, extra = request
        if kind == "pub":
            if isinstance(named, str) and publishable(named):
                self._deliver(named, extra)
                respond(pubsub_reply(True))
            else:
                respond(pubsub_reply(False))  # not a topic, or a pattern
            return
        topics = topic_list(named)
        group = extra
        if topics is None or (group is not None and not (isinstance(group, str) and group)):
            respond(pubsub_reply(False))
            return
        if kind == "sub":
            refusal = self._registry.refusal(conn, topics, group)
            if refusal is not None:
                option, reason = refusal
                self._report_error(IPCError(f"subscription refused: {reason}", option=option), conn)
                respond(pubsub_reply(False))
                return
            self._registry.subscribe(conn, topics, group)
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "%s subscribed to %s%s",
                    shorten(getattr(conn, "id", conn)),
                    shorten(topics, 200),
                    "" if group is None else f" in group {shorten(group)}",
                )
            respond(pubsub_reply(True))
            return
        respond(pubsub_reply(self._registry.unsubscribe(conn, topics, group)))

    @property
    def topics(self) -> dict[str, list[C]]:
        """Each topic with at least one subscriber, and its subscribers."""
        return self._registry.snapshot()

    def _deliver(self, topic: str, message: Any) -> int:
        subscribers = self._registry.subscribers(topic, _uncongested)
        if not subscribers:
            return 0
        self._write_all(subscribers, MESSAGE, delivery(topic, message))
        return len(subscribers)

    def _write_all(self, conns: Iterable[C], t: int, data: Any) -> int:
        """Encode once per codec and write the same bytes to every connection."""
        encoded: dict[str, Any] = {}
        count = 0
        for conn in conns:
            if conn.write_shared(t, data, encoded):
                count += 1
        return count

    async def publish(self, topic: str, message: Any = None) -> int:
        """Send ``{"pub": topic, "message": message}`` to every subscriber of ``topic``.

        Every plain subscriber whose topic or pattern matches gets it once,
        and one member of each matching worker group. The message is encoded
        once per codec; no subscriber is awaited, so a slow one does not hold
        up the others. Returns how many got it.

        Raises:
            ValueError: ``topic`` has a wildcard token, or is not ``.``-separated tokens.
        """
        check_topic(topic)
        return self._deliver(topic, message)

    async def broadcast(self, data: Any) -> int:
        """Send a message to every connection; returns how many got it."""
        return self._write_all(list(self._connections), MESSAGE, data)
