"""ClusterView through its BusLink: local answers, commands, and queries
that wait for every live node (or time out with the partial answers)."""
from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any

import pytest
import socketio

from cluster.bus.errors import ClusterRequestError, ClusterRequestTimeout
from cluster.bus.services.link import BusLink
from cluster.bus.services.membership import LocalManager
from cluster.bus.services.nodes import NodeRegistry
from cluster.bus.services.view import ClusterView
from cluster.bus.stats import BusStats


def view(ready: bool = True, peers: tuple[str, ...] = (), write_only: bool = False,
         ) -> tuple[ClusterView, LocalManager, list[dict[str, Any]]]:
    sent: list[dict[str, Any]] = []
    nodes = NodeRegistry("a", "node-a", 3.0)
    for peer in peers:
        nodes.seen(peer, f"node-{peer}")
    link = BusLink(host_id="a", publish=lambda m, **options: sent.append(m) or True,
                   dumps=str, spawn=lambda func, *args: threading.Thread(
                       target=func, args=args, daemon=True).start(),
                   nodes=nodes, logger=logging.getLogger("test"), stats=BusStats(),
                   ready=lambda: ready, event=threading.Event, write_only=write_only)
    local = LocalManager()
    socketio.Server(client_manager=local, async_mode="threading")  # attaches itself
    return ClusterView(link, local, request_timeout=0.3), local, sent


def test_a_lone_node_answers_from_its_own_rooms_without_the_bus() -> None:
    cluster, local, sent = view()
    sid = local.connect("e1", "/")
    local.enter_room(sid, "/", "lobby")
    assert cluster.room_members("lobby") == [sid]
    assert cluster.rooms_of(sid) == ["lobby"]
    assert [s["sid"] for s in cluster.sockets(rooms=["lobby"])] == [sid]
    assert sent == []  # nobody else to ask


def test_commands_apply_here_and_are_published_once() -> None:
    cluster, local, sent = view(peers=("b",))
    sid = local.connect("e1", "/")
    cluster.sockets_join("vip", to=None)
    assert "vip" in local.get_rooms(sid, "/")
    cluster.sockets_leave(["vip"])
    assert "vip" not in local.get_rooms(sid, "/")
    assert [m["op"] for m in sent] == ["sockets_join", "sockets_leave"]
    assert all(m["reply"] is False for m in sent)


def test_a_query_waits_for_the_peers_and_merges_their_answers() -> None:
    cluster, local, sent = view(peers=("b",))
    local.enter_room(local.connect("e1", "/"), "/", "lobby")

    def answer_from_b() -> None:
        while not sent:
            threading.Event().wait(0.01)
        request = sent[0]
        cluster.handle_response({"method": "response", "host_id": "b", "to": "a",
                                 "req_id": request["req_id"], "result": ["remote-sid"]})

    threading.Thread(target=answer_from_b, daemon=True).start()
    members = cluster.room_members("lobby", timeout=5)
    assert len(members) == 2 and "remote-sid" in members


def test_a_silent_peer_times_out_with_the_partial_answers_and_its_name() -> None:
    cluster, local, _ = view(peers=("b",))
    local.enter_room(local.connect("e1", "/"), "/", "lobby")
    with pytest.raises(ClusterRequestTimeout, match="node-b") as info:
        cluster.room_members("lobby")
    assert list(info.value.partial) == ["a"] and cluster.link.stats.get(
        "requests_timed_out") == 1


def test_a_peer_that_leaves_is_no_longer_waited_for() -> None:
    cluster, _, sent = view(peers=("b",))
    threading.Thread(target=lambda: (
        [threading.Event().wait(0.01) for _ in range(200) if not sent],
        cluster.node_gone("b")), daemon=True).start()
    assert cluster.room_members("lobby", timeout=5) == []


def test_queries_refuse_clearly_without_the_bus_or_on_an_emitter() -> None:
    with pytest.raises(ClusterRequestError, match="reconnects"):
        view(ready=False, peers=("b",))[0].room_members("x")
    with pytest.raises(ClusterRequestError, match="write-only"):
        view(write_only=True)[0].room_members("x")


def test_requests_from_peers_are_answered_and_commands_applied() -> None:
    cluster, local, sent = view(peers=("b",))
    sid = local.connect("e1", "/")
    cluster.handle_request({"method": "request", "host_id": "b", "req_id": "r1",
                            "op": "sockets_join", "reply": False,
                            "args": {"rooms": ["x"], "to": None, "namespace": "/"}})
    assert "x" in local.get_rooms(sid, "/") and sent == []
    cluster.handle_request({"method": "request", "host_id": "b", "req_id": "r2",
                            "op": "rooms_of", "reply": True,
                            "args": {"sid": sid, "namespace": "/"}})
    assert sent == [{"method": "response", "host_id": "a", "to": "b", "req_id": "r2",
                     "result": ["x"]}]


def test_an_answer_travels_on_the_asking_nodes_channel() -> None:
    channels: list[str | None] = []
    cluster, local, sent = view(peers=("b",))
    link = cluster.link
    routed = ClusterView(
        dataclasses.replace(link, publish=lambda m, channel=None, **options: (
            sent.append(m), channels.append(channel)) and True),
        local, request_timeout=0.3, channel_of=lambda host_id: f"c:node:{host_id}")
    routed.handle_request({"method": "request", "host_id": "b", "req_id": "r1",
                           "op": "room_members", "reply": True,
                           "args": {"room": "x", "namespace": "/"}})
    assert [m["method"] for m in sent] == ["response"] and channels == ["c:node:b"]
