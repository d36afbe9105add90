"""A minimal app for the benchmarks: a connect handler that does O(1) work.

``tests.apps.chat_app``'s connect handler calls ``rooms()``, which in
python-socketio scans every room of the namespace (one per connected sid),
so opening N connections against it costs O(N^2) in total. This app lets
``benchmarks.many_websockets --app benchmarks.idle_app:socketio`` measure
the node without that handler cost.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, request

from cluster import SocketIO, emit

app = Flask(__name__)
app.config["SECRET_KEY"] = os.environ.get("SECRET_KEY", "bench-secret-key")
socketio = SocketIO(app)


@socketio.on("connect")
def on_connect(auth: dict[str, Any] | None) -> None:
    emit("welcome", {"sid": request.sid})  # type: ignore[attr-defined]


@socketio.on("context")
def on_context(*args: Any) -> Any:
    return {"sid": request.sid, "namespace": request.namespace}  # type: ignore[attr-defined]


@socketio.on("to_sid")
def on_to_sid(data: dict[str, Any]) -> Any:
    emit("direct_message", {"from": request.sid,  # type: ignore[attr-defined]
                            "text": data["text"]}, to=data["sid"])
    return "ok"
