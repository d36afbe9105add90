"""The application of the drop-in compatibility tests (issue 17) on real nodes.

- a singleton task ``ticker`` broadcasting ``tick`` every 0.2 s with the
  node's name and its fencing token;
- handlers that fail the way application code does (a ``KeyError`` in the
  connect handler, a ``ValueError`` in an event) with no error handler;
- ``echo``/``echo_acked``: emit the client's arguments back to it, plainly
  or asking for an ack, so a test can check that ``cluster.Client`` passes
  them to its handlers untouched (with recovery on: ``RECOVERY_WINDOW``).
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, request

from cluster import SocketIO, call, emit
from cluster.flask_integration.singleton_tasks import current_lease

NODE_NAME = os.environ.get("NODE_NAME", "node")

app = Flask(__name__)
app.config["SECRET_KEY"] = "compat-test-secret"
_recovery_window = os.environ.get("RECOVERY_WINDOW")
socketio = SocketIO(app, connection_state_recovery=(
    {"max_disconnection_duration": float(_recovery_window)} if _recovery_window else None))
acks: list[Any] = []


def ticker() -> None:
    lease = current_lease()
    count = 0
    while True:
        socketio.sleep(0.2)
        count += 1
        socketio.emit("tick", {"node": NODE_NAME, "n": count,
                               "token": lease.token if lease else None})


if os.environ.get("SINGLETON_TICKER"):
    socketio.start_singleton_task("ticker", ticker)


@socketio.on("connect")
def on_connect(auth: dict[str, Any] | None) -> None:
    if auth and auth.get("crash"):
        auth["missing key"]  # the application's own KeyError  # noqa: B018
    emit("welcome", {"node": NODE_NAME, "sid": request.sid})


@socketio.on("crash")
def on_crash(data: Any) -> str:
    raise ValueError(f"the handler failed on {data!r}")


@socketio.on("echo")
def on_echo(*args: Any) -> str:
    emit("echoed", *args)
    return "sent"


@socketio.on("echo_acked")
def on_echo_acked(*args: Any) -> str:
    emit("echoed_acked", *args, callback=lambda *answer: acks.append(answer))
    return "sent"


@socketio.on("ask_back")
def on_ask_back(question: str) -> Any:
    # Flask-SocketIO's module-level call(): to the sender, waiting for its ack
    return call("question", question, timeout=5)


@socketio.on("acks")
def on_acks() -> list[Any]:
    return [list(answer) for answer in acks]
