"""Two real nodes on a real Redis bus, clients on different nodes, HAProxy in front."""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests
import socketio

from tests.harness.fixtures import BUS_SIGNING_SECRET
from tests.harness.peers import WAIT, Peer


@pytest.fixture()
def two_nodes(node_factory: Any) -> list[Any]:
    return node_factory(count=2)


def _connect(sio_client_factory: Any, node: Any, **kwargs: Any) -> Peer:
    return Peer(sio_client_factory, node.url, cls=socketio.Client, **kwargs)


def test_clients_land_on_the_nodes_they_target(
        two_nodes: list[Any], sio_client_factory: Any) -> None:
    first = _connect(sio_client_factory, two_nodes[0])
    second = _connect(sio_client_factory, two_nodes[1])
    assert first.welcome["node"] != second.welcome["node"]


def test_room_joined_on_one_node_receives_emit_from_the_other(
        two_nodes: list[Any], sio_client_factory: Any) -> None:
    member = _connect(sio_client_factory, two_nodes[0])
    sender = _connect(sio_client_factory, two_nodes[1])
    member.call("join", "lobby")
    sender.call("to_room", {"room": "lobby", "text": "hello lobby"})
    message = member.next("room_message")
    assert message["text"] == "hello lobby"
    assert message["node"] == sender.welcome["node"]
    # the sender is not in the room and hears nothing
    assert sender.none_of("room_message", wait=0.5)


def test_broadcast_reaches_every_node(two_nodes: list[Any], sio_client_factory: Any) -> None:
    clients = [_connect(sio_client_factory, node) for node in two_nodes + two_nodes]
    clients[0].call("broadcast", {"text": "everyone"})
    for client in clients:
        assert client.next("broadcast_message")["text"] == "everyone"


def test_include_self_false_skips_only_the_sender(
        two_nodes: list[Any], sio_client_factory: Any) -> None:
    sender = _connect(sio_client_factory, two_nodes[0])
    local_peer = _connect(sio_client_factory, two_nodes[0])
    remote_peer = _connect(sio_client_factory, two_nodes[1])
    sender.call("broadcast", {"text": "not me", "include_self": False})
    assert local_peer.next("broadcast_message")["text"] == "not me"
    assert remote_peer.next("broadcast_message")["text"] == "not me"
    assert sender.none_of("broadcast_message", wait=0.5)


def test_skip_sid_of_a_client_on_another_node(
        two_nodes: list[Any], sio_client_factory: Any) -> None:
    sender = _connect(sio_client_factory, two_nodes[0])
    skipped = _connect(sio_client_factory, two_nodes[1])
    other = _connect(sio_client_factory, two_nodes[1])
    sender.call("skip", {"text": "skip one", "skip_sid": skipped.sid})
    assert other.next("skipped_message")["text"] == "skip one"
    assert sender.next("skipped_message")["text"] == "skip one"
    assert skipped.none_of("skipped_message", wait=0.5)


def test_emit_to_a_sid_on_another_node(two_nodes: list[Any], sio_client_factory: Any) -> None:
    sender = _connect(sio_client_factory, two_nodes[0])
    target = _connect(sio_client_factory, two_nodes[1])
    sender.call("to_sid", {"sid": target.sid, "text": "direct"})
    assert target.next("direct_message") == {"from": sender.sid, "text": "direct"}


def test_ack_from_a_client_on_another_node(two_nodes: list[Any], sio_client_factory: Any) -> None:
    asker = _connect(sio_client_factory, two_nodes[0])
    answerer = _connect(sio_client_factory, two_nodes[1])
    reply = asker.call("ask", {"sid": answerer.sid, "question": "ping?"})
    assert reply == {"node": asker.welcome["node"], "answer": "answer to ping?"}
    assert answerer.answers == ["ping?"]


def test_join_room_of_a_sid_on_another_node(two_nodes: list[Any], sio_client_factory: Any) -> None:
    operator = _connect(sio_client_factory, two_nodes[0])
    target = _connect(sio_client_factory, two_nodes[1])
    operator.call("join_other", {"room": "vip", "sid": target.sid})
    operator.call("to_room", {"room": "vip", "text": "welcome vip"})
    assert target.next("room_message")["text"] == "welcome vip"


def test_close_room_empties_it_on_every_node(two_nodes: list[Any], sio_client_factory: Any) -> None:
    member = _connect(sio_client_factory, two_nodes[1])
    closer = _connect(sio_client_factory, two_nodes[0])
    member.call("join", "temp")
    closer.call("to_room", {"room": "temp", "text": "before"})
    assert member.next("room_message")["text"] == "before"
    closer.call("close", "temp")
    closer.call("to_room", {"room": "temp", "text": "after"})
    assert member.none_of("room_message", wait=1.0)


@pytest.mark.parametrize("transports", [["polling"], ["websocket"], ["polling", "websocket"]])
def test_transports_through_haproxy(two_nodes: list[Any], haproxy_factory: Any,
                                    sio_client_factory: Any, transports: list[str]) -> None:
    proxy = haproxy_factory(two_nodes)
    listener = _connect(sio_client_factory, two_nodes[1])
    listener.call("join", "proxied")
    client = Peer(sio_client_factory, proxy.url, cls=socketio.Client, transports=transports)
    assert client.call("join", "proxied")["rooms"] == sorted(["proxied", client.sid])
    client.call("to_room", {"room": "proxied", "text": "through haproxy"})
    assert listener.next("room_message")["text"] == "through haproxy"
    assert client.next("room_message")["text"] == "through haproxy"
    assert client.client.transport() == transports[-1]


def test_sticky_cookie_keeps_polling_on_one_node(
        two_nodes: list[Any], haproxy_factory: Any) -> None:
    proxy = haproxy_factory(two_nodes)
    session = requests.Session()
    nodes = {session.get(proxy.url + "/node", timeout=5).json()["node"] for _ in range(6)}
    assert len(nodes) == 1
    fresh = {requests.get(proxy.url + "/node", timeout=5).json()["node"] for _ in range(6)}
    assert len(fresh) == 2


def test_flask_socketio_style_external_emitter(two_nodes: list[Any], sio_client_factory: Any,
                                               redis_url: str) -> None:
    """``SocketIO(message_queue=URL)`` without an app emits from any process."""
    from cluster import SocketIO

    member = _connect(sio_client_factory, two_nodes[1])
    member.call("join", "from-outside")
    # with the nodes' signing secret, as a deployment's other processes have it
    external = SocketIO(message_queue=redis_url, signing_secret=BUS_SIGNING_SECRET)
    external.emit("room_message", {"text": "external", "node": "none", "from": None},
                  to="from-outside")
    assert member.next("room_message")["text"] == "external"
    external.server.disconnect(member.sid)  # a write-only disconnect works too
    deadline = time.monotonic() + WAIT
    while member.client.connected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not member.client.connected
