"""The Flask model inside handlers, as the implementation notes describe it."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask, g, request, session

from cluster import SocketIO, emit
from tests.apps import chat_app


@pytest.fixture()
def http() -> Any:
    return chat_app.app.test_client()


@pytest.fixture()
def client(http: Any) -> Any:
    http.get("/login/alice")
    client = chat_app.socketio.test_client(chat_app.app, flask_test_client=http,
                                           auth={"token": "t1"})
    yield client
    if client.is_connected():
        client.disconnect()


def test_app_and_request_context_are_pushed(client: Any) -> None:
    reply = client.emit("context", 1, "two", callback=True)["result"]
    assert reply["app_name"] == chat_app.app.name
    assert reply["g_marker"] == "set-in-handler"
    assert reply["namespace"] == "/"
    assert reply["event"] == {"message": "context", "args": [1, "two"]}
    # the request is the one that opened the connection
    assert reply["path"] == "/socket.io/"


def test_sid_is_unique_and_the_initial_room(client: Any, http: Any) -> None:
    welcome = client.get_received()[0]["args"][0]
    sid = welcome["sid"]
    assert sid in welcome["rooms"]
    other = chat_app.socketio.test_client(chat_app.app)
    try:
        other_sid = other.get_received()[0]["args"][0]["sid"]
        assert other_sid != sid
    finally:
        other.disconnect()
    assert client.emit("context", callback=True)["result"]["sid"] == sid


def test_g_is_fresh_for_every_handler(client: Any) -> None:
    client.emit("context", callback=True)
    assert client.emit("g_leak", callback=True) == {"marker": None}


def test_connect_handler_receives_auth(client: Any) -> None:
    welcome = client.get_received()[0]["args"][0]
    assert welcome["auth"] == {"token": "t1"}


def test_connect_without_auth_gets_none() -> None:
    client = chat_app.socketio.test_client(chat_app.app)
    try:
        assert client.get_received()[0]["args"][0]["auth"] is None
    finally:
        client.disconnect()


def test_returning_false_refuses_the_connection() -> None:
    client = chat_app.socketio.test_client(chat_app.app, auth={"refuse": "false"})
    assert not client.is_connected()
    assert client.connect_errors["/"]["message"]


def test_connection_refused_error_carries_its_data_to_the_client() -> None:
    client = chat_app.socketio.test_client(chat_app.app, auth={"refuse": "raise"})
    assert not client.is_connected()
    assert client.connect_errors["/"] == {
        "message": "go away", "data": {"reason": "refused by test"}}


def test_session_is_a_fork_of_the_http_session(client: Any, http: Any) -> None:
    welcome = client.get_received()[0]["args"][0]
    assert welcome["http_value"] == "from-http"
    client.emit("session_set", {"socket_value": 42}, callback=True)
    # later handlers of the connection see the change
    assert client.emit("session_get", "socket_value", callback=True) == {"value": 42}
    assert client.emit("session_get", "http_value", callback=True) == {"value": "from-http"}
    # HTTP routes never do
    assert http.get("/session").get_json() == {"http_value": "from-http"}


def test_http_changes_after_connect_are_not_seen_by_the_fork(client: Any, http: Any) -> None:
    http.get("/logout")
    assert client.emit("whoami", callback=True)["user"] == "Alice Liddell"


def test_two_connections_have_separate_forks(http: Any) -> None:
    http.get("/login/alice")
    first = chat_app.socketio.test_client(chat_app.app, flask_test_client=http)
    second = chat_app.socketio.test_client(chat_app.app, flask_test_client=http)
    try:
        first.emit("session_set", {"mine": "first"}, callback=True)
        assert second.emit("session_get", "mine", callback=True) == {"value": None}
        assert first.emit("session_get", "mine", callback=True) == {"value": "first"}
    finally:
        first.disconnect()
        second.disconnect()


def test_before_and_after_request_do_not_run_for_events(client: Any, http: Any) -> None:
    chat_app.hooks_seen.clear()
    client.emit("context", callback=True)
    client.emit("session_set", {"a": 1}, callback=True)
    assert chat_app.hooks_seen == []
    http.get("/node")
    assert chat_app.hooks_seen == ["before_request", "after_request"]


def test_custom_decorators_wrap_handlers(client: Any) -> None:
    assert client.emit("context", callback=True)["node"] == chat_app.NODE_NAME


def test_flask_login_current_user_in_handlers(client: Any) -> None:
    welcome = client.get_received()[0]["args"][0]
    assert welcome["user"] == "Alice Liddell"
    assert client.emit("whoami", callback=True) == {"user": "Alice Liddell",
                                                    "node": chat_app.NODE_NAME}


def test_authenticated_only_recipe_disconnects_anonymous_users() -> None:
    client = chat_app.socketio.test_client(chat_app.app)
    assert client.is_connected()
    client.emit("whoami")
    assert not client.is_connected()


def test_namespace_error_handler_answers_the_ack(client: Any) -> None:
    assert client.emit("boom", callback=True) == {"error": "ValueError", "scope": "/"}


def test_default_error_handler_covers_other_namespaces() -> None:
    client = chat_app.socketio.test_client(chat_app.app, namespace="/errors")
    try:
        assert client.emit("boom", namespace="/errors", callback=True) == {
            "error": "KeyError", "scope": "default"}
    finally:
        client.disconnect(namespace="/errors")


def test_send_and_message_handler(client: Any) -> None:
    client.get_received()
    client.send("hi there")
    received = client.get_received()
    assert received == [{"name": "message", "args": {"echo": "hi there"}, "namespace": "/"}]


def test_handler_without_error_handler_propagates() -> None:
    app = Flask(__name__)
    socketio = SocketIO(app)

    @socketio.on("fail")
    def fail() -> None:
        raise RuntimeError("no handler for this")

    client = socketio.test_client(app)
    with pytest.raises(RuntimeError, match="no handler for this"):
        client.emit("fail")


def test_manage_session_false_uses_the_app_session_each_event() -> None:
    app = Flask(__name__)
    app.secret_key = "k"
    socketio = SocketIO(app, manage_session=False)

    @socketio.on("read")
    def read() -> Any:
        return session.get("value")

    @app.route("/set/<value>")
    def set_value(value: str) -> str:
        session["value"] = value
        return "ok"

    http = app.test_client()
    http.get("/set/one")
    client = socketio.test_client(app, flask_test_client=http)
    assert client.emit("read", callback=True) == "one"


def test_connect_handler_without_parameters_is_supported() -> None:
    app = Flask(__name__)
    socketio = SocketIO(app)
    calls: list[str] = []

    @socketio.on("connect")
    def connect() -> None:
        calls.append(request.sid)
        emit("hello")

    client = socketio.test_client(app, auth={"ignored": True})
    assert client.is_connected()
    assert len(calls) == 1
    assert client.get_received()[0]["name"] == "hello"


def test_disconnect_handler_gets_the_reason() -> None:
    app = Flask(__name__)
    socketio = SocketIO(app)
    reasons: list[Any] = []

    @socketio.on("disconnect")
    def on_disconnect(reason: Any) -> None:
        reasons.append((reason, request.sid is not None, g is not None))

    client = socketio.test_client(app)
    client.disconnect()
    assert len(reasons) == 1
    assert reasons[0][1] is True
