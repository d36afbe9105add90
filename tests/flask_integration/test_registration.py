"""The handler registry (cluster.flask_integration.registration) at its seam:
a fake server and runner, no Flask application."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from cluster import Namespace, SocketIO
from cluster.exceptions import ConfigurationError
from cluster.flask_integration.registration import HandlerRegistry


class FakeServer:
    def __init__(self) -> None:
        self.handlers: list[tuple[str, Any, str]] = []
        self.namespaces: list[Any] = []

    def on(self, event: str, handler: Any, namespace: str) -> None:
        self.handlers.append((event, handler, namespace))

    def register_namespace(self, namespace_handler: Any) -> None:
        self.namespaces.append(namespace_handler)


class FakeRunner:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def run(self, handler: Any, message: str, namespace: str, sid: str, *args: Any) -> Any:
        self.calls.append((message, namespace, sid, args))
        return handler(*args)


def _registry(server: FakeServer | None = None,
              extension: Any = None) -> tuple[HandlerRegistry, FakeRunner]:
    runner = FakeRunner()
    fake: Any = server
    return HandlerRegistry(lambda: fake, runner, extension), runner  # type: ignore[arg-type]


def test_handlers_registered_before_a_server_are_handed_to_it_later() -> None:
    registry, _ = _registry()

    @registry.on("ping", namespace="/chat")
    def ping() -> str:
        return "pong"

    namespace = Namespace("/ns")
    registry.on_namespace(namespace)
    server = FakeServer()
    registry.register_on(server)  # type: ignore[arg-type]
    assert [(event, ns) for event, _, ns in server.handlers] == [("ping", "/chat")]
    assert server.handlers[0][1].__wrapped__ is ping
    assert server.namespaces == [namespace]


def test_a_handler_registered_while_there_is_a_server_reaches_it_at_once() -> None:
    server = FakeServer()
    registry, runner = _registry(server)
    registry.on_event("add", lambda a, b: a + b)
    event, wrapped, namespace = server.handlers[0]
    assert (event, namespace) == ("add", "/")
    assert registry.handlers == server.handlers
    assert wrapped("sid1", 2, 3) == 5
    assert runner.calls == [("add", "/", "sid1", (2, 3))]


def test_catch_alls_get_the_real_event_and_namespace() -> None:
    server = FakeServer()
    registry, runner = _registry(server)
    registry.on_event("*", lambda event, data: (event, data), namespace="*")
    wrapped = server.handlers[0][1]
    assert wrapped("shout", "/chat", "sid1", "hi") == ("shout", "hi")
    assert runner.calls == [("*", "/chat", "sid1", ("shout", "hi"))]


def test_event_names_the_handler_after_the_function() -> None:
    registry, _ = _registry()

    @registry.event
    def hello() -> None: ...

    @registry.event(namespace="/x")  # type: ignore[untyped-decorator]
    def other() -> None: ...

    assert [(event, ns) for event, _, ns in registry.handlers] == [("hello", "/"), ("other", "/x")]


def test_on_namespace_binds_the_instance_to_the_extension() -> None:
    extension = object()
    registry, _ = _registry(extension=extension)
    namespace = Namespace("/chat")
    registry.on_namespace(namespace)
    assert namespace.socketio is extension
    assert registry.namespace_handlers == [namespace]
    with pytest.raises(ConfigurationError, match="cluster.Namespace"):
        registry.on_namespace(object())


def test_error_handlers_must_be_functions() -> None:
    registry, _ = _registry()

    @registry.on_error("/chat")
    def on_chat_error(exc: Exception) -> str:
        return "chat"

    registry.on_error_default(print)
    assert registry.exception_handlers == {"/chat": on_chat_error}
    assert registry.default_exception_handler is print
    with pytest.raises(ConfigurationError):
        registry.on_error()("not a function")  # type: ignore[type-var]
    with pytest.raises(ConfigurationError):
        registry.on_error_default("not a function")  # type: ignore[type-var]


def test_flask_socketio_attributes_read_and_assign_through_the_registry() -> None:
    app = Flask(__name__)
    app.secret_key = "k"
    socketio = SocketIO(app)

    @socketio.on("boom")
    def boom() -> None:
        raise ValueError("boom")

    assert [event for event, _, _ in socketio.handlers] == ["boom"]
    assert socketio.namespace_handlers == [] and socketio.exception_handlers == {}
    # assigned as a plain attribute, as Flask-SocketIO applications may
    socketio.default_exception_handler = lambda exc: f"handled {exc}"
    client = socketio.test_client(app)
    assert client.emit("boom", callback=True) == "handled boom"
    socketio.exception_handlers = {"/": lambda exc: "by namespace"}
    assert client.emit("boom", callback=True) == "by namespace"
