"""A Prometheus exposition of a server's ``stats()`` (the ``metrics`` extra: ``prometheus-client``).

``collector(server)`` is a ``prometheus_client`` collector: register it with
a registry (``prometheus_client.REGISTRY.register(collector(server))``) and
every scrape reads ``server.stats()`` afresh. ``start_http_server(server,
port)`` serves one on its own registry, with the process metrics, over HTTP
(127.0.0.1 unless told); ``ipc-server serve --metrics-port PORT`` does that.

The metrics (``prefix`` ``ipc_server`` by default; ``labels`` adds constant
labels, to tell several servers of one process apart)::

    ipc_server_info{address, pid}          1
    ipc_server_uptime_seconds              gauge
    ipc_server_connections                 gauge: admitted connections
    ipc_server_handshaking                 gauge: peers not yet admitted
    ipc_server_topics                      gauge: topics with a subscriber
    ipc_server_subscriptions               gauge: (connection, topic) pairs
    ipc_server_handlers                    gauge: request handlers running
    ipc_server_pending_requests            gauge: the server's requests awaiting answers
    ipc_server_queued_bytes                gauge: written, not yet taken by the OS
    ipc_server_packets_total{direction}    counter: "in" / "out"
    ipc_server_bytes_total{direction}      counter: bytes as on the wire
    ipc_server_refused_total{reason}       counter: peers turned away
    ipc_server_errors_total{kind}          counter: the option crossed, or the error type

Scrapes come on the HTTP server's thread, while the server's counters
belong to its event loop: the collector reads ``stats()`` on that loop
(``call_soon_threadsafe``), waiting ``timeout`` seconds at most.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector, CollectorRegistry

__all__ = ("MetricsServer", "collector", "start_http_server")

_MISSING = (
    "the Prometheus exposition needs prometheus-client: pip install 'ipc-server[metrics]' "
    "(or pip install prometheus-client)"
)


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:
        raise ImportError(_MISSING) from exc
    return prometheus_client


def _reader(server: Any, timeout: float) -> Any:
    """A function that returns ``server.stats()``, read on the loop that runs the server."""
    from .server import IPCServer, serving_loop

    aio = getattr(server, "aio", server)  # the blocking server wraps an asyncio one
    if not isinstance(aio, IPCServer):
        return server.stats

    def read() -> dict[str, Any]:
        loop = serving_loop(aio.address)
        if loop is None or loop.is_closed() or _on_thread_of(loop):
            return aio.stats()
        future: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()

        def call() -> None:
            try:
                future.set_result(aio.stats())
            except BaseException as exc:
                future.set_exception(exc)

        loop.call_soon_threadsafe(call)
        return future.result(timeout)

    return read


def _on_thread_of(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def collector(
    server: Any,
    *,
    prefix: str = "ipc_server",
    labels: Mapping[str, str] | None = None,
    timeout: float = 5.0,
) -> Collector:
    """A ``prometheus_client`` collector over ``server.stats()`` (asyncio or blocking server).

    Raises:
        ImportError: ``prometheus-client`` is not installed (the ``metrics`` extra).
    """
    _prometheus()
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        InfoMetricFamily,
    )
    from prometheus_client.registry import Collector as _Collector

    read = _reader(server, timeout)
    const = dict(labels or {})
    names = list(const)
    values = list(const.values())

    def gauge(name: str, doc: str, value: Any) -> Metric:
        family = GaugeMetricFamily(f"{prefix}_{name}", doc, labels=names)
        family.add_metric(values, float(value or 0))
        return family

    def counter(name: str, doc: str, label: str, counts: Iterable[tuple[str, Any]]) -> Metric:
        family = CounterMetricFamily(f"{prefix}_{name}", doc, labels=[*names, label])
        for key, value in counts:
            family.add_metric([*values, str(key)], float(value))
        return family

    class StatsCollector(_Collector):
        def collect(self) -> Iterator[Metric]:
            stats = read()
            info = InfoMetricFamily(prefix, "The server's address and process.", labels=names)
            info.add_metric(values, {"address": str(stats["address"]), "pid": str(stats["pid"])})
            yield info
            yield gauge("uptime_seconds", "Seconds since the server started.", stats["uptime"])
            yield gauge("connections", "Admitted connections.", stats["connections"])
            yield gauge(
                "handshaking", "Peers connected but not yet admitted.", stats["handshaking"]
            )
            yield gauge("topics", "Topics with at least one subscriber.", stats["topics"])
            yield gauge(
                "subscriptions", "(connection, topic) subscriptions.", stats["subscriptions"]
            )
            yield gauge("handlers", "Request handlers running.", stats["handlers"])
            yield gauge(
                "pending_requests",
                "The server's own requests waiting for an answer.",
                stats["pending"],
            )
            yield gauge(
                "queued_bytes", "Bytes written but not yet taken by the OS.", stats["queued"]
            )
            yield counter(
                "packets",
                "Packets received (in) and sent (out).",
                "direction",
                [("in", stats["packets_in"]), ("out", stats["packets_out"])],
            )
            yield counter(
                "bytes",
                "Bytes received (in) and sent (out), as on the wire.",
                "direction",
                [("in", stats["bytes_in"]), ("out", stats["bytes_out"])],
            )
            yield counter(
                "refused", "Peers turned away, by reason.", "reason", stats["refused"].items()
            )
            yield counter(
                "errors",
                "Problems reported, by the option crossed or the error type.",
                "kind",
                stats["errors"].items(),
            )

        def describe(self) -> Iterator[Metric]:
            return iter(())  # names are not fixed up front: no registration-time scrape

    return StatsCollector()


class MetricsServer:
    """The HTTP server of ``start_http_server``: ``url`` to scrape, ``close()`` to stop."""

    def __init__(self, httpd: Any, thread: threading.Thread, host: str) -> None:
        self._httpd = httpd
        self._thread = thread
        self.host = host
        """The address it listens on."""
        self.port: int = httpd.server_port
        """The port it listens on (the real one when asked for port 0)."""

    @property
    def url(self) -> str:
        """Where the metrics are: ``http://HOST:PORT/metrics``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and wait for the thread (bounded)."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5.0)


def start_http_server(
    server: Any,
    port: int,
    *,
    host: str = "127.0.0.1",
    registry: CollectorRegistry | None = None,
    **options: Any,
) -> MetricsServer:
    """Serve ``server``'s metrics over HTTP at ``http://host:port/metrics`` (a thread).

    Without ``registry``, a new one with this server's collector and the
    process and platform collectors. ``options`` are passed to
    ``collector`` (``prefix``, ``labels``, ``timeout``).

    Raises:
        ImportError: ``prometheus-client`` is not installed (the ``metrics`` extra).
        OSError: The port cannot be bound.
    """
    prometheus = _prometheus()
    if registry is None:
        registry = prometheus.CollectorRegistry()
        prometheus.ProcessCollector(registry=registry)
        prometheus.PlatformCollector(registry=registry)
    registry.register(collector(server, **options))
    httpd, thread = prometheus.start_http_server(port, addr=host, registry=registry)
    return MetricsServer(httpd, thread, host)
