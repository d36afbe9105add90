"""The application of tests/bus/test_partial_refusal.py: recovery on, and
one event whose two emits leave in one publish batch, one unlogged and one
logged (issue 24, finding 4)."""
from __future__ import annotations

from typing import Any

from flask import Flask, request

from cluster import SocketIO, join_room

app = Flask(__name__)
app.config["SECRET_KEY"] = "refusal-test"
socketio = SocketIO(app, connection_state_recovery={"max_disconnection_duration": 60})


@socketio.on("join")
def on_join(room: str) -> str:
    join_room(room)
    return str(request.sid)


@socketio.on("burst")
def burst(data: dict[str, Any]) -> bool:
    # an emit that asks for an ack is published without logging (its answer
    # is awaited, never replayed): queued first, it does not wait ...
    socketio.server.emit("plain", data["n"], to=data["sid"], callback=lambda *_: None)
    # ... so this logged room emit joins it in the same batch, behind it
    socketio.server.emit("logged", data["n"], to=data["room"])
    return True
