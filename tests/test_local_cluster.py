"""Integration tests for cluster.processes / cluster.local_cluster and the harness.

Real redis-server and HAProxy; the socket nodes are a stand-in (a stdlib HTTP
server speaking the runner's command line) so that these tests exercise the
process management, not the node.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from cluster.local_cluster import (
    ExecutableNotFoundError,
    HAProxyProcess,
    LocalCluster,
    NodeProcess,
    ProcessStartError,
    RedisServerProcess,
    free_port,
    run_local_cluster,
)
from cluster.haproxy_config import cookie_value
from cluster.processes import find_executable, port_accepts

# `python -m fakenode node --app APP --host H --port P [--message-queue URL]`.
# GET / answers the node's port; /info a JSON description; /readyz turns 503
# after POST /drain; GET /ws with an Upgrade header switches to a raw echo.
FAKE_NODE = textwrap.dedent(
    """
    import argparse, base64, hashlib, json, os, sys, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["node"])
    parser.add_argument("--app", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--message-queue")
    parser.add_argument("--log-format")
    args = parser.parse_args()
    if args.app == "fail":
        print("stand-in: cannot load app 'fail'", file=sys.stderr)
        sys.exit(3)
    if args.app == "hang":
        time.sleep(3600)
    state = {"ready": True}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def reply(self, status, body):
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/healthz":
                self.reply(200, "ok")
            elif self.path == "/readyz":
                self.reply(200 if state["ready"] else 503, "")
            elif self.path == "/info":
                self.reply(200, json.dumps({
                    "port": args.port, "app": args.app, "pid": os.getpid(),
                    "message_queue": args.message_queue,
                    "env_redis_url": os.environ.get("REDIS_URL"),
                    "cookie": self.headers.get("Cookie"),
                }))
            elif self.path == "/ws" and self.headers.get("Upgrade", "").lower() == "websocket":
                key = self.headers["Sec-WebSocket-Key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
                self.send_response(101)
                self.send_header("Upgrade", "websocket")
                self.send_header("Connection", "Upgrade")
                self.send_header("Sec-WebSocket-Accept",
                                 base64.b64encode(hashlib.sha1(key.encode()).digest()).decode())
                self.end_headers()
                self.wfile.flush()
                while data := self.connection.recv(4096):
                    self.connection.sendall(data)
                self.close_connection = True
            else:
                self.reply(200, str(args.port))

        def do_POST(self):
            state["ready"] = False
            self.reply(200, "draining")

        def log_message(self, fmt, *a):
            if "/readyz" not in self.requestline:
                super().log_message(fmt, *a)

    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()
    """
)


@pytest.fixture(scope="module")
def fake_node_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A directory holding the ``fakenode`` package, for PYTHONPATH."""
    root = tmp_path_factory.mktemp("fakenode")
    (root / "fakenode").mkdir()
    (root / "fakenode" / "__init__.py").write_text("")
    (root / "fakenode" / "__main__.py").write_text(FAKE_NODE)
    return str(root)


@pytest.fixture
def fake_nodes(fake_node_path: str, tmp_path: Path) -> Callable[..., list[NodeProcess]]:
    started: list[NodeProcess] = []

    def start(count: int = 2, app: str = "demo", **kwargs: object) -> list[NodeProcess]:
        nodes = []
        for _ in range(count):
            name = f"node{len(started) + 1}"
            node = NodeProcess(
                app, name=name, module="fakenode", env={"PYTHONPATH": fake_node_path},
                log_path=tmp_path / f"{name}.log", **kwargs,  # type: ignore[arg-type]
            )  # fmt: skip
            started.append(node)
            nodes.append(node.start())
        return nodes

    yield start
    for node in started:
        node.stop(grace=2)


def _served_by(session: requests.Session, url: str) -> int:
    response = session.get(url, timeout=5)
    assert response.status_code == 200, response.text
    return int(response.text)


# -- helpers and redis-server ---------------------------------------------------


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


# -- NodeProcess ------------------------------------------------------------------


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


# -- HAProxy -----------------------------------------------------------------------


def test_haproxy_keeps_a_session_on_its_node_and_balances_new_ones(
    fake_nodes: Callable[..., list[NodeProcess]], haproxy_factory: Callable[..., HAProxyProcess]
) -> None:
    nodes = fake_nodes(2)
    proxy = haproxy_factory(nodes)
    ports = {n.port for n in nodes}

    fresh = {_served_by(requests.Session(), proxy.url) for _ in range(4)}
    assert fresh == ports  # round robin without a cookie

    session = requests.Session()
    first = _served_by(session, proxy.url)
    sticky_name = next(n.name for n in nodes if n.port == first)
    # opaque: the cookie names no backend, but pins this one
    assert session.cookies.get("SERVERID") == cookie_value(sticky_name) != sticky_name
    assert {_served_by(session, proxy.url) for _ in range(6)} == {first}
    # `indirect`: the node never sees the balancer's cookie.
    assert "SERVERID" not in (session.get(f"{proxy.url}/info", timeout=5).json()["cookie"] or "")


def test_haproxy_fails_over_when_the_sticky_node_is_killed(
    fake_nodes: Callable[..., list[NodeProcess]], haproxy_factory: Callable[..., HAProxyProcess]
) -> None:
    nodes = fake_nodes(2)
    proxy = haproxy_factory(nodes)
    session = requests.Session()
    first = _served_by(session, proxy.url)
    victim = next(n for n in nodes if n.port == first)
    survivor = next(n for n in nodes if n is not victim)

    victim.kill(signal.SIGKILL)
    # Redispatch: served by the survivor at once, before the checks notice.
    assert _served_by(session, proxy.url) == survivor.port
    assert session.cookies.get("SERVERID") == cookie_value(survivor.name)
    proxy.wait_for_state(victim.name, "DOWN", timeout=5)

    victim.start()
    proxy.wait_for_state(victim.name, "UP", timeout=5)
    assert {_served_by(requests.Session(), proxy.url) for _ in range(4)} == {
        victim.port,
        survivor.port,
    }
    assert _served_by(session, proxy.url) == survivor.port  # stays where it went


def test_haproxy_stops_routing_to_a_draining_node(
    fake_nodes: Callable[..., list[NodeProcess]], haproxy_factory: Callable[..., HAProxyProcess]
) -> None:
    nodes = fake_nodes(2)
    proxy = haproxy_factory(nodes)
    session = requests.Session()
    first = _served_by(session, proxy.url)
    draining = next(n for n in nodes if n.port == first)

    assert requests.post(f"{draining.url}/drain", timeout=5).status_code == 200
    proxy.wait_for_state(draining.name, "DOWN", timeout=5)
    assert _served_by(session, proxy.url) != draining.port
    assert {_served_by(requests.Session(), proxy.url) for _ in range(4)} == {
        n.port for n in nodes if n is not draining
    }


def test_haproxy_factory_waits_for_every_node_to_pass_a_check(
    fake_nodes: Callable[..., list[NodeProcess]], haproxy_factory: Callable[..., HAProxyProcess]
) -> None:
    nodes = fake_nodes(2)
    requests.post(f"{nodes[1].url}/drain", timeout=5)  # /readyz now 503
    proxy = haproxy_factory(nodes, wait_ready=False)
    with pytest.raises(ProcessStartError, match=r"within 1\.5 s: node2: DOWN"):
        proxy.wait_all_up(timeout=1.5)
    assert proxy.server_states()["node1"] == "UP"


def test_haproxy_passes_websocket_upgrades_through(
    fake_nodes: Callable[..., list[NodeProcess]], haproxy_factory: Callable[..., HAProxyProcess]
) -> None:
    nodes = fake_nodes(1)
    # Short HTTP timeouts: the upgraded connection must outlive them.
    proxy = haproxy_factory(nodes, client_timeout="1s", server_timeout="1s", tunnel_timeout="30s")
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(
            (
                "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            assert chunk, f"connection closed before the 101: {head!r}"
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head
        accept = hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
        assert base64.b64encode(accept) in head
        for message in (b"hello", b"after the http timeouts"):
            sock.sendall(message)
            assert sock.recv(4096) == message
            time.sleep(1.5)


# -- LocalCluster and run_local_cluster -------------------------------------------


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
        "import sys; from cluster.local_cluster import run_local_cluster; "
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


# -- the runner as a newcomer meets it (issue 18) ---------------------------------


def _start_runner(tmp_path: Path, fake_node_path: str, port: int, *, worker: bool = False,
                  env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], Path]:
    """run_local_cluster in its own process with the stand-in nodes; its output file."""
    script = (
        "import sys; from cluster.local_cluster import run_local_cluster; "
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


def test_leftovers_of_a_dead_runner_are_named_with_their_pids(tmp_path: Path) -> None:
    from cluster.local_state import StateFile

    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        state = StateFile(4321, tmp_path)
        state.path.write_text(json.dumps({
            "port": 4321, "runner_pid": dead.pid, "runner_argv": [sys.executable, "-c", "pass"],
            "started": time.time(), "workdir": str(tmp_path),
            "processes": [
                {"name": "node1", "pid": orphan.pid, "argv": [sys.executable, "-c"]},
                # a reused pid whose command line differs is not ours
                {"name": "node2", "pid": os.getpid(), "argv": ["/usr/sbin/haproxy", "-f"]},
            ]}))  # fmt: skip
        problem = state.problem()
        assert problem is not None
        assert f"node1 (pid {orphan.pid})" in problem and f"kill {orphan.pid}" in problem
        assert "node2" not in problem
    finally:
        orphan.kill()
        orphan.wait()
    assert state.problem() is None  # nothing of ours runs: the stale file goes
    assert not state.path.exists()


def test_dev_up_help_is_about_up() -> None:
    done = subprocess.run(["bash", str(Path(__file__).resolve().parents[1] / "dev"), "up",
                           "--help"], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0
    assert done.stdout.startswith("usage: ./dev up")
    assert "--no-worker" in done.stdout and "--app MODULE:ATTR" in done.stdout


def test_dev_up_serves_an_app_from_the_users_directory(tmp_path: Path) -> None:
    """./dev up --app mymodule:socketio, run from the application's folder."""
    (tmp_path / "i18_myapp.py").write_text(textwrap.dedent("""
        from flask import Flask
        from cluster import SocketIO
        app = Flask(__name__)
        app.config["SECRET_KEY"] = "x" * 32
        socketio = SocketIO(app)

        @app.route("/")
        def index():
            return "my app from my folder"
        """))
    port = free_port()
    dev = Path(__file__).resolve().parents[1] / "dev"
    out = tmp_path / "up.log"
    with open(out, "wb") as log:
        proc = subprocess.Popen(["bash", str(dev), "up", "--app", "i18_myapp:socketio",
                                 "--nodes", "1", "--no-worker", "--port", str(port)],
                                cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120  # ./dev checks its setup first
        while "ready;" not in out.read_text():
            assert proc.poll() is None, out.read_text()
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.2)
        response = requests.get(f"http://127.0.0.1:{port}/", timeout=5)
        assert response.text == "my app from my folder"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not port_accepts("127.0.0.1", port)


def test_worker_log_lines_carry_its_name_in_json(tmp_path: Path) -> None:
    from cluster.local_cluster import WorkerProcess

    with RedisServerProcess(workdir=tmp_path / "redis") as redis:
        worker = WorkerProcess(redis.url, log_format="json", log_path=tmp_path / "worker1.log",
                               env={"CLUSTER_SIGNING_SECRET": "w" * 32})
        with worker:
            # Celery's banner is printed, not logged; every logged line is JSON
            logged = [json.loads(line) for line in worker.log_text().splitlines()
                      if line.startswith("{")]
    assert any(entry["message"].endswith(" ready.") for entry in logged)
    assert logged and all(entry["node"] == "worker1" for entry in logged)
    assert {"time", "level", "logger", "sid"} <= set(logged[0])
