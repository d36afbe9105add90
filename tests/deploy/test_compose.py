"""`docker compose up` for real: Redis, two nodes, HAProxy and a Celery worker
built from the project's Dockerfile, driven by clients from this machine."""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from cluster import Client
from cluster.haproxy_config import Backend, render_haproxy_config
from cluster.processes import free_port

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


def test_haproxy_config_of_the_compose_file_is_the_rendered_one() -> None:
    rendered = render_haproxy_config(
        [Backend("node1", "node1", 5000), Backend("node2", "node2", 5000)], 8000,
        bind_host="0.0.0.0")
    assert (ROOT / "deploy" / "haproxy.cfg").read_text() == rendered


def test_compose_file_is_valid() -> None:
    reason = _compose_available()
    if reason:
        pytest.skip(reason)
    result = _docker_compose("config", "-q", check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    services = _docker_compose("config", "--services", timeout=60).stdout.split()
    assert sorted(services) == ["lb", "node1", "node2", "redis", "worker"]


@pytest.fixture()
def compose_cluster() -> Iterator[str]:
    reason = _compose_available()
    if reason:
        pytest.skip(reason)
    project = f"sio-test-{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = dict(os.environ, CLUSTER_PORT=str(port), COMPOSE_PROJECT_NAME=project,
               SECRET_KEY="compose-test", CLUSTER_SIGNING_SECRET="compose-signing-secret-0123",
               CONNECTION_STATE_RECOVERY="60")
    try:
        up = _docker_compose("up", "-d", "--build", "--wait", "--wait-timeout", "240",
                             env=env, timeout=600, check=False)
        if up.returncode != 0:
            logs = _docker_compose("logs", "--tail", "40", env=env, check=False).stdout
            pytest.fail(f"docker compose up failed:\n{up.stderr[-3000:]}\n{logs[-4000:]}")
        os.environ["_SIO_COMPOSE_PROJECT"] = project
        yield f"http://127.0.0.1:{port}"
    finally:
        _docker_compose("down", "-v", "--timeout", "5", env=env, timeout=180, check=False)
        os.environ.pop("_SIO_COMPOSE_PROJECT", None)


def _login(url: str, name: str) -> requests.Session:
    http = requests.Session()
    response = http.post(url + "/login", data={"name": name}, timeout=WAIT)
    assert response.status_code == 200 and name in response.text
    return http


def _chat_client(url: str, http: requests.Session) -> tuple[Client, "queue.Queue[Any]"]:
    events: "queue.Queue[Any]" = queue.Queue()
    client = Client(http_session=http, reconnection_delay=0.3, reconnection_delay_max=1)
    client.on("status", lambda data: events.put(("status", data)))
    client.on("chat", lambda data: events.put(("chat", data)))
    client.connect(url, auth={"client": "compose-test"}, wait_timeout=WAIT)
    return client, events


def _next(events: "queue.Queue[Any]", kind: str, timeout: float = WAIT) -> Any:
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
    assert requests.get(url + "/readyz", timeout=WAIT).status_code == 200

    alice, alice_events = _chat_client(url, _login(url, "alice"))
    alice_node = _next(alice_events, "status")["node"]
    for attempt in range(6):
        bob, bob_events = _chat_client(url, _login(url, f"bob{attempt}"))
        bob_node = _next(bob_events, "status")["node"]
        if bob_node != alice_node:
            break
        bob.disconnect()
    assert {alice_node, bob_node} == {"node1", "node2"}
    alice.call("join", {"room": "compose"}, timeout=WAIT)
    bob.call("join", {"room": "compose"}, timeout=WAIT)
    bob.call("say", {"text": "across containers", "room": "compose"}, timeout=WAIT)
    assert _next(alice_events, "chat")["text"] == "across containers"

    # alice's container dies; she comes back through HAProxy on the other one
    old_sid = alice.get_sid()
    _docker_compose("kill", "-s", "SIGKILL", alice_node, env=env, timeout=60)
    deadline = time.monotonic() + 30
    while not (alice.connected and alice.get_sid() == old_sid and alice.recovered):
        assert time.monotonic() < deadline, "alice did not recover on the other node"
        time.sleep(0.1)
    bob.call("say", {"text": "after the crash", "room": "compose"}, timeout=WAIT)
    assert _next(alice_events, "chat")["text"] == "after the crash"
    me = alice.call("whoami", timeout=WAIT)
    assert me["name"] == "alice" and me["rooms"] == ["compose"] and me["node"] == bob_node
    alice.disconnect()
    bob.disconnect()
