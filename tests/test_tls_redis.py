"""Redis over TLS with an ACL user, for real (issue 16, part 8): a TLS-only
redis-server, the bus between two nodes, the session store, connection state
recovery and the worker emitter all on it; a wrong password and an untrusted
certificate each refused with the fix."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from cluster import Client
from cluster.bus import BusAccessDenied
from cluster.bus.backends.redis_access import check_access
from cluster.devtools.processes import free_port
from session_store import RedisSessionStore, SessionStoreAccessDenied
from session_store.resume import stored_form
from tests.bus.conftest import BUS_APP, wait_nodes
from tests.harness.fixtures import BUS_SIGNING_SECRET
from tests.harness.tls_redis import ACL_USER, TlsRedisProcess
from workers import ConfigurationError, Emitter

WAIT = 15


def _connect(factory: Any, node: Any) -> Any:
    client = factory(cls=Client, reconnection_delay=0.1, reconnection_delay_max=0.3)
    events: list[tuple[str, Any]] = []
    client.on("*", lambda event, *args: events.append((event, args)))
    client.connect(node.url, auth={}, transports=["websocket"], wait_timeout=10)
    client.events = events
    return client


def _texts(client: Any, event: str = "relayed") -> list[Any]:
    return [args[0] for name, args in client.events if name == event]


def _wait(condition: Any, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_the_cluster_runs_on_a_tls_redis_with_an_acl_user(
        tls_redis_url: str, tls_redis: TlsRedisProcess, node_factory: Any,
        sio_client_factory: Any) -> None:
    assert tls_redis_url.startswith(f"rediss://{ACL_USER}:")
    n1, n2 = node_factory(app=BUS_APP, count=2, message_queue=tls_redis_url,
                          extra_args=["--recovery-window", "60"])
    a, b = _connect(sio_client_factory, n1), _connect(sio_client_factory, n2)

    class Recorder:  # what wait_nodes needs
        def __init__(self, client: Any) -> None:
            self.client = client

        def call(self, event: str, data: Any = None, timeout: float = 10) -> Any:
            return self.client.call(event, data, timeout=timeout)

    wait_nodes(Recorder(a), 2)
    # the bus: n1 to a client of n2
    b.call("join", {"room": "tls"}, timeout=10)
    a.call("relay", {"to": "tls", "payload": "over tls"}, timeout=10)
    _wait(lambda: _texts(b) == ["over tls"], "the relay did not cross the TLS bus")
    # the session store: the resume id lives in the TLS Redis
    pid, sid = b.pid(), b.get_sid()
    assert pid
    admin = tls_redis.client(admin=True)
    try:
        assert admin.exists(f"sio:sess:resume:{{{stored_form(pid)}}}") == 1
    finally:
        admin.close()
    # recovery: b's node crashes, misses two emits, b comes back and gets them
    n2.kill(signal.SIGKILL)
    for text in ("missed 1", "missed 2"):
        a.call("relay", {"to": "tls", "payload": text}, timeout=10)
    n2.start()
    _wait(lambda: b.connected and b.recovered and b.get_sid() == sid, "b did not recover")
    _wait(lambda: _texts(b) == ["over tls", "missed 1", "missed 2"], "the replay is incomplete")
    # the worker emitter, on the same TLS Redis with the same user
    with Emitter(tls_redis_url, signing_secret=BUS_SIGNING_SECRET) as emitter:
        emitter.emit("relayed", "from a worker", to="tls")
    _wait(lambda: _texts(b)[-1:] == ["from a worker"], "the emitter's message did not arrive")


def test_the_session_store_works_over_tls(tls_redis_url: str) -> None:
    store = RedisSessionStore(tls_redis_url, secret="tls-session-secret")
    handle = store.create({"user": "alice"}, "alice")
    rid = store.issue_resume(handle.session_id, "alice")
    assert store.claim_resume(rid, "alice").session_id == handle.session_id
    assert store.load(handle.session_id) == {"user": "alice"}


@pytest.mark.parametrize("problem", ["wrong password", "untrusted certificate"])
def test_a_refused_login_or_certificate_fails_with_the_fix(
        problem: str, tls_redis: TlsRedisProcess, tls_redis_url: str,
        tmp_path: Any) -> None:
    if problem == "wrong password":
        url, fix = tls_redis.url(password="not-the-password"), "check the user and password"
    else:
        url, fix = tls_redis.url(ca=tls_redis.certificates.other_ca), "ssl_ca_certs"
    # the session store
    with pytest.raises(SessionStoreAccessDenied, match=fix):
        RedisSessionStore(url).create({}, None)
    # the bus, as the node runner checks it
    with pytest.raises(BusAccessDenied, match=fix):
        check_access(url)
    # the worker emitter
    with pytest.raises(ConfigurationError, match=fix):
        Emitter(url, signing_secret=BUS_SIGNING_SECRET)
    # a node refuses to start, with the fix, instead of retrying forever
    node = subprocess.run(
        [sys.executable, "-m", "cluster", "node", "--app", BUS_APP, "--port", str(free_port()),
         "--message-queue", url, "--signing-secret", BUS_SIGNING_SECRET],
        capture_output=True, text=True, timeout=60)
    assert node.returncode == 2
    assert fix in node.stderr and "Cannot use the cluster bus" in node.stderr
    assert "not-the-password" not in node.stderr  # the message never echoes a password
