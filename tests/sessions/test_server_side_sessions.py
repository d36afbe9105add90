"""manage_session=False with Flask-Session on a real Redis: HTTP changes reach handlers."""

from __future__ import annotations

from typing import Any

import redis
from flask import Flask, session
from flask_session import Session

from cluster import SocketIO


def _app(redis_url: str) -> tuple[Flask, SocketIO]:
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY="server-side",
        SESSION_TYPE="redis",
        SESSION_REDIS=redis.Redis.from_url(redis_url),
        SESSION_KEY_PREFIX="http-session:",
    )
    Session(app)
    socketio = SocketIO(app, manage_session=False)

    @app.route("/set/<value>")
    def set_value(value: str) -> str:
        session["color"] = value
        return "ok"

    @app.route("/get")
    def get_value() -> str:
        return str(session.get("color"))

    @socketio.on("read")
    def read() -> Any:
        return {"color": session.get("color")}

    @socketio.on("write")
    def write(value: str) -> Any:
        session["color"] = value
        return "ok"

    return app, socketio


def test_http_changes_after_connect_are_seen_by_handlers(redis_url: str) -> None:
    app, socketio = _app(redis_url)
    http = app.test_client()
    http.get("/set/red")
    client = socketio.test_client(app, flask_test_client=http)
    assert client.emit("read", callback=True) == {"color": "red"}
    http.get("/set/blue")
    # a forked session would still say red
    assert client.emit("read", callback=True) == {"color": "blue"}
    keys = redis.Redis.from_url(redis_url).keys("http-session:*")
    assert len(keys) == 1


def test_handler_changes_are_written_to_the_server_side_session(redis_url: str) -> None:
    app, socketio = _app(redis_url)
    http = app.test_client()
    http.get("/set/red")
    client = socketio.test_client(app, flask_test_client=http)
    assert client.emit("write", "green", callback=True) == "ok"
    assert http.get("/get").text == "green"
