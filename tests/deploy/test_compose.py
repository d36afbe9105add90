"""`docker compose up` for real: Redis, two nodes, HAProxy and a Celery worker
built from the project's Dockerfile, driven by clients from this machine."""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from cluster import Client
from cluster.devtools.haproxy_config import Backend, render_haproxy_config
from cluster.devtools.processes import free_port

ROOT = Path(__file__).resolve().parents[2]
WAIT = 15


def _docker_compose(*args: str, env: dict[str, str] | None = None, timeout: float = 300,
                    check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", "compose", *args], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=timeout, check=check)


def _compose_available() -> str | None:
    if shutil.which("docker") is None:
        return "docker is not installed (.ci/run sets it up with ../shared/tools/docker-offline)"
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0:
        return "the docker compose plugin is missing"
    if subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode != 0:
        return "no Docker engine answers"
    return None


def _skip_or_fail(reason: str) -> None:
    # CI sets the engine up (.ci/run): there, no engine is a broken setup that
    # must not pass green as a skip
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


def test_haproxy_config_of_the_compose_file_is_the_rendered_one() -> None:
    rendered = render_haproxy_config(
        [Backend("node1", "node1", 5000), Backend("node2", "node2", 5000)], 8000,
        bind_host="0.0.0.0", sticky=False)
    assert (ROOT / "deploy" / "haproxy.cfg").read_text() == rendered


def test_the_worker_runs_the_workers_command() -> None:
    """The worker service runs ``python -m workers worker``: the cluster package never
    imports workers, so the worker's command line is its own."""
    import yaml

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["services"]["worker"]["command"][:4] == ["python", "-m", "workers", "worker"]


#: what a deployment sets (the containers refuse to start without them)
DEPLOYMENT_ENV = {"SECRET_KEY": "compose-test-secret-key-0123456789",
                  "CLUSTER_SIGNING_SECRET": "compose-signing-secret-0123"}
SECRETS = ("SECRET_KEY", "CLUSTER_SIGNING_SECRET", "CLUSTER_ALLOW_UNSIGNED_BUS")
ENTRYPOINT = ROOT / "deploy" / "require-secrets"


def _without(*names: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in names}


def _compose_file() -> dict[str, Any]:
    import yaml  # type: ignore[import-untyped]

    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def test_compose_file_is_valid() -> None:
    reason = _compose_available()
    if reason:
        _skip_or_fail(reason)
    env = dict(_without(*SECRETS), **DEPLOYMENT_ENV)
    result = _docker_compose("config", "-q", check=False, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    services = _docker_compose("config", "--services", timeout=60, env=env).stdout.split()
    assert sorted(services) == ["lb", "node1", "node2", "redis", "worker"]


def test_compose_commands_work_in_a_shell_without_the_secrets() -> None:
    """``docker compose down`` (and config) in a fresh shell: the secrets are
    checked when a container starts, not when Compose reads its file."""
    reason = _compose_available()
    if reason:
        _skip_or_fail(reason)
    env = dict(_without(*SECRETS), COMPOSE_PROJECT_NAME=f"sio-test-{uuid.uuid4().hex[:8]}")
    config = _docker_compose("config", "-q", check=False, timeout=60, env=env)
    assert config.returncode == 0, config.stderr
    # a project that never ran: nothing to remove, and nothing else touched
    down = _docker_compose("down", "--timeout", "1", check=False, timeout=60, env=env)
    assert down.returncode == 0, down.stderr


def test_no_compose_command_needs_the_secrets() -> None:
    # the static half of the check above, for machines without Compose
    text = (ROOT / "docker-compose.yml").read_text()
    code = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in code if ":?" in line]
    compose = _compose_file()
    for service in ("node1", "node2", "worker"):
        env = compose["services"][service]["environment"]
        assert env["SECRET_KEY"] == "${SECRET_KEY:-}", service
        assert env["CLUSTER_SIGNING_SECRET"] == "${CLUSTER_SIGNING_SECRET:-}", service
        assert "CLUSTER_ALLOW_UNSIGNED_BUS" not in env
        # the image's entrypoint checks them: no service replaces it
        assert "entrypoint" not in compose["services"][service], service
        assert compose["services"][service]["image"] == "socketio-cluster:${IMAGE_TAG:-local}"
    dockerfile = (ROOT / "Dockerfile").read_text().splitlines()
    assert "COPY deploy/require-secrets /usr/local/bin/require-secrets" in dockerfile
    (entrypoint,) = [line for line in dockerfile if line.startswith("ENTRYPOINT ")]
    assert entrypoint == 'ENTRYPOINT ["/usr/local/bin/require-secrets"]'
    # and the balancer it runs hides the probes and needs no sticky cookie
    # (the nodes forward a session's requests to its owner)
    cfg = (ROOT / "deploy" / "haproxy.cfg").read_text()
    assert "http-request deny deny_status 404 if node_internal" in cfg
    assert "balance roundrobin" in cfg and "cookie" not in cfg
    for service in ("node1", "node2"):
        env = compose["services"][service]["environment"]
        assert env["CLUSTER_ADVERTISE_URL"] == f"http://{service}:5000", service


def test_the_nodes_runtime_is_a_setting_and_the_image_has_both() -> None:
    """``CLUSTER_ASYNC_MODE`` picks the nodes' runtime (eventlet unless set),
    and the image installs both at the pins the suite runs."""
    from cluster import runtime

    compose = _compose_file()
    for service in ("node1", "node2"):
        env = compose["services"][service]["environment"]
        assert env["CLUSTER_ASYNC_MODE"] == "${CLUSTER_ASYNC_MODE:-eventlet}", service
    assert runtime.DEFAULT_MODE == "eventlet" and runtime.ENV_VAR == "CLUSTER_ASYNC_MODE"
    dockerfile = (ROOT / "Dockerfile").read_text().splitlines()
    assert "COPY constraints/runtime.txt ./constraints/runtime.txt" in dockerfile
    (install,) = [line for line in dockerfile if line.startswith("RUN pip install ")]
    assert install.startswith('RUN pip install -c constraints/runtime.txt ".[demo,gevent]"')
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert not [line for line in ignored if "constraints" in line or line.endswith(".txt")]


def _entrypoint(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], bool]:
    """Run the image's entrypoint as the container would, with ``env`` as its
    secrets; return the result and whether the command behind it ran."""
    marker = tmp_path / "ran"
    marker.unlink(missing_ok=True)
    done = subprocess.run(
        ["sh", str(ENTRYPOINT), "sh", "-c", 'touch "$0"; echo started; exit 7', str(marker)],
        env=dict(_without(*SECRETS), **env), capture_output=True, text=True, timeout=30,
        check=False)
    return done, marker.exists()


@pytest.mark.parametrize(("env", "missing"), [
    ({}, "SECRET_KEY"),
    ({"SECRET_KEY": " \t", "CLUSTER_SIGNING_SECRET": "s" * 32}, "SECRET_KEY"),
    ({"SECRET_KEY": "k" * 32}, "CLUSTER_SIGNING_SECRET"),
    # what the compose file passes when the shell has neither
    ({"SECRET_KEY": "", "CLUSTER_SIGNING_SECRET": ""}, "SECRET_KEY"),
    ({"SECRET_KEY": "k" * 32, "CLUSTER_SIGNING_SECRET": ""}, "CLUSTER_SIGNING_SECRET"),
    ({"SECRET_KEY": "k" * 32, "CLUSTER_SIGNING_SECRET": "",
      "CLUSTER_ALLOW_UNSIGNED_BUS": "0"}, "CLUSTER_SIGNING_SECRET"),
], ids=["nothing", "blank-key", "no-signing", "compose-empty", "empty-signing", "opt-out-off"])
def test_the_entrypoint_refuses_to_start_without_a_secret(
        tmp_path: Path, env: dict[str, str], missing: str) -> None:
    done, ran = _entrypoint(tmp_path, **env)
    assert (done.returncode, ran, done.stdout) == (2, False, "")
    # one line: the variable, and how to make one
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"error: {missing} is not set: "), line
    assert f"{missing}=$(openssl rand -hex 32)" in line and ".env" in line


@pytest.mark.parametrize("env", [
    {"SECRET_KEY": "k" * 32, "CLUSTER_SIGNING_SECRET": "s" * 32},
    # an unsigned bus chosen on purpose (the node then warns)
    {"SECRET_KEY": "k" * 32, "CLUSTER_ALLOW_UNSIGNED_BUS": "1"},
    {"SECRET_KEY": "k" * 32, "CLUSTER_SIGNING_SECRET": "", "CLUSTER_ALLOW_UNSIGNED_BUS": "True"},
], ids=["signed", "unsigned-opt-out", "unsigned-opt-out-empty-secret"])
def test_the_entrypoint_runs_the_command_with_the_secrets(
        tmp_path: Path, env: dict[str, str]) -> None:
    done, ran = _entrypoint(tmp_path, **env)
    # exec'd: the command's own output and exit status
    assert (done.returncode, ran, done.stdout, done.stderr) == (7, True, "started\n", "")


@pytest.mark.parametrize("command", [
    ["-m", "cluster", "node", "--app", "demo.app:socketio"],
    ["-m", "workers", "worker"],
], ids=["node", "worker"])
def test_an_empty_signing_secret_stops_the_node_and_the_worker(command: list[str]) -> None:
    """Behind the entrypoint, the processes refuse the empty value the compose
    file passes too: one ``error:`` line and exit code 2, before any Redis."""
    redis_url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens: never reached
    argv = [sys.executable, *command]
    if command[1] == "cluster":
        argv += ["--port", str(free_port()), "--message-queue", redis_url]
    env = dict(_without(*SECRETS), SECRET_KEY="k" * 32, CLUSTER_SIGNING_SECRET="",
               MESSAGE_QUEUE_URL=redis_url)
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(("error: This node has a message queue but no signing secret",
                            "error: The worker has a message queue but no signing secret")), line
    assert "CLUSTER_SIGNING_SECRET" in line


@pytest.fixture(params=["eventlet", "gevent"])
def compose_cluster(request: pytest.FixtureRequest) -> Iterator[str]:
    """The compose file's cluster, its nodes on each runtime in turn (the
    image has both; ``CLUSTER_ASYNC_MODE`` picks one)."""
    reason = _compose_available()
    if reason:
        _skip_or_fail(reason)
    project = f"sio-test-{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = dict(os.environ, CLUSTER_PORT=str(port), COMPOSE_PROJECT_NAME=project,
               CONNECTION_STATE_RECOVERY="60", CLUSTER_ASYNC_MODE=request.param,
               **DEPLOYMENT_ENV)
    try:
        up = _docker_compose("up", "-d", "--build", "--wait", "--wait-timeout", "240",
                             env=env, timeout=600, check=False)
        if up.returncode != 0:
            logs = _docker_compose("logs", "--tail", "40", env=env, check=False).stdout
            pytest.fail(f"docker compose up failed:\n{up.stderr[-3000:]}\n{logs[-4000:]}")
        os.environ["_SIO_COMPOSE_PROJECT"] = project
        os.environ["_SIO_COMPOSE_RUNTIME"] = request.param
        yield f"http://127.0.0.1:{port}"
    finally:
        # the containers' last lines, which pytest shows when the test failed
        # (a first connect once got no CONNECT reply in CI: see its logs next time)
        print(_docker_compose("logs", "--tail", "80", "--timestamps", env=env,
                              check=False).stdout[-20000:])
        _docker_compose("down", "-v", "--timeout", "5", env=env, timeout=180, check=False)
        os.environ.pop("_SIO_COMPOSE_PROJECT", None)
        os.environ.pop("_SIO_COMPOSE_RUNTIME", None)


def _login(url: str, name: str) -> requests.Session:
    http = requests.Session()
    response = http.post(url + "/login", data={"name": name}, timeout=WAIT)
    assert response.status_code == 200 and name in response.text
    return http


def _chat_client(url: str, http: requests.Session) -> tuple[Client, queue.Queue[Any]]:
    events: queue.Queue[Any] = queue.Queue()
    client = Client(http_session=http, reconnection_delay=0.3, reconnection_delay_max=1)
    client.on("status", lambda data: events.put(("status", data)))
    client.on("chat", lambda data: events.put(("chat", data)))
    client.connect(url, auth={"client": "compose-test"}, wait_timeout=WAIT)
    return client, events


def _next(events: queue.Queue[Any], kind: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got, data = events.get(timeout=max(0.01, deadline - time.monotonic()))
        if got == kind:
            return data


@pytest.mark.timeout(900)
def test_compose_up_runs_the_demo_cluster(compose_cluster: str) -> None:
    url = compose_cluster
    project = os.environ["_SIO_COMPOSE_PROJECT"]
    env = dict(os.environ, COMPOSE_PROJECT_NAME=project)
    states = _docker_compose("ps", "--format", "{{.Service}} {{.Health}}", env=env).stdout
    assert sorted(states.split("\n")[:-1] if states.endswith("\n") else states.split("\n")) == [
        "lb healthy", "node1 healthy", "node2 healthy", "redis healthy", "worker healthy"]
    # each node runs on the runtime the setting named
    runtime = os.environ["_SIO_COMPOSE_RUNTIME"]
    for node in ("node1", "node2"):
        logs = _docker_compose("logs", node, env=env).stdout
        assert f"Node listening on http://0.0.0.0:5000 ({runtime})" in logs, logs[-2000:]
    # the probes and metrics are the balancer's and Prometheus's, not the public's
    for path in ("/readyz", "/healthz", "/metrics"):
        assert requests.get(url + path, timeout=WAIT).status_code == 404, path
    # no sticky cookie: the nodes forward each session's polls to its owner
    polled = requests.get(url + "/socket.io/?EIO=4&transport=polling", timeout=WAIT)
    assert polled.status_code == 200 and "SERVERID" not in polled.headers.get("Set-Cookie", "")

    alice, alice_events = _chat_client(url, _login(url, "alice"))
    alice_node = _next(alice_events, "status")["node"]
    for attempt in range(6):
        bob, bob_events = _chat_client(url, _login(url, f"bob{attempt}"))
        bob_node = _next(bob_events, "status")["node"]
        if bob_node != alice_node:
            break
        bob.disconnect()
        # round robin with no cookie: a client makes a fixed number of
        # requests, so one extra request (no redirect followed) shifts bob's
        requests.get(url + "/", timeout=WAIT, allow_redirects=False)
    assert {alice_node, bob_node} == {"node1", "node2"}
    alice.call("join", {"room": "compose"}, timeout=WAIT)
    bob.call("join", {"room": "compose"}, timeout=WAIT)
    bob.call("say", {"text": "across containers", "room": "compose"}, timeout=WAIT)
    assert _next(alice_events, "chat")["text"] == "across containers"

    # alice's container dies; she comes back through HAProxy on the other one
    old_sid, bob_sid = alice.get_sid(), bob.get_sid()
    _docker_compose("kill", "-s", "SIGKILL", alice_node, env=env, timeout=60)
    deadline = time.monotonic() + 30
    while not (alice.connected and alice.get_sid() == old_sid and alice.recovered):
        assert time.monotonic() < deadline, "alice did not recover on the other node"
        time.sleep(0.1)
    # bob's session lives on the surviving node, but with no affinity his
    # requests (or his websocket, spliced) may have passed through the dead
    # one: then he too comes back, and recovers, with his sid
    while not (bob.connected and "/" in bob.namespaces and bob.get_sid() == bob_sid):
        assert time.monotonic() < deadline, "bob did not come back with his session"
        time.sleep(0.1)
    bob.call("say", {"text": "after the crash", "room": "compose"}, timeout=WAIT)
    assert _next(alice_events, "chat")["text"] == "after the crash"
    me = alice.call("whoami", timeout=WAIT)
    assert me["name"] == "alice" and me["rooms"] == ["compose"] and me["node"] == bob_node

    # the same demo protocol as ./dev up: the client the image carries (the
    # locked npm version), the cluster-wide online list, a job on the worker
    served = requests.get(url + "/static/socket.io.min.js", timeout=WAIT)
    assert served.status_code == 200 and served.text.startswith("/*!\n * Socket.IO v4.8.")
    online = bob.call("online", {"room": "compose"}, timeout=WAIT)
    assert sorted((m["name"], m["node"]) for m in online["members"]) == sorted(
        [("alice", bob_node), (f"bob{attempt}", bob_node)])
    results: queue.Queue[Any] = queue.Queue()
    bob.on("job_result", lambda data, *offset: results.put(data))
    job = bob.call("start_job", {"steps": 2}, timeout=WAIT)
    assert results.get(timeout=30)["job_id"] == job["job_id"]
    alice.disconnect()
    bob.disconnect()


def test_the_secret_key_has_no_well_known_default() -> None:
    # a default key lets anyone forge a login cookie: the compose file passes
    # the shell's (empty without one: the entrypoint then refuses, above)
    compose = _compose_file()
    for service in ("node1", "node2", "worker"):
        value = compose["services"][service]["environment"]["SECRET_KEY"]
        assert value == "${SECRET_KEY:-}", (service, value)
    for path in ("docker-compose.yml", "Dockerfile", "demo/app.py", "deploy/require-secrets"):
        assert "change-me" not in (ROOT / path).read_text(), path
