"""Singleton tasks (cluster.flask_integration.singleton_tasks) on real nodes sharing a Redis:
one node runs the task; SIGKILL it and another takes over within seconds;
SIGSTOP it past its lease and it stops emitting when it wakes (fencing)."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import pytest
import socketio

APP = "tests.apps.compat_app:socketio"
ENV = {"SINGLETON_TICKER": "1"}
LEASE_SECONDS = 5.0  # the default the app uses


class TickLog:
    """Every ``tick`` one client receives, with when it arrived."""

    def __init__(self, factory: Any, url: str) -> None:
        self.ticks: list[tuple[float, dict[str, Any]]] = []
        self.lock = threading.Lock()
        self.client = factory(cls=socketio.Client, reconnection=False)
        self.client.on("tick", self._record)
        self.client.connect(url, transports=["websocket"], wait_timeout=10)

    def _record(self, tick: dict[str, Any]) -> None:
        with self.lock:
            self.ticks.append((time.monotonic(), tick))

    def since(self, moment: float) -> list[dict[str, Any]]:
        with self.lock:
            return [tick for at, tick in self.ticks if at >= moment]

    def wait_for(self, predicate: Any, timeout: float) -> tuple[float, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            with self.lock:
                fresh, seen = self.ticks[seen:], len(self.ticks)
            for at, tick in fresh:
                if predicate(tick):
                    return at, tick
            time.sleep(0.05)
        raise AssertionError(f"no matching tick within {timeout}s")

    def wait_since(self, moment: float, count: int, timeout: float = 15,
                   node: str | None = None) -> list[dict[str, Any]]:
        """Wait until ``count`` ticks (of ``node``, if given) arrived since
        ``moment``; the ticker sends one every 0.2 s, so this is also a
        window of about ``count * 0.2`` s in which to see what else arrived."""
        deadline = time.monotonic() + timeout
        while True:
            ticks = [tick for tick in self.since(moment) if node is None or tick["node"] == node]
            if len(ticks) >= count:
                return ticks
            assert time.monotonic() < deadline, f"{len(ticks)} of {count} ticks in {timeout}s"
            time.sleep(0.05)


def _holder(log: TickLog) -> dict[str, Any]:
    return log.wait_for(lambda tick: True, timeout=15)[1]


def test_one_node_runs_the_task_and_another_takes_over_when_it_dies(
        node_factory: Any, sio_client_factory: Any) -> None:
    nodes = node_factory(app=APP, count=3, env=ENV)
    logs = {node.name: TickLog(sio_client_factory, node.url) for node in nodes}
    first = _holder(next(iter(logs.values())))
    steady = time.monotonic()
    for log in logs.values():
        log.wait_since(steady, 10)
    for log in logs.values():
        ticks = log.since(steady)
        # one runner: every client hears one node, each tick once
        assert {tick["node"] for tick in ticks} == {first["node"]}
        counts = [tick["n"] for tick in ticks]
        assert counts == sorted(set(counts))

    doomed = next(node for node in nodes if node.name == first["node"])
    doomed.kill(signal.SIGKILL)
    killed_at = time.monotonic()
    survivor = next(log for name, log in logs.items() if name != doomed.name)
    arrived, second = survivor.wait_for(lambda tick: tick["node"] != doomed.name, timeout=15)
    takeover = arrived - killed_at
    print(f"\nsingleton task moved from {doomed.name} to {second['node']} in {takeover:.1f} s")
    assert takeover < LEASE_SECONDS + 3.0
    assert second["n"] == 1  # started afresh
    assert second["token"] > first["token"]
    resumed = time.monotonic()
    for name, log in logs.items():
        if name != doomed.name:
            log.wait_since(resumed, 8)
            assert {tick["node"] for tick in log.since(resumed)} == {second["node"]}


def test_a_stalled_holder_stops_when_it_wakes_after_losing_its_lease(
        node_factory: Any, sio_client_factory: Any) -> None:
    nodes = node_factory(app=APP, count=2, env=ENV)
    logs = {node.name: TickLog(sio_client_factory, node.url) for node in nodes}
    first = _holder(next(iter(logs.values())))
    stalled = next(node for node in nodes if node.name == first["node"])
    watcher = next(log for name, log in logs.items() if name != stalled.name)
    watcher.wait_since(0, 1, node=stalled.name)  # the watcher hears the holder too
    last_before = max(tick["n"] for tick in watcher.since(0) if tick["node"] == stalled.name)
    stalled.kill(signal.SIGSTOP)
    try:
        _, second = watcher.wait_for(lambda tick: tick["node"] != stalled.name,
                                     timeout=LEASE_SECONDS + 5)
    finally:
        stalled.kill(signal.SIGCONT)
    woke = time.monotonic()
    # long enough for the woken node to emit, had it kept running the task
    watcher.wait_since(woke, 12, node=second["node"])
    # nothing the stalled node's task would have emitted after waking
    stale = [tick for tick in watcher.since(0)
             if tick["node"] == stalled.name and tick["n"] > last_before]
    assert stale == []
    assert {tick["node"] for tick in watcher.since(woke + 0.5)} == {second["node"]}
    assert second["token"] > first["token"]


def test_a_draining_holder_hands_the_task_over_before_its_lease_expires(
        node_factory: Any, sio_client_factory: Any) -> None:
    nodes = node_factory(app=APP, count=2, env=ENV)
    logs = {node.name: TickLog(sio_client_factory, node.url) for node in nodes}
    first = _holder(next(iter(logs.values())))
    holder = next(node for node in nodes if node.name == first["node"])
    watcher = next(log for name, log in logs.items() if name != holder.name)
    stopping = threading.Thread(target=holder.stop, kwargs={"grace": 10})
    signalled = time.monotonic()
    stopping.start()
    arrived, _ = watcher.wait_for(lambda tick: tick["node"] != holder.name, timeout=15)
    stopping.join()
    print(f"\nsingleton task handed over {arrived - signalled:.1f} s after SIGTERM")
    # handed over, not expired: the draining holder released its lease
    assert "singleton task 'ticker': lease released" in holder.log_text()


def test_the_lease_lives_on_a_redis_cluster_and_moves_when_its_holder_dies(
        redis_cluster: list[Any], redis_cluster_url: str, node_factory: Any,
        sio_client_factory: Any) -> None:
    from redis.cluster import RedisCluster

    nodes = node_factory(app=APP, count=2, message_queue=redis_cluster_url, env=ENV)
    logs = {node.name: TickLog(sio_client_factory, node.url) for node in nodes}
    first = _holder(next(iter(logs.values())))
    # the lease and its fencing counter: one hash tag, so one slot
    lease, fence = ("{flask-socketio}:singleton:ticker:lease",
                    "{flask-socketio}:singleton:ticker:fence")
    cluster = RedisCluster(host="127.0.0.1", port=redis_cluster[0].port)
    try:
        assert cluster.keyslot(lease) == cluster.keyslot(fence)
        assert cluster.exists(lease) == 1
        assert int(cluster.get(fence)) == first["token"]
    finally:
        cluster.close()
    doomed = next(node for node in nodes if node.name == first["node"])
    doomed.kill(signal.SIGKILL)
    killed_at = time.monotonic()
    survivor = next(log for name, log in logs.items() if name != doomed.name)
    arrived, second = survivor.wait_for(lambda tick: tick["node"] != doomed.name, timeout=15)
    assert arrived - killed_at < LEASE_SECONDS + 3.0
    assert second["n"] == 1 and second["token"] > first["token"]


def test_without_a_message_queue_the_task_runs_in_the_one_process(
        node_factory: Any, sio_client_factory: Any) -> None:
    (node,) = node_factory(app=APP, message_queue=None, env=ENV)
    log = TickLog(sio_client_factory, node.url)
    tick = _holder(log)
    assert tick["node"] == node.name and tick["token"] == 1


@pytest.mark.parametrize("bad", [0, -1])
def test_lease_must_be_positive(bad: float) -> None:
    from flask import Flask

    from cluster import SocketIO
    from cluster.exceptions import ConfigurationError

    socketio = SocketIO(Flask(__name__))
    with pytest.raises(ConfigurationError, match="lease_seconds"):
        socketio.start_singleton_task("t", lambda: None, lease_seconds=bad)
