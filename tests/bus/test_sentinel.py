"""redis+sentinel:// URLs: the master is found through Sentinel, and a
failover moves the bus to the new master."""
from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import socketio

from cluster.bus import create_manager
from cluster.devtools.processes import RedisServerProcess, free_port
from tests.bus.loopback import wait_for


def fake_node(url: str) -> tuple[Any, list[str]]:
    manager = create_manager(url, heartbeat_interval=0.2, max_backoff=0.5)
    server = socketio.Server(client_manager=manager, async_mode="threading")
    got: list[str] = []
    server._send_eio_packet = lambda eio, pkt: got.append(pkt.data)
    manager.initialize()
    return manager, got


@pytest.fixture
def sentinel_setup(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A master, its replica and one Sentinel (quorum 1) watching them."""
    master = RedisServerProcess(workdir=tmp_path / "m", name="master")
    master.start()
    replica = RedisServerProcess(
        workdir=tmp_path / "r", name="replica",
        extra_args=["--replicaof", "127.0.0.1", str(master.port)])
    replica.start()
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor busmaster 127.0.0.1 {master.port} 1\n"
        "sentinel down-after-milliseconds busmaster 1000\n"
        "sentinel failover-timeout busmaster 5000\n")
    sentinel = RedisServerProcess(port=port, workdir=tmp_path / "s",
                                  name="sentinel")
    sentinel.command = lambda: [sentinel.executable, str(conf), "--sentinel"]  # type: ignore[method-assign]
    sentinel.start()
    try:
        wait_for(lambda: b"connected_slaves:1" in subprocess.run(
            ["redis-cli", "-p", str(master.port), "info", "replication"],
            capture_output=True).stdout, timeout=10)
        # the Sentinel learns of replicas from the master's INFO, every 10 s:
        # a failover asked for before that is refused (NOGOODSLAVE)
        wait_for(lambda: _sentinel_knows_replica(port, replica.port), timeout=20)
        yield {"url": f"redis+sentinel://127.0.0.1:{port}/0/busmaster",
               "sentinel": sentinel, "master": master, "replica": replica}
    finally:
        for process in (sentinel, replica, master):
            process.stop()


def _sentinel_knows_replica(sentinel_port: int, replica_port: int) -> bool:
    """Whether the Sentinel lists the replica as a healthy one."""
    out = subprocess.run(["redis-cli", "-p", str(sentinel_port), "--no-raw",
                          "sentinel", "replicas", "busmaster"],
                         capture_output=True, text=True, timeout=5).stdout
    return f'"{replica_port}"' in out and "s_down" not in out and "disconnected" not in out


def test_sentinel_url_delivers_and_survives_a_failover(sentinel_setup) -> None:
    url = sentinel_setup["url"]
    receiver, got = fake_node(url)
    sender, _ = fake_node(url)
    try:
        sid = receiver.connect("e1", "/")
        wait_for(lambda: receiver.ready and sender.ready)
        emitter = create_manager(url, write_only=True)  # a worker's
        emitter.emit("hi", 0, room=sid)
        wait_for(lambda: got == ['2["hi",0]'])
        # accepted ("OK"), not refused: the test is about following it
        wait_for(lambda: subprocess.run(
            ["redis-cli", "-p", str(sentinel_setup["sentinel"].port),
             "sentinel", "failover", "busmaster"],
            capture_output=True, text=True, timeout=5).stdout.strip() == "OK", timeout=15)
        # the replica becomes master; both managers must follow it
        replica_port = sentinel_setup["replica"].port

        def promoted() -> bool:
            out = subprocess.run(
                ["redis-cli", "-p", str(replica_port), "role"],
                capture_output=True, text=True).stdout
            return out.startswith("master")
        wait_for(promoted, timeout=15)
        deadline = time.monotonic() + 15
        for source in (sender, emitter):  # a node, then a write-only emitter
            n = 1000 if source is emitter else 0
            while True:
                n += 1
                source.emit("hi", n, to=sid)
                if time.monotonic() > deadline:
                    pytest.fail(f"no delivery after the failover: {got[-3:]}")
                time.sleep(0.1)
                if f'2["hi",{n}]' in got:
                    break
        assert receiver.ready and sender.ready
        # and they really moved: both listen on the new master now
        new_master = sentinel_setup["replica"].client()
        wait_for(lambda: dict(new_master.pubsub_numsub("flask-socketio"))[
            b"flask-socketio"] == 2, timeout=10)
        new_master.close()
    finally:
        receiver.close()
        sender.close()
