"""cluster.Client against a real in-process node (threading mode, Werkzeug,
long-polling, the memory session store): it keeps the pid the server
issued and sends it back when it reconnects."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import flask
import pytest
from werkzeug.serving import make_server

import cluster
from cluster import SocketIO
from tests.bus.loopback import wait_for


@pytest.fixture()
def node() -> Iterator[dict[str, Any]]:
    app = flask.Flask(__name__)
    app.secret_key = "k" * 32
    # a short ping interval: a long-polling client that disconnects waits
    # for its pending poll, which the server answers at the next ping
    socketio = SocketIO(app, session_store="memory", async_mode="threading",
                        ping_interval=1,
                        connection_state_recovery={"max_disconnection_duration": 60})
    seen: dict[str, Any] = {"auth": [], "resumed": []}

    @socketio.on("connect")
    def connect(auth: Any) -> None:
        seen["auth"].append(auth)
        seen["resumed"].append(getattr(flask.request, "resumed", None))

    @socketio.on("remember")
    def remember(value: Any) -> str:
        flask.session["value"] = value
        return "ok"

    @socketio.on("recall")
    def recall() -> Any:
        return flask.session.get("value")

    @socketio.on("burst")
    def burst(count: int) -> str:
        for n in range(count):
            socketio.emit("n", n, to=flask.request.sid)
        return "sent"

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    seen["url"] = f"http://127.0.0.1:{server.server_port}"
    seen["socketio"] = socketio
    try:
        yield seen
    finally:
        server.shutdown()
        thread.join(10)


def test_a_reconnect_sends_the_pid_and_resumes_the_session(node: dict[str, Any]) -> None:
    client = cluster.Client(reconnection=False)
    client.connect(node["url"], transports=["polling"], auth={"token": "t"}, wait_timeout=10)
    try:
        assert node["auth"] == [{"token": "t"}]  # nothing to resume yet
        first_pid = client.pid()
        assert isinstance(first_pid, str) and len(first_pid) >= 22
        assert client.offset() is None and client.recovered is False
        assert client.call("remember", "kept", timeout=10) == "ok"
        first_sid = client.get_sid()
        # the server ends it (as a draining node does): the session is
        # released there before the client reconnects
        node["socketio"].server.disconnect(first_sid)
        sessions = node["socketio"].sessions
        wait_for(lambda: not client.connected and not sessions.local)
    finally:
        if client.connected:
            client.disconnect()

    client.connect(node["url"], transports=["polling"], auth={"token": "t"}, wait_timeout=10)
    try:
        second = node["auth"][-1]
        assert second == {"pid": first_pid, "offset": None, "token": "t"}
        assert node["resumed"][-1] is True
        assert client.call("recall", timeout=10) == "kept"
        # with connection state recovery on the pid stays, as socket.io's
        assert client.pid() == first_pid
        # no logged stream (no Redis bus): a resume, not a recovery
        assert client.get_sid() != first_sid and client.recovered is False
        counters = node["socketio"].server.counters
        assert counters["recovery_failed"] == 1 and counters["recoveries"] == 0
    finally:
        client.disconnect()


def test_a_callable_auth_is_resolved_and_merged(node: dict[str, Any]) -> None:
    client = cluster.Client(reconnection=False)
    calls: list[int] = []

    def auth() -> dict[str, Any]:
        calls.append(1)
        return {"pid": "the application's own", "n": len(calls)}

    client.connect(node["url"], transports=["polling"], auth=auth, wait_timeout=10)
    node["socketio"].server.disconnect(client.get_sid())
    wait_for(lambda: not client.connected and not node["socketio"].sessions.local)
    issued = client.pid()
    assert issued is not None
    client.connect(node["url"], transports=["polling"], auth=auth, wait_timeout=10)
    try:
        # the first connect had no pid of its own to send; on the second the
        # application's key wins over the one cluster.Client adds
        assert node["auth"][0] == {"pid": "the application's own", "n": 1}
        assert node["auth"][1] == {"pid": "the application's own", "offset": None, "n": 2}
        assert node["resumed"][1] is False  # a pid nobody issued: a fresh session
    finally:
        client.disconnect()


def test_ordered_events_run_handlers_one_at_a_time_in_arrival_order(
        node: dict[str, Any]) -> None:
    client = cluster.Client(reconnection=False, ordered_events=True)
    got: list[int] = []

    @client.on("n")
    def on_n(n: int) -> None:
        if n == 0:
            time.sleep(0.3)  # a slow first handler: the others wait for it
        got.append(n)

    client.connect(node["url"], transports=["polling"], wait_timeout=10)
    try:
        assert client.call("burst", 5, timeout=10) == "sent"
        wait_for(lambda: len(got) == 5)
        assert got == [0, 1, 2, 3, 4]
    finally:
        client.disconnect()


def test_a_connect_without_wait_timeout_waits_as_long_as_the_last_one(
        node: dict[str, Any]) -> None:
    # python-socketio's reconnect calls connect() without a wait_timeout (so
    # it waited its default 1 s): cluster.Client then waits as long as the
    # caller's own connect did
    client = cluster.Client(reconnection=False)
    waits: list[Any] = []
    connect = cluster.compat.ClientSeam.connect

    def recording(self: Any, *args: Any, **kwargs: Any) -> None:
        waits.append(kwargs.get("wait_timeout"))
        connect(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cluster.compat.ClientSeam, "connect", recording)
        client.connect(node["url"], transports=["polling"], wait_timeout=7)
        client.disconnect()
        client.connect(node["url"], transports=["polling"])
        client.disconnect()
    assert waits == [7, 7] and client.reconnect_wait_timeout == 7
