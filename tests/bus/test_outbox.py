"""The outbox's outage buffer: bounded in messages and in bytes."""
from __future__ import annotations

import logging
import threading

import pytest

from cluster.bus import BusConfigurationError
from cluster.bus.outbox import DEFAULT_MAX_BYTES, Item, Outbox
from cluster.bus.runtime import Runtime
from cluster.bus.stats import BusStats
from tests.bus.loopback import LoopbackHub, make_node, wait_for

log = logging.getLogger("tests.outbox")


class FlakyBus:
    """``send_batch`` for an Outbox: records what it sends, fails while down."""

    def __init__(self) -> None:
        self.down = False
        self.sent: list[str] = []
        self.attempts = threading.Event()

    def send(self, items: list[Item]) -> list[str | None | Exception]:
        self.attempts.set()
        if self.down:
            raise ConnectionError("bus down")
        self.sent.extend(item.body for item in items)
        return [None] * len(items)

    def connect(self) -> None:
        if self.down:
            raise ConnectionError("bus down")


def outbox(bus: FlakyBus, **kwargs: object) -> tuple[Outbox, BusStats]:
    stats = BusStats()
    box = Outbox(Runtime(), bus.send, stats, log, connect=bus.connect,
                 max_backoff=0.05, **kwargs)  # type: ignore[arg-type]
    return box, stats


def test_byte_cap_refuses_before_the_count_cap_and_counts_it(caplog) -> None:
    box, stats = outbox(FlakyBus(), max_size=10_000, max_bytes=1_000)
    body = "x" * 100
    with caplog.at_level(logging.ERROR, logger="tests.outbox"):
        accepted = [box.put(body) for _ in range(15)]
    assert accepted == [True] * 10 + [False] * 5  # 10 x 100 B = the cap
    assert len(box) == 10 and box.buffered_bytes == 1_000
    assert stats.get("dropped_buffer_full") == 5
    # one line (rate limited), naming both limits and the options to raise
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert "buffer_bytes" in lines[0] and "(10 messages" in lines[0]


def test_default_byte_cap_bounds_the_reported_flood() -> None:
    # the finding: 1,500 emits of 100 KB during an outage held ~150 MB; the
    # message count cap (10,000) would have let ~1 GB in
    box, stats = outbox(FlakyBus())
    body = "x" * 100_000
    accepted = sum(box.put(body) for _ in range(1_500))
    assert box.buffered_bytes <= DEFAULT_MAX_BYTES
    assert accepted == DEFAULT_MAX_BYTES // 100_000
    assert stats.get("dropped_buffer_full") == 1_500 - accepted


def test_bytes_measured_as_utf8() -> None:
    box, _ = outbox(FlakyBus(), max_bytes=1_000)
    assert box.put("é" * 400)  # 800 bytes, 400 characters
    assert box.buffered_bytes == 800
    assert not box.put("é" * 101)  # 202 more bytes would pass the cap


def test_bytes_in_flight_count_until_published_then_free_room() -> None:
    bus = FlakyBus()
    box, stats = outbox(bus, max_bytes=1_000, max_batch=3)
    thread = threading.Thread(target=box.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: box.healthy)
        bus.down = True
        for i in range(10):
            assert box.put(f"{i:03d}" + "x" * 97)
        assert bus.attempts.wait(5)
        # a batch is taken off the queue and retried: its bytes still count
        wait_for(lambda: stats.get("publish_errors") >= 2)
        assert box.buffered_bytes == 1_000 and not box.put("y" * 100)
        bus.down = False
        wait_for(lambda: len(bus.sent) == 10)
        assert [b[:3] for b in bus.sent] == [f"{i:03d}" for i in range(10)]
        wait_for(lambda: len(box) == 0)
        assert box.buffered_bytes == 0
        assert box.put("z" * 1_000)  # the whole cap is free again
    finally:
        box.close(timeout=1)
        thread.join(5)


def test_volatile_items_dropped_on_failure_free_their_bytes() -> None:
    bus = FlakyBus()
    box, stats = outbox(bus, max_bytes=1_000, max_batch=10)
    thread = threading.Thread(target=box.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: box.healthy)
        bus.down = True
        assert box.put("h" * 400, volatile=True)  # a heartbeat, queued while healthy
        assert box.put("m" * 300)
        wait_for(lambda: stats.get("publish_errors") >= 1)
        wait_for(lambda: box.buffered_bytes == 300)
        assert not box.put("v" * 10, volatile=True)  # never buffered in an outage
        assert box.put("n" * 700)
    finally:
        bus.down = False
        box.close(timeout=1)
        thread.join(5)


def test_manager_buffer_bytes_and_gauge() -> None:
    hub = LoopbackHub()
    server, manager = make_node(hub, buffer_bytes=20_000, max_message_bytes=10_000,
                                max_backoff=0.05, heartbeat_interval=60)
    try:
        # the start-up heartbeat is out of the way (the next is 60 s later)
        wait_for(lambda: manager.ready and manager.stats()["published"] >= 1)
        assert manager.flush(2)
        hub.down = True
        for _ in range(10):
            server.emit("blob", "x" * 4_000, to="nobody")
        stats = manager.stats()
        assert 0 < stats["buffered_bytes"] <= 20_000
        assert stats["buffered"] == 4 and stats["dropped_buffer_full"] == 6
        hub.down = False
        wait_for(lambda: manager.stats()["buffered"] == 0)
        assert manager.stats()["buffered_bytes"] == 0
    finally:
        manager.close(timeout=0.5)


def test_buffer_smaller_than_the_largest_message_is_a_configuration_error() -> None:
    with pytest.raises(BusConfigurationError, match="buffer_bytes.*max_message_bytes"):
        make_node(LoopbackHub(), buffer_bytes=1_000, max_message_bytes=2_000)
    with pytest.raises(BusConfigurationError, match="buffer_bytes=0"):
        make_node(LoopbackHub(), buffer_bytes=0)


class _PausedRuntime(Runtime):
    """A runtime whose node was found paused at ``found`` (monotonic)."""

    found = float("-inf")

    def paused_since(self, moment: float) -> bool:
        return moment < self.found


class _Waiter:
    def __init__(self) -> None:
        self.woken = False

    def wake(self) -> None:
        self.woken = True


def test_what_was_queued_before_the_node_was_paused_is_dropped_not_published_late() -> None:
    import time

    bus = FlakyBus()
    runtime = _PausedRuntime()
    stats = BusStats()
    box = Outbox(runtime, bus.send, stats, log, connect=bus.connect, max_backoff=0.05)
    bus.down = True  # held in the outage buffer, as in a frozen node's queue
    waiter = _Waiter()
    assert box.put("before-1") and box.put("before-2", logged=True, waiter=waiter)
    runtime.found = time.monotonic()  # the pause is found ...
    assert box.put("after")  # ... and the node goes on
    bus.down = False
    thread = threading.Thread(target=box.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: bus.sent == ["after"])
        assert stats.get("dropped_after_pause") == 2 and waiter.woken
        wait_for(lambda: len(box) == 0 and box.buffered_bytes == 0)
    finally:
        box.close(timeout=1)
        thread.join(5)


def test_a_failed_batch_dropped_whole_as_stale_leaves_the_outbox_healthy_again() -> None:
    # seen in CI: a node frozen mid-publish woke to a timed-out pipeline; the
    # retry dropped the batch as queued before the pause and returned, and
    # with heartbeats refused while unhealthy, /readyz stayed 503
    import time

    bus = FlakyBus()
    runtime = _PausedRuntime()
    stats = BusStats()
    box = Outbox(runtime, bus.send, stats, log, connect=bus.connect, max_backoff=0.05)
    thread = threading.Thread(target=box.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: box.healthy)
        bus.down = True
        assert box.put("before")
        wait_for(lambda: not box.healthy)
        runtime.found = time.monotonic()  # the pause is found: "before" is stale
        assert not box.put("heartbeat", volatile=True)  # refused while unhealthy
        bus.down = False
        wait_for(lambda: box.healthy)
        assert bus.sent == [] and stats.get("dropped_after_pause") == 1
        assert box.put("heartbeat", volatile=True)
        wait_for(lambda: bus.sent == ["heartbeat"])
    finally:
        box.close(timeout=1)
        thread.join(5)
