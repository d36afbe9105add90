"""An application serving every namespace (``namespaces='*'``), for the tests
of what each packet type may cost a node (tests/node/test_packet_budget.py).

Its connect and disconnect handlers count their runs and keep what they
were given (the client's ``auth``, the disconnect reason), and
``GET /handler_runs`` shows both, so a test can tell whether a client's
packet ran a handler. ``ping_ns`` answers with the namespace it ran in;
``ask_me`` asks the client a question (an ack the server waits for) and
answers with the client's reply.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify, request

from cluster import SocketIO

app = Flask(__name__)
app.config["SECRET_KEY"] = "packet-budget-test-secret"
socketio = SocketIO(app, namespaces="*")

runs = {"connect": 0, "disconnect": 0}
seen: dict[str, list[str]] = {"auth": [], "reasons": []}


@socketio.on("connect", namespace="*")
def on_connect(auth: Any = None) -> None:
    runs["connect"] += 1
    seen["auth"].append(repr(auth)[:100])


@socketio.on("disconnect", namespace="*")
def on_disconnect(reason: Any = None) -> None:
    runs["disconnect"] += 1
    seen["reasons"].append(repr(reason)[:100])


@socketio.on("ping_ns", namespace="*")
def on_ping_ns() -> Any:
    return request.namespace


@socketio.on("ask_me", namespace="*")
def on_ask_me(question: str) -> Any:
    return socketio.call("question", question, to=request.sid, namespace=request.namespace,
                         timeout=10)


@app.route("/handler_runs")
def handler_runs() -> Any:
    return jsonify(runs=runs, auth=seen["auth"][-50:], reasons=seen["reasons"][-50:])
