"""cluster.devtools.processes: free ports, redis-server and node processes, by PID.

Real redis-server; the socket nodes are the stand-in of :mod:`tests.devtools.fake_node`.
"""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import pytest
import requests

from cluster.devtools.processes import (
    ExecutableNotFoundError,
    NodeProcess,
    ProcessStartError,
    RedisServerProcess,
    find_executable,
    free_port,
    port_accepts,
)


def test_free_port_is_free_and_never_the_system_redis() -> None:
    ports = {free_port() for _ in range(20)}
    assert 6379 not in ports
    for port in list(ports)[:3]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # raises if it were taken


def test_missing_program_error_names_the_install_command() -> None:
    with pytest.raises(ExecutableNotFoundError, match="install it with: apt-get install pkg-x"):
        find_executable("no-such-program-for-cluster-tests", "pkg-x")


def test_redis_server_survives_sigkill_and_restarts_on_the_same_port(tmp_path: Path) -> None:
    server = RedisServerProcess(workdir=tmp_path)
    try:
        server.start()
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        client = server.client(socket_timeout=5)
        client.set("k", "v")
        assert client.get("k") == b"v"
        first_pid = server.pid

        server.kill(signal.SIGKILL)
        assert not server.is_running()
        assert server.returncode == -signal.SIGKILL
        assert not port_accepts("127.0.0.1", server.port)

        server.start()
        assert server.is_running()
        assert server.pid != first_pid
        assert client.ping()  # same URL, new process
        assert client.get("k") is None  # no persistence: a crash loses the data
        client.close()
        assert list(tmp_path.glob("*.rdb")) == []
    finally:
        server.stop()
    assert not server.is_running()
    assert server.log_text().count("starting:") == 2


def test_start_refuses_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        server = RedisServerProcess(sock.getsockname()[1], workdir=tmp_path)
        with pytest.raises(ProcessStartError, match="already in use"):
            server.start()
    assert server.pid is None


def test_redis_url_fixture_flushes(
    redis_server: RedisServerProcess, request: pytest.FixtureRequest
) -> None:
    client = redis_server.client()
    client.set("left-over", "1")
    url = request.getfixturevalue("redis_url")
    assert url == redis_server.url
    assert client.exists("left-over") == 0
    client.close()


def test_redis_url_fixture_restarts_a_killed_server(
    redis_server: RedisServerProcess, request: pytest.FixtureRequest
) -> None:
    port = redis_server.port
    redis_server.kill(signal.SIGKILL)
    assert not redis_server.is_running()
    request.getfixturevalue("redis_url")
    assert redis_server.is_running()
    assert redis_server.port == port
    client = redis_server.client()
    assert client.ping()
    client.close()


def test_node_process_kill_restart_and_stop(
    fake_node_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # must not leak into the node
    node = NodeProcess(
        "demo", module="fakenode", env={"PYTHONPATH": fake_node_path},
        message_queue="redis://127.0.0.1:9/0", log_path=tmp_path / "n.log",
    )  # fmt: skip
    try:
        node.start()
        info = requests.get(f"{node.url}/info", timeout=5).json()
        assert info["pid"] == node.pid
        assert info["message_queue"] == "redis://127.0.0.1:9/0"
        assert info["env_redis_url"] is None

        node.kill(signal.SIGKILL)
        assert not node.is_running()
        assert node.http_status("/healthz") is None

        node.start()
        assert requests.get(f"{node.url}/info", timeout=5).json()["pid"] == node.pid
    finally:
        status = node.stop(grace=2)
    assert status == -signal.SIGTERM
    assert node.log_text().count("starting:") == 2
    assert "GET /info" in node.log_text()


def test_node_that_exits_while_starting_reports_its_log(fake_node_path: str) -> None:
    node = NodeProcess("fail", module="fakenode", env={"PYTHONPATH": fake_node_path})
    with pytest.raises(ProcessStartError, match="exited with status 3") as excinfo:
        node.start()
    assert "cannot load app 'fail'" in str(excinfo.value)


def test_node_that_never_becomes_healthy_is_stopped(fake_node_path: str) -> None:
    node = NodeProcess(
        "hang", module="fakenode", env={"PYTHONPATH": fake_node_path}, start_timeout=1.0
    )
    with pytest.raises(ProcessStartError, match="did not become ready within 1 s"):
        node.start()
    assert not node.is_running()


def test_free_port_never_hands_out_a_port_twice() -> None:
    # a port is free until its owner binds it: two nodes of one test, asked
    # for one after the other, were once given the same port (and, with
    # SO_REUSEPORT, both listened on it)
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
