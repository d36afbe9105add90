"""ClusterServer in process (threading mode, the test client, the memory
session store): the CONNECT steps, refusals, malformed packets, the rate
limit, the room cap, and the hooks bound to python-socketio's names."""

from __future__ import annotations

from typing import Any

import pytest
import socketio as python_socketio
from flask import Flask, request
from socketio import packet as sio_packet

from cluster import SocketIO, join_room
from cluster.exceptions import RoomLimitExceeded
from cluster.node.connecting import INVALID_NAMESPACE, legacy_connect_signature
from cluster.node.server import ClusterServer
from session_store.exceptions import SessionStoreUnavailable


def _app() -> Flask:
    app = Flask(__name__)
    app.secret_key = "k" * 32
    return app


def _replies(client: Any) -> list[Any]:
    """Record the packets the server sends ``client`` from now on."""
    server = client.socketio.server
    sink = server.test_sinks[client.eio_sid]
    seen: list[Any] = []

    def recording(encoded: Any) -> None:
        if isinstance(encoded, str):
            seen.append(server.packet_class(encoded_packet=encoded))
        sink(encoded)

    server.test_sinks[client.eio_sid] = recording
    return seen


def test_the_hot_path_hooks_are_the_servers_own_functions() -> None:
    # python-socketio calls _send_eio_packet once per recipient of a
    # broadcast: it must be ClusterServer's function, no wrapper around it
    assert ClusterServer._send_eio_packet is ClusterServer.__dict__["send_eio_packet"]
    assert ClusterServer._send_packet is ClusterServer.__dict__["send_packet"]
    assert ClusterServer._handle_eio_message is ClusterServer.__dict__["handle_eio_message"]
    assert ClusterServer._trigger_event is ClusterServer.__dict__["trigger_event"]
    assert issubclass(ClusterServer, python_socketio.Server)


def test_the_connect_reply_carries_the_resume_id_and_no_offsets_without_a_log() -> None:
    app = _app()
    socketio = SocketIO(app, session_store="memory",
                        connection_state_recovery={"max_disconnection_duration": 60})
    socketio.on("connect", namespace="/chat")(lambda auth: None)
    client = socketio.test_client(app)
    replies = _replies(client)
    client.connect(namespace="/chat")
    (reply,) = [p for p in replies if p.packet_type == sio_packet.CONNECT]
    environ = socketio.server.environ_of(client.eio_sid)
    assert reply.data["pid"] == socketio.sessions.resume_id(environ)
    assert reply.data["sid"] == socketio.server.manager.sid_from_eio_sid(client.eio_sid, "/chat")
    # events carry no offset: the bus logs nothing (no Redis)
    assert "offsets" not in reply.data
    assert socketio.server.recovering.marks_offsets() is False


def test_the_connect_reply_says_offsets_even_when_the_store_takes_no_session(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # a connection whose session the store could not take gets no pid, but
    # its events still end with their offset: without ``offsets`` in the
    # reply cluster.Client would hand that marker to the handlers
    app = _app()
    socketio = SocketIO(app, session_store="memory",
                        connection_state_recovery={"max_disconnection_duration": 60})
    monkeypatch.setattr(socketio.server.recovering, "marks_offsets", lambda: True)

    def store_down(*args: Any, **kwargs: Any) -> Any:
        raise SessionStoreUnavailable("redis is down")

    monkeypatch.setattr(socketio.sessions.store, "create_resumable", store_down)
    socketio.on("connect", namespace="/chat")(lambda auth: None)
    client = socketio.test_client(app)
    replies = _replies(client)
    client.connect(namespace="/chat")
    (reply,) = [p for p in replies if p.packet_type == sio_packet.CONNECT]
    assert "pid" not in reply.data
    assert reply.data["offsets"] is True


def test_an_unknown_namespace_is_refused_before_anything_is_bound() -> None:
    app = _app()
    socketio = SocketIO(app, session_store="memory")
    client = socketio.test_client(app)
    persisted = socketio.sessions.counters["persisted"]
    replies = _replies(client)
    client.connect(namespace="/nobody")
    assert client.connect_errors["/nobody"] == INVALID_NAMESPACE
    assert [p.packet_type for p in replies] == [sio_packet.CONNECT_ERROR]
    assert socketio.sessions.counters["persisted"] == persisted
    assert client.is_connected("/")  # the other namespace is untouched


def test_a_connect_handler_that_raises_binds_nothing() -> None:
    app = _app()
    socketio = SocketIO(app, session_store="memory")

    @socketio.on("connect")
    def connect(auth: Any) -> None:
        raise RuntimeError("secret detail")

    # the test client re-raises, as Flask-SocketIO's; nothing stays bound
    with pytest.raises(RuntimeError, match="secret detail"):
        socketio.test_client(app)
    assert socketio.sessions.local == {}
    assert socketio.sessions.counters["persisted"] == 0


def test_only_a_type_error_of_the_call_itself_is_a_legacy_signature() -> None:
    def handler(sid: str, environ: dict) -> None:
        pass

    try:
        handler("sid", {}, None)  # type: ignore[call-arg]
    except TypeError as exc:
        outer = exc
    assert legacy_connect_signature(outer, ("sid", {}, None))
    assert not legacy_connect_signature(outer, ("sid", {}, {"auth": 1}))  # auth given
    assert not legacy_connect_signature(ValueError("x"), ("sid", {}, None))

    def failing() -> None:
        def inner() -> None:
            raise TypeError("inside the handler")
        inner()

    try:
        failing()
    except TypeError as exc:
        deep = exc
    assert not legacy_connect_signature(deep, ("sid", {}, None))


def test_a_malformed_packet_is_counted_not_raised() -> None:
    app = _app()
    socketio = SocketIO(app)
    client = socketio.test_client(app)
    server = socketio.server
    for bad in ("2", '2["no such thing"', '5-["event"]'):  # EVENT with bad JSON, ...
        server.handle_eio_message(client.eio_sid, bad)
    assert server.counters["malformed_packets"] == 3
    assert server.counters["handler_errors"] == 0


def test_events_past_the_rate_limit_are_dropped_and_counted() -> None:
    app = _app()
    socketio = SocketIO(app, max_events_per_second=1)
    got: list[int] = []
    socketio.on("tick")(lambda n: got.append(n))
    client = socketio.test_client(app)
    for n in range(10):
        client.emit("tick", n)
    limited = socketio.server.counters["rate_limited_events"]
    assert 0 < len(got) < 10 and len(got) + limited == 10
    assert got == list(range(len(got)))  # the first ones went through


def test_the_room_cap_refuses_a_join_and_undoes_one_that_bypassed_it() -> None:
    app = _app()
    socketio = SocketIO(app, max_rooms_per_connection=2)
    socketio.on("join")(lambda room: join_room(room))
    sids: list[str] = []
    socketio.on("connect")(lambda auth: sids.append(request.sid))
    client = socketio.test_client(app)
    server = socketio.server
    (sid,) = sids
    server.enter_room(sid, "a")
    server.enter_room(sid, "b")
    server.enter_room(sid, "a")  # already in: nothing grows
    with pytest.raises(RoomLimitExceeded):
        server.enter_room(sid, "c")
    assert server.counters["room_limit_refusals"] == 1
    assert server.room_cap.beyond_cap(sid, "/", "c", joining=True)
    # a join past enter_room (the manager's own) is undone by the listener
    server.manager.enter_room(sid, "/", "d")
    server.room_cap.room_changed(sid, "/", "d", True)
    assert server.counters["room_limit_refusals"] == 2
    assert client.is_connected()


def test_a_closed_connection_is_forgotten_by_the_limits_and_the_hold() -> None:
    app = _app()
    socketio = SocketIO(app, max_events_per_second=5)
    socketio.on("tick")(lambda: None)
    client = socketio.test_client(app)
    server = socketio.server
    client.emit("tick")
    assert len(server.rate_limiter) == 1
    server.packet_hold.start(client.eio_sid)
    assert server.packet_hold.holding(client.eio_sid)
    eio_sid = client.eio_sid
    client.disconnect()
    assert not server.packet_hold.holding(eio_sid)
    assert len(server.rate_limiter) == 0
    assert server.environ_of(eio_sid) is None
    assert not server.deadlines.waiting(eio_sid)
