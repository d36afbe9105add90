"""The subscriber connection read in bulk, against a real Redis."""
from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from cluster.bus.backends.redis_pushes import CLOSED_BY_REDIS, PushConnection


class CountingSocket:
    """Passes every call to the real socket, counting the reads."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.reads = 0

    def recv(self, size: int) -> bytes:
        self.reads += 1
        return self.sock.recv(size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def confirmations(conn: PushConnection, count: int) -> list[tuple[bytes, bytes, Any]]:
    got = []
    deadline = time.monotonic() + 5
    while len(got) < count and time.monotonic() < deadline:
        message = conn.get_message(timeout=0.5)
        if message is not None:
            got.append(message)
    return got


@pytest.fixture(params=[2, 3], ids=["resp2", "resp3"])
def client(redis_server, request):
    client = redis.Redis(host="127.0.0.1", port=redis_server.port, protocol=request.param)
    yield client
    client.close()


def test_subscribe_confirms_each_channel_and_messages_arrive_in_order(client) -> None:
    conn = PushConnection(client)
    try:
        conn.subscribe("pushes:a", "pushes:b")
        assert confirmations(conn, 2) == [(b"subscribe", b"pushes:a", 1),
                                          (b"subscribe", b"pushes:b", 2)]
        conn.ping()  # a PING's reply is no message
        for i in range(5):
            client.publish("pushes:a" if i % 2 else "pushes:b", f"m{i}")
        got = confirmations(conn, 5)
        assert [(channel, data) for _, channel, data in got] == [
            (b"pushes:b", b"m0"), (b"pushes:a", b"m1"), (b"pushes:b", b"m2"),
            (b"pushes:a", b"m3"), (b"pushes:b", b"m4")]
        assert {kind for kind, _, _ in got} == {b"message"}
        conn.unsubscribe("pushes:a")
        assert confirmations(conn, 1) == [(b"unsubscribe", b"pushes:a", 1)]
        assert conn.get_message(timeout=0.2) is None
    finally:
        conn.close()


def test_a_burst_is_read_in_one_system_call_and_a_big_message_across_several(client) -> None:
    conn = PushConnection(client)
    counting = CountingSocket(conn._wire._sock)
    conn._wire._sock = counting
    try:
        conn.subscribe("pushes:burst")
        assert len(confirmations(conn, 1)) == 1
        pipe = client.pipeline(transaction=False)
        for i in range(200):
            pipe.publish("pushes:burst", f"small {i}")
        pipe.execute()
        counting.reads = 0
        first = conn.get_message(timeout=2)
        rest = []
        while (message := conn.get_message(timeout=0)) is not None:
            rest.append(message)
        # what the kernel held came in one read: the rest from the buffer
        assert counting.reads == 1
        got = [first] + rest
        if len(got) < 200:  # Redis wrote the burst in more than one go
            got += confirmations(conn, 200 - len(got))
        assert [data for _, _, data in got] == [f"small {i}".encode() for i in range(200)]
        big = bytes(range(256)) * 8192  # 2 MiB: many reads
        client.publish("pushes:burst", big)
        client.publish("pushes:burst", b"after")
        assert confirmations(conn, 2) == [(b"message", b"pushes:burst", big),
                                          (b"message", b"pushes:burst", b"after")]
    finally:
        conn.close()


def test_a_connection_redis_closes_raises_with_the_likely_cause(redis_server) -> None:
    client = redis.Redis(host="127.0.0.1", port=redis_server.port, client_name="pushes-victim")
    conn = PushConnection(client)
    try:
        conn.subscribe("pushes:killed")
        assert len(confirmations(conn, 1)) == 1
        (victim,) = [entry["id"] for entry in client.client_list(_type="pubsub")
                     if entry["name"] == "pushes-victim"]
        assert client.client_kill_filter(_id=victim) == 1
        with pytest.raises(redis.exceptions.ConnectionError) as raised:
            conn.get_message(timeout=2)
        assert str(raised.value) == CLOSED_BY_REDIS
        assert "client-output-buffer-limit" in str(raised.value)
    finally:
        conn.close()
        client.close()
