"""The garbage collector's schedule for a node process.

A node holds many long-lived objects per connection (its sockets, session,
rooms, writer, python-socketio's and python-engineio's state), and a
reconnect storm allocates fast: with CPython's default thresholds (a young
collection every 700 net allocations, older generations after 10 of the
younger) the collector walks those objects over and over while the node
should be admitting the clients that came back. In the 3 × 3,000-client
reconnect storm (``benchmarks/storm.py``; ``benchmarks/results/storm-gc*.md``)
2,243 of the killed node's 3,000 clients were back and recovered within 60 s
with the defaults, 2,739 and 2,910 (two runs) with what :func:`tune` does,
and the other nodes' clients saw a p99 of 1.2-1.4 s instead of 2.4 s
during the storm.

So, once the application is imported and before the node serves,
:func:`tune` moves everything alive at that point (modules, the app, its
configuration) to the permanent generation (``gc.freeze()``: never scanned
again) and sets the young threshold to ``young_threshold`` allocations
(default 50,000). Cycles of garbage then live a little longer (at most that
many allocations, a few MB); nothing else changes: reference counting frees
everything that is not a cycle at once, as before.
"""

from __future__ import annotations

import gc

__all__ = ["DEFAULT_YOUNG_THRESHOLD", "ENV_VAR", "tune"]

#: allocations between two collections of the youngest generation (CPython: 700)
DEFAULT_YOUNG_THRESHOLD = 50_000
#: the environment variable behind ``--gc-threshold``
ENV_VAR = "CLUSTER_GC_THRESHOLD"


def tune(young_threshold: int = DEFAULT_YOUNG_THRESHOLD) -> tuple[int, int, int]:
    """Freeze what is alive now and set the young generation's threshold.

    ``young_threshold`` must be positive (``0`` would switch automatic
    collection off, which a long-running node must not do; CPython's own
    value is 700). The older generations keep CPython's ratios (10, 10).
    Returns the thresholds now in force.
    """
    if young_threshold < 1:
        raise ValueError(f"the young generation's GC threshold must be at least 1, not "
                         f"{young_threshold} (CPython's default is 700; the node's "
                         f"{DEFAULT_YOUNG_THRESHOLD:,})")
    gc.collect()  # what the import left as garbage goes now, not frozen
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(young_threshold, older, oldest)
    return gc.get_threshold()
