"""Fixtures of the fault scenarios: a 3-node cluster whose node1 reaches
Redis through a :class:`~tests.faults.fault_proxy.FaultProxy`.

``pytest tests/faults`` runs the short (CI) form: each fault once, tens of
clients. ``FAULT_CLIENTS`` raises the client count of a run by hand.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from cluster.devtools.local_cluster import HAProxyProcess, NodeProcess, RedisServerProcess
from tests.faults.fault_proxy import FaultProxy
from tests.faults.workload import Workload, WorkloadConfig

FAULT_APP = "tests.faults.fault_app:socketio"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "faults: a fault-injection scenario (tests/faults)")


@dataclass
class FaultCluster:
    """node1 talks to Redis through ``proxy``; node2.. directly; ``haproxy`` in front."""

    proxy: FaultProxy
    nodes: list[NodeProcess]
    haproxy: HAProxyProcess
    redis_url: str

    @property
    def faulty(self) -> NodeProcess:
        return self.nodes[0]


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServerProcess]:
    """A redis-server of this test only (no persistence), which it may restart,
    with ``DEBUG`` allowed from localhost (off by default since Redis 7)."""
    server = RedisServerProcess(workdir=tmp_path / "own-redis", name="own-redis",
                                extra_args=["--enable-debug-command", "local"])
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fault_cluster(request: pytest.FixtureRequest, node_factory: Any,
                  haproxy_factory: Any) -> Iterator[Any]:
    """``fault_cluster(nodes=3, env=None, extra_args=(), redis_url=None)`` ->
    :class:`FaultCluster` (``redis_url`` None: the session's Redis)."""
    proxies: list[FaultProxy] = []

    def start(nodes: int = 3, env: dict[str, str] | None = None,
              extra_args: Sequence[str] = (), redis_url: str | None = None) -> FaultCluster:
        redis_url = redis_url or request.getfixturevalue("redis_url")
        kwargs = redis.Redis.from_url(redis_url).connection_pool.connection_kwargs
        proxy = FaultProxy(kwargs["host"], kwargs["port"]).start()
        proxies.append(proxy)
        started = node_factory(app=FAULT_APP, message_queue=proxy.url, env=env,
                               extra_args=extra_args)
        started += node_factory(app=FAULT_APP, count=nodes - 1, message_queue=redis_url,
                                env=env, extra_args=extra_args)
        haproxy = haproxy_factory(started, check_interval="300ms")
        return FaultCluster(proxy, started, haproxy, redis_url)

    yield start
    for proxy in proxies:
        proxy.stop()


@pytest.fixture
def workload(sio_client_factory: Any) -> Iterator[Any]:
    """``workload(url, **WorkloadConfig fields)`` -> a started :class:`Workload`
    (its senders stopped at teardown, before the clients are shut down)."""
    started: list[Workload] = []

    def start(url: str, **config: Any) -> Workload:
        if os.environ.get("FAULT_CLIENTS"):
            config["clients"] = int(os.environ["FAULT_CLIENTS"])
        load = Workload(sio_client_factory, url, WorkloadConfig(**config))
        started.append(load)
        return load.start()

    yield start
    for load in started:
        load.close()
