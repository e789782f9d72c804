"""The server's side of a backplane (docs/backplane.md): servers on several hosts as one.

``Clustering`` is a mixin of ``server.IPCServer``, as ``pubsub.PubSub`` and
``services.Services`` are. It is the ``backplane.BackplaneHost`` the server
hands its backplane: what arrives from other servers is delivered here to
this server's own connections, and calls and surveys from other servers run
here. It also tells the backplane which topics, worker groups and services
this server has local takers for, as they come and go.

Nothing here runs without a backplane: the hooks in the other mixins test
``self.backplane`` once and go on as before. With one, local delivery still
comes first and never waits on the broker; while the broker is up, the
broker picks the server of a worker group's member (the member is picked
here), so that a group spread over several servers gets each message once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

from .endpoint import Endpoint
from .errors import IPCError, NoRespondersError, RemoteError
from .events import Throttle, shorten
from .options import DEFAULT_TIMEOUT, check_timeout
from .packets import MESSAGE, delivery
from .services import ServiceRegistry
from .topics import TopicRegistry

if TYPE_CHECKING:
    from .backplane.base import Backplane

__all__ = ["Clustering", "Scope"]

logger = logging.getLogger("ipc_server.server")

C = TypeVar("C", bound=Endpoint)

Scope = Literal["local", "cluster"]
"""Whom ``broadcast`` and ``survey`` address: this server's connections, or every server's."""

_MARGIN = 0.25
"""Seconds a remote survey ends before its caller's timeout, so that its answers arrive in time."""


def check_scope(scope: str) -> bool:
    """Whether ``scope`` is ``"cluster"`` (else ``"local"``).

    Raises:
        ValueError: ``scope`` is neither.
    """
    if scope == "local":
        return False
    if scope == "cluster":
        return True
    raise ValueError(f"scope must be 'local' or 'cluster', not {scope!r}")


def _uncongested(conn: Endpoint) -> bool:
    return not conn.congested


def _error_text(exc: BaseException) -> list[Any]:
    if isinstance(exc, RemoteError):
        return [False, exc.type, exc.message]
    return [False, type(exc).__name__, str(exc)]


class Clustering(Generic[C]):
    """Topics, worker groups, services, broadcasts and surveys across hosts (a mixin)."""

    # Set by the server that inherits this (server.IPCServer, serveroptions.ServerOptions).
    backplane: Backplane | None
    _registry: TopicRegistry[C]
    _services: ServiceRegistry[C]
    _connections: dict[C, None]
    _server_id: str | None = None
    _sharing: set[asyncio.Task[None]] | None = None
    _backplane_closed = False
    _gap_log: Throttle | None = None

    if TYPE_CHECKING:

        def emit(self, event: str, *args: Any) -> bool: ...
        def _report_error(self, exc: BaseException, connection: C | None) -> None: ...
        def _write_all(self, conns: Any, t: int, data: Any) -> int: ...
        async def _call(self, name: str, data: Any, seconds: float | None) -> Any: ...

    # ------------------------------------------------------------------ BackplaneHost

    @property
    def server_id(self) -> str:
        """This server's name in the cluster: host, pid and a random part (unique per start)."""
        if self._server_id is None:
            host = socket.gethostname().split(".")[0] or "host"
            self._server_id = f"{host}-{os.getpid()}-{secrets.token_hex(3)}"
        return self._server_id

    def deliver_remote(self, topic: str, message: Any, origin: str) -> None:
        """A publish from server ``origin``: to this server's plain subscribers only."""
        conns = self._registry.subscribers(topic, _uncongested, groups=False)
        if conns:
            self._write_all(conns, MESSAGE, delivery(topic, message))

    def deliver_group(self, topic: str, pattern: str, group: str, message: Any) -> None:
        """A publish the broker gave this server's members of ``group``: to one of them."""
        member = self._registry.pick(pattern, group, _uncongested)
        if member is not None:
            self._write_all((member,), MESSAGE, delivery(topic, message))

    def deliver_broadcast(self, message: Any, origin: str) -> None:
        """A cluster broadcast from server ``origin``: to every connection here."""
        self._write_all(list(self._connections), MESSAGE, message)

    def backplane_event(self, kind: str, info: dict[str, Any]) -> None:
        """``"up"``, ``"down"`` or ``"gap"``: logged, and emitted as ``backplane(kind, info)``."""
        if kind == "gap":
            # Logged a few at a time (one per gap could be one per message, and any
            # publisher in the namespace can number its messages with holes).
            throttle = self._gap_log
            if throttle is None:
                throttle = self._gap_log = Throttle()
            held = throttle.allow()
            if held is not None:
                logger.warning(
                    "backplane: %d messages from server %s lost (topic %s)%s",
                    info.get("missed", 0),
                    shorten(info.get("origin")),
                    shorten(info.get("topic")),
                    f" [{held} similar lines held back]" if held else "",
                )
        else:
            logger.info("backplane %s: %s", kind, shorten(info, 300))
        self.emit("backplane", kind, info)

    async def remote_call(self, service: str, data: Any, timeout: float | None) -> Any:
        """A call from another server: to a local worker only (never across hosts again)."""
        if not self._services.workers(service):
            raise NoRespondersError(service)
        return await self._call(service, data, timeout)

    async def remote_survey(self, data: Any, timeout: float | None) -> list[Any]:
        """This server's answers for a cluster survey: ``[True, reply]`` or ``[False, type, text]``."""
        seconds = None if timeout is None else max(timeout / 2, timeout - _MARGIN)
        return [
            _error_text(reply) if isinstance(reply, BaseException) else [True, reply]
            for _, reply in await self._survey_here(data, seconds)
        ]

    def report(self, exc: BaseException) -> None:
        """A backplane's problem that concerns the application: the ``error`` event."""
        self._report_error(exc, None)

    # ------------------------------------------------------------------ what goes out

    def _deliver_clustered(self, topic: str, message: Any) -> int:
        """``PubSub._deliver`` with a backplane: local subscribers now, the rest queued."""
        backplane = self.backplane
        assert backplane is not None
        up = backplane.is_up
        # While the broker is up it picks among every server's group members
        # (this one's too); otherwise, and for a message that cannot cross,
        # this server's groups are served here.
        by_broker = backplane.publish(topic, message, up) and up
        conns = self._registry.subscribers(topic, _uncongested, groups=not by_broker)
        if not conns:
            return 0
        self._write_all(conns, MESSAGE, delivery(topic, message))
        return len(conns)

    def _broadcast_clustered(self, data: Any, scope: str) -> None:
        if check_scope(scope) and self.backplane is not None:
            self.backplane.broadcast(data)

    # ------------------------------------------------------------------ interests

    def _fresh(self, patterns: list[str], group: str | None) -> list[str]:
        """The ``patterns`` nobody here holds yet (in ``group``): the broker must learn them."""
        holds = self._registry.holds
        return [p for p in patterns if not holds(p, group)]

    def _share(self, patterns: list[str], group: str | None, done: Callable[[], object]) -> None:
        """Tell the backplane about new ``patterns``, then ``done()`` (the subscribe's answer)."""

        async def share() -> None:
            backplane = self.backplane
            try:
                if backplane is not None:
                    # At once: one confirmation from the broker covers them all.
                    added = await backplane.add_interests(patterns, group)
                    for result in added:
                        if isinstance(result, ValueError):  # too long a subject: local only
                            self._report_error(IPCError(f"not shared across hosts: {result}"), None)
                        elif isinstance(result, BaseException):
                            self._report_error(result, None)
            except Exception as exc:  # the subscribe is answered all the same
                self._report_error(exc, None)
            done()

        if self._backplane_closed:
            done()
            return
        self._spawn(share())

    def _unshare(self, patterns: list[str], group: str | None) -> None:
        """``patterns`` (in ``group``) may have lost their last subscriber here."""
        backplane = self.backplane
        if backplane is None:
            return
        holds = self._registry.holds
        gone = [pattern for pattern in patterns if not holds(pattern, group)]
        if gone:
            self._spawn(self._quietly(backplane.remove_interests(gone, group)))

    def _serve_clustered(self, name: str, done: Callable[[], object]) -> None:
        """A worker of ``name`` joined: the first one here makes this server a worker too;
        ``done()`` (the serve's answer) once the broker knows."""
        backplane = self.backplane
        if backplane is None or self._backplane_closed or len(self._services.workers(name)) != 1:
            done()
            return

        async def share() -> None:
            await self._quietly(backplane.add_service(name))
            done()

        self._spawn(share())

    def _unserve_clustered(self, name: str) -> None:
        backplane = self.backplane
        if backplane is not None and not self._services.workers(name):
            self._spawn(self._quietly(backplane.remove_service(name)))

    def forget_connection(self, conn: C) -> None:
        """``conn`` is gone: it leaves every subscription and service (and what only it
        held is withdrawn from the backplane). Called by the server's connections."""
        if self.backplane is None:
            self._registry.forget(conn)
            self._services.forget(conn)
            return
        keys = self._registry.keys_of(conn)
        names = self._services.served_by(conn)
        self._registry.forget(conn)
        self._services.forget(conn)
        for pattern, group in keys:
            self._unshare([pattern], group)
        for name in names:
            self._unserve_clustered(name)

    def _spawn(self, coro: Any) -> None:
        if self._backplane_closed:  # the server is closing: nothing more to tell the broker
            coro.close()
            return
        tasks = self._sharing
        if tasks is None:
            tasks = self._sharing = set()
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _quietly(self, coro: Any) -> None:
        try:
            await coro
        except Exception as exc:
            self._report_error(exc, None)

    # ------------------------------------------------------------------ lifecycle

    async def _start_backplane(self) -> None:
        backplane = self.backplane
        if backplane is not None:
            self._backplane_closed = False
            await backplane.start(self)

    async def _close_backplane(self) -> None:
        backplane = self.backplane
        if backplane is None:
            return
        self._backplane_closed = True
        await backplane.close()
        tasks = self._sharing
        if tasks:
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------ surveys

    async def _survey_here(self, data: Any, timeout: float | None) -> list[tuple[C, Any]]:
        conns = list(self._connections)
        results = await asyncio.gather(
            *(c.request(data, timeout) for c in conns), return_exceptions=True
        )
        return list(zip(conns, results, strict=False))

    @overload
    async def survey(
        self, data: Any, timeout: float | None = ..., *, scope: Literal["local"] = ...
    ) -> list[tuple[C, Any]]: ...
    @overload
    async def survey(
        self, data: Any, timeout: float | None = ..., *, scope: Literal["cluster"]
    ) -> list[tuple[C | str, Any]]: ...
    async def survey(
        self, data: Any, timeout: float | None = DEFAULT_TIMEOUT, *, scope: Scope = "local"
    ) -> list[tuple[Any, Any]]:
        """Request ``data`` from every connection at once.

        Returns ``[(connection, reply or exception)]`` in connect order; a
        connection that fails or times out has its exception in its slot.

        With ``scope="cluster"`` (and a backplane), every other server's
        connections too: after this server's slots, one slot per connection
        of each server, named by its ``server_id`` (a str) instead of a
        connection, a failed one's exception a ``RemoteError``. The servers
        awaited are those known by heartbeat: one that does not answer within
        ``timeout`` (or leaves meanwhile) fills one slot with a
        ``RequestTimeoutError`` naming it; while the broker is down each
        known server's slot holds a ``ConnectionClosedError``.
        """
        cluster = check_scope(scope)
        seconds = check_timeout(timeout)
        backplane = self.backplane
        if not cluster or backplane is None:
            return list(await self._survey_here(data, seconds))
        here, there = await asyncio.gather(
            self._survey_here(data, seconds), backplane.survey(data, seconds)
        )
        slots: list[tuple[Any, Any]] = list(here)
        for server, answers in there:
            if isinstance(answers, BaseException):
                slots.append((server, answers))
                continue
            for answer in answers:
                if isinstance(answer, list) and answer and answer[0] is True:
                    slots.append((server, answer[1] if len(answer) > 1 else None))
                elif isinstance(answer, list) and len(answer) >= 3:
                    slots.append((server, RemoteError(str(answer[1]), str(answer[2]))))
                else:
                    slots.append((server, RemoteError("ProtocolError", "malformed answer")))
        return slots
