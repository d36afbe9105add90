"""Faults on the link between one node and Redis, through the fault proxy:
latency and jitter, connection resets, a long stall."""

from __future__ import annotations

from typing import Any

import pytest

from tests.faults.scenario import progress, wait_readyz

pytestmark = [pytest.mark.faults, pytest.mark.timeout(150)]


def test_latency_and_jitter_lose_duplicate_and_reorder_nothing(
        fault_cluster: Any, workload: Any) -> None:
    cluster = fault_cluster()
    load = workload(cluster.haproxy.url)
    assert load.on_node(cluster.faulty.name), "no client landed on the faulty node"
    progress(load, 50)
    cluster.proxy.set_latency(0.05, 0.03)  # 50 ms +- 30 ms each way
    progress(load, 300)
    cluster.proxy.normal()
    progress(load, 50)
    load.stop()
    print(load.verdict())
    assert cluster.proxy.accepted >= 1  # the node did talk to Redis through the proxy


def test_resets_of_the_redis_link_deliver_what_was_buffered(
        fault_cluster: Any, workload: Any) -> None:
    cluster = fault_cluster()
    load = workload(cluster.haproxy.url)
    assert load.on_node(cluster.faulty.name), "no client landed on the faulty node"
    progress(load, 50)
    for _ in range(2):
        # cut every connection, and keep Redis unreachable long enough to see it
        cluster.proxy.refuse()
        assert cluster.proxy.reset_all() >= 1
        wait_readyz(cluster.faulty, 503)
        progress(load, 40)  # the node's own clients keep sending and receiving meanwhile
        cluster.proxy.refuse(False)
        wait_readyz(cluster.faulty, 200)
        progress(load, 40)
    load.stop()
    print(load.verdict())


def test_long_stall_node_not_ready_keeps_clients_and_delivers_after(
        fault_cluster: Any, workload: Any) -> None:
    cluster = fault_cluster()
    load = workload(cluster.haproxy.url)
    local = load.on_node(cluster.faulty.name)
    assert local, "no client landed on the faulty node"
    progress(load, 50)
    cluster.proxy.stall()  # bytes held both ways: a partition TCP has not noticed
    stalled_for = wait_readyz(cluster.faulty, 503, timeout=30)
    progress(load, 100)
    cluster.proxy.unstall()
    wait_readyz(cluster.faulty, 200, timeout=30)
    progress(load, 50)
    load.stop()
    # its clients stayed on it through the stall (no one was pushed off)
    assert all(not c.log.away for c in local), [c.log.away for c in local if c.log.away]
    print(load.verdict(), f"(not ready {stalled_for:.1f}s into the stall)")
