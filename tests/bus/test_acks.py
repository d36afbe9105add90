"""AckTable and TimedAck: numbered, tracked and expired callbacks."""
from __future__ import annotations

import time
from typing import Any

import pytest

from cluster.bus.services.acks import AckTable, with_timeout
from cluster.bus.stats import BusStats


def table(default_timeout: float | None = 60.0) -> tuple[AckTable, dict[Any, Any], list[Any]]:
    callbacks: dict[Any, Any] = {}
    spawned: list[Any] = []
    return (AckTable(callbacks, default_timeout, BusStats(),
                     lambda func, *args: spawned.append(func)), callbacks, spawned)


def test_ids_are_unique_across_sids_and_the_table_is_python_socketios() -> None:
    acks, callbacks, _ = table()
    first, second = acks.add("a", print), acks.add("b", print)
    assert first != second
    assert callbacks["a"][first] is print and callbacks["b"][second] is print
    assert acks.pending() == 2
    acks.discard("a", first)
    assert "a" not in callbacks and acks.pending() == 1


def test_expired_callbacks_are_dropped_counted_and_their_hook_runs() -> None:
    acks, callbacks, spawned = table(default_timeout=None)
    hook = lambda: None  # noqa: E731
    timed = with_timeout(lambda *a: None, 0.01, on_timeout=hook)
    kept = acks.add("a", lambda *a: None)  # no default timeout: kept forever
    acks.add("a", timed)
    time.sleep(0.05)  # past the 10 ms deadline
    acks.expire()
    assert spawned == [hook] and acks.stats.get("acks_expired") == 1
    assert list(callbacks["a"]) == [0, kept]


def test_an_answered_callback_does_not_expire_later() -> None:
    acks, callbacks, spawned = table(default_timeout=0.01)
    ack_id = acks.add("a", lambda *a: None)
    callbacks["a"].pop(ack_id)  # python-socketio's trigger_callback answered it
    time.sleep(0.05)
    acks.expire()
    assert acks.stats.get("acks_expired") == 0 and spawned == []


def test_a_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        with_timeout(print, 0)
