"""Small helpers the fault scenarios share: progress and probes, polled with deadlines."""

from __future__ import annotations

import time

from cluster.devtools.local_cluster import NodeProcess
from tests.faults.workload import Workload


def progress(workload: Workload, more: int, timeout: float = 30.0) -> None:
    """Wait until ``more`` further messages were acked or given up on:
    traffic runs through the fault for a measured amount, not a sleep."""
    target = workload.sent_count() + more
    deadline = time.monotonic() + timeout
    while workload.sent_count() < target:
        if time.monotonic() > deadline:
            raise AssertionError(f"traffic stalled: {workload.sent_count()} of {target} "
                                 f"messages after {timeout}s")
        time.sleep(0.05)


def wait_readyz(node: NodeProcess, status: int | None, timeout: float = 20.0) -> float:
    """Wait until ``/readyz`` answers ``status`` (None: does not answer);
    returns how long it took."""
    started = time.monotonic()
    seen: list[int | None] = []
    while time.monotonic() - started < timeout:
        got = node.http_status("/readyz", timeout=0.5)
        if got == status:
            return time.monotonic() - started
        if not seen or seen[-1] != got:
            seen.append(got)
        time.sleep(0.05)
    raise AssertionError(f"{node.name} /readyz never answered {status} in {timeout}s "
                         f"(saw {seen})")
