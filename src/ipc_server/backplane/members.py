"""Who is in the cluster, by heartbeat, without I/O.

Every server publishes a heartbeat every ``heartbeat`` seconds, saying its
interval; another server counts it alive until ``EXPIRY`` intervals pass
without one, or until it says goodbye. A survey waits for exactly the servers
this table lists, never for a count of subscribers (which a broker reports
per connection, and which lags behind crashes).

A heartbeat is read as a peer's word, which need not be true: its interval
must be a positive finite number (one that is not is refused, never kept:
NaN would never expire) and is taken between 10 ms and an hour; and the
table holds at most ``MAX_MEMBERS`` servers besides this one, so a flood of
made-up server ids cannot grow it (past the bound, new ones are refused; the
members already known stay).

Silence is measured on the clock of what this server has read
(``ReadClock``), not the wall's: a server that falls behind the broker (a
burst it is still reading) has the heartbeats of the others still ahead of
it in that burst, and must not count them missing.
"""

from __future__ import annotations

import math

__all__ = ["BEHIND_AFTER", "EXPIRY", "MAX_MEMBERS", "Members", "ReadClock"]

EXPIRY = 3.0
"""A member is gone after this many of its own heartbeat intervals without one."""

MAX_MEMBERS = 1024
"""Other servers the table holds at most."""

BEHIND_AFTER = 2.0
"""Heartbeat intervals after the last of its own heartbeats that came back by
which a server counts itself behind the broker: one more than they are apart."""

ON_THE_WAY = 16
"""Own heartbeats whose sending time is kept until they come back."""


class Members:
    """The servers seen alive, each with the time its heartbeat expires.

    Args:
        own: This server's id, always a member (listed first).
    """

    def __init__(self, own: str) -> None:
        self.own = own
        self._expires: dict[str, float] = {}
        self._epochs: dict[str, int] = {}

    def beat(self, server: str, epoch: int, interval: float, now: float) -> str | None:
        """A heartbeat from ``server``: ``"new"`` for a server not seen alive,
        ``"changed"`` for one whose epoch changed (it renewed its broker
        connection, so what it held on the old one is gone), else None.

        Raises:
            ValueError: ``interval`` is not a positive finite number, or the
                table is full and ``server`` is not in it.
        """
        if server == self.own:
            return None
        if not 0.0 < interval < math.inf:  # NaN too
            raise ValueError(f"heartbeat interval {interval!r} is not a positive number")
        interval = min(max(interval, 0.01), 3600.0)
        known = self._epochs.get(server)
        if known is None and len(self._expires) >= MAX_MEMBERS:
            raise ValueError(
                f"the heartbeat of a new server was refused: {MAX_MEMBERS} other servers "
                "are members already"
            )
        self._expires[server] = now + EXPIRY * interval
        self._epochs[server] = epoch
        if known is None:
            return "new"
        return "changed" if known != epoch else None

    def leave(self, server: str) -> bool:
        """``server`` said goodbye; True if it was a member."""
        self._epochs.pop(server, None)
        return self._expires.pop(server, None) is not None

    def expire(self, now: float) -> list[str]:
        """Forget and return the members whose heartbeat is overdue."""
        gone = [server for server, at in self._expires.items() if at < now]
        for server in gone:
            del self._expires[server]
            self._epochs.pop(server, None)
        return gone

    def grace(self, until: float) -> None:
        """Count every member alive until ``until`` at least: this server could not
        hear heartbeats for a while (its broker connection was down)."""
        for server, at in self._expires.items():
            self._expires[server] = max(at, until)

    def others(self) -> list[str]:
        """The live members but this server, in the order they were first seen."""
        return list(self._expires)

    def all(self) -> list[str]:
        """This server, then the other live members."""
        return [self.own, *self._expires]

    def __contains__(self, server: object) -> bool:
        return server == self.own or server in self._expires


class ReadClock:
    """The time up to which this server has read what the broker had for it.

    A server's own heartbeats come back to it (it listens on their subject):
    one sent at ``t`` that comes back says everything the broker had for this
    server before ``t`` has been read. ``at(now)`` is ``now`` while they come
    back in time, and stops at ``BEHIND_AFTER`` intervals past the last one
    that did while they are late.

    Args:
        now: The time it starts from (nothing is behind yet).
        interval: This server's heartbeat interval.
    """

    def __init__(self, now: float, interval: float) -> None:
        self.interval = interval
        self._read = now
        self._sent: dict[int, float] = {}  # own heartbeats on their way: number -> when sent

    def sent(self, beat: int, now: float) -> None:
        """Own heartbeat number ``beat`` left at ``now``."""
        sent = self._sent
        sent[beat] = now
        if len(sent) > ON_THE_WAY:
            del sent[next(iter(sent))]

    def came_back(self, beat: int) -> None:
        """Own heartbeat number ``beat`` came back."""
        sent = self._sent
        at = sent.pop(beat, None)
        if at is not None:
            self._read = max(self._read, at)
            for older in [n for n in sent if n < beat]:  # lost on the way: never coming
                del sent[older]

    def restart(self, now: float) -> None:
        """A new broker connection: nothing is behind; what was on the way is gone."""
        self._read = now
        self._sent.clear()

    def at(self, now: float) -> float:
        """The time by which silence is judged: ``now``, unless behind."""
        return min(now, self._read + BEHIND_AFTER * self.interval)
