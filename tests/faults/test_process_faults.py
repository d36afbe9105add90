"""Process and Redis faults under traffic: a frozen node (SIGSTOP past its
leases), a slow Redis (``DEBUG SLEEP``), a Redis restart without persistence."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import pytest

from tests.faults.scenario import progress, wait_readyz

pytestmark = [pytest.mark.faults, pytest.mark.timeout(150)]

#: the session TTL of the pause scenario: leases last SESSION_TTL + 2 s
#: (the renewal interval is a quarter of it, at least 1 s)
SESSION_TTL = 8.0
PAUSE = 15.0  # longer than a lease (10 s); clients notice after ~6 s (pings 2 + 4 s)


def test_node_frozen_past_its_leases_loses_nothing_when_it_wakes(
        fault_cluster: Any, workload: Any) -> None:
    cluster = fault_cluster(extra_args=["--session-ttl", str(SESSION_TTL)])
    frozen = cluster.faulty
    load = workload(cluster.haproxy.url)
    moved = load.on_node(frozen.name)
    assert moved, "no client landed on the node to freeze"
    progress(load, 50)
    frozen.kill(signal.SIGSTOP)
    paused_at = time.monotonic()
    try:
        # its clients notice, reconnect through the balancer to the others, recover
        load.wait_all_connected(timeout=PAUSE - 1)
        assert time.monotonic() - paused_at < PAUSE
        progress(load, 40)
        while time.monotonic() - paused_at < PAUSE:  # frozen past its leases
            progress(load, 10)
    finally:
        frozen.kill(signal.SIGCONT)
    wait_readyz(frozen, 200)
    progress(load, 60)  # the woken node runs a while beside the new holders
    # each moved client goes away once more and must still resume its own session
    for client in moved:
        client.client.disconnect()
        client.connect()
    load.wait_all_connected(timeout=30)
    progress(load, 40)
    load.stop()
    print(load.verdict())
    for client in moved:
        assert [a.recovered for a in client.log.away] == [True, True], \
            (client.name, client.log.away)
        # whoami: at the start, after each return, at the end; the first return
        # (while the node was frozen) went elsewhere
        assert client.nodes[1] != frozen.name, (client.name, client.nodes)


def test_slow_redis_debug_sleep_loses_nothing(
        own_redis: Any, fault_cluster: Any, workload: Any) -> None:
    cluster = fault_cluster(redis_url=own_redis.url)
    load = workload(cluster.haproxy.url)
    progress(load, 50)
    admin = own_redis.client(socket_timeout=10)
    sleeper = threading.Thread(target=admin.execute_command, args=("DEBUG", "SLEEP", "3"),
                               daemon=True)
    started = time.monotonic()
    sleeper.start()
    progress(load, 40)
    sleeper.join(10)
    assert not sleeper.is_alive() and time.monotonic() - started >= 3  # Redis did sleep
    progress(load, 60)
    load.stop()
    print(load.verdict())
    admin.close()


def test_redis_restart_without_persistence_says_not_recovered(
        own_redis: Any, fault_cluster: Any, workload: Any) -> None:
    cluster = fault_cluster(redis_url=own_redis.url)
    load = workload(cluster.haproxy.url)
    progress(load, 50)
    # one client per room is away across the restart (its history is lost)
    away = [c for i, c in enumerate(load.clients) if i % load.config.room_size == 9]
    for client in away:
        client.client.disconnect()
    progress(load, 10)
    own_redis.stop(grace=0.5)
    for node in cluster.nodes:
        wait_readyz(node, 503)
    progress(load, 20)  # the nodes keep serving their own clients
    own_redis.start()
    for node in cluster.nodes:
        wait_readyz(node, 200, timeout=30)
    progress(load, 40)  # cluster delivery resumed
    for client in away:
        client.connect()
    load.wait_all_connected(timeout=30)
    progress(load, 40)
    load.stop()
    print(load.verdict())
    # never a silent partial replay: the history was lost, and they are told so
    assert [c.log.away[-1].recovered for c in away] == [False] * len(away)
