"""A batch the server partly refuses: accepted items are never sent again,
refused ones keep their seals and their order (see cluster/bus/batch.py).

The transport here answers like Redis at ``maxmemory`` under
``noeviction``: the recovery script of a logged item is refused (its XADD
is a write), plain publishes go through. What "reaches the channel" is
opened by a receiving codec, whose replay check is what the seals are for.
"""
from __future__ import annotations

import collections
import json
import logging
import threading
import time
from typing import Any

import pytest
import redis

from cluster.bus.batch import Item, take
from cluster.bus.codec import Codec
from cluster.bus.errors import Dropped
from cluster.bus.outbox import Outbox
from cluster.bus.runtime import Runtime
from cluster.bus.sender import SealedSender
from cluster.bus.stats import BusStats
from cluster.bus.transport import Transport
from tests.bus.loopback import wait_for

SECRET = "s" * 32
OOM = "OOM command not allowed when used memory > 'maxmemory'."
log = logging.getLogger("tests.partial")


class FullRedis(Transport):
    """Refuses logged items while ``full``; ``refuse`` picks single ones
    (by attempt number and position) instead; ``break_at`` loses the
    connection before that position once (an unknown outcome)."""

    def __init__(self) -> None:
        self.full = False
        self.refuse: set[tuple[int, int]] = set()
        self.break_at: int | None = None
        self.channel: list[tuple[str | None, bytes]] = []
        self.attempts: list[list[bytes]] = []
        self._n = 0

    def connect(self) -> None:
        pass

    def send_each(self, payloads: list[bytes], logged: list[bool]) -> list[str | None | Exception]:
        attempt = len(self.attempts)
        self.attempts.append(list(payloads))
        results: list[str | None | Exception] = []
        for i, (payload, append) in enumerate(zip(payloads, logged, strict=True)):
            if self.break_at == i:
                self.break_at = None
                raise redis.exceptions.ConnectionError("connection lost mid-batch")
            if append and (self.full or (attempt, i) in self.refuse):
                results.append(redis.exceptions.ResponseError(OOM))
                continue
            self._n += 1
            offset = f"{int(time.time() * 1000)}-{self._n}" if append else None
            self.channel.append((offset, payload))
            results.append(offset)
        return results


def start(transport: Transport, **kwargs: Any) -> tuple[Outbox, BusStats, threading.Thread]:
    stats = BusStats()
    sender = SealedSender(transport, Codec(SECRET), "h1")
    box = Outbox(Runtime(), sender.send, stats, log, connect=transport.connect,
                 max_backoff=0.05, **kwargs)
    thread = threading.Thread(target=box.run, daemon=True)
    thread.start()
    wait_for(lambda: box.healthy)
    return box, stats, thread


def received(transport: FullRedis) -> tuple[list[tuple[str, bool]], collections.Counter[str]]:
    """What one receiving node accepts, in order (``(text, has offset)``),
    and what it drops, by reason."""
    codec = Codec(SECRET)
    got, dropped = [], collections.Counter[str]()
    for offset, raw in transport.channel:
        try:
            message, _ = codec.open(raw, offset=offset)
        except Dropped as drop:
            dropped[drop.reason] += 1
            continue
        got.append((message["data"][0], offset is not None))
    return got, dropped


def body(text: str) -> str:
    return json.dumps({"method": "emit", "event": "e", "data": [text], "namespace": "/",
                       "room": None, "skip_sid": None, "callback": None, "host_id": "h1"})


def test_a_batch_never_carries_a_plain_item_after_a_logged_one() -> None:
    queue = collections.deque(Item(body(t), False, t.startswith("L"), None)
                              for t in ["P1", "P2", "L3", "L4", "P5", "L6"])
    cuts = []
    while queue:
        cuts.append([json.loads(item.body)["data"][0] for item in take(queue, 10)])
    assert cuts == [["P1", "P2", "L3", "L4"], ["P5", "L6"]]


def test_accepted_items_are_not_sent_again_and_refused_ones_keep_their_seal() -> None:
    redis_ = FullRedis()
    redis_.full = True
    box, stats, thread = start(redis_, log_retry=30)
    try:
        for text in ["P1", "L2", "P3"]:
            box.put(body(text), logged=text.startswith("L"))
        wait_for(lambda: stats.get("publish_errors") >= 3)  # L2 held, retried
        assert received(redis_)[0] == [("P1", False)]  # once, however many retries
        assert not box.healthy  # emitters deliver on their node meanwhile
        redis_.full = False
        wait_for(lambda: len(redis_.channel) == 3)
        got, dropped = received(redis_)
        assert got == [("P1", False), ("L2", True), ("P3", False)] and not dropped
        # every attempt of L2 carried the very same signed bytes
        l2 = {payload for attempt in redis_.attempts for payload in attempt
              if b"L2" in payload}
        assert len(l2) == 1
        assert stats.get("published") == 3 and stats.get("published_unlogged") == 0
        wait_for(lambda: box.healthy)
    finally:
        box.close(1)
        thread.join(5)


def test_a_refused_item_followed_by_an_accepted_one_is_sealed_again() -> None:
    # memory freed between two commands of one pipeline: L1 refused, L2 in;
    # L1's first seal is now below what receivers saw, so it is resealed
    redis_ = FullRedis()
    redis_.refuse = {(0, 0)}
    gate = threading.Event()
    real_send = redis_.send_each

    def send_each(payloads: list[bytes], logged: list[bool]) -> list[str | None | Exception]:
        gate.wait(5)  # let both items queue into one batch
        return real_send(payloads, logged)

    redis_.send_each = send_each  # type: ignore[method-assign]
    box, stats, thread = start(redis_)
    try:
        box.put(body("L1"), logged=True)
        box.put(body("L2"), logged=True)
        gate.set()
        wait_for(lambda: len(redis_.channel) == 2)
        got, dropped = received(redis_)
        assert got == [("L2", True), ("L1", True)] and not dropped  # each once
        first, second = ([p for p in a if b"L1" in p] for a in redis_.attempts[:2])
        assert first != second
    finally:
        box.close(1)
        thread.join(5)


def test_an_unknown_outcome_is_retried_with_the_same_seals() -> None:
    # the connection broke after two of four went out: all four are sent
    # again as they were, receivers drop the two copies and take the rest
    redis_ = FullRedis()
    redis_.break_at = 2
    gate = threading.Event()
    real_send = redis_.send_each
    redis_.send_each = lambda p, lg: (gate.wait(5), real_send(p, lg))[1]  # type: ignore[method-assign]
    box, stats, thread = start(redis_)
    try:
        for text in ["P1", "P2", "P3", "P4"]:
            box.put(body(text))
        gate.set()
        wait_for(lambda: len(redis_.channel) == 6)
        got, dropped = received(redis_)
        assert [text for text, _ in got] == ["P1", "P2", "P3", "P4"]
        assert dropped == {"dropped_replayed": 2}
    finally:
        box.close(1)
        thread.join(5)


def test_a_stream_that_keeps_refusing_gets_each_emit_once_without_offset(caplog) -> None:
    redis_ = FullRedis()
    redis_.full = True
    box, stats, thread = start(redis_, log_retry=0.3)
    try:
        with caplog.at_level(logging.ERROR, logger="tests.partial"):
            box.put(body("P1"))
            box.put(body("L2"), logged=True)
            wait_for(lambda: len(redis_.channel) == 2)
            began = time.monotonic()
            box.put(body("L3"), logged=True)  # still refused: unlogged at once
            wait_for(lambda: len(redis_.channel) == 3)
            assert time.monotonic() - began < 0.3
        got, dropped = received(redis_)
        assert got == [("P1", False), ("L2", False), ("L3", False)] and not dropped
        assert stats.get("published_unlogged") == 2
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) <= 2 and "maxmemory" in lines[-1]  # one per window
        redis_.full = False  # memory freed: logged again
        box.put(body("L4"), logged=True)
        wait_for(lambda: len(redis_.channel) == 4)
        assert received(redis_)[0][-1] == ("L4", True)
        assert stats.get("published_unlogged") == 2
    finally:
        box.close(1)
        thread.join(5)


def test_write_only_sends_a_refused_logged_emit_once_without_offset() -> None:
    redis_ = FullRedis()
    redis_.full = True
    stats = BusStats()
    box = Outbox(Runtime(), SealedSender(redis_, Codec(SECRET), "w").send, stats, log,
                 max_backoff=0.05, log_retry=0.2)
    assert box.publish_now(body("L1"), logged=True, timeout=3, connect=redis_.connect) is None
    got, dropped = received(redis_)
    assert got == [("L1", False)] and not dropped
    assert stats.get("published_unlogged") == 1 and stats.get("publish_errors") >= 2
    redis_.full = False
    offset = box.publish_now(body("L2"), logged=True, timeout=3, connect=redis_.connect)
    assert offset is not None and received(redis_)[0][-1] == ("L2", True)


class FailingProducer:
    """A kombu producer whose connection breaks at the ``fail_at``-th publish."""

    def __init__(self, fail_at: int) -> None:
        self.fail_at = fail_at
        self.published: list[bytes] = []

    def publish(self, payload: bytes, **_: Any) -> None:
        if len(self.published) == self.fail_at:
            raise ConnectionResetError("broker connection reset")
        self.published.append(payload)


def test_kombu_reports_how_far_a_batch_got() -> None:
    pytest.importorskip("kombu")
    from cluster.bus.backends.kombu_transport import KombuTransport

    transport = KombuTransport("memory://", "chan", "q1")
    producer = FailingProducer(fail_at=2)
    transport._producer = producer  # noqa: SLF001 - the publishing seam
    results = transport.send_each([b"a", b"b", b"c", b"d"], [False] * 4)
    assert results[:2] == [None, None] and producer.published == [b"a", b"b"]
    assert all(isinstance(r, ConnectionResetError) for r in results[2:])
    # nothing went out at all: an outage, raised like any other
    transport._producer = FailingProducer(fail_at=0)  # noqa: SLF001
    with pytest.raises(ConnectionResetError):
        transport.send_each([b"a"], [False])


def test_a_refusal_reseals_only_its_own_lane_when_a_later_item_of_it_went_through() -> None:
    from cluster.bus.batch import settle
    items = [Item(body(text), volatile=False, logged=False, waiter=None)
             for text in ["A1", "B1", "A2", "B2"]]
    for item, lane in zip(items, [1, 2, 1, 2], strict=True):
        item.lane, item.payload = lane, b"sealed"
    refused = ConnectionError("shard A unreachable")
    # lane 1's shard refused both of its items, lane 2 took both
    done = settle(items, [refused, None, refused, None])
    assert done.kept == [items[0], items[2]] and done.sent == 2
    # nothing of lane 1 went through after its refusal: seals kept (a copy
    # that did get through is dropped by the receivers' replay check)
    assert all(item.payload == b"sealed" for item in done.kept)
    # in one lane, a refusal followed by an accepted item: resealed
    again = [Item(body(text), volatile=False, logged=False, waiter=None)
             for text in ["A1", "A2"]]
    for item in again:
        item.lane, item.payload = 1, b"sealed"
    done = settle(again, [refused, None])
    assert done.kept == [again[0]] and again[0].payload is None
