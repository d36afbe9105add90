"""A real Redis Cluster with a replica per master, and its failovers.

==============================  =========  ==========================================
fixture                         scope      gives
==============================  =========  ==========================================
``redis_cluster_with_replicas`` function   a :class:`ReplicatedCluster`: 3 masters and
                                           3 replicas (``--cluster-replicas 1``), node
                                           timeout :data:`NODE_TIMEOUT_MS`,
                                           ``cluster_state:ok``, every replica in sync
==============================  =========  ==========================================

Function scope: a failover changes the topology for good (a SIGKILLed master
stays down, its shard without a replica), so every test gets a new cluster
(about 3 s). :meth:`ReplicatedCluster.failover` fails over the shard that
owns a key: ``"graceful"`` runs ``CLUSTER FAILOVER`` on its replica (the
replica catches up first and the master pauses its clients meanwhile, so no
write is lost), ``"kill"`` SIGKILLs the master and waits for the cluster to
promote the replica (node timeout, failure agreement, election: 2-4 s here);
both return once the promoted replica owns the slot in every live node's
view and every live node says ``cluster_state:ok``.

The existing ``redis_cluster`` fixture (:mod:`tests.harness.redis_cluster`,
no replicas, session scope) is shared by many tests and stays as it is.
Everything on 127.0.0.1 on free ports, stopped by PID. A missing
``redis-cli`` skips the test.
"""
from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
import redis

from cluster.devtools.processes import RedisServerProcess, find_executable, free_port

__all__ = ["NODE_TIMEOUT_MS", "ReplicatedCluster", "Shard", "redis_cluster_with_replicas"]

#: ``cluster-node-timeout``: how long a master may be unreachable before its
#: replica may take over; low so that a SIGKILL fails over in seconds, high
#: enough that a busy 2-core box never fails a master over by itself
NODE_TIMEOUT_MS = 1500
#: seconds a topology change (create, sync, failover) may take
SETTLE = 20.0


def _wait(condition: Callable[[], Any], what: str, timeout: float = SETTLE) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except (redis.exceptions.RedisError, OSError):
            value = None  # a node restarting or just killed: ask again
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"Redis Cluster: timed out waiting for {what}")
        time.sleep(0.05)


@dataclass(frozen=True)
class Shard:
    """The master owning a slot and its replica (None: it has none now)."""

    slot: int
    master: RedisServerProcess
    replica: RedisServerProcess | None


class ReplicatedCluster:
    """Six ``redis-server`` processes, three masters with a replica each.

    :attr:`servers` keeps them in start order; roles change with failovers,
    so ask :meth:`shard_of` rather than remember who is master.
    """

    def __init__(self, servers: list[RedisServerProcess]) -> None:
        self.servers = servers

    # -- addresses --------------------------------------------------------------
    @property
    def url(self) -> str:
        """``redis+cluster://`` naming every node as a seed (a seed that is
        down is skipped by redis-py, as a deployment's URL would be)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in self.servers)

    def live(self) -> list[RedisServerProcess]:
        return [s for s in self.servers if s.is_running()]

    def by_port(self, port: int) -> RedisServerProcess:
        return next(s for s in self.servers if s.port == port)

    def client(self, server: RedisServerProcess) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=5,
                           decode_responses=True)

    def _ask(self, server: RedisServerProcess, *command: Any) -> Any:
        client = self.client(server)
        try:
            return client.execute_command(*command)  # type: ignore[no-untyped-call]
        finally:
            client.close()

    # -- the topology as the nodes see it ---------------------------------------
    def keyslot(self, key: str) -> int:
        return int(self._ask(self.live()[0], "CLUSTER", "KEYSLOT", key))

    def _nodes(self, server: RedisServerProcess) -> list[dict[str, Any]]:
        """``CLUSTER NODES`` of ``server``: id, port, flags, master id, slots."""
        rows = []
        for line in self._ask(server, "CLUSTER", "NODES").splitlines():
            fields = line.split()
            ranges = []
            for item in fields[8:]:
                if item.startswith("["):
                    continue  # a slot being migrated
                low, _, high = item.partition("-")
                ranges.append((int(low), int(high or low)))
            rows.append({"id": fields[0], "port": int(fields[1].split("@")[0].rsplit(":", 1)[1]),
                         "flags": set(fields[2].split(",")), "master": fields[3],
                         "slots": ranges})
        return rows

    def _owner_port(self, server: RedisServerProcess, slot: int) -> int | None:
        for row in self._nodes(server):
            if "master" in row["flags"] and "fail" not in row["flags"] and any(
                    low <= slot <= high for low, high in row["slots"]):
                return int(row["port"])
        return None

    def shard_of(self, key: str) -> Shard:
        """The master that owns ``key``'s slot now and its (live) replica."""
        slot = self.keyslot(key)
        viewer = self.live()[0]
        rows = self._nodes(viewer)
        owner = self._owner_port(viewer, slot)
        assert owner is not None, f"no master owns slot {slot}"
        master_id = next(r["id"] for r in rows if r["port"] == owner)
        replicas = [r["port"] for r in rows if r["master"] == master_id
                    and "slave" in r["flags"] and "fail" not in r["flags"]
                    and self.by_port(r["port"]).is_running()]
        return Shard(slot, self.by_port(owner),
                     self.by_port(replicas[0]) if replicas else None)

    def state_ok(self) -> bool:
        return all(self._ask(s, "CLUSTER", "INFO").find("cluster_state:ok") >= 0
                   for s in self.live())

    def _synced(self, replica: RedisServerProcess) -> bool:
        info = self.client(replica).info("replication")
        return bool(info.get("role") == "slave" and info.get("master_link_status") == "up"
                    and not info.get("master_sync_in_progress"))

    def wait_ready(self) -> None:
        """Until every node says ``cluster_state:ok``, sees three masters and
        three replicas, and every replica's link to its master is up."""
        def ready() -> bool:
            if not self.state_ok():
                return False
            for server in self.live():
                rows = self._nodes(server)
                if (sum("master" in r["flags"] for r in rows) != 3
                        or sum("slave" in r["flags"] for r in rows) != 3):
                    return False
            replicas = [r["port"] for r in self._nodes(self.servers[0]) if "slave" in r["flags"]]
            return all(self._synced(self.by_port(port)) for port in replicas)
        _wait(ready, "3 masters, 3 replicas in sync, cluster_state:ok")

    def replicate(self, master: RedisServerProcess, timeout_ms: int = 2000) -> int:
        """``WAIT 1``: until the master's replica acknowledged every write
        the master accepted so far; returns how many replicas did (0: none
        within ``timeout_ms``). Writes accepted later stay asynchronous."""
        return int(self._ask(master, "WAIT", 1, timeout_ms))

    # -- failovers ----------------------------------------------------------------
    def failover(self, key: str, how: Literal["graceful", "kill"]) -> Shard:
        """Fail over the shard owning ``key``; returns the shard as it was
        (``master`` the old one, ``replica`` the promoted one) once the
        promoted replica owns the slot for every live node and
        ``cluster_state`` is ``ok`` everywhere."""
        shard = self.shard_of(key)
        assert shard.replica is not None, f"slot {shard.slot} has no replica to promote"
        if how == "graceful":
            assert self._ask(shard.replica, "CLUSTER", "FAILOVER") in ("OK", b"OK", True)
        else:
            shard.master.kill(signal.SIGKILL)
        self.wait_promoted(shard)
        return shard

    def wait_promoted(self, shard: Shard) -> None:
        """Until ``shard.replica`` is a master owning ``shard.slot`` in every
        live node's view (and the old master, if it is up, its replica), and
        ``cluster_state:ok`` everywhere."""
        assert shard.replica is not None
        new = shard.replica

        def promoted() -> bool:
            if self.client(new).info("replication").get("role") != "master":
                return False
            if any(self._owner_port(s, shard.slot) != new.port for s in self.live()):
                return False
            if shard.master.is_running() and not self._replica_of(shard.master, new):
                return False  # graceful: until every node sees the old master follow
            return self.state_ok()
        _wait(promoted, f"{new.name} (:{new.port}) to own slot {shard.slot}")

    def _replica_of(self, replica: RedisServerProcess, master: RedisServerProcess) -> bool:
        """Whether every live node sees ``replica`` replicating ``master``."""
        for server in self.live():
            rows = {r["port"]: r for r in self._nodes(server)}
            if rows[replica.port]["master"] != rows[master.port]["id"]:
                return False
        return True

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def _start(tmp_path: Path) -> ReplicatedCluster:
    servers: list[RedisServerProcess] = []
    cluster = ReplicatedCluster(servers)
    try:
        for i in range(6):
            workdir = tmp_path / f"node{i}"
            workdir.mkdir(parents=True)
            server = RedisServerProcess(
                workdir=workdir, name=f"rcr{i}",
                extra_args=["--cluster-enabled", "yes",
                            "--cluster-config-file", str(workdir / "nodes.conf"),
                            "--cluster-port", str(free_port()),
                            "--cluster-node-timeout", str(NODE_TIMEOUT_MS)])
            servers.append(server)
            server.start()
        # redis-cli makes the first three masters and pairs each with one of
        # the last three (and warns that they share a host: all are on
        # 127.0.0.1 here)
        subprocess.run(
            ["redis-cli", "--cluster", "create", *[f"127.0.0.1:{s.port}" for s in servers],
             "--cluster-replicas", "1", "--cluster-yes"],
            check=True, capture_output=True, timeout=30)
        cluster.wait_ready()
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture
def redis_cluster_with_replicas(tmp_path: Path) -> Iterator[ReplicatedCluster]:
    """A fresh 3-master, 3-replica Redis Cluster (see the module doc)."""
    try:
        find_executable("redis-cli", "redis-tools")
    except Exception as exc:  # noqa: BLE001 - reported as a skip
        pytest.skip(str(exc))
    cluster = _start(tmp_path / "redis-cluster")
    try:
        yield cluster
    finally:
        cluster.stop()
