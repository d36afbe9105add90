"""A node app for the write-through tests (tests/sessions/test_write_through.py):
any namespace is accepted (``namespaces='*'``), connection state recovery is
on (so a resumed connection gets its sid back in each namespace), and there
is no ``on_error`` handler (an event whose session write fails gets no ack)."""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, session

from cluster import SocketIO

app = Flask(__name__)
app.config["SECRET_KEY"] = os.environ.get("SECRET_KEY", "test-secret-key")
socketio = SocketIO(app, namespaces="*",
                    connection_state_recovery={"max_disconnection_duration": 60})


@socketio.on("session_set")
def on_session_set(data: dict[str, Any]) -> Any:
    for key, value in data.items():
        session[key] = value
    return "saved"


@socketio.on("session_get")
def on_session_get(key: str) -> Any:
    return {"value": session.get(key)}
