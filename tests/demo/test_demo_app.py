"""The demo is a Flask-SocketIO app with only its import changed, run as a user would:
two nodes behind HAProxy, a login over HTTP, then Socket.IO through the balancer."""

from __future__ import annotations

import ast
import queue
import tokenize
from pathlib import Path
from typing import Any

import requests
import socketio

DEMO = Path(__file__).resolve().parents[2] / "demo" / "app.py"
WAIT = 10


def test_only_the_import_differs_from_flask_socketio() -> None:
    code_lines = set()
    with DEMO.open("rb") as source:
        for token in tokenize.tokenize(source.readline):
            if token.type == tokenize.NAME and token.string == "cluster":
                code_lines.add(token.line.strip())
    # strings and comments may talk about the cluster; code names it once
    assert code_lines == {
        "from cluster import SocketIO, disconnect, emit, join_room, leave_room, rooms"}
    tree = ast.parse(DEMO.read_text())
    imported = [node.names for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module == "cluster"]
    # every name imported exists in Flask-SocketIO's API under the same name
    assert {alias.name for alias in imported[0]} <= {
        "SocketIO", "emit", "send", "join_room", "leave_room", "close_room", "rooms",
        "disconnect", "Namespace", "ConnectionRefusedError"}


def _logged_in(proxy_url: str, name: str) -> requests.Session:
    http = requests.Session()
    response = http.post(proxy_url + "/login", data={"name": name}, timeout=5)
    assert response.status_code == 200 and name in response.text
    return http


def _client(factory: Any, proxy_url: str, http: requests.Session) -> tuple[Any, "queue.Queue[Any]"]:
    events: "queue.Queue[Any]" = queue.Queue()
    client = factory(http_session=http)
    client.on("status", lambda data: events.put(("status", data)))
    client.on("chat", lambda data: events.put(("chat", data)))
    client.connect(proxy_url, auth={"client": "pytest"}, wait_timeout=WAIT)
    return client, events


def _next(events: "queue.Queue[Any]", kind: str) -> Any:
    while True:
        got_kind, data = events.get(timeout=WAIT)
        if got_kind == kind:
            return data


def test_ported_app_runs_on_two_nodes_behind_haproxy(node_factory: Any, haproxy_factory: Any,
                                                     sio_client_factory: Any) -> None:
    nodes = node_factory(app="demo.app:socketio", count=2)
    proxy = haproxy_factory(nodes)

    # anonymous connections are refused by the connect handler
    anonymous = sio_client_factory()
    try:
        anonymous.connect(proxy.url, wait_timeout=WAIT)
        refused = False
    except socketio.exceptions.ConnectionError:
        refused = True
    assert refused

    # two users until they sit on different nodes (the balancer's choice)
    alice_http = _logged_in(proxy.url, "alice")
    alice, alice_events = _client(sio_client_factory, proxy.url, alice_http)
    alice_status = _next(alice_events, "status")
    assert alice_status["text"] == "alice connected (pytest)"
    for attempt in range(6):
        bob_http = _logged_in(proxy.url, f"bob{attempt}")
        bob, bob_events = _client(sio_client_factory, proxy.url, bob_http)
        bob_status = _next(bob_events, "status")
        if bob_status["node"] != alice_status["node"]:
            break
        bob.disconnect()
    assert bob_status["node"] != alice_status["node"]

    assert alice.call("join", {"room": "lobby"}, timeout=WAIT) == {"rooms": ["lobby"]}
    bob.call("join", {"room": "lobby"}, timeout=WAIT)
    assert bob.call("say", {"text": "hi from bob", "room": "lobby"}, timeout=WAIT) == {"sent": 1}
    message = _next(alice_events, "chat")
    assert message["text"] == "hi from bob" and message["from"].startswith("bob")
    assert message["node"] == bob_status["node"]

    me = alice.call("whoami", timeout=WAIT)
    assert me["name"] == "alice" and me["client"] == "pytest" and me["rooms"] == ["lobby"]
    assert me["sid"] == alice.get_sid()
