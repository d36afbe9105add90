"""The demo is a Flask-SocketIO app with only its import changed, run as a user would:
two nodes behind HAProxy, a login over HTTP, then Socket.IO through the balancer."""

from __future__ import annotations

import ast
import base64
import functools
import hashlib
import queue
import secrets
import tokenize
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import socketio
from flask import Flask

from cluster.devtools.local_cluster import LocalCluster, ProcessStartError, free_port
from demo.client import CLIENT_ROUTE, add_client_route

DEMO = Path(__file__).resolve().parents[2] / "demo" / "app.py"
WAIT = 10
DEMO_ENV = {"SECRET_KEY": "tests-" + secrets.token_urlsafe(24)}


def test_only_the_import_differs_from_flask_socketio() -> None:
    code_lines = set()
    with DEMO.open("rb") as source:
        for token in tokenize.tokenize(source.readline):
            if token.type == tokenize.NAME and token.string == "cluster":
                code_lines.add(token.line.strip())
    # strings and comments may talk about the cluster; the chat's code names it
    # once, and the one handler that shows a cluster-wide query says so
    assert code_lines == {
        "from cluster import SocketIO, disconnect, emit, join_room, leave_room, rooms",
        "sockets = socketio.cluster.sockets(rooms=[room])"}
    source_text = DEMO.read_text()
    assert source_text.index("socketio.cluster.") > source_text.index("# -- what the cluster adds")
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


def _client(factory: Any, proxy_url: str, http: requests.Session) -> tuple[Any, queue.Queue[Any]]:
    events: queue.Queue[Any] = queue.Queue()
    client = factory(http_session=http)
    client.on("status", lambda data: events.put(("status", data)))
    client.on("chat", lambda data: events.put(("chat", data)))
    client.connect(proxy_url, auth={"client": "pytest"}, wait_timeout=WAIT)
    return client, events


def _put(events: queue.Queue[Any], kind: str, data: Any, *offset: Any) -> None:
    events.put((kind, data))  # with recovery on, an offset follows the data


def _next(events: queue.Queue[Any], kind: str) -> Any:
    while True:
        got_kind, data = events.get(timeout=WAIT)
        if got_kind == kind:
            return data


def test_ported_app_runs_on_two_nodes_behind_haproxy(node_factory: Any, haproxy_factory: Any,
                                                     sio_client_factory: Any) -> None:
    nodes = node_factory(app="demo.app:socketio", count=2, env=DEMO_ENV)
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


def test_the_demo_refuses_to_start_without_a_secret_key(node_factory: Any) -> None:
    # a well-known fallback key would let anyone forge a login cookie
    with pytest.raises(ProcessStartError) as refused:
        node_factory(app="demo.app:socketio", env={"SECRET_KEY": ""}, message_queue=None)
    assert "SECRET_KEY is not set" in str(refused.value)
    assert "export SECRET_KEY=" in str(refused.value)
    assert "change-me" not in DEMO.read_text()


def test_the_client_route_says_how_to_install_a_missing_client(tmp_path: Path) -> None:
    app = Flask(__name__)
    add_client_route(app, tmp_path / "socket.io.min.js")
    response = app.test_client().get(CLIENT_ROUTE)
    assert response.status_code == 503
    assert "./dev setup" in response.get_data(as_text=True)
    (tmp_path / "socket.io.min.js").write_text("/* the client */")
    response = app.test_client().get(CLIENT_ROUTE)
    assert response.status_code == 200 and response.mimetype == "text/javascript"
    assert response.get_data(as_text=True) == "/* the client */"


@pytest.fixture
def demo_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    env = {**DEMO_ENV, "CONNECTION_STATE_RECOVERY": "120",
           "CLUSTER_SIGNING_SECRET": secrets.token_urlsafe(24)}
    with LocalCluster("demo.app:socketio", nodes=2, port=free_port(), worker=True,
                      node_env=env, workdir=tmp_path / "cluster", start_timeout=40) as cluster:
        yield cluster


def test_protocol_online_presence_and_jobs_across_nodes(demo_cluster: LocalCluster,
                                                        sio_client_factory: Any) -> None:
    """The README's protocol, from python clients carrying their login cookie
    through the balancer with ``http_session=`` (polling only, the hard case)."""
    url = demo_cluster.url
    users = {}
    for name in ("alice", "bob"):
        for _ in range(8):
            http = _logged_in(url, name)
            events: queue.Queue[Any] = queue.Queue()
            client = sio_client_factory(http_session=http)
            for event in ("status", "presence", "job_progress", "job_result"):
                client.on(event, functools.partial(_put, events, event))
            client.connect(url, transports=["polling"], wait_timeout=WAIT)
            node = _next(events, "status")["node"]
            if name == "alice" or node != users["alice"][2]:
                break
            client.disconnect()
        users[name] = (client, events, node)
    (alice, alice_events, alice_node), (bob, bob_events, bob_node) = users.values()
    assert alice_node != bob_node

    assert alice.call("join", {"room": "lobby"}, timeout=WAIT) == {"rooms": ["lobby"]}
    assert bob.call("join", {"room": "lobby"}, timeout=WAIT) == {"rooms": ["lobby"]}
    # pushed to the room's members on the other node
    assert _next(alice_events, "presence") == {"room": "lobby", "name": "alice",
                                               "state": "joined"}
    assert _next(alice_events, "presence") == {"room": "lobby", "name": "bob", "state": "joined"}
    online = alice.call("online", {"room": "lobby"}, timeout=WAIT)
    assert online == {"room": "lobby", "members": [
        {"name": "alice", "sid": alice.get_sid(), "node": alice_node},
        {"name": "bob", "sid": bob.get_sid(), "node": bob_node}]}

    ack = alice.call("start_job", {"steps": 4}, timeout=WAIT)
    job_id = ack["job_id"]
    progress = [_next(alice_events, "job_progress") for _ in range(4)]
    assert progress == [{"job_id": job_id, "step": step, "steps": 4, "percent": 25 * step}
                        for step in range(1, 5)]
    assert _next(alice_events, "job_result")["job_id"] == job_id

    assert bob.call("leave", {"room": "lobby"}, timeout=WAIT) == {"rooms": []}
    assert _next(alice_events, "presence") == {"room": "lobby", "name": "bob", "state": "left"}
    seen_by_bob = []
    while not bob_events.empty():
        seen_by_bob.append(bob_events.get_nowait()[0])
    assert "job_progress" not in seen_by_bob and "job_result" not in seen_by_bob
    assert alice.call("online", {"room": "lobby"}, timeout=WAIT)["members"] == [
        {"name": "alice", "sid": alice.get_sid(), "node": alice_node}]
    assert alice.call("start_job", {"steps": "many"}, timeout=WAIT) == {
        "error": "steps must be a whole number"}


def test_the_image_build_takes_the_locked_client_and_checks_its_hash() -> None:
    from demo.fetch_client import FetchError, locked, verify

    lock = DEMO.parent / "js" / "package-lock.json"
    version, integrity = locked(lock)
    assert version.startswith("4.8.") and integrity.startswith("sha512-")
    with pytest.raises(FetchError, match="integrity mismatch"):
        verify(b"not the tarball", integrity)
    good = b"a tarball"
    verify(good, "sha512-" + base64.b64encode(hashlib.sha512(good).digest()).decode())


def test_a_reconnect_announces_presence_in_a_bounded_number_of_rooms(
        node_factory: Any, sio_client_factory: Any) -> None:
    # issue 24: a user in 300 rooms wrote 300 logged presence events per
    # connect and per disconnect; now a few rooms' worth, whatever it joined
    PRESENCE_ROOMS = 10  # the demo's (it cannot be imported without a SECRET_KEY)
    (node,) = node_factory(app="demo.app:socketio", count=1, env=DEMO_ENV)
    rooms = [f"r{n:02d}" for n in range(PRESENCE_ROOMS + 15)]
    alice, _ = _client(sio_client_factory, node.url, _logged_in(node.url, "alice"))
    for room in rooms:
        alice.call("join", {"room": room}, timeout=WAIT)
    presence: queue.Queue[Any] = queue.Queue()
    bob = sio_client_factory(http_session=_logged_in(node.url, "bob"))
    bob.on("presence", lambda data, *offset: presence.put(data))
    bob.connect(node.url, wait_timeout=WAIT)
    for room in rooms:
        bob.call("join", {"room": room}, timeout=WAIT)
    while not presence.empty():
        presence.get_nowait()  # bob's own joins
    alice.disconnect()
    left = [presence.get(timeout=WAIT) for _ in range(PRESENCE_ROOMS)]
    assert {(p["name"], p["state"]) for p in left} == {("alice", "left")}
    assert len({p["room"] for p in left}) == PRESENCE_ROOMS
    with pytest.raises(queue.Empty):  # and no more than that
        presence.get(timeout=1.5)
