"""cluster.node.client_closing: when each client of a node is closed."""

from __future__ import annotations

import random

from cluster.node.client_closing import MIN_RATE, close_offsets


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
