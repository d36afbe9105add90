"""The recovery stream's filtered scan and its self-healing, on a real Redis."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import redis

from cluster.bus.codec import Codec
from cluster.recovery.offsets import Offset
from cluster.recovery.scripts import QUARANTINE_SECONDS
from cluster.recovery.stream import RecoveryLog
from tests.recovery.conftest import append_sealed, recovery_log

SECRET = "s" * 32


@pytest.fixture()
def stream(redis_url: str) -> Any:
    codec = Codec(SECRET)
    client = redis.Redis.from_url(redis_url)
    yield recovery_log("scan", codec), client, codec
    client.close()


def _emit(room: Any, n: int, skip: Any = None, namespace: str = "/") -> str:
    return json.dumps({"method": "emit", "event": "e", "data": [n], "namespace": namespace,
                       "room": room, "skip_sid": skip, "callback": None, "host_id": "h"})


def _scan_all(log: RecoveryLog, client: Any, offset: str, rooms: set[str],
              **kwargs: Any) -> tuple[list[Any], int, int]:
    found, scanned, calls = [], 0, 0
    while True:
        page = log.scan(client, offset, "/", "sid1", rooms, **kwargs)
        calls += 1
        found += [message["data"][0] for _, message, _ in page.entries]
        scanned += page.scanned
        offset = page.last
        if page.done:
            return found, scanned, calls


def test_others_traffic_never_leaves_redis(stream: Any) -> None:
    log, client, codec = stream
    start = log.last_offset(client)
    bodies = [_emit(f"noise-{n % 300}", 10_000 + n) for n in range(5000)]
    bodies[1000] = _emit("mine", 1)
    bodies[2000] = _emit(None, 2)                     # everyone
    bodies[3000] = _emit(["x", "sid1"], 3)            # its sid, in a list
    bodies[3500] = _emit("mine", 4, namespace="/other")
    bodies[4000] = _emit("mine", 5, skip="sid1")      # skips it
    bodies[4500] = _emit("mine", 6, skip=["a", "b"])
    offsets = append_sealed(log, client, codec, bodies)
    found, scanned, calls = _scan_all(log, client, start, {"mine", "lobby"})
    assert found == [1, 2, 3, 6]
    assert scanned == 5000 and calls == 6  # SCAN_COUNT per call, then the end
    page = log.scan(client, offsets[2999], "/", "sid1", {"mine"}, count=10)
    assert page.length == 5000 and page.scanned == 10 and not page.done
    assert page.last == offsets[3009] and [o for o, _, _ in page.entries] == [offsets[3000]]


def test_entries_without_fields_are_returned_for_the_full_check(stream: Any) -> None:
    log, client, codec = stream
    start = log.last_offset(client)
    # as a node before routing fields wrote them
    client.xadd(log.key, {"p": codec.seal(_emit("noise", 7), "h", logged=True)})
    client.xadd(log.key, {"p": codec.seal(_emit("mine", 8), "h", logged=True)})
    client.xadd(log.key, {"x": "no payload"})
    page = log.scan(client, start, "/", "sid1", {"mine"})
    assert [message["data"][0] if message else None for _, message, _ in page.entries] \
        == [7, 8, None]
    assert page.done and page.scanned == 3


def test_a_page_returns_a_bounded_number_of_bytes_and_loses_nothing(stream: Any) -> None:
    log, client, codec = stream
    start = log.last_offset(client)
    append_sealed(log, client, codec, [_emit("mine", n) for n in range(30)])
    size = len(codec.seal(_emit("mine", 10), "h", logged=True))
    found, scanned, calls = _scan_all(log, client, start, {"mine"}, max_bytes=size * 4)
    assert found == list(range(30)) and scanned == 30 and calls >= 8


def test_a_wrong_typed_key_is_moved_aside_and_the_stream_restarts(
        stream: Any, caplog: pytest.LogCaptureFixture) -> None:
    log, client, codec = stream
    resets: list[int] = []
    log.on_reset = lambda: resets.append(1)
    before = log.append(client, codec.seal(_emit("mine", 1), "h", logged=True))
    client.set(log.key, "x")  # someone with Redis access but no secret
    with caplog.at_level(logging.ERROR, logger="cluster.recovery.stream"):
        after = log.append(client, codec.seal(_emit("mine", 2), "h", logged=True))
        client.set(log.key, "y")
        log.load_script(client)
        pipe = client.pipeline(transaction=False)
        log.append(pipe, codec.seal(_emit("mine", 3), "h", logged=True))
        third = log.offset_from(pipe.execute()[0])
    assert client.type(log.key) == b"stream"
    assert [entry[0].decode() for entry in client.xrange(log.key)] == [third]
    assert client.get(log.quarantine_key) == b"y"
    assert 0 < client.ttl(log.quarantine_key) <= QUARANTINE_SECONDS
    assert log.resets == 2 and resets == [1, 1]
    # logged once per window, with what happened and the fix
    lines = [r.getMessage() for r in caplog.records if "wrong type" in r.getMessage()]
    assert len(lines) == 1
    assert "(string) was at {scan}:recovery" in lines[0]
    assert "moved to {scan}:recovery:quarantined" in lines[0] and "check who" in lines[0]
    # nothing from before the reset counts as a complete history
    assert Offset.of(after) < Offset.of(third)
    assert not log.readable(client, before) and not log.readable(client, after)
    assert not log.readable(client, "0-0")
    assert log.readable(client, third)


def test_a_reader_that_meets_a_wrong_typed_key_heals_it(stream: Any) -> None:
    log, client, codec = stream
    before = log.append(client, codec.seal(_emit("mine", 1), "h", logged=True))
    client.delete(log.key)
    client.hset(log.key, "f", "v")
    assert log.heal(client) is True and log.resets == 1
    assert client.type(log.key) == b"stream" and client.xlen(log.key) == 0
    assert 0 < client.pttl(log.key) <= 120_000  # an idle stream still expires
    assert not log.readable(client, before) and not log.readable(client, "0-0")
    assert log.heal(client) is False and log.resets == 1
    # a session starting now starts at the reset, and can recover from there
    start = log.last_offset(client)
    assert Offset.of(start) > Offset.of(before)
    later = log.append(client, codec.seal(_emit("mine", 2), "h", logged=True))
    assert log.readable(client, start) and log.readable(client, later)
    assert not log.readable(client, before)
