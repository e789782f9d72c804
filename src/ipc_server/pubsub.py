"""The server's publish/subscribe (docs/protocol.md): answering pub/sub requests, fan-out.

``PubSub`` is a mixin of ``server.IPCServer``. It keeps no state of its own:
the subscriptions are the server's ``topics.TopicRegistry``, and a fan-out
writes through each connection's ``Endpoint.write_shared``, so that a
message is encoded once per codec.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Generic, TypeVar

from .endpoint import Endpoint
from .errors import IPCError
from .packets import MESSAGE, delivery, pubsub_reply, topic_list
from .topics import TopicRegistry
from .writes import Responder

__all__ = ["PubSub"]

C = TypeVar("C", bound=Endpoint)


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
        kind, named, message = request
        if kind == "pub":
            if isinstance(named, str):
                self._deliver(named, message)
                respond(pubsub_reply(True))
            else:
                respond(pubsub_reply(False))
            return
        topics = topic_list(named)
        if kind == "sub":
            if topics is None:
                respond(pubsub_reply(False))
                return
            refusal = self._registry.refusal(conn, topics)
            if refusal is not None:
                option, reason = refusal
                self._report_error(IPCError(f"subscription refused: {reason}", option=option), conn)
                respond(pubsub_reply(False))
                return
            self._registry.subscribe(conn, topics)
            respond(pubsub_reply(True))
            return
        respond(pubsub_reply(self._registry.unsubscribe(conn, topics or [])))

    @property
    def topics(self) -> dict[str, list[C]]:
        """Each topic with at least one subscriber, and its subscribers."""
        return self._registry.snapshot()

    def _deliver(self, topic: str, message: Any) -> int:
        subscribers = self._registry.subscribers(topic)
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

        The message is encoded once per codec; no subscriber is awaited, so a
        slow one does not hold up the others. Returns how many got it.
        """
        if not isinstance(topic, str):
            raise TypeError(f"topic must be a str, not {type(topic).__name__}")
        return self._deliver(topic, message)

    async def broadcast(self, data: Any) -> int:
        """Send a message to every connection; returns how many got it."""
        return self._write_all(list(self._connections), MESSAGE, data)
