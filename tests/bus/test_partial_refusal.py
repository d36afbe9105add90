"""Exactly once when Redis refuses part of a batch (issue 24, finding 4).

Real processes: a redis-server of this test's own (``noeviction``), two
nodes with connection state recovery, python-socketio clients. Redis is
filled past ``maxmemory``: it then refuses the recovery script's XADD but
still accepts plain PUBLISHes. A client on node 1 emits, in one batch, an
ack request to a member on node 2 (published unlogged) and a room emit
(logged) to a room with a member on each node. Before the fix the batch was
resent whole, sealed again, every retry: the member got the unlogged
message once per retry and the room message never.
"""
from __future__ import annotations

import collections
import threading
import time
from typing import Any

import pytest
import redis
import requests
import socketio

from cluster.devtools.local_cluster import ExecutableNotFoundError, RedisServerProcess

APP = "tests.apps.refusal_app:socketio"
ROOM = "hall"
FILLER = 256 * 1024
#: the nodes' ``log_retry`` (cluster.bus.outbox.DEFAULT_LOG_RETRY), spelled
#: out so that this test also runs against code without it
DEFAULT_LOG_RETRY = 5.0


class Member:
    """A client that counts every "plain" and "logged" event it gets."""

    def __init__(self, factory: Any, url: str) -> None:
        self.client = factory(cls=socketio.Client)
        self.lock = threading.Lock()
        self.plain: collections.Counter[int] = collections.Counter()
        self.logged: dict[int, list[Any]] = collections.defaultdict(list)

        @self.client.on("plain")
        def on_plain(n: int) -> bool:
            with self.lock:
                self.plain[n] += 1
            return True

        @self.client.on("logged")
        def on_logged(n: int, offset: Any = None) -> None:
            with self.lock:
                self.logged[n].append(offset)

        self.client.connect(url, transports=["websocket"], wait_timeout=10)
        self.sid = self.client.call("join", ROOM, timeout=10)


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def unlogged(node: Any) -> float:
    for line in requests.get(f"{node.url}/metrics", timeout=5).text.splitlines():
        if line.startswith('socketio_bus{kind="published_unlogged"}'):
            return float(line.split()[1])
    raise AssertionError("published_unlogged not in /metrics")


def fill(client: redis.Redis) -> list[str]:
    """Big keys, then ``maxmemory`` below what Redis holds: every write
    (the stream's XADD too) is refused, PUBLISH still accepted."""
    keys = [f"filler:{i}" for i in range(32)]  # 8 MiB
    for key in keys:
        client.set(key, b"x" * FILLER)
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", str(used - 4 * 1024 * 1024))
    with pytest.raises(redis.exceptions.ResponseError, match="maxmemory"):
        client.set("probe", "x")
    return keys


@pytest.fixture
def full_redis(tmp_path: Any) -> Any:
    try:
        server = RedisServerProcess(workdir=tmp_path / "redis",
                                    extra_args=["--maxmemory-policy", "noeviction"])
    except ExecutableNotFoundError as exc:
        pytest.skip(f"{exc} (.ci/run and ./dev setup install it)")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_a_partly_refused_batch_delivers_each_message_once(
        full_redis: Any, node_factory: Any, sio_client_factory: Any) -> None:
    first, second = node_factory(app=APP, count=2, message_queue=full_redis.url)
    member = Member(sio_client_factory, second.url)
    sender = Member(sio_client_factory, first.url)  # in the room too: local delivery
    admin = full_redis.client(socket_timeout=5)

    def burst(n: int) -> None:
        assert sender.client.call("burst", {"n": n, "sid": member.sid, "room": ROOM},
                                  timeout=10) is True

    # Redis with room: both arrive once, the room emit with its offset
    burst(0)
    wait_until(lambda: member.plain[0] and member.logged[0] and sender.logged[0], 10,
               "the messages sent while Redis has room")
    assert isinstance(member.logged[0][0], str)

    # Redis full: the unlogged message arrives once, however many times the
    # refused logged one is retried meanwhile; the logged one is held
    keys = fill(admin)
    began = time.monotonic()
    burst(1)
    wait_until(lambda: member.plain[1], 10, "the unlogged message")
    time.sleep(max(0.0, began + 1.5 - time.monotonic()))  # retries every <= 1 s
    assert member.plain[1] == 1, f"got it {member.plain[1]} times"
    assert member.logged[1] == []
    assert sender.logged[1] == [None]  # delivered on its node, once, no offset yet

    # memory freed within log_retry: the held message goes out logged, once
    admin.delete(*keys)
    admin.config_set("maxmemory", "0")
    wait_until(lambda: member.logged[1], DEFAULT_LOG_RETRY + 5, "the held room message")
    settled = time.monotonic() + 1.5
    wait_until(lambda: time.monotonic() > settled, 5, "the settling period")
    assert len(member.logged[1]) == 1 and member.plain[1] == 1
    assert sender.logged[1] == [None]  # not delivered a second time when logged
    if unlogged(first) == 0:
        assert isinstance(member.logged[1][0], str)  # logged: it has its offset

    # Redis full for longer than log_retry: sent once without an offset,
    # counted; not N times, not never
    keys = fill(admin)
    before = unlogged(first)
    burst(2)
    wait_until(lambda: member.logged[2], DEFAULT_LOG_RETRY + 10, "the unloggable message")
    settled = time.monotonic() + 1.5
    wait_until(lambda: time.monotonic() > settled, 5, "the settling period")
    assert member.logged[2] == [None] and member.plain[2] == 1
    assert sender.logged[2] == [None]
    assert unlogged(first) == before + 1
    admin.delete(*keys)
    admin.config_set("maxmemory", "0")
