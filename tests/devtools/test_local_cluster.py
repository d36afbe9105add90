"""cluster.devtools.local_cluster: LocalCluster and run_local_cluster, in and out of process.

Real redis-server and HAProxy; the socket nodes are the stand-in of
:mod:`tests.devtools.fake_node`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from cluster.devtools.local_cluster import LocalCluster, free_port, run_local_cluster
from cluster.devtools.processes import port_accepts


def test_local_cluster_starts_everything_and_stops_it_by_pid(
    fake_node_path: str, tmp_path: Path
) -> None:
    port = free_port()
    cluster = LocalCluster(
        "demo", nodes=2, port=port, workdir=tmp_path,
        node_module="fakenode", node_env={"PYTHONPATH": fake_node_path},
    )  # fmt: skip
    with cluster:
        assert cluster.redis is not None and cluster.redis.is_running()
        assert [n.name for n in cluster.nodes] == ["node1", "node2"]
        info = requests.get(f"{cluster.url}/info", timeout=5).json()
        assert info["message_queue"] == cluster.redis.url
        assert info["port"] in {n.port for n in cluster.nodes}
        assert cluster.url in cluster.describe()
        processes = cluster.processes()
    assert len(processes) == 4
    assert not any(p.is_running() for p in processes)
    assert not port_accepts("127.0.0.1", port)


def test_local_cluster_with_external_redis_starts_none(
    fake_node_path: str, tmp_path: Path, redis_url: str
) -> None:
    with LocalCluster(
        "demo", nodes=1, port=free_port(), redis_url=redis_url, workdir=tmp_path,
        node_module="fakenode", node_env={"PYTHONPATH": fake_node_path},
    ) as cluster:  # fmt: skip
        assert cluster.redis is None
        assert requests.get(f"{cluster.url}/info", timeout=5).json()["message_queue"] == redis_url


def test_run_local_cluster_reports_a_busy_port(
    fake_node_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        status = run_local_cluster("demo", 1, sock.getsockname()[1], None, node_module="fakenode",
                                   worker=False)
    assert status == 1
    assert "already in use" in capsys.readouterr().err


def test_run_local_cluster_runs_until_sigterm(fake_node_path: str, tmp_path: Path) -> None:
    port = free_port()
    script = (
        "import sys; from cluster.devtools.local_cluster import run_local_cluster; "
        f"sys.exit(run_local_cluster('demo', 2, {port}, None, node_module='fakenode', "
        f"worker=False, state_dir={str(tmp_path)!r}))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([fake_node_path, os.getcwd()])}
    log = open(tmp_path / "out.log", "w+")  # noqa: SIM115 - read while it runs
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=log, stderr=subprocess.STDOUT, env=env
    )
    try:
        deadline = time.monotonic() + 30
        while "ready;" not in (tmp_path / "out.log").read_text():
            assert proc.poll() is None, (tmp_path / "out.log").read_text()
            assert time.monotonic() < deadline, "the cluster did not start in 30 s"
            time.sleep(0.1)
        output = (tmp_path / "out.log").read_text()
        pids = [int(word) for line in output.splitlines() if line.startswith("node")
                for word in line.split()[3:4]]  # fmt: skip
        assert len(pids) == 2
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert "stopped" in (tmp_path / "out.log").read_text()
    assert not port_accepts("127.0.0.1", port)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def _start_runner(tmp_path: Path, fake_node_path: str, port: int, *, worker: bool = False,
                  env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], Path]:
    """run_local_cluster in its own process with the stand-in nodes; its output file."""
    script = (
        "import sys; from cluster.devtools.local_cluster import run_local_cluster; "
        f"sys.exit(run_local_cluster('demo', 2, {port}, None, node_module='fakenode', "
        f"worker={worker}, state_dir={str(tmp_path)!r}))"
    )
    run_env = {k: v for k, v in os.environ.items()
               if k not in ("SECRET_KEY", "CLUSTER_SIGNING_SECRET")}
    run_env.update(env or {})
    run_env["PYTHONPATH"] = os.pathsep.join([fake_node_path, os.getcwd()])
    out = tmp_path / f"runner-{port}.log"
    with open(out, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=log,
                                stderr=subprocess.STDOUT, env=run_env)
    deadline = time.monotonic() + 60
    while "ready;" not in out.read_text():
        assert proc.poll() is None, out.read_text()
        assert time.monotonic() < deadline, "the cluster did not start in 60 s"
        time.sleep(0.1)
    return proc, out


def _child_pids(output: str) -> dict[str, int]:
    pids = {}
    for line in output.splitlines():
        words = line.split()
        if "pid" in words and words[0] in {"haproxy", "node1", "node2", "worker1", "redis"}:
            pids[words[0]] = int(words[words.index("pid") + 1])
    return pids


def _gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_children_die_with_a_sigkilled_runner(fake_node_path: str, tmp_path: Path) -> None:
    port = free_port()
    proc, out = _start_runner(tmp_path, fake_node_path, port, worker=True)
    pids = _child_pids(out.read_text())
    assert set(pids) == {"haproxy", "node1", "node2", "worker1", "redis"}
    proc.kill()  # no chance to clean up: only the kernel's parent-death signal is left
    proc.wait()
    left = [name for name, pid in pids.items() if not _gone(pid)]
    # nobody could clean up after a SIGKILL: the test removes the runner's folder
    shutil.rmtree(out.read_text().split("logs in ")[1].split(")")[0], ignore_errors=True)
    assert left == [], f"still running after the runner was killed: {left}"
    assert not port_accepts("127.0.0.1", port)


def test_sighup_stops_everything_and_leaves_no_folder_or_state(
    fake_node_path: str, tmp_path: Path
) -> None:
    port = free_port()
    proc, out = _start_runner(tmp_path, fake_node_path, port)
    output = out.read_text()
    assert "SECRET_KEY is not set: generated a random one" in output
    assert "try this: open http://127.0.0.1:" in output
    workdir = Path(output.split("logs in ")[1].split(")")[0])
    assert workdir.is_dir() and (tmp_path / f"socketio-cluster-local-{port}.json").exists()
    pids = _child_pids(output)
    proc.send_signal(signal.SIGHUP)  # the terminal was closed
    assert proc.wait(timeout=30) == 0
    assert all(_gone(pid, timeout=1) for pid in pids.values())
    assert not workdir.exists()
    assert not (tmp_path / f"socketio-cluster-local-{port}.json").exists()


def test_a_second_cluster_on_the_port_names_the_running_one(
    fake_node_path: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    proc, _ = _start_runner(tmp_path, fake_node_path, port)
    try:
        status = run_local_cluster("demo", 1, port, None, node_module="fakenode", worker=False,
                                   state_dir=tmp_path)
        assert status == 1
        err = capsys.readouterr().err
        assert f"still running on port {port} (runner pid {proc.pid})" in err
        assert f"kill {proc.pid}" in err
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
