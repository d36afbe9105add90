"""Polling behind a round-robin HAProxy with no cookie: 3 real nodes forward
each session's requests to its owner (cluster.node.forwarding)."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
import socketio

from cluster import Client
from cluster.node.forwarding import FORWARDED_HEADER, ForwardSigner
from cluster.node.sid_owner import SidMinter
from tests.harness.fixtures import BUS_SIGNING_SECRET
from tests.harness.peers import Peer
from tests.harness.waiting import wait_for

PATH = "/socket.io/"


def counter(node: Any, kind: str) -> int:
    """One of the node's event counters, from its /metrics."""
    text = requests.get(f"{node.url}/metrics", timeout=5).text
    match = re.search(rf'socketio_server_events_total\{{kind="{kind}"\}} (\d+)', text)
    return int(match.group(1)) if match else 0


@pytest.fixture(params=["eventlet", "gevent"])
def cluster(request: pytest.FixtureRequest, node_factory: Any,
            haproxy_factory: Any) -> tuple[list[Any], Any]:
    """3 nodes on one runtime behind a round-robin HAProxy without a cookie."""
    nodes = node_factory(count=3, env={"CLUSTER_ASYNC_MODE": request.param})
    return nodes, haproxy_factory(nodes, sticky=False)


def open_session(url: str) -> str:
    """An Engine.IO polling session opened by hand; its sid."""
    reply = requests.get(f"{url}{PATH}", params={"EIO": "4", "transport": "polling"},
                         timeout=5)
    assert reply.status_code == 200, reply.text
    return str(re.search(r'"sid":"([^"]+)"', reply.text).group(1))  # type: ignore[union-attr]


def peers_on_every_node(proxy: Any, make: Callable[[], Peer], count: int = 6,
                        nodes: int = 3) -> list[Peer]:
    """At least ``count`` clients made by ``make``, with sessions on all
    ``nodes`` nodes (at most 12 clients).

    A polling client makes 3 requests before the next one's handshake when
    its polls do not interleave with another's, and round robin over 3
    nodes then puts every session on one node: one request between clients
    moves the round robin on by a node.
    """
    peers: list[Peer] = []
    while len(peers) < count or len({peer.welcome["node"] for peer in peers}) < nodes:
        assert len(peers) < 12, "round robin never spread the sessions over the nodes"
        if peers:
            open_session(proxy.url)
        peers.append(make())
    return peers


def test_polling_clients_chat_across_nodes_without_a_cookie(
        cluster: tuple[list[Any], Any], sio_client_factory: Any) -> None:
    nodes, proxy = cluster
    peers = peers_on_every_node(
        proxy, lambda: Peer(sio_client_factory, proxy.url, cls=socketio.Client,
                            transports=["polling"]))
    for peer in peers:
        peer.call("join", "lobby")
    for round_ in range(3):
        for index, peer in enumerate(peers):
            peer.call("to_room", {"room": "lobby", "text": f"{round_}-{index}"})
    for peer in peers:
        texts: set[str] = set()
        while len(texts) < 3 * len(peers):
            texts.add(peer.next("room_message")["text"])
    assert sum(counter(node, "forwarded_polls") for node in nodes) > 0
    assert not any(peer.disconnected.is_set() for peer in peers)


def test_polling_clients_resume_after_a_node_is_killed(
        cluster: tuple[list[Any], Any], sio_client_factory: Any) -> None:
    nodes, proxy = cluster
    peers = peers_on_every_node(
        proxy, lambda: Peer(sio_client_factory, proxy.url, cls=Client, transports=["polling"]))
    for peer in peers:
        peer.call("join", "lobby")
    victim = nodes[0]
    orphans = [p for p in peers if p.welcome["node"] == victim.name]
    assert orphans
    victim.kill(signal.SIGKILL)
    proxy.wait_for_state(victim.name, "DOWN", timeout=10)
    for peer in orphans:
        welcome = peer.next("welcome", timeout=20)
        assert welcome["node"] != victim.name
    # every client, moved or not, is in the room again and hears the others
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            for peer in peers:
                peer.call("join", "lobby")
            break
        except (socketio.exceptions.TimeoutError, socketio.exceptions.BadNamespaceError):
            time.sleep(0.2)
    peers[-1].call("to_room", {"room": "lobby", "text": "after the kill"})
    for peer in peers:
        while peer.next("room_message", timeout=20)["text"] != "after the kill":
            pass


def test_upgrade_lands_on_any_node(
        cluster: tuple[list[Any], Any], sio_client_factory: Any) -> None:
    nodes, proxy = cluster
    peers: list[Peer] = []
    # some upgrade must cross nodes; round robin can send every one home (see
    # peers_on_every_node): then one more client, one request later
    while len(peers) < 6 or sum(counter(node, "forwarded_upgrades") for node in nodes) == 0:
        assert len(peers) < 12, "no upgrade crossed nodes"
        if peers:
            open_session(proxy.url)
        peers.append(Peer(sio_client_factory, proxy.url, cls=socketio.Client,
                          transports=["polling", "websocket"]))
        if len(peers) >= 6:
            wait_for(lambda: all(p.client.transport() == "websocket" for p in peers),
                     what="every client upgraded")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(
            p.client.transport() == "websocket" for p in peers):
        time.sleep(0.05)
    assert all(p.client.transport() == "websocket" for p in peers)
    for peer in peers:
        peer.call("join", "lobby")
    peers[0].call("to_room", {"room": "lobby", "text": "upgraded"})
    for peer in peers:
        assert peer.next("room_message")["text"] == "upgraded"
    assert sum(counter(node, "forwarded_upgrades") for node in nodes) > 0


def test_forged_forwarding_header_is_refused(node_factory: Any) -> None:
    owner, other = node_factory(count=2)
    sid = open_session(owner.url)
    target = f"{PATH}?EIO=4&transport=polling&sid={sid}"
    forged = f"v1;abcdef12;{time.time():.3f};10.0.0.1;{'0' * 64}"
    for node in (owner, other):
        reply = requests.post(node.url + target, data="40", timeout=5,
                              headers={FORWARDED_HEADER: forged})
        assert reply.status_code == 403
    assert counter(other, "forged_forward_headers") == 1
    # the same request without the header is forwarded to the owner and served
    reply = requests.post(other.url + target, data="40", timeout=5)
    assert (reply.status_code, reply.text) == (200, "OK")
    assert counter(other, "forwarded_polls") == 1


def test_a_forwarded_request_is_never_forwarded_again(node_factory: Any) -> None:
    owner, middle = node_factory(count=2)
    sid = open_session(owner.url)
    target = f"{PATH}?EIO=4&transport=polling&sid={sid}"
    signed = ForwardSigner(BUS_SIGNING_SECRET).sign("POST", target, "abcdef12", "10.0.0.1")
    reply = requests.post(middle.url + target, data="40", timeout=5,
                          headers={FORWARDED_HEADER: signed})
    assert reply.status_code == 400 and "Invalid session" in reply.text
    assert counter(middle, "forward_refused") == 1
    assert counter(middle, "forwarded_polls") == 0


def test_forged_and_stale_sids_get_invalid_session_without_a_hop(node_factory: Any) -> None:
    node, _ = node_factory(count=2)
    stale = SidMinter("deadbeef" * 4, BUS_SIGNING_SECRET).mint("A" * 20)  # no such node
    forged = SidMinter("deadbeef" * 4, "another secret of enough length!!").mint("A" * 20)
    for sid in (stale, forged, "x" * 36):
        reply = requests.get(f"{node.url}{PATH}",
                             params={"EIO": "4", "transport": "polling", "sid": sid}, timeout=5)
        assert reply.status_code == 400 and "Invalid session" in reply.text
    assert counter(node, "forwarded_polls") == 0
    assert counter(node, "forward_failures") == 0
