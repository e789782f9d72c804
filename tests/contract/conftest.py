"""Fixtures of the contract suite: the server, and ``front``, run once per client implementation."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .adapters import FRONTS, Front
from .peer import Peer


@pytest.fixture
def server(path: str) -> Iterator[Peer]:
    """The blocking server on a short socket path, closed after the test."""
    peer = Peer(path)
    try:
        yield peer
    finally:
        peer.close()


@pytest.fixture(params=FRONTS)
def front(request: pytest.FixtureRequest, server: Peer) -> Iterator[Front]:
    """Makes clients of one front (asyncio, blocking) for ``server``; ends them afterwards."""
    made = Front(request.param, server.path)
    try:
        yield made
    finally:
        server.release()
        made.destroy_all()
        server.close()
        made.close()
