"""Partitions made with ``nft`` in a network namespace (tests/faults/netns.py).

node ``nsnode1`` runs in its own namespace (its own test host); Redis
listens on the root side of its veth; ``node1``/``node2`` and HAProxy run in
the root namespace. Two faults under the recorded workload:

- a full partition of nsnode1 from Redis (every packet to and from Redis's
  port dropped in its namespace) while it keeps its clients, then healed;
- a partition of nsnode1 from the balancer (every packet to and from its
  listening port dropped): HAProxy's checks fail, its clients' links go
  silent, they reconnect through the balancer to the other nodes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cluster.devtools.local_cluster import HAProxyProcess, RedisServerProcess, stop_all
from tests.faults.conftest import FAULT_APP
from tests.faults.netns import NetLab, Netns, NetnsNode, sweep, unavailable
from tests.faults.scenario import progress, wait_readyz
from tests.harness.fixtures import NODE_START_TIMEOUT, _used_by, with_bus_secret
from tests.harness.waiting import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.timeout(150)]


@dataclass
class NetnsCluster:
    space: Netns
    redis: RedisServerProcess
    isolated: NetnsNode
    nodes: list[Any]
    haproxy: HAProxyProcess


@pytest.fixture
def netns_cluster(request: pytest.FixtureRequest, tmp_path: Path, node_factory: Any,
                  haproxy_factory: Any) -> Iterator[NetnsCluster]:
    why = unavailable()
    if why:
        pytest.skip(why)
    sweep()  # what a killed run left behind
    lab = NetLab()
    processes: list[Any] = []
    try:
        space = lab.add()
        # bound to the veth's root-side address only; nsnode1 is not loopback
        redis = RedisServerProcess(host=space.host_address, workdir=tmp_path / "ns-redis",
                                   extra_args=["--protected-mode", "no"])
        processes.append(redis)
        _used_by(request.node, redis)
        redis.start()
        isolated = NetnsNode(FAULT_APP, space, message_queue=redis.url, env=with_bus_secret(None),
                             name="nsnode1", log_path=tmp_path / "logs" / "nsnode1.log",
                             cwd=request.config.rootpath, start_timeout=NODE_START_TIMEOUT)
        processes.append(isolated)
        _used_by(request.node, isolated)
        isolated.spawn()
        others = node_factory(app=FAULT_APP, count=2, message_queue=redis.url)
        processes += others
        isolated.wait_ready()
        haproxy = haproxy_factory([isolated, *others], check_interval="300ms")
        processes.append(haproxy)
        yield NetnsCluster(space, redis, isolated, others, haproxy)
    finally:
        # the balancer first, the nodes (drained in parallel) while Redis is
        # still there, Redis, then the namespaces: a process inside would keep one
        stop_all([p for p in processes if isinstance(p, HAProxyProcess)], grace=2.0)
        stop_all([p for p in processes if not isinstance(p, (HAProxyProcess,
                                                             RedisServerProcess))], grace=5.0)
        for process in processes:
            process.stop(grace=2.0)
        lab.close()
        assert not lab.leftovers(), lab.leftovers()


def test_node_partitioned_from_redis_keeps_its_clients_and_delivers_after_heal(
        netns_cluster: NetnsCluster, workload: Any) -> None:
    cluster = netns_cluster
    load = workload(cluster.haproxy.url)
    local = load.on_node(cluster.isolated.name)
    assert local, "no client landed on the namespaced node"
    progress(load, 50)
    cluster.space.drop_peer(cluster.redis.host, cluster.redis.port)
    not_ready_after = wait_readyz(cluster.isolated, 503, timeout=30)
    progress(load, 100)  # everyone keeps sending; nsnode1 serves its own clients alone
    assert cluster.space.dropped() > 0  # the partition was real
    cluster.space.heal()
    wait_readyz(cluster.isolated, 200, timeout=30)
    progress(load, 50)
    load.stop()
    # its clients stayed on it (not ready only takes it out of new traffic)
    assert all(not c.log.away for c in local), [(c.name, c.log.away) for c in local if c.log.away]
    print(load.verdict(), f"(not ready {not_ready_after:.1f}s into the partition)")


def test_node_partitioned_from_the_balancer_its_clients_recover_elsewhere(
        netns_cluster: NetnsCluster, workload: Any) -> None:
    cluster = netns_cluster
    load = workload(cluster.haproxy.url)
    moved = load.on_node(cluster.isolated.name)
    assert moved, "no client landed on the namespaced node"
    progress(load, 50)
    cut_at = time.monotonic()
    # HAProxy (and this test) reach nsnode1 from the root side of its veth
    cluster.space.drop_peer(cluster.space.host_address, local_port=cluster.isolated.port)
    cluster.haproxy.wait_for_state(cluster.isolated.name, "DOWN", timeout=10)

    def all_moved() -> bool:
        return all(c.log.away and c.nodes[-1] != cluster.isolated.name and c.connected
                   for c in moved)

    wait_for(all_moved, timeout=30, what="nsnode1's clients back on other nodes")
    moved_after = time.monotonic() - cut_at
    progress(load, 100)
    assert cluster.space.dropped() > 0
    cluster.space.heal()
    cluster.haproxy.wait_for_state(cluster.isolated.name, "UP", timeout=20)
    progress(load, 50)
    load.stop()
    summary = load.verdict()
    for client in moved:
        assert [a.recovered for a in client.log.away] == [True], (client.name, client.log.away)
    print(summary, f"({len(moved)} clients moved in {moved_after:.1f}s)")
