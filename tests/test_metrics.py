"""ipc_server.metrics: a Prometheus exposition of ``server.stats()``, and ``serve --metrics-port``."""

from __future__ import annotations

import asyncio
import sys
import urllib.request

import pytest

from clikit import Running
from ipc_server import HandshakeError, IPCClient, IPCServer
from ipc_server.sync import IPCServer as SyncIPCServer

prometheus_client = pytest.importorskip("prometheus_client")

from ipc_server import metrics  # noqa: E402


def scrape(url: str) -> str:
    """The text of a metrics page."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text: str = response.read().decode()
    return text


def value(text: str, sample: str) -> float:
    """The value of one sample line (``name{labels}``) in the exposition text."""
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no sample {sample!r} in:\n{text}")


async def test_collector_follows_the_stats(path: str) -> None:
    """The collector reports connections, topics, packets by direction, refusals by reason."""
    server = IPCServer(path=path, max_connections=1)
    server.on("error", lambda error, connection: None)
    server.on("request", lambda request, respond, connection: respond(request))
    await server.start()
    client = await IPCClient(path=path).connect()
    try:
        await client.subscribe(["a", "b"])
        await client.request(1)
        other = IPCClient(path=path, reconnect=False)
        with pytest.raises(HandshakeError):  # refused: the server is full
            await other.connect()
        registry = prometheus_client.CollectorRegistry()
        registry.register(metrics.collector(server, labels={"name": "test"}))
        text = prometheus_client.generate_latest(registry).decode()
        assert value(text, 'ipc_server_connections{name="test"}') == 1
        assert value(text, 'ipc_server_topics{name="test"}') == 2
        assert value(text, 'ipc_server_subscriptions{name="test"}') == 2
        assert value(text, 'ipc_server_packets_total{direction="in",name="test"}') >= 3
        assert value(text, 'ipc_server_bytes_total{direction="out",name="test"}') > 0
        assert value(text, 'ipc_server_refused_total{name="test",reason="server full"}') == 1
        assert f'address="{path}"' in text
        assert "# TYPE ipc_server_queued_bytes gauge" in text
    finally:
        await client.close()
        await server.close()


async def test_http_server_reads_stats_on_the_loop(path: str) -> None:
    """start_http_server serves the metrics from its thread, reading stats on the server's loop."""
    server = IPCServer(path=path)
    await server.start()
    exposition = metrics.start_http_server(server, 0)
    client = await IPCClient(path=path).connect()
    try:
        assert exposition.url == f"http://127.0.0.1:{exposition.port}/metrics"
        text = await asyncio.to_thread(scrape, exposition.url)
        assert value(text, "ipc_server_connections") == 1
        assert "process_cpu_seconds_total" in text or sys.platform != "linux"
    finally:
        exposition.close()
        await client.close()
        await server.close()


def test_collector_over_the_blocking_server(path: str) -> None:
    """A blocking server's collector reads the stats of the asyncio server it runs."""
    with SyncIPCServer(path=path) as server:
        registry = prometheus_client.CollectorRegistry()
        registry.register(metrics.collector(server))
        text = prometheus_client.generate_latest(registry).decode()
        assert value(text, "ipc_server_connections") == 0
        assert value(text, "ipc_server_uptime_seconds") >= 0


def test_missing_prometheus_client_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without prometheus-client, the error says which extra to install."""
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ImportError, match=r"ipc-server\[metrics\]"):
        metrics.collector(object())


@pytest.mark.skipif(sys.platform == "win32", reason="Unix socket paths")
def test_serve_metrics_port(path: str) -> None:
    """`serve --metrics-port 0` logs its metrics URL and serves the server's stats there."""
    server = Running("serve", "--path", path, "--metrics-port", "0")
    try:
        server.wait_for("ready")
        url = server.wait_for("metrics")["url"]
        assert url.startswith("http://127.0.0.1:")
        text = scrape(url)
        assert value(text, "ipc_server_connections") == 0
        assert value(text, "ipc_server_handshaking") == 0
    finally:
        server.kill()
