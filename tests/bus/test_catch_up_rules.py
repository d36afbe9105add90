"""The catch-up's decisions (cluster.bus.catch_up) at its seam: a stream
reader given as a list of entries, a handler that records."""
from __future__ import annotations

import logging
import time
from typing import Any

from cluster.bus import catch_up
from cluster.bus.catch_up import CatchUp
from cluster.bus.stats import BusStats


class Stream:
    """Entries ``(offset, payload)`` in order, read like the Redis reader."""

    def __init__(self, entries: list[tuple[str, bytes]], trimmed: bool = False) -> None:
        self.entries = entries
        self.trimmed = trimmed
        #: the Redis server's run_id (a restart changes it)
        self.run_id = "first-server"

    def server_id(self) -> str | None:
        return self.run_id

    def last_offset(self) -> str | None:
        return self.entries[-1][0] if self.entries else "0-0"

    def readable(self, offset: str) -> bool:
        return not self.trimmed

    def raw_page(self, offset: str, until: str, count: int
                 ) -> list[tuple[str, bytes | None]] | None:
        key = self._key
        return [(o, p) for o, p in self.entries
                if key(offset) < key(o) <= key(until)][:count]

    @staticmethod
    def _key(offset: str) -> tuple[int, int]:
        ms, seq = offset.split("-")
        return int(ms), int(seq)


def offsets(count: int, start_ms: int | None = None) -> list[tuple[str, bytes]]:
    ms = start_ms if start_ms is not None else int(time.time() * 1000) - 1000
    return [(f"{ms}-{i}", f"m{i}".encode()) for i in range(count)]


def make(stream: Stream, max_age_ms: int | None = 60_000) -> tuple[CatchUp, list[Any], list[int]]:
    handled: list[Any] = []
    resets: list[int] = []

    def reset() -> int:
        resets.append(1)
        return 7

    up = CatchUp(lambda: stream, lambda offset, raw: handled.append((offset, raw)), BusStats(),
                 logging.getLogger("test"), max_age_ms=lambda: max_age_ms,
                 reset_clients=reset, sleep=lambda seconds: None)
    return up, handled, resets


def test_hands_on_what_was_missed_in_order_and_skips_live_copies() -> None:
    stream = Stream(offsets(3))
    up, handled, resets = make(stream)
    up.subscribed()  # first subscription: remembers the stream's end
    assert up.base == stream.entries[-1][0] and handled == []
    up.lost()
    stream.entries += offsets(5, start_ms=int(time.time() * 1000))[3:] + [
        (f"{int(time.time() * 1000) + 1}-0", b"late")]
    up.subscribed()
    assert [raw for _, raw in handled] == [b"m3", b"m4", b"late"] and resets == []
    late = stream.entries[-1][0]
    assert up.duplicate(late)  # its live copy is skipped
    up.seen(f"{int(time.time() * 1000) + 5}-0")  # the channel went past it
    assert not up.duplicate(late)
    assert up.stats.get("caught_up") == 3 and up.stats.get("catch_ups") == 1


def test_a_trimmed_stream_resets_the_clients_instead_of_losing_silently() -> None:
    stream = Stream(offsets(2))
    up, handled, resets = make(stream)
    up.subscribed()
    up.lost()
    stream.entries += [(f"{int(time.time() * 1000) + 1}-0", b"gone")]
    stream.trimmed = True
    up.subscribed()
    assert handled == [] and resets == [1]
    assert up.stats.get("catch_up_impossible") == 1 and up.stats.get("catch_up_disconnects") == 7


def test_a_stream_emptied_on_the_same_server_resets_the_clients() -> None:
    stream = Stream(offsets(2))
    up, _, resets = make(stream)
    up.subscribed()
    up.lost()
    stream.entries = []  # DEL of the stream: its end is 0-0, the server the same
    up.subscribed()
    assert resets == [1]


def test_after_a_redis_restart_the_new_stream_is_handed_on_and_nobody_reset() -> None:
    stream = Stream(offsets(2))
    up, handled, resets = make(stream)
    up.subscribed()
    up.lost()
    # Redis came back empty (a new run_id), and other nodes flushed what they
    # buffered into the new stream before this node subscribed again
    stream.run_id, stream.trimmed = "second-server", True
    stream.entries = [(f"{int(time.time() * 1000) + 1}-0", b"after restart")]
    up.subscribed()
    assert [raw for _, raw in handled] == [b"after restart"] and resets == []
    assert up.stats.get("catch_up_after_restart") == 1
    assert up.stats.get("catch_up_impossible") == 0
    # a restart whose new ids are below the remembered offset (another clock)
    up.lost()
    stream.run_id = "third-server"
    stream.entries = [(f"{int(time.time() * 1000) - 50_000}-0", b"skewed")]
    up.subscribed()
    assert [raw for _, raw in handled][-1] == b"skewed" and resets == []


def test_an_outage_past_the_message_age_resets_the_clients() -> None:
    old = int(time.time() * 1000) - 61_000
    stream = Stream(offsets(1, start_ms=old - 10))
    up, handled, resets = make(stream)
    up.subscribed()
    up.lost()
    stream.entries += [(f"{old}-5", b"too old")]
    up.subscribed()
    assert handled == [] and resets == [1]


def test_too_many_missed_messages_reset_the_clients(monkeypatch: Any) -> None:
    monkeypatch.setattr(catch_up, "MAX_ENTRIES", 4)
    monkeypatch.setattr(catch_up, "PAGE", 3)
    stream = Stream(offsets(1))
    up, handled, resets = make(stream)
    up.subscribed()
    up.lost()
    stream.entries = offsets(10)
    up.subscribed()
    assert len(handled) == 4 and resets == [1]


def test_nothing_missed_nothing_done() -> None:
    stream = Stream(offsets(2))
    up, handled, resets = make(stream)
    up.subscribed()
    up.lost()
    up.subscribed()
    assert handled == [] and resets == [] and up.stats.get("catch_ups") == 1


def test_without_a_stream_nobody_is_disconnected() -> None:
    handled: list[Any] = []

    def reset() -> int:
        raise AssertionError("no client may be disconnected without a stream")

    up = CatchUp(lambda: None, lambda offset, raw: handled.append(raw), BusStats(),
                 logging.getLogger("test"), max_age_ms=lambda: 60_000,
                 reset_clients=reset, sleep=lambda seconds: None)
    up.subscribed()
    up.lost()
    up.subscribed()
    assert handled == [] and up.stats.get("catch_ups") == 0
