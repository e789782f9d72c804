"""Who reads the blocking client's socket: the leader/follower pattern.

- A thread waiting for an answer reads the socket itself when nobody else
  does (it is the *reader*), and hands every packet it reads to whom it
  belongs: answers to the threads waiting for them, messages and requests
  from the server to the listener thread.
- Other waiting threads sleep on their own lock until their answer is
  handed to them, or until they are promoted to reader.
- A background thread reads when nobody waits, once the connection has
  been idle for a moment (``PUSH_GRACE`` when something listens to what the
  server pushes, ``IDLE_GRACE`` otherwise): an idle client still gets pushed
  messages at once, answers the server's pings and notices a close, while
  back-to-back calls never pay for a thread hop. A caller takes the reader
  role back from it without waiting.

``ReadRoles`` holds the roles of one connection; the connection that
inherits it says how to read (``pump``) and what to write afterwards
(``take_outbox`` / ``flush_outbox``). Every role change happens with the
connection's ``lock`` held (the client's lock, held briefly only).
"""

from __future__ import annotations

import select
import socket
import ssl as _ssl
import threading
import time
from collections.abc import Callable
from typing import Any, cast

__all__ = [
    "BG",
    "IDLE_GRACE",
    "PUSH_GRACE",
    "Background",
    "ReadRoles",
    "Waiter",
    "background",
    "poller",
]

IDLE_GRACE = 0.005
"""Seconds a connection must be idle before the background thread takes over reading."""

PUSH_GRACE = 0.001
"""The same, while something listens to what the server pushes (messages,
requests, topics): pushed packets wait at most this long at the end of a burst."""

_monotonic = time.monotonic


def poller(sock: socket.socket, write: bool) -> Callable[[float | None], bool]:
    """A function ``wait(timeout) -> ready`` for one socket and one direction.

    Each reader role (calling threads, the background thread, the writer) has
    its own: a ``select.poll`` object must not be polled by two threads at once.
    """
    if hasattr(select, "poll"):
        poll = select.poll()
        poll.register(sock.fileno(), select.POLLOUT if write else select.POLLIN)
        wait = poll.poll

        def poll_wait(timeout: float | None) -> bool:
            return bool(wait(None if timeout is None else timeout * 1000.0))

        return poll_wait

    def select_wait(timeout: float | None) -> bool:  # pragma: no cover - Windows
        if write:
            return bool(select.select([], [sock], [sock], timeout)[1])
        return bool(select.select([sock], [], [sock], timeout)[0])

    return select_wait


class Waiter:
    """One thread waiting for something the reader will hand it (an answer, a drain, the end)."""

    __slots__ = ("done", "error", "lock", "parked", "started", "value")

    def __init__(self, started: float = 0.0) -> None:
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None
        self.parked = False  # sleeping on ``lock`` (only changed with the connection's lock held)
        self.lock: threading.Lock | None = None  # made on first park: the fast path never sleeps
        self.started = started  # perf_counter() when a PING left


class Background:
    """The background reader's parking spot."""

    __slots__ = ("lock", "parked", "stop")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.parked = False
        self.stop = False

    def signal(self) -> None:
        """Wake the background thread if it sleeps (lock held)."""
        if self.parked:
            self.parked = False
            self.lock.release()


BG = Background()
"""The reader role "the background thread" (a placeholder, never parked itself)."""


class ReadRoles:
    """The reader role of one connection and the threads waiting on it."""

    def __init__(self, sock: socket.socket, lock: threading.Lock) -> None:
        self.sock = sock
        self.lock = lock
        # OpenSSL objects must not be used by two threads at once; plain sockets may.
        self.io_lock = threading.Lock() if isinstance(sock, _ssl.SSLSocket) else None
        self.reader: Waiter | Background | None = None
        self.parked: dict[Waiter, None] = {}  # waiters asleep, in arrival order
        self.bg_polling = False
        self.idle_since = _monotonic()
        self.fg_poll = poller(sock, False)
        self.bg_poll = poller(sock, False)
        self.dead = False
        self.sock_closed = False

    # ------------------------------------------------------------------ what the connection does

    def pump(self) -> None:
        """Read what the socket has, without blocking, and dispatch it (lock held)."""
        raise NotImplementedError

    def has_outbox(self) -> bool:
        """Whether packets wait to be written once the lock is released."""
        raise NotImplementedError

    def flush_outbox(self) -> None:
        """Write what waits (lock not held)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ waiting

    def complete(self, w: Waiter) -> None:
        """Mark ``w`` done and wake it if it sleeps (lock held)."""
        w.done = True
        if w.parked:
            w.parked = False
            del self.parked[w]
            assert w.lock is not None
            w.lock.release()

    def take_role(self, w: Waiter) -> bool:
        """Become the reader if nobody else reads (taking it from the background; lock held)."""
        reader = self.reader
        if reader is None or reader is BG:
            self.reader = w
            return True
        return False

    def wait(self, w: Waiter, deadline: float | None) -> bool:
        """Block until ``w`` is done (True) or ``deadline`` passes (False).

        The calling thread reads the socket itself when nobody else does
        (taking the role from the background thread), else sleeps until it is
        handed its answer or promoted to reader.
        """
        lock = self.lock
        while True:
            lock.acquire()
            if w.done or self.dead:  # a dead connection completed all its waiters
                lock.release()
                return w.done
            if self.take_role(w):
                lock.release()
                if self.lead(w, deadline):
                    return True
                if deadline is not None and _monotonic() >= deadline:
                    return False
                continue
            if deadline is None:
                remaining = -1.0
            else:
                remaining = deadline - _monotonic()
                if remaining <= 0:
                    lock.release()
                    return False
            sem = w.lock
            if sem is None:
                sem = w.lock = threading.Lock()
                sem.acquire()
            w.parked = True
            self.parked[w] = None
            lock.release()
            if not sem.acquire(True, remaining):
                with lock:
                    if w.parked:
                        w.parked = False
                        del self.parked[w]
                    else:
                        sem.acquire(False)  # woken just after the timeout: take the wake-up
            # Done, promoted, or timed out: the top of the loop tells which (a timed-out
            # waiter that was promoted passes the role on through lead/step_down).

    def lead(self, w: Waiter, deadline: float | None) -> bool:
        """As the reader: poll, recv and dispatch until ``w`` is done (True) or ``deadline``.

        Gives up the reader role before returning (see ``step_down``).
        """
        lock = self.lock
        poll = self.fg_poll
        io = self.io_lock
        try:
            while True:
                if deadline is None:
                    remaining = None
                else:
                    remaining = deadline - _monotonic()
                    if remaining <= 0:
                        break
                try:
                    ready = (io is not None and self._tls_pending(io)) or poll(remaining)
                except (OSError, ValueError):
                    ready = True  # let recv tell what happened
                with lock:
                    if ready and not self.dead:
                        self.pump()
                    finished = w.done or self.dead
                    flush = self.has_outbox()
                    if finished and not flush:
                        # The common exit: give up the role in this same hold of the lock.
                        if self.reader is w:
                            if self.parked or self.dead:
                                self.step_down()
                                self.release_sock()
                            else:
                                self.reader = None
                                self.idle_since = _monotonic()
                        return w.done
                if flush:
                    self.flush_outbox()
                if finished:
                    break
        finally:
            if self.reader is w:  # not given up yet: deadline, an answer to flush, an error
                with lock:
                    if self.reader is w:
                        self.step_down()
                    self.release_sock()
        return w.done

    def _tls_pending(self, io: threading.Lock) -> bool:
        """Whether decrypted bytes wait in the TLS layer (poll() cannot see them)."""
        with io:
            return cast(_ssl.SSLSocket, self.sock).pending() > 0

    def step_down(self) -> None:
        """Give up the reader role to a sleeping waiter, if there is one (lock held)."""
        self.reader = None
        parked = self.parked
        if parked:
            w = next(iter(parked))
            del parked[w]
            w.parked = False
            assert w.lock is not None
            w.lock.release()  # promoted: it takes the role at the top of its loop
            return
        # The background thread takes over once the connection has been idle for a
        # grace period: waking it now would cost a thread hop per call.
        self.idle_since = _monotonic()

    def release_sock(self) -> None:
        """Close the socket of a dead connection once no thread can be polling it (lock held).

        Not before: its descriptor number could be reused under a poller.
        """
        if self.dead and not self.sock_closed and self.reader is None and not self.bg_polling:
            self.sock_closed = True
            self.sock.close()


def background(
    bg: Background,
    lock: threading.Lock,
    current: Callable[[], ReadRoles | None],
    push_wanted: Callable[[], bool],
    held: Callable[[], bool],
) -> None:
    """The background reader's loop: reads the ``current()`` connection when no caller does.

    While ``held()`` (too many pushed messages wait for their listeners) it reads
    nothing until signalled; a caller waiting for an answer still reads.
    Ends once ``bg.stop`` is set (and ``bg`` signalled).
    """
    while True:
        lock.acquire()
        if bg.stop:
            lock.release()
            return
        conn = current()
        wait: float | None = None
        if conn is not None and not conn.dead and not held():
            reader = conn.reader
            grace = PUSH_GRACE if push_wanted() else IDLE_GRACE
            if reader is None:
                idle = _monotonic() - conn.idle_since
                if idle >= grace:
                    conn.reader = reader = BG
                else:
                    wait = grace - idle
            elif reader is not BG:
                wait = grace  # a caller reads; look again later
            if reader is BG:
                conn.bg_polling = True
                lock.release()
                try:
                    ready = conn.bg_poll(None)
                except (OSError, ValueError):
                    ready = True
                lock.acquire()
                conn.bg_polling = False
                if ready and conn.reader is BG and not conn.dead:
                    conn.pump()
                conn.release_sock()
                flush = conn.has_outbox()
                lock.release()
                if flush:
                    conn.flush_outbox()
                continue
        bg.parked = True
        lock.release()
        woke = bg.lock.acquire(True, -1.0 if wait is None else wait)
        if not woke:
            with lock:
                if bg.parked:
                    bg.parked = False
                else:
                    bg.lock.acquire(False)
