"""Servers on several hosts that share topics, services and surveys through a broker.

``NatsBackplane`` links servers through NATS; ``Backplane`` and
``BackplaneHost`` are the interface between a server and its backplane.
See ``docs/backplane.md``.
"""

from __future__ import annotations

from .base import Backplane, BackplaneHost
from .nats import NatsBackplane

__all__ = ("Backplane", "BackplaneHost", "NatsBackplane")
