"""Presence: first join and last leave across nodes, through its BusLink."""
from __future__ import annotations

import logging
import threading
from typing import Any

from cluster.bus.services.link import BusLink
from cluster.bus.services.nodes import NodeRegistry
from cluster.bus.services.presence import Presence
from cluster.bus.stats import BusStats


def presence(host: str = "a", rooms: list[tuple[str, Any]] | None = None,
             nodes: NodeRegistry | None = None) -> tuple[Presence, list[dict[str, Any]]]:
    sent: list[dict[str, Any]] = []
    link = BusLink(host_id=host, publish=lambda m, volatile=False: sent.append(m) or True,
                   dumps=str, spawn=lambda func, *args: func(*args),
                   nodes=nodes or NodeRegistry(host, host, 3.0),
                   logger=logging.getLogger("test"), stats=BusStats(),
                   ready=lambda: True, event=threading.Event)
    local = rooms if rooms is not None else []
    return Presence(link, lambda: list(local)), sent


def test_off_until_a_callback_is_registered() -> None:
    tracker, sent = presence()
    assert not tracker.enabled
    tracker.resync()
    tracker.handle_message({"host_id": "b", "op": "add", "room": "r", "namespace": "/"})
    assert sent == [] and tracker.rooms() == []


def test_first_join_and_last_leave_fire_only_for_the_whole_cluster() -> None:
    tracker, sent = presence()
    events: list[tuple[str, Any]] = []
    tracker.on(lambda event, room, ns: events.append((event, room)))
    tracker.local_added("/", "user:1")  # nobody else has it: first join
    tracker.handle_message({"host_id": "b", "op": "add", "room": "user:2", "namespace": "/"})
    tracker.local_added("/", "user:2")  # b has it already: no event
    tracker.local_removed("/", "user:2")  # b still has it: no event
    tracker.local_removed("/", "user:1")
    assert events == [("first_join", "user:1"), ("last_leave", "user:1")]
    assert [m["op"] for m in sent] == ["add", "add", "remove", "remove"]
    assert tracker.rooms() == ["user:2"]  # b's, known remotely


def test_a_sync_replaces_what_a_node_had_and_the_lowest_survivor_reports() -> None:
    nodes = NodeRegistry("a", "a", 3.0)
    nodes.seen("b", "b")
    nodes.seen("c", "c")
    tracker, sent = presence("a", nodes=nodes)
    events: list[tuple[str, Any]] = []
    tracker.on(lambda event, room, ns: events.append((event, room)))
    tracker.handle_message({"host_id": "c", "op": "sync", "room": "",
                            "rooms": [["/", "old"], ["/", "x"]]})
    tracker.handle_message({"host_id": "c", "op": "sync", "room": "", "rooms": [["/", "x"]]})
    assert tracker.rooms() == ["x"]
    nodes.remove("c")
    tracker.node_gone("c")
    # "a" sorts before "b": this node is the survivor that reports
    assert events == [("last_leave", "x")]
    tracker.resync()
    assert sent[-1]["op"] == "sync" and sent[-1]["rooms"] == []


def test_a_survivor_that_is_not_the_lowest_stays_quiet() -> None:
    nodes = NodeRegistry("b", "b", 3.0)
    nodes.seen("a", "a")
    nodes.seen("c", "c")
    tracker, _ = presence("b", nodes=nodes)
    events: list[tuple[str, Any]] = []
    tracker.on(lambda event, room, ns: events.append((event, room)))
    tracker.handle_message({"host_id": "c", "op": "add", "room": "x", "namespace": "/"})
    nodes.remove("c")
    tracker.node_gone("c")
    assert events == [] and tracker.rooms() == []  # "a" reports; all forget c's room
