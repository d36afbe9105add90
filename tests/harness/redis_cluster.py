"""A real 3-master Redis Cluster for the tests of every package.

========================  =========  ==============================================
fixture                   scope      gives
========================  =========  ==============================================
``redis_cluster``         session    three ``RedisServerProcess`` masters
                                     (``--cluster-enabled yes``, no replicas),
                                     ``cluster_state:ok``
``redis_cluster_url``     function   ``redis+cluster://127.0.0.1:P1,...`` with every
                                     master ``FLUSHALL``-ed
========================  =========  ==============================================

Everything on 127.0.0.1 on free ports, stopped by PID. A missing
``redis-cli`` skips the test.
"""
from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.cluster import RedisCluster

from cluster.devtools.processes import RedisServerProcess, find_executable, free_port

__all__ = ["cluster_url", "master_of", "redis_cluster", "redis_cluster_url"]


def _cluster_state(port: int) -> str:
    out = subprocess.run(["redis-cli", "-p", str(port), "cluster", "info"],
                         capture_output=True, text=True, timeout=5).stdout
    for line in out.splitlines():
        if line.startswith("cluster_state:"):
            return line.split(":", 1)[1].strip()
    return ""


def cluster_url(servers: list[Any]) -> str:
    """The ``redis+cluster://`` URL naming every master as a seed."""
    return "redis+cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in servers)


def master_of(servers: list[Any], key: str) -> int:
    """The port of the master that owns ``key``'s slot, as the cluster says."""
    cluster = RedisCluster(host="127.0.0.1", port=servers[0].port)
    try:
        return int(cluster.get_node_from_key(key).port)  # type: ignore[no-untyped-call]
    finally:
        cluster.close()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Any]]:
    """A real 3-master Redis Cluster (no replicas) on free ports."""
    try:
        find_executable("redis-cli", "redis-tools")
    except Exception as exc:  # noqa: BLE001 - reported as a skip
        pytest.skip(str(exc))
    servers = []
    try:
        for i in range(3):
            workdir = tmp_path_factory.mktemp(f"cluster{i}")
            bus_port = free_port()
            server = RedisServerProcess(
                workdir=workdir, name=f"rc{i}",
                extra_args=["--cluster-enabled", "yes",
                            "--cluster-config-file", str(Path(workdir) / "nodes.conf"),
                            "--cluster-port", str(bus_port),
                            "--cluster-node-timeout", "2000"])
            servers.append(server)
            server.start()
        subprocess.run(
            ["redis-cli", "--cluster", "create",
             *[f"127.0.0.1:{s.port}" for s in servers],
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=30)
        deadline = time.monotonic() + 20
        while not all(_cluster_state(s.port) == "ok" for s in servers):
            if time.monotonic() > deadline:
                pytest.fail("Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.1)
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def redis_cluster_url(redis_cluster: list[Any]) -> str:
    """The cluster's ``redis+cluster://`` URL, every master emptied first."""
    for server in redis_cluster:
        client = server.client(socket_timeout=5)
        try:
            client.flushall()
        finally:
            client.close()
    return cluster_url(redis_cluster)
