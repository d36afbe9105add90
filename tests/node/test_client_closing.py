"""cluster.node.client_closing: when each client of a node is closed."""

from __future__ import annotations

import random
import time
from collections import Counter

from cluster.node.client_closing import MIN_RATE, TICK, close_offsets, close_spread


def test_closes_are_spread_over_the_window_with_jitter() -> None:
    first = close_offsets(1000, 5.0, random.Random(1))
    second = close_offsets(1000, 5.0, random.Random(2))
    assert first == sorted(first) and first != second  # no two drains alike
    assert 0.0 <= first[0] and first[-1] < 5.0
    # spread, not bunched: every second of the window gets its share
    per_second = [sum(1 for t in first if int(t) == s) for s in range(5)]
    assert min(per_second) > 150


def test_a_small_node_drains_in_a_moment_and_zero_means_at_once() -> None:
    few = close_offsets(20, 5.0, random.Random(3))
    assert max(few) < 20 / MIN_RATE  # 20 clients: within 0.2 s
    assert close_offsets(50, 0.0) == [0.0] * 50


class _Socket:
    def __init__(self, closes: list[float]) -> None:
        self.closes = closes

    def close(self, **kwargs: object) -> None:
        self.closes.append(time.monotonic())


class _Engine:
    """python-engineio's ``Server.sockets`` and ``reason``, as far as the
    closing reads them."""

    class reason:  # noqa: N801 - engineio's attribute name
        SERVER_DISCONNECT = "server disconnect"

    def __init__(self, count: int, closes: list[float]) -> None:
        self.sockets = {f"s{i}": _Socket(closes) for i in range(count)}


def test_a_node_behind_its_schedule_does_not_catch_up_in_a_burst() -> None:
    closes: list[float] = []
    engine = _Engine(100, closes)  # window 1 s: 5 per 50 ms tick on average
    stalled = [False]

    def sleep(seconds: float) -> None:
        if not stalled[0]:  # the first wait stalls 0.5 s (a busy process)
            stalled[0] = True
            seconds += 0.5
        time.sleep(seconds)

    started = time.monotonic()
    assert close_spread(engine, 1.0, sleep, random.Random(4)) == 100
    assert len(closes) == 100 and not engine.sockets
    slots = Counter(int((t - started) / TICK) for t in closes)
    assert max(slots.values()) <= 2 * 100 * TICK / 1.0 + 1  # twice the share at most
