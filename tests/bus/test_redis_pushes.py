"""The subscriber connection read in bulk, against a real Redis."""
from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from cluster.bus.backends.redis_pushes import (
    CLOSED_BY_REDIS,
    INCOMPLETE,
    ProtocolError,
    PushConnection,
    parse_reply,
)


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
    counting = CountingSocket(conn._sock)
    conn._sock = counting
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


def test_a_connection_redis_closes_raises_with_the_likely_cause(client) -> None:
    conn = PushConnection(client)
    try:
        conn.subscribe("pushes:killed")
        assert len(confirmations(conn, 1)) == 1
        assert client.client_kill_filter(_type="pubsub") >= 1
        with pytest.raises(redis.exceptions.ConnectionError) as raised:
            conn.get_message(timeout=2)
        assert str(raised.value) == CLOSED_BY_REDIS
        assert "client-output-buffer-limit" in str(raised.value)
    finally:
        conn.close()


def test_an_error_reply_is_raised_as_redis_py_would() -> None:
    value, _ = parse_reply(bytearray(b"-MOVED 42 127.0.0.1:7001\r\n"), 0)
    assert isinstance(value, redis.exceptions.ResponseError)
    assert str(value) == "MOVED 42 127.0.0.1:7001"


@pytest.mark.parametrize("partial", [b"*3\r\n$7\r\nmess",
                                     b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$5\r\nab",
                                     b"$5", b">2\r\n"])
def test_a_partial_reply_waits_for_the_rest(partial: bytes) -> None:
    assert parse_reply(bytearray(partial), 0) == (INCOMPLETE, 0)


@pytest.mark.parametrize("garbage", [b"?what\r\n", b"$" + b"9" * 80, b"$999999999999\r\n",
                                     b"*x\r\n", b":1.5\r\n"])
def test_what_no_subscriber_gets_drops_the_connection(garbage: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_reply(bytearray(garbage), 0)
