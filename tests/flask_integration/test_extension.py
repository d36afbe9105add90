"""The SocketIO extension's API surface, in process (threading mode)."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest
from flask import Flask, request

import cluster
from cluster import Namespace, SocketIO, emit, join_room, rooms, send
from cluster.exceptions import ConfigurationError, NotInHandlerError


def _app() -> Flask:
    app = Flask(__name__)
    app.secret_key = "k"
    return app


def test_public_names_match_flask_socketio() -> None:
    for name in ("SocketIO", "Namespace", "emit", "send", "join_room", "leave_room",
                 "close_room", "rooms", "disconnect", "ConnectionRefusedError", "Client"):
        assert name in cluster.__all__
        assert getattr(cluster, name) is not None
    assert sorted(cluster.__all__) == sorted(set(cluster.__all__))
    with pytest.raises(AttributeError):
        _ = cluster.no_such_name


def test_init_app_later_registers_handlers_declared_before() -> None:
    socketio = SocketIO()

    @socketio.on("ping")
    def ping() -> str:
        return "pong"

    @socketio.event
    def named_after_function() -> str:
        return request.event["message"]

    @socketio.event(namespace="/other")
    def other_event() -> str:
        return request.namespace

    app = _app()
    socketio.init_app(app)
    assert app.extensions["socketio"] is socketio
    client = socketio.test_client(app)
    assert client.emit("ping", callback=True) == "pong"
    assert client.emit("named_after_function", callback=True) == "named_after_function"
    client.connect(namespace="/other")
    assert client.emit("other_event", namespace="/other", callback=True) == "/other"


def test_on_event_without_decorator() -> None:
    app = _app()
    socketio = SocketIO(app)
    socketio.on_event("add", lambda a, b: a + b)
    client = socketio.test_client(app)
    assert client.emit("add", 2, 3, callback=True) == 5


def test_class_based_namespace() -> None:
    app = _app()
    socketio = SocketIO(app)

    class Chat(Namespace):
        def on_connect(self, auth: Any = None) -> None:
            self.emit("hello", {"sid": request.sid, "auth": auth})

        def on_join(self, room: str) -> list[str]:
            join_room(room)
            return sorted(rooms())

        def on_shout(self, text: str) -> None:
            self.emit("shout", text, room="loud")

    socketio.on_namespace(Chat("/chat"))
    client = socketio.test_client(app, namespace="/chat", auth={"k": 1})
    hello = client.get_received("/chat")[0]
    assert hello["name"] == "hello" and hello["args"][0]["auth"] == {"k": 1}
    sid = hello["args"][0]["sid"]
    assert client.emit("join", "loud", namespace="/chat", callback=True) == sorted(["loud", sid])
    client.emit("shout", "HEY", namespace="/chat")
    assert client.get_received("/chat") == [
        {"name": "shout", "args": ["HEY"], "namespace": "/chat"}]


def test_on_namespace_rejects_plain_python_socketio_namespaces() -> None:
    import socketio as python_socketio

    with pytest.raises(ConfigurationError, match="cluster.Namespace"):
        SocketIO(_app()).on_namespace(python_socketio.Namespace("/x"))


def test_emit_variants_from_the_extension() -> None:
    app = _app()
    socketio = SocketIO(app)
    client_a = socketio.test_client(app)
    client_b = socketio.test_client(app)

    @socketio.on("sid")
    def sid() -> str:
        return request.sid

    sid_b = client_b.emit("sid", callback=True)
    client_a.get_received()
    client_b.get_received()
    socketio.emit("all", 1, 2)
    assert client_a.get_received() == [{"name": "all", "args": [1, 2], "namespace": "/"}]
    socketio.emit("one", {"x": 1}, to=sid_b)
    assert client_a.get_received() == []
    assert client_b.get_received()[-1] == {"name": "one", "args": [{"x": 1}], "namespace": "/"}
    socketio.send("plain", to=sid_b)
    socketio.send({"j": 1}, json=True, to=sid_b)
    assert [e["name"] for e in client_b.get_received()] == ["message", "json"]


def test_context_functions_outside_a_handler_explain_themselves() -> None:
    app = _app()
    SocketIO(app)
    with app.app_context():
        with pytest.raises(NotInHandlerError, match="outside a Socket.IO event handler"):
            emit("x")
        with pytest.raises(NotInHandlerError):
            join_room("r")
        with pytest.raises(NotInHandlerError):
            send("m")


def test_write_only_emitter_needs_a_queue() -> None:
    with pytest.raises(ConfigurationError, match="message_queue"):
        SocketIO(write_only=True).init_app(None, write_only=True)


def test_options_are_validated_once_into_the_config_before_the_app_is_touched() -> None:
    app = _app()
    with pytest.raises(ConfigurationError, match="max_backlog must be a whole number"):
        SocketIO(app, max_backlog=10)
    assert "socketio" not in app.extensions
    socketio = SocketIO(app, channel="chat", max_rooms_per_connection=3, ping_interval=7)
    config = socketio.config
    assert config is not None and socketio.server.config is config
    assert config.bus.channel == "chat" and socketio.server.limits == config.limits
    assert socketio.server.eio.ping_interval == 7  # python-socketio's options pass through
    # Flask-SocketIO's attribute keeps the keyword arguments as given
    assert socketio.server_options["channel"] == "chat"


def test_cluster_registrations_reach_a_bus_joined_later() -> None:
    app = _app()
    socketio = SocketIO(app)
    with pytest.raises(ConfigurationError, match="needs a message queue"):
        _ = socketio.cluster
    handler_calls: list[Any] = []

    @socketio.on_cluster_event("refresh")
    def refresh(*args: Any) -> str:
        handler_calls.append(args)
        return "ok"

    @socketio.on_presence
    def presence_changed(event: str, room: str, namespace: str) -> None:
        pass

    socketio.use_message_queue("redis://127.0.0.1:1/0")
    assert socketio.cluster._handlers[("/", "refresh")] is refresh
    assert socketio.presence._callbacks == [presence_changed]
    # applied once per manager, however often registrations are re-applied
    socketio.cluster_registrations.apply(socketio._features())
    assert socketio.presence._callbacks == [presence_changed]


def test_binary_payloads_round_trip() -> None:
    app = _app()
    socketio = SocketIO(app)

    @socketio.on("echo")
    def echo(data: bytes) -> None:
        emit("echoed", data)

    client = socketio.test_client(app)
    client.emit("echo", b"\x00\x01binary")
    assert client.get_received() == [
        {"name": "echoed", "args": [b"\x00\x01binary"], "namespace": "/"}]


def test_rate_limit_drops_excess_events(monkeypatch: pytest.MonkeyPatch) -> None:
    app = _app()
    socketio = SocketIO(app, max_events_per_second=5)
    seen: list[int] = []
    socketio.on_event("tick", seen.append)
    client = socketio.test_client(app)
    # the limiter's clock stands still: on a loaded machine the 30 emits took
    # 0.8 s once, and the tokens that refilled meanwhile let 14 through
    from cluster.node import packet_budget
    frozen = time.monotonic()
    monkeypatch.setattr(packet_budget, "time", SimpleNamespace(monotonic=lambda: frozen))
    for index in range(30):
        client.emit("tick", index)
    assert len(seen) == 10  # the burst: twice the rate
    assert seen == list(range(10))
    assert socketio.server.counters["rate_limited_events"] == 20


def test_malformed_packets_are_counted_and_logged(caplog: Any) -> None:
    app = _app()
    socketio = SocketIO(app)
    client = socketio.test_client(app)
    for bad in ["2not json", "9", '2["only-event-name-missing"', "2[42]"]:
        socketio.server._handle_eio_message(client.eio_sid, bad)
    assert socketio.server.counters["malformed_packets"] == 4
    assert "Malformed Socket.IO packet" in caplog.text
