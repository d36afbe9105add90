"""cluster.runner.metrics: the node's figures as Prometheus samples.

In process: the extension in threading mode served by Werkzeug on a free
port, python-socketio's client over long-polling, and the scrape parsed
with prometheus-client's own parser.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import socketio as python_socketio
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.serving import make_server

from cluster import SocketIO, join_room
from cluster.runner.metrics import CONTENT_TYPE, render_metrics


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def _scrape(socketio: SocketIO) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return _samples(render_metrics(socketio.server, socketio.sessions,
                                   socketio.node_state).decode())


def _wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def _chat_app(**options: Any) -> tuple[Flask, SocketIO]:
    app = Flask(__name__)
    app.secret_key = "k"
    # a short ping interval: a long-polling client's disconnect waits for
    # the GET the server holds for up to that long
    options.setdefault("ping_interval", 1)
    socketio = SocketIO(app, async_mode="threading", **options)

    @socketio.on("join")
    def on_join(room: str) -> str:
        join_room(room)
        return room

    @socketio.on("echo")
    def on_echo(data: Any) -> Any:
        return data

    return app, socketio


@pytest.fixture
def served() -> Iterator[Callable[..., tuple[SocketIO, str]]]:
    servers: list[Any] = []

    def serve(**options: Any) -> tuple[SocketIO, str]:
        app, socketio = _chat_app(**options)
        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return socketio, f"http://127.0.0.1:{server.server_port}"

    yield serve
    for server in servers:
        server.shutdown()


def test_connections_rooms_and_readiness_of_a_live_node(served: Any) -> None:
    socketio, url = served()
    before = _scrape(socketio)
    assert before[("socketio_connections", ())] == 0
    assert before[("socketio_node_ready", ())] == 1
    client = python_socketio.Client(reconnection=False)
    client.connect(url, transports=["polling"], wait_timeout=10)
    try:
        connected = _scrape(socketio)
        assert connected[("socketio_connections", ())] == 1
        rooms = connected[("socketio_rooms", (("namespace", "/"),))]
        assert client.call("join", "lobby", timeout=10) == "lobby"
        assert _scrape(socketio)[("socketio_rooms", (("namespace", "/"),))] == rooms + 1
    finally:
        client.disconnect()
    socketio.node_state.draining = True
    assert _scrape(socketio)[("socketio_node_ready", ())] == 0


def test_server_counters_count_what_the_limits_dropped(served: Any) -> None:
    socketio, url = served(max_events_per_second=1)
    client = python_socketio.Client(reconnection=False)
    client.connect(url, transports=["polling"], wait_timeout=10)
    try:
        # a burst of twice the rate passes; the rest of a fast volley is dropped
        for index in range(6):
            client.emit("echo", index)
        _wait_until(lambda: _scrape(socketio)[
            ("socketio_server_events_total", (("kind", "rate_limited_events"),))] >= 3)
    finally:
        client.disconnect()
    figures = _scrape(socketio)
    assert figures[("socketio_server_events_total", (("kind", "malformed_packets"),))] == 0
    assert ("socketio_websocket_total", (("kind", "writes"),)) in figures
    assert ("socketio_websocket_total", (("kind", "held"),)) in figures


def test_session_counters_appear_with_a_session_store(served: Any) -> None:
    socketio, url = served(session_store="memory")
    client = python_socketio.Client(reconnection=False)
    client.connect(url, transports=["polling"], wait_timeout=10)
    try:
        assert client.call("echo", "x", timeout=10) == "x"
        session_kinds = {labels[0][1] for (name, labels), _ in _scrape(socketio).items()
                         if name == "socketio_sessions_total"}
    finally:
        client.disconnect()
    assert session_kinds  # the binding's counters, by kind
    assert set(socketio.sessions.counters) <= session_kinds
    # a node without a bus has no bus figures
    assert not any(name.startswith("socketio_bus") for name, _ in _scrape(socketio))


def test_a_node_with_a_bus_reports_its_figures(redis_url: str) -> None:
    _app, socketio = _chat_app(message_queue=redis_url)
    figures = _scrape(socketio)
    # not joined yet (the runner joins before serving): reported, not ready
    assert figures[("socketio_bus", (("kind", "ready"),))] == 0
    assert figures[("socketio_node_ready", ())] == 0


def test_the_content_type_is_prometheus_text() -> None:
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
