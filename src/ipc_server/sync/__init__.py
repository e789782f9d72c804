"""The blocking API: ``IPCClient`` and ``IPCServer`` for code without asyncio.

Same names as the asyncio API, each call blocking, each with ``timeout=``
(seconds; ``0`` or ``None`` wait forever)::

    from ipc_server.sync import IPCClient

    with IPCClient(path="myapp") as client:
        reply = client.request({"cmd": "say"}, timeout=5)

**IPCClient** (``client.py``) has no event loop. It drives the sans-I/O core
over a non-blocking socket (``connection.py``), so a request costs what
``multiprocessing.connection`` costs: one ``send``, one ``poll``, one
``recv``, on the calling thread; whichever thread waits reads the socket
(``reader.py``, the leader/follower pattern). Listeners (``on``/``once``/
``off``: plain functions only) run one at a time on one library thread per
client, never on the reading path, so a slow listener does not delay
answers to other threads. Blocking calls may be made from a listener.
A worker's ``serve`` handlers run there too; ``stream()`` is an iterator
(``calls.py``).

**IPCServer** (``server.py``) is a thin wrapper over the asyncio
``ipc_server.IPCServer``, run on a private event loop thread.
"""

from __future__ import annotations

from ..clientcore import IPCClientStatus
from .calls import Stream
from .client import IPCClient, Subscription
from .server import IPCServer

__all__ = ("IPCClient", "IPCClientStatus", "IPCServer", "Stream", "Subscription")
