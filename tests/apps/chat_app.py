"""The application the node tests run: every Flask-SocketIO habit in one place.

Run by real node processes (``python -m cluster node --app
tests.apps.chat_app:socketio``) and by in-process unit tests through
``socketio.test_client``. The node's name (env ``NODE_NAME``) is reported in
replies so a test can tell which node handled an event.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from flask import Flask, current_app, g, jsonify, request, session
from flask_login import LoginManager, UserMixin, current_user, login_user, logout_user

from cluster import (
    ConnectionRefusedError,
    SocketIO,
    close_room,
    disconnect,
    emit,
    join_room,
    leave_room,
    rooms,
    send,
)

NODE_NAME = os.environ.get("NODE_NAME", "node")

app = Flask(__name__)
app.config["SECRET_KEY"] = os.environ.get("SECRET_KEY", "test-secret-key")
# RECOVERY_WINDOW turns connection state recovery on (tests of cluster.recovery.replay)
_recovery_window = os.environ.get("RECOVERY_WINDOW")
socketio = SocketIO(app, connection_state_recovery=(
    {"max_disconnection_duration": float(_recovery_window)} if _recovery_window else None))
login_manager = LoginManager(app)

USERS = {"alice": "Alice Liddell", "bob": "Bob Marley"}
# connect handlers running now, and the most at once (max_concurrent_connects)
CONNECTS_RUNNING = {"now": 0, "most": 0}
hooks_seen: list[str] = []


class User(UserMixin):
    def __init__(self, user_id: str) -> None:
        self.id = user_id
        self.name = USERS[user_id]


@login_manager.user_loader
def load_user(user_id: str) -> User | None:
    return User(user_id) if user_id in USERS else None


@app.before_request
def note_before_request() -> None:
    hooks_seen.append("before_request")


@app.after_request
def note_after_request(response: Any) -> Any:
    hooks_seen.append("after_request")
    return response


# -- HTTP routes -----------------------------------------------------------

@app.route("/login/<user_id>")
def login(user_id: str) -> Any:
    login_user(User(user_id))
    session["http_value"] = "from-http"
    return jsonify(ok=True)


@app.route("/logout")
def logout() -> Any:
    logout_user()
    return jsonify(ok=True)


@app.route("/session")
def show_session() -> Any:
    return jsonify({k: v for k, v in session.items() if not k.startswith("_")})


@app.route("/hooks")
def show_hooks() -> Any:
    return jsonify(hooks_seen)


@app.route("/connects-running")
def connects_running() -> Any:
    return jsonify(CONNECTS_RUNNING)


@app.route("/node")
def node_name() -> Any:
    return jsonify(node=NODE_NAME)


# -- Socket.IO handlers --------------------------------------------------

def authenticated_only(handler: Any) -> Any:
    """The recipe of the implementation notes: disconnect anonymous users."""

    @functools.wraps(handler)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if not current_user.is_authenticated:
            disconnect()
            return None
        return handler(*args, **kwargs)

    return wrapped


def tag_with_node(handler: Any) -> Any:
    """A custom decorator: every reply says which node produced it."""

    @functools.wraps(handler)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        result = handler(*args, **kwargs)
        return {"node": NODE_NAME, "result": result}

    return wrapped


@socketio.on("connect")
def on_connect(auth: dict[str, Any] | None) -> Any:
    if auth and auth.get("refuse") == "false":
        return False
    if auth and auth.get("linger"):  # a connect handler that waits on a slow service
        CONNECTS_RUNNING["now"] += 1
        CONNECTS_RUNNING["most"] = max(CONNECTS_RUNNING["most"], CONNECTS_RUNNING["now"])
        try:
            socketio.sleep(float(auth["linger"]))
        finally:
            CONNECTS_RUNNING["now"] -= 1
    if auth and auth.get("refuse") == "raise":
        raise ConnectionRefusedError("go away", {"reason": "refused by test"})
    emit("welcome", {
        "sid": request.sid,
        "node": NODE_NAME,
        "auth": auth,
        "user": current_user.name if current_user.is_authenticated else None,
        "http_value": session.get("http_value"),
        "rooms": rooms(),
        "resumed": request.resumed,
        "recovered": request.recovered,
    })
    return None


@socketio.on("disconnect")
def on_disconnect(reason: Any = None) -> None:
    g.disconnect_reason = reason


@socketio.on("context")
@tag_with_node
def on_context(*args: Any) -> Any:
    g.marker = "set-in-handler"
    return {
        "app_name": current_app.name,
        "g_marker": g.marker,
        "sid": request.sid,
        "namespace": request.namespace,
        "event": request.event,
        "path": request.path,
        "user_agent": request.headers.get("User-Agent", ""),
    }


@socketio.on("g_leak")
def on_g_leak() -> Any:
    # g is per handler call: a value set by an earlier event must be gone
    return {"marker": getattr(g, "marker", None)}


@socketio.on("session_set")
def on_session_set(data: dict[str, Any]) -> Any:
    for key, value in data.items():
        session[key] = value
    return sorted(k for k in session.keys() if not k.startswith("_"))


@socketio.on("session_get")
def on_session_get(key: str) -> Any:
    return {"value": session.get(key)}


@socketio.on("whoami")
@authenticated_only
def on_whoami() -> Any:
    return {"user": current_user.name, "node": NODE_NAME}


@socketio.on("join")
def on_join(room: str) -> Any:
    join_room(room)
    return {"node": NODE_NAME, "rooms": sorted(rooms())}


@socketio.on("leave")
def on_leave(room: str) -> Any:
    leave_room(room)
    return {"node": NODE_NAME, "rooms": sorted(rooms())}


@socketio.on("join_other")
def on_join_other(data: dict[str, str]) -> Any:
    join_room(data["room"], sid=data["sid"])
    return NODE_NAME


@socketio.on("to_room")
def on_to_room(data: dict[str, Any]) -> Any:
    emit("room_message", {"from": request.sid, "node": NODE_NAME, "text": data["text"]},
         to=data["room"], include_self=data.get("include_self", True))
    return NODE_NAME


@socketio.on("broadcast")
def on_broadcast(data: dict[str, Any]) -> Any:
    emit("broadcast_message", {"from": request.sid, "node": NODE_NAME, "text": data["text"]},
         broadcast=True, include_self=data.get("include_self", True))
    return NODE_NAME


@socketio.on("skip")
def on_skip(data: dict[str, Any]) -> Any:
    socketio.emit("skipped_message", {"text": data["text"]}, skip_sid=data["skip_sid"])
    return NODE_NAME


@socketio.on("to_sid")
def on_to_sid(data: dict[str, Any]) -> Any:
    emit("direct_message", {"from": request.sid, "text": data["text"]}, to=data["sid"])
    return NODE_NAME


@socketio.on("ask")
def on_ask(data: dict[str, Any]) -> Any:
    """Ask another client (maybe on another node) a question; return its ack."""
    answer = socketio.call("question", data["question"], to=data["sid"], timeout=10)
    return {"node": NODE_NAME, "answer": answer}


@socketio.on("ask_then_announce")
def on_ask_then_announce(data: dict[str, Any]) -> Any:
    """Ask a client a question; its ack callback (run by the bus listener
    when the client is on another node) announces the answer in a room."""
    def announce(answer: Any) -> None:
        socketio.emit("room_message", {"from": "ack", "node": NODE_NAME, "text": answer},
                      to=data["room"])

    socketio.emit("question", data["question"], to=data["sid"], callback=announce)
    return NODE_NAME


@socketio.on("close")
def on_close(room: str) -> Any:
    close_room(room)
    return NODE_NAME


@socketio.on("message")
def on_message(message: Any) -> None:
    send({"echo": message})


@socketio.on("boom")
def on_boom() -> Any:
    raise ValueError("boom in handler")


@socketio.on("boom", namespace="/errors")
def on_boom_errors() -> Any:
    raise KeyError("boom in /errors")


@socketio.on_error()
def on_default_namespace_error(exc: Exception) -> Any:
    return {"error": type(exc).__name__, "scope": "/"}


@socketio.on_error_default
def on_any_error(exc: Exception) -> Any:
    return {"error": type(exc).__name__, "scope": "default"}


@socketio.on("kick_me")
def on_kick_me() -> None:
    disconnect()


@socketio.on("slow_set")
def on_slow_set(data: dict[str, Any]) -> Any:
    """Sleep, then write the session: an in-flight handler when a node drains
    (it says ``slow_started`` first, so a test knows it is in flight)."""
    emit("slow_started", data["key"])
    socketio.sleep(float(data["seconds"]))
    session[data["key"]] = data["value"]
    return NODE_NAME
