"""ConnectionSessions in process (the test client, the memory session store):
bound, persisted once accepted, resumed with its rooms, released."""

from __future__ import annotations

from typing import Any

from flask import Flask, request, session

from cluster import SocketIO, join_room, rooms
from cluster.sessions.connection_sessions import ENVIRON_KEY, HOLDER_QUERY, ConnectionSessions
from cluster.sessions.resume import HOLDER_QUERY as RESUME_HOLDER_QUERY
from session_store import MemorySessionStore, ResumeResult, SessionStoreUnavailable


def _node(**options: Any) -> tuple[Flask, SocketIO, dict[str, Any]]:
    app = Flask(__name__)
    app.secret_key = "k" * 32
    options.setdefault("session_store", "memory")
    socketio = SocketIO(app, **options)
    seen: dict[str, Any] = {"resumed": [], "rooms": []}

    @socketio.on("connect")
    def connect(auth: Any) -> Any:
        if auth and auth.get("refuse"):
            return False
        seen["resumed"].append(request.resumed)  # type: ignore[attr-defined]
        seen["rooms"].append(sorted(rooms()))
        return None

    @socketio.on("set")
    def set_value(value: Any) -> str:
        session["value"] = value
        return "ok"

    @socketio.on("get")
    def get_value() -> Any:
        return session.get("value", "nothing")

    @socketio.on("join")
    def join(room: str) -> str:
        join_room(room)
        return "ok"

    return app, socketio, seen


def _pid(socketio: SocketIO, client: Any) -> str:
    environ = socketio.server.environ_of(client.eio_sid)
    pid = socketio.sessions.resume_id(environ)
    assert isinstance(pid, str)
    return pid


def _leave_kept_in_lobby(app: Flask, socketio: SocketIO) -> str:
    """A client that stores "kept", joins "lobby" and disconnects: its pid."""
    first = socketio.test_client(app)
    assert first.emit("set", "kept", callback=True) == "ok"
    assert first.emit("join", "lobby", callback=True) == "ok"
    pid = _pid(socketio, first)
    first.disconnect()
    return pid


def test_public_names_stay_importable() -> None:
    assert HOLDER_QUERY == RESUME_HOLDER_QUERY == "cluster:holds-session"
    assert ENVIRON_KEY == "cluster.connection_session"


def test_a_session_is_persisted_only_once_the_connection_is_accepted() -> None:
    app, socketio, _ = _node()
    sessions: ConnectionSessions = socketio.sessions
    refused = socketio.test_client(app, auth={"refuse": True})
    assert not refused.is_connected()
    assert sessions.counters["persisted"] == 0 and sessions.local == {}
    client = socketio.test_client(app)
    assert client.is_connected()
    assert sessions.counters["persisted"] == 1 and len(sessions.local) == 1
    (session_id,) = sessions.local
    assert sessions.holds(session_id)
    assert [sid for sid, _ in sessions.live_bindings()] == [session_id]


def test_a_resume_gets_the_session_and_its_rooms_back() -> None:
    app, socketio, seen = _node()
    sessions: ConnectionSessions = socketio.sessions
    pid = _leave_kept_in_lobby(app, socketio)
    assert sessions.local == {}  # released: its resume window has started

    second = socketio.test_client(app, auth={"pid": pid})
    assert seen["resumed"] == [False, True]
    assert "lobby" in seen["rooms"][-1]  # restored before the connect handler
    assert second.emit("get", callback=True) == "kept"
    assert sessions.counters["resumed"] == 1
    # single use (no connection state recovery): a new id was issued
    assert _pid(socketio, second) != pid


class AnswerLostOnce(MemorySessionStore):
    """Runs the first claim, then fails as if its answer had been lost on
    the way back (a broken connection to Redis, a failover)."""

    lost = 0

    def claim_resume(self, resume_id: object, identity: str | None,
                     claim_token: str | None = None) -> ResumeResult:
        result = super().claim_resume(resume_id, identity, claim_token)
        if not self.lost:
            self.lost += 1
            raise SessionStoreUnavailable("the claim's answer was lost")
        return result


def test_a_claim_whose_answer_was_lost_is_tried_again_and_granted() -> None:
    app, socketio, seen = _node(session_store=AnswerLostOnce())
    sessions: ConnectionSessions = socketio.sessions
    pid = _leave_kept_in_lobby(app, socketio)
    second = socketio.test_client(app, auth={"pid": pid})
    # the retry is the same claim: granted, not refused as a replay
    assert seen["resumed"] == [False, True] and "lobby" in seen["rooms"][-1]
    assert second.emit("get", callback=True) == "kept"
    assert sessions.counters["resume_claim_retries"] == 1
    assert sessions.counters["store_errors"] == 0


def test_a_spent_or_forged_resume_id_gets_a_fresh_session() -> None:
    app, socketio, seen = _node()
    sessions: ConnectionSessions = socketio.sessions
    first = socketio.test_client(app)
    first.emit("set", "owner's", callback=True)
    pid = _pid(socketio, first)
    first.disconnect()
    socketio.test_client(app, auth={"pid": pid}).disconnect()
    replayed = socketio.test_client(app, auth={"pid": pid})
    forged = socketio.test_client(app, auth={"pid": "A" * 32})
    assert seen["resumed"] == [False, True, False, False]
    assert replayed.emit("get", callback=True) == "nothing"
    assert forged.emit("get", callback=True) == "nothing"
    assert sessions.counters["resume_refused"] == 2


def test_a_session_held_by_a_live_connection_is_not_taken_over() -> None:
    app, socketio, seen = _node(connection_state_recovery=True)
    sessions: ConnectionSessions = socketio.sessions
    holder = socketio.test_client(app)
    holder.emit("set", "mine", callback=True)
    pid = _pid(socketio, holder)
    thief = socketio.test_client(app, auth={"pid": pid})
    assert seen["resumed"] == [False, False]
    assert sessions.counters["resume_in_use"] == 1
    assert thief.emit("get", callback=True) == "nothing"
    assert holder.emit("get", callback=True) == "mine"
    # the holder's id was put back: it still resumes once the holder is gone
    holder.disconnect()
    back = socketio.test_client(app, auth={"pid": pid})
    assert seen["resumed"][-1] is True and back.emit("get", callback=True) == "mine"


def test_a_resume_is_bound_to_the_identity_that_created_it() -> None:
    app, socketio, seen = _node(resume_identity=lambda auth: (auth or {}).get("user"))
    first = socketio.test_client(app, auth={"user": "alice"})
    first.emit("set", "alice's", callback=True)
    pid = _pid(socketio, first)
    first.disconnect()
    other = socketio.test_client(app, auth={"user": "mallory", "pid": pid})
    assert seen["resumed"][-1] is False
    assert other.emit("get", callback=True) == "nothing"


def test_with_recovery_the_session_records_no_start_without_a_log() -> None:
    app, socketio, _ = _node(connection_state_recovery=True)
    sessions: ConnectionSessions = socketio.sessions
    client = socketio.test_client(app)
    environ = socketio.server.environ_of(client.eio_sid)
    # no logged stream (no Redis): no start, so no replay from this session
    assert sessions.recovery_start(environ, "/") is None
    assert sessions.recovery_offset(environ, "/") is None
    assert sessions.saved_rooms(environ, "/") == []
    assert not sessions.is_recovered(environ) and not sessions.is_resumed(environ)
