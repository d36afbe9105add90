"""A full Redis under traffic: ``maxmemory`` reached with ``noeviction``.

Redis then refuses every write (the recovery stream's XADD, session
writes) and still takes plain PUBLISHes. The product's promise
(cluster/bus/batch.py, README "A full Redis"): a logged emit is held up to
5 s, then sent without a recovery offset (delivered once, not replayable,
counted in ``socketio_bus{kind="published_unlogged"}``); nothing arrives
twice or out of order, and clients that stay connected lose nothing.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
import requests

from tests.faults.scenario import progress

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

FILLER = 256 * 1024
FILLERS = 32  # 8 MiB: far more than the workload writes while Redis is full
#: the metrics that prove Redis did refuse the nodes' writes
REFUSAL_KINDS = ('socketio_bus{kind="published_unlogged"}',
                 'socketio_bus{kind="publish_errors"}')


def refusals(nodes: Any) -> dict[str, float]:
    """Each of :data:`REFUSAL_KINDS`, summed over the nodes' ``/metrics``."""
    totals = dict.fromkeys(REFUSAL_KINDS, 0.0)
    for node in nodes:
        for line in requests.get(f"{node.url}/metrics", timeout=5).text.splitlines():
            if line.startswith(REFUSAL_KINDS):
                totals[line.split()[0]] += float(line.split()[1])
    return totals


def fill(admin: redis.Redis) -> list[str]:
    """Big keys, then ``maxmemory`` just below what Redis holds: every write refused."""
    keys = [f"filler:{i}" for i in range(FILLERS)]
    for key in keys:
        admin.set(key, b"x" * FILLER)
    used = int(admin.info("memory")["used_memory"])
    admin.config_set("maxmemory", str(used - 4 * 1024 * 1024))
    with pytest.raises(redis.exceptions.ResponseError, match="maxmemory"):
        admin.set("probe", "x")
    return keys


def test_full_redis_noeviction_delivers_each_message_once_in_order(
        own_redis: Any, fault_cluster: Any, workload: Any) -> None:
    admin = own_redis.client(socket_timeout=5)
    admin.config_set("maxmemory-policy", "noeviction")
    cluster = fault_cluster(nodes=3, redis_url=own_redis.url)
    load = workload(cluster.haproxy.url)
    progress(load, 50)
    before = refusals(cluster.nodes)
    keys = fill(admin)
    full_since = time.monotonic()
    try:
        progress(load, 300)  # ~6 s at 48 msg/s: past the 5 s a logged emit is held
        assert time.monotonic() - full_since > 5.5, "traffic ran too briefly while full"
    finally:
        admin.delete(*keys)
        admin.config_set("maxmemory", "0")
    after_full = refusals(cluster.nodes)
    # proof the fault was real: writes refused, and logged emits held past 5 s
    # went out unlogged
    assert all(after_full[kind] > before[kind] for kind in REFUSAL_KINDS), \
        f"refusals not counted ({before} -> {after_full}): Redis was not full"
    admin.set("probe", "x")  # writable again
    progress(load, 100)
    load.stop()
    print(load.verdict(), f"refusals {before} -> {after_full}")
    admin.close()
