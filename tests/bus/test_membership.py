"""The per-sid room index and membership events of the client managers."""

from __future__ import annotations

import random
from typing import Any
from unittest import mock

import socketio

from cluster.bus import LocalManager


def _manager() -> tuple[LocalManager, list[tuple[Any, str, Any, bool]]]:
    manager = LocalManager()
    manager.set_server(mock.MagicMock())
    events: list[tuple[Any, str, Any, bool]] = []
    manager.membership_listener = lambda *event: events.append(event)
    return manager, events


def _scan(manager: Any, sid: str, namespace: str) -> list[Any]:
    # python-socketio's own answer, by scanning every room
    return socketio.Manager.get_rooms(manager, sid, namespace)


def test_index_agrees_with_a_full_scan_through_random_changes() -> None:
    manager, _ = _manager()
    rng = random.Random(7)
    sids = [manager.connect(f"eio{i}", "/") for i in range(30)]
    rooms = [f"room{i}" for i in range(8)]
    for _ in range(600):
        sid, room = rng.choice(sids), rng.choice(rooms)
        action = rng.random()
        if action < 0.5:
            manager.enter_room(sid, "/", room)
        elif action < 0.85:
            manager.leave_room(sid, "/", room)
        elif action < 0.9:
            manager.close_room(room, "/")
        else:
            manager.disconnect(sid, "/")
            sids.remove(sid)
            sids.append(manager.connect(f"eio-new-{rng.random()}", "/"))
        for each in sids:
            assert sorted(manager.get_rooms(each, "/"), key=str) == sorted(
                _scan(manager, each, "/"), key=str)


def test_disconnect_leaves_every_room_and_forgets_the_sid() -> None:
    manager, events = _manager()
    sid = manager.connect("eio", "/")
    manager.enter_room(sid, "/", "a")
    manager.enter_room(sid, "/", "b")
    manager.disconnect(sid, "/")
    assert manager.get_rooms(sid, "/") == []
    assert "a" not in manager.rooms.get("/", {}) and "b" not in manager.rooms.get("/", {})
    assert (sid, "/", "a", False) in events and (sid, "/", "b", False) in events


def test_events_skip_the_sid_room_and_the_none_room() -> None:
    manager, events = _manager()
    sid = manager.connect("eio", "/")
    assert events == []  # connecting enters None and the sid's own room only
    manager.enter_room(sid, "/", "lobby")
    manager.leave_room(sid, "/", "lobby")
    assert events == [(sid, "/", "lobby", True), (sid, "/", "lobby", False)]
