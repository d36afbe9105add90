"""``python -m benchmarks.traced_node node ...``: a node whose memory is traced.

The node of ``python -m cluster node`` (same arguments), with
:mod:`tracemalloc` started before anything else is imported. On ``SIGUSR1``
it writes what is allocated, summed per source file of the allocation,
as JSON to ``$TRACED_NODE_OUT.<n>`` (n = 1, 2, ...), then ``<path>.done``
next to it. Used by :mod:`benchmarks.connection_memory`.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import tracemalloc

tracemalloc.start(1)
_dumps = 0


def _dump(_signum: int, _frame: object) -> None:
    global _dumps
    _dumps += 1
    path = f"{os.environ['TRACED_NODE_OUT']}.{_dumps}"
    stats = tracemalloc.take_snapshot().statistics("filename")
    rows = [[stat.traceback[0].filename, stat.size, stat.count] for stat in stats]
    with open(path, "w") as out:
        json.dump(rows, out)
    with open(path + ".done", "w"):
        pass


signal.signal(signal.SIGUSR1, _dump)

from cluster.runner.cli import entry  # noqa: E402 - after tracing started

sys.argv[0] = "cluster"
entry()
