"""cluster.recovery.shared_window: scans that overlap answered from one read
of the recovery stream, giving exactly what the scan script gives, on a
real Redis."""

from __future__ import annotations

import json
import random
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from cluster.bus.codec import Codec
from cluster.recovery.shared_window import ScanSharing, SharedWindow
from cluster.recovery.stream import RecoveryLog
from tests.recovery.conftest import append_sealed, recovery_log

ROOMS = ["a", "b", "c", "d", "with space", "ünï"]
SIDS = ["sid1", "sid2", "sid3"]


@pytest.fixture()
def stream(redis_url: str) -> Iterator[tuple[RecoveryLog, Any, Codec]]:
    codec = Codec("k" * 32)  # signed: a forged entry fails its check
    client = redis.Redis.from_url(redis_url)
    yield recovery_log("window", codec), client, codec
    client.close()


def _body(rng: random.Random, n: int) -> str:
    shape = rng.random()
    room: Any = None if shape < 0.1 else (
        rng.sample(ROOMS + SIDS, 2) if shape < 0.3 else rng.choice(ROOMS + SIDS))
    skip: Any = rng.choice([None, None, None, rng.choice(SIDS), SIDS[:2]])
    namespace = "/other" if rng.random() < 0.1 else "/"
    if rng.random() < 0.03:
        room = 7  # a room that is not a string: no routing fields, matched in full
    return json.dumps({"method": "emit", "event": "e", "data": [n], "namespace": namespace,
                       "room": room, "skip_sid": skip, "callback": None, "host_id": "h"})


def _read(log: RecoveryLog, client: Any, calls: list[Any] | None = None) -> Any:
    def read(after: str, until: str | None, count: int) -> Any:
        if calls is not None:
            calls.append((after, until, count))
        return log.window_read(client, after, until, count)
    return read


def _in_redis(log: RecoveryLog, client: Any, offset: str, namespace: str, sid: str,
              rooms: list[str]) -> list[tuple[str, Any, int]]:
    found: list[tuple[str, Any, int]] = []
    while True:
        page = log.scan(client, offset, namespace, sid, rooms)
        found += page.entries
        offset = page.last
        if page.done:
            return found


def test_a_window_gives_each_client_what_the_scan_script_gives(stream: Any) -> None:
    log, client, codec = stream
    rng = random.Random(29)
    start = log.last_offset(client)
    offsets = append_sealed(log, client, codec, [_body(rng, n) for n in range(3000)],
                      forged={5, 700, 2999})
    window = SharedWindow(_read(log, client))
    checked = 0
    for _ in range(120):
        offset = rng.choice([start, *offsets[:-1]])
        namespace = rng.choice(["/", "/", "/other"])
        sid = rng.choice(SIDS)
        rooms = rng.sample(ROOMS, rng.randint(0, 3))
        page = window.scan(offset, namespace, sid, rooms)
        assert page is not None and page.done
        expected = _in_redis(log, client, offset, namespace, sid, rooms)
        assert page.entries == expected
        assert page.last == offsets[-1] and page.length == 3000
        assert page.scanned == 3000 - (offsets.index(offset) + 1 if offset in offsets else 0)
        checked += len(expected)
    assert checked > 1000  # the clients did have history to compare


def test_a_scan_sees_what_was_logged_before_it_began(stream: Any) -> None:
    log, client, codec = stream
    rng = random.Random(1)
    first = append_sealed(log, client, codec, [_body(rng, n) for n in range(50)])
    window = SharedWindow(_read(log, client))
    assert window.scan(first[0], "/", "sid1", ROOMS) is not None
    later = append_sealed(log, client, codec, [json.dumps(
        {"method": "emit", "event": "e", "data": [1000], "namespace": "/", "room": "a",
         "skip_sid": None, "callback": None, "host_id": "h"})])
    page = window.scan(first[0], "/", "sid1", ["a"])
    assert page is not None and page.last == later[0]
    assert page.entries[-1][0] == later[0] and page.entries[-1][1]["data"] == [1000]


def test_an_older_offset_grows_the_window_at_its_start(stream: Any) -> None:
    log, client, codec = stream
    rng = random.Random(2)
    offsets = append_sealed(log, client, codec, [_body(rng, n) for n in range(400)])
    calls: list[Any] = []
    window = SharedWindow(_read(log, client, calls))
    # an offset from the margin's past: the window starts 5 s before it
    assert window.scan(offsets[300], "/", "sid1", ROOMS) is not None
    assert calls[0][1] is None  # a new window reads to the end
    page = window.scan(offsets[10], "/", "sid2", ["a", "b"])
    assert page is not None
    assert page.entries == _in_redis(log, client, offsets[10], "/", "sid2", ["a", "b"])


def test_a_window_past_its_bound_keeps_the_newest_and_sends_older_offsets_to_redis(
        stream: Any) -> None:
    log, client, codec = stream
    rng = random.Random(3)
    offsets = append_sealed(log, client, codec, [_body(rng, n) for n in range(300)])
    window = SharedWindow(_read(log, client), max_entries=100)
    assert window.scan(offsets[0], "/", "sid1", ROOMS) is None  # too far back
    assert len(window) == 100
    page = window.scan(offsets[250], "/", "sid1", ROOMS)  # recent: answered
    assert page is not None
    assert page.entries == _in_redis(log, client, offsets[250], "/", "sid1", ROOMS)
    more = append_sealed(log, client, codec, [_body(rng, n) for n in range(300, 350)])
    page = window.scan(offsets[280], "/", "sid3", ["c"])
    assert page is not None and page.last == more[-1]
    assert page.entries == _in_redis(log, client, offsets[280], "/", "sid3", ["c"])
    assert window.scan(offsets[240], "/", "sid1", ROOMS) is None  # trimmed from the window
    assert len(window) == 75  # a quarter went at once


def test_a_stream_reset_under_the_window_drops_it(stream: Any) -> None:
    log, client, codec = stream
    rng = random.Random(4)
    offsets = append_sealed(log, client, codec, [_body(rng, n) for n in range(20)])
    window = SharedWindow(_read(log, client))
    assert window.scan(offsets[0], "/", "sid1", ROOMS) is not None
    client.delete(log.key)  # Redis came back empty, say
    fresh = append_sealed(log, client, codec, [_body(rng, n) for n in range(20, 30)])
    # the old entries are gone: the window does not answer from them
    assert window.scan(offsets[5], "/", "sid1", ROOMS) is None
    page = window.scan(fresh[0], "/", "sid1", ROOMS)
    assert page is not None
    assert page.entries == _in_redis(log, client, fresh[0], "/", "sid1", ROOMS)


def test_an_unreadable_stream_is_not_answered(stream: Any) -> None:
    log, client, codec = stream
    offsets = append_sealed(log, client, codec, [_body(random.Random(5), 0)])
    window = SharedWindow(lambda after, until, count: None)
    assert window.scan(offsets[0], "/", "sid1", ROOMS) is None
    assert window.scan("not an offset", "/", "sid1", ROOMS) is None


def test_scans_share_a_window_only_while_they_overlap() -> None:
    reads: list[Any] = []
    sharing = ScanSharing(lambda *args: reads.append(args) or ([], 0))
    with sharing.scanning() as lone:
        assert lone is None  # scanned in Redis
        with sharing.scanning() as second:
            assert second is not None and sharing.window is second
            with sharing.scanning() as third:
                assert third is second
    assert sharing.window is None and sharing.windows == 1  # none runs: dropped
    assert not reads  # nothing scanned in it


def test_a_window_lives_while_scans_keep_coming_then_is_dropped_when_idle() -> None:
    now = [0.0]
    spawned: list[Any] = []
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    sharing = ScanSharing(lambda *args: ([], 0), spawn=lambda f, *a: spawned.append((f, a)),
                          sleep=sleep, clock=lambda: now[0], idle=2.0)
    with sharing.scanning(), sharing.scanning() as window:
        assert window is not None
    assert sharing.window is window  # kept for the scans still to come
    with sharing.scanning() as again:
        assert again is window
    (reaper, args), = spawned
    reaper(*args)  # sleeps until no scan came for 2 s
    assert sharing.window is None and slept == [2.0]


def test_a_scan_that_waited_for_a_failed_read_reads_again(stream: Any) -> None:
    # a scan may answer from a read another scan made only when that read
    # began after it arrived *and succeeded*: two scans arrive while a read
    # is out; the next read, made for one of them, fails; the other must
    # read again, not take the failed read for a fresh one
    log, client, codec = stream
    rng = random.Random(6)
    first = append_sealed(log, client, codec, [_body(rng, n) for n in range(10)])
    calls = [0]
    in_read, release = threading.Event(), threading.Event()

    def read(after: str, until: str | None, count: int) -> Any:
        calls[0] += 1
        if calls[0] == 2:  # the read out while the two scans arrive
            got = log.window_read(client, after, until, count)
            in_read.set()
            release.wait(10)
            return got
        if calls[0] == 3:
            return None  # Redis failed this one
        return log.window_read(client, after, until, count)

    window = SharedWindow(read)
    assert window.scan(first[0], "/", "sid1", ROOMS) is not None  # read 1
    results: dict[str, Any] = {}
    arrivals = {name: threading.Event() for name in ("a", "b")}

    def scan(name: str) -> None:
        if name in arrivals:
            arrivals[name].set()  # then straight to the lock, unswitched
        results[name] = window.scan(first[0], "/", "sid1", ROOMS)

    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1.0)
    try:
        out = threading.Thread(target=scan, args=("out",))
        out.start()
        assert in_read.wait(10)
        # logged after the read out began: only a read after it has these
        latest = append_sealed(log, client, codec, [_body(rng, n) for n in range(10, 20)])
        threads = [threading.Thread(target=scan, args=(name,)) for name in arrivals]
        for thread in threads:
            thread.start()
        for event in arrivals.values():
            assert event.wait(10)
        release.set()
        for thread in [out, *threads]:
            thread.join(10)
    finally:
        sys.setswitchinterval(old_interval)
    assert results["out"] is not None
    answered = [page for name, page in results.items() if name != "out" and page is not None]
    assert len(answered) == 1  # the other one's read failed
    assert answered[0].last == latest[-1]
    assert answered[0].entries == _in_redis(log, client, first[0], "/", "sid1", ROOMS)
