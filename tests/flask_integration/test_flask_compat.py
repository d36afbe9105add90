"""Flask-SocketIO contracts a ported application relies on (issue 17), in
process with the test client: catch-alls, the test client's request and
errors, class-based error handlers, the public attributes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask, request, session

import cluster
from cluster import Namespace, SocketIO, emit
from cluster.bus import LocalManager


def _app() -> Flask:
    app = Flask(__name__)
    app.secret_key = "k"
    return app


def test_test_client_request_args_hold_only_the_query_string_given() -> None:
    app = _app()
    socketio = SocketIO(app)
    seen: list[Any] = []

    @socketio.on("connect")
    def connect() -> None:
        seen.append(request.args.to_dict(flat=False))

    socketio.test_client(app)
    socketio.test_client(app, query_string="?a=1&b=2")
    assert seen == [{}, {"a": ["1"], "b": ["2"]}]


def test_catch_all_event_gets_event_and_data_with_the_clients_context() -> None:
    app = _app()
    socketio = SocketIO(app)
    calls: list[Any] = []

    @socketio.on("connect")
    def connect() -> None:
        session["who"] = request.sid

    @socketio.on("*")
    def catch_all(event: str, data: Any) -> str:
        calls.append((event, data, request.sid, session.get("who"), request.namespace,
                      request.event))
        emit("caught", [event, data])
        return "ok"

    client = socketio.test_client(app)
    sid = socketio.server.manager.sid_from_eio_sid(client.eio_sid, "/")
    assert client.emit("unknown_event", {"a": 1}, callback=True) == "ok"
    assert calls == [("unknown_event", {"a": 1}, sid, sid, "/",
                      {"message": "*", "args": ("unknown_event", {"a": 1})})]
    # the emit went to the sender, not to a room named after the event
    assert client.get_received() == [
        {"name": "caught", "args": [["unknown_event", {"a": 1}]], "namespace": "/"}]


def test_catch_all_namespace_handles_the_event_in_every_namespace() -> None:
    app = _app()
    socketio = SocketIO(app)
    seen: list[Any] = []

    @socketio.on("connect", namespace="/a")
    def connect_a() -> None:
        pass

    @socketio.on("ping", namespace="*")
    def ping(data: Any) -> None:
        seen.append((data, request.namespace, request.sid))
        emit("pong", data)

    @socketio.on("*", namespace="*")
    def anything(event: str, data: Any) -> None:
        seen.append((event, data, request.namespace))

    client = socketio.test_client(app, namespace="/a")
    sid = socketio.server.manager.sid_from_eio_sid(client.eio_sid, "/a")
    client.emit("ping", 1, namespace="/a")
    client.emit("other", 2, namespace="/a")
    assert seen == [(1, "/a", sid), ("other", 2, "/a")]
    assert client.get_received("/a") == [{"name": "pong", "args": [1], "namespace": "/a"}]


def test_class_based_catch_all_namespace_and_error_method() -> None:
    app = _app()
    socketio = SocketIO(app)

    class Everywhere(Namespace):
        def on_where(self) -> str:
            return request.namespace

        def on_fail(self) -> None:
            raise ZeroDivisionError

        def error(self, exc: Exception) -> str:
            return f"handled {type(exc).__name__}"

    socketio.on_namespace(Everywhere("*"))
    socketio.on_event("connect", lambda: None, namespace="/b")
    client = socketio.test_client(app, namespace="/b")
    assert client.emit("where", namespace="/b", callback=True) == "/b"
    assert client.emit("fail", namespace="/b", callback=True) == "handled ZeroDivisionError"


def test_forked_session_is_in_the_environ_as_saved_session() -> None:
    app = _app()
    socketio = SocketIO(app)

    @socketio.on("set")
    def set_value(value: str) -> None:
        session["value"] = value

    client = socketio.test_client(app)
    client.emit("set", "x")
    assert socketio.server.environ[client.eio_sid]["saved_session"] == {"value": "x"}


def test_test_client_raises_after_the_server_disconnected_it() -> None:
    app = _app()
    socketio = SocketIO(app)
    socketio.on_event("bye", lambda: cluster.disconnect())
    client = socketio.test_client(app)
    client.emit("bye")
    assert not client.is_connected()
    with pytest.raises(RuntimeError, match="not connected"):
        client.emit("bye")


def test_test_client_sees_the_handlers_exception() -> None:
    app = _app()
    socketio = SocketIO(app)
    socketio.on_event("bad", lambda: emit("x", {"not json": object()}))
    client = socketio.test_client(app)
    with pytest.raises(TypeError):
        client.emit("bad")
    assert socketio.server.counters["malformed_packets"] == 0


def test_unknown_namespace_gets_invalid_namespace() -> None:
    app = _app()
    socketio = SocketIO(app)
    client = socketio.test_client(app)
    client.connect(namespace="/nowhere")
    assert not client.is_connected("/nowhere")
    assert client.connect_errors["/nowhere"] == {"message": "Invalid namespace"}


def test_message_queue_options_expose_the_client_manager() -> None:
    socketio = SocketIO(_app(), message_queue="redis://127.0.0.1:1/0")
    assert socketio.server_options["client_manager"] is socketio.server.manager
    assert not socketio.server_options["client_manager"].write_only
    assert SocketIO(message_queue="redis://127.0.0.1:1/0").server_options[
        "client_manager"].write_only
    own = LocalManager()
    assert SocketIO(_app(), client_manager=own).server.manager is own
    later = SocketIO()
    later.init_app(_app())
    later.init_app(_app(), message_queue="redis://127.0.0.1:1/0")  # rebuilt, not reused
    assert later.server.manager.__class__ is not LocalManager


def test_public_attributes_and_call() -> None:
    app = _app()
    socketio = SocketIO(app, async_mode=None)
    assert socketio.async_mode == "threading"  # None chooses, as in Flask-SocketIO
    assert SocketIO.reason.CLIENT_DISCONNECT == "client disconnect"
    # call() needs async handlers, which the test client switches off: the
    # module function runs on a node in tests/cluster/test_dropin_nodes.py
    assert "call" in cluster.__all__ and callable(cluster.call)


def test_example_style_json_roundtrip() -> None:
    app = _app()
    socketio = SocketIO(app)
    socketio.on_event("echo", lambda data: json.dumps(data))
    client = socketio.test_client(app)
    assert client.emit("echo", {"a": [1, 2]}, callback=True) == '{"a": [1, 2]}'


def test_flask_socketio_module_names_port_too() -> None:
    from cluster.flask_integration.namespace import Namespace as FromModule
    from cluster.flask_integration.test_client import SocketIOTestClient

    assert FromModule is Namespace and SocketIOTestClient is cluster.SocketIOTestClient
    app = _app()
    socketio = SocketIO(app)
    client = socketio.test_client(app)
    assert SocketIOTestClient.clients[client.eio_sid] is client
    client.disconnect()
    assert client.eio_sid not in SocketIOTestClient.clients


def test_unhandled_class_based_event_is_acked_without_arguments() -> None:
    app = _app()
    socketio = SocketIO(app)
    socketio.on_namespace(Namespace("/c"))
    client = socketio.test_client(app, namespace="/c")
    # an ack with no arguments, as Flask-SocketIO sends (None: no ack at all)
    assert client.emit("nothing_here", namespace="/c", callback=True) == []


def test_a_legacy_python_socketio_connect_handler_is_still_retried_without_auth() -> None:
    app = _app()
    socketio = SocketIO(app)
    socketio.server.on("connect", lambda sid, environ: None)  # no auth parameter
    environ: dict[str, Any] = {}
    # python-socketio retries such a handler without auth on this TypeError;
    # a TypeError from inside a handler is the application's, reported instead
    with pytest.raises(TypeError):
        socketio.server._trigger_connect("/", None, "sid", environ, None)
    socketio.server.on("connect", lambda sid, environ, auth: {}["missing"])
    with pytest.raises(cluster.ConnectionRefusedError):
        socketio.server._trigger_connect("/", None, "sid", environ, None)
    assert socketio.server.counters["handler_errors"] == 1
