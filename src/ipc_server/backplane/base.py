"""The backplane interface: what a server gives a backplane, and what a backplane does.

A backplane links the IPC servers of several hosts. The server keeps its
local work (delivery to its own connections, its own workers and surveys)
and tells the backplane which topics and services it has local takers for;
the backplane carries the rest across hosts and hands what arrives back to
the server through ``BackplaneHost``. ``NatsBackplane`` is the one
implementation; another broker can follow behind the same interface.
"""

from __future__ import annotations

import abc
import asyncio
from typing import Any, Protocol

__all__ = ["Backplane", "BackplaneHost"]


class BackplaneHost(Protocol):
    """What a server offers its backplane. Every method is called on the server's loop."""

    @property
    def server_id(self) -> str:
        """Unique per server instance, stable for its life."""
        ...

    def deliver_remote(self, topic: str, message: Any, origin: str) -> None:
        """A publish made on server ``origin``: deliver it to this server's
        local subscribers only (never publish it again)."""
        ...

    def deliver_group(self, topic: str, pattern: str, group: str, message: Any) -> None:
        """A publish that the broker gave this server's part of worker group
        ``group`` of ``pattern``: deliver it to one local member of that group
        (it may be this server's own publish: the broker chose among all members)."""
        ...

    def deliver_broadcast(self, message: Any, origin: str) -> None:
        """A cluster broadcast made on server ``origin``: send it to every local connection."""
        ...

    def backplane_event(self, kind: str, info: dict[str, Any]) -> None:
        """``"up"``, ``"down"`` or ``"gap"`` (``info``: ``origin``, ``topic``, ``missed``)."""
        ...

    async def remote_call(self, service: str, data: Any, timeout: float | None) -> Any:
        """A ``call()`` from another server to a service this server has local workers for."""
        ...

    async def remote_survey(self, data: Any, timeout: float | None) -> list[Any]:
        """This server's local survey answers (each a reply or an error
        description), for a cluster survey started on another server."""
        ...

    def report(self, exc: BaseException) -> None:
        """Something went wrong that concerns the application: the server's ``error`` event."""
        ...


class Backplane(abc.ABC):
    """A link between servers on several hosts.

    The server calls ``start`` in its own start, tells it about local
    interests and services as they come and go, hands it every publish after
    the local delivery, and calls ``close`` in its own close.
    """

    @abc.abstractmethod
    async def start(self, host: BackplaneHost) -> None:
        """Connect, or give up after the connect timeout and keep trying in the
        background (the backplane is then down: ``host.backplane_event("down", ...)``)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Leave the cluster; pending calls and surveys fail."""

    @abc.abstractmethod
    def publish(self, topic: str, message: Any, groups: bool = False) -> bool:
        """Send a publish to every other server's matching subscribers. Never
        blocks; what cannot be sent is counted or reported, never raised.

        With ``groups``, the broker also picks the member of each worker group
        (this server's own members included: it delivered to none of them);
        without, this server's own groups had the message already. Returns
        whether the message was queued to go (False: refused, and reported).
        """

    @abc.abstractmethod
    def broadcast(self, message: Any) -> None:
        """Send ``message`` to every other server's connections (as ``publish`` does)."""

    @abc.abstractmethod
    async def add_interest(self, pattern: str, group: str | None = None) -> bool:
        """This server has local subscribers for ``pattern`` (members of worker
        ``group``, if given); True once the broker has the interest (at once
        while the broker is down)."""

    async def add_interests(self, patterns: list[str], group: str | None = None) -> list[Any]:
        """``add_interest`` for each of ``patterns``: for each, its result or the
        exception it raised (``ValueError`` for a pattern that cannot be shared)."""
        return await asyncio.gather(
            *(self.add_interest(p, group) for p in patterns), return_exceptions=True
        )

    @abc.abstractmethod
    async def remove_interest(self, pattern: str, group: str | None = None) -> None:
        """This server no longer has local subscribers for ``pattern`` (in ``group``)."""

    async def remove_interests(self, patterns: list[str], group: str | None = None) -> None:
        """``remove_interest`` for each of ``patterns``."""
        for pattern in patterns:
            await self.remove_interest(pattern, group)

    @abc.abstractmethod
    async def add_service(self, name: str) -> None:
        """This server has local workers for service ``name``."""

    @abc.abstractmethod
    async def remove_service(self, name: str) -> None:
        """This server no longer has local workers for service ``name``."""

    @abc.abstractmethod
    async def call(self, service: str, data: Any, timeout: float | None) -> Any:
        """Call ``service`` on another server (this one has no local worker)."""

    @abc.abstractmethod
    async def survey(self, data: Any, timeout: float | None) -> list[tuple[str, Any]]:
        """``(server_id, answers or exception)`` for every other live member."""

    @abc.abstractmethod
    def members(self) -> list[str]:
        """The servers seen alive, this one first."""

    @property
    @abc.abstractmethod
    def is_up(self) -> bool:
        """Whether cross-host traffic flows now."""

    @abc.abstractmethod
    def stats(self) -> dict[str, int]:
        """Counters: ``published``, ``received``, ``dropped``, ``gaps``, ``reconnects``, ..."""
