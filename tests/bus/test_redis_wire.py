"""RESP written and read by the bus itself: the parser, and pipelines
against a real Redis."""
from __future__ import annotations

import os
import time

import pytest
import redis

from cluster.bus.backends.redis_connection import RedisConnector
from cluster.bus.backends.redis_transport import RedisTransport
from cluster.bus.backends.redis_wire import (
    INCOMPLETE,
    ProtocolError,
    WireConnection,
    WirePipeline,
    encode_command,
    parse_reply,
)


@pytest.fixture(params=[2, 3], ids=["resp2", "resp3"])
def client(redis_server, request):
    client = redis.Redis(host="127.0.0.1", port=redis_server.port, protocol=request.param,
                         socket_timeout=0.5)
    yield client
    client.close()


def test_a_pipeline_answers_in_order_with_errors_in_place(client) -> None:
    wire = WireConnection(client)
    try:
        listener = client.pubsub()
        listener.subscribe("wire:channel")
        pipe = WirePipeline(wire)
        pipe.publish("wire:channel", b"one")
        pipe.evalsha("0" * 40, 0)
        pipe.execute_command(b"SET", "wire:key", 12.5)
        pipe.execute_command(b"NO-SUCH-COMMAND")
        pipe.execute_command(b"GET", "wire:key")
        pipe.execute_command(b"INCRBY", "wire:count", 7)
        replies = pipe.execute()
        assert replies[0] == 1  # the subscriber got it
        assert isinstance(replies[1], redis.exceptions.NoScriptError)
        assert replies[2] == b"OK"
        assert type(replies[3]) is redis.exceptions.ResponseError
        assert "NO-SUCH-COMMAND" in str(replies[3])
        assert replies[4] == b"12.5"
        assert isinstance(replies[5], int)
        assert pipe.execute() == []
        pipe.execute_command(b"NO-SUCH-COMMAND")
        with pytest.raises(redis.exceptions.ResponseError):
            pipe.execute(raise_on_error=True)
        assert not wire.broken
        listener.close()
    finally:
        wire.close()
        client.delete("wire:key", "wire:count")


def test_a_reply_that_does_not_come_leaves_the_connection_broken(client) -> None:
    wire = WireConnection(client)
    try:
        pipe = WirePipeline(wire)
        pipe.execute_command(b"BLPOP", "wire:never", 5)  # longer than socket_timeout
        with pytest.raises(redis.exceptions.TimeoutError):
            pipe.execute()
        assert wire.broken
    finally:
        wire.close()


def test_a_connection_redis_closes_raises_connection_error(client) -> None:
    wire = WireConnection(client, "closed, because")
    try:
        wire.send(encode_command((b"CLIENT", b"ID")))
        victim = wire.next_reply(None)
        assert client.client_kill_filter(_id=victim) == 1
        with pytest.raises(redis.exceptions.ConnectionError, match="closed, because"):
            wire.next_reply(None)
        assert wire.broken
    finally:
        wire.close()


def test_commands_are_encoded_as_redis_py_encodes_them() -> None:
    assert encode_command((b"SET", "clé", 3, 0.5)) == \
        b"*4\r\n$3\r\nSET\r\n$4\r\ncl\xc3\xa9\r\n$1\r\n3\r\n$3\r\n0.5\r\n"
    with pytest.raises(redis.exceptions.DataError):
        encode_command((b"SET", "k", True))
    with pytest.raises(redis.exceptions.DataError):
        encode_command((b"SET", "k", None))


def test_an_error_reply_is_returned_as_redis_py_would_raise_it() -> None:
    value, _ = parse_reply(bytearray(b"-MOVED 42 127.0.0.1:7001\r\n"), 0)
    assert type(value) is redis.exceptions.ResponseError
    assert str(value) == "MOVED 42 127.0.0.1:7001"
    readonly = b"-READONLY You can't write against a read only replica.\r\n"
    value, _ = parse_reply(bytearray(readonly), 0)
    assert isinstance(value, redis.exceptions.ReadOnlyError)
    long_error = b"-ERR " + b"x" * 500 + b"\r\n"
    value, end = parse_reply(bytearray(long_error), 0)
    assert isinstance(value, redis.exceptions.ResponseError) and end == len(long_error)


@pytest.mark.parametrize("partial", [b"*3\r\n$7\r\nmess",
                                     b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$5\r\nab",
                                     b"$5", b">2\r\n", b"-ERR not all here"])
def test_a_partial_reply_waits_for_the_rest(partial: bytes) -> None:
    assert parse_reply(bytearray(partial), 0) == (INCOMPLETE, 0)


@pytest.mark.parametrize("garbage", [b"?what\r\n", b"$" + b"9" * 9000, b"$999999999999\r\n",
                                     b"*x\r\n", b":1.5\r\n"])
def test_what_redis_never_sends_drops_the_connection(garbage: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_reply(bytearray(garbage), 0)


def test_a_connection_that_read_garbage_is_broken(client) -> None:
    wire = WireConnection(client)
    try:
        wire._buffer += b"?what\r\n"  # as if Redis had sent it
        with pytest.raises(ProtocolError):
            wire.next_reply(0)
        assert wire.broken
    finally:
        wire.close()


def test_a_forked_child_publishes_on_a_connection_of_its_own(redis_server) -> None:
    # a Celery prefork worker inherits an emitter that published in its parent
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    transport = RedisTransport(RedisConnector(url, None, False, "wire-fork"), None)
    watcher = redis.Redis(host="127.0.0.1", port=redis_server.port)
    listener = watcher.pubsub()
    listener.subscribe("wire-fork")
    try:
        transport.send([b"parent 1"])
        inherited = transport._wire_of(transport._publisher())
        pid = os.fork()
        if pid == 0:  # the child: publish, then leave without running pytest's exit
            code = 1
            try:
                transport.send([b"child"])
                # not on the socket it shares with its parent
                code = 0 if transport._wire_of(transport._publisher()) is not inherited else 2
            finally:
                os._exit(code)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        transport.send([b"parent 2"])  # the parent's connection was left alone
        assert transport._wire_of(transport._publisher()) is inherited
        got = []
        deadline = time.monotonic() + 5
        while len(got) < 3 and time.monotonic() < deadline:
            message = listener.get_message(timeout=0.5)
            if message and message["type"] == "message":
                got.append(message["data"])
        assert got == [b"parent 1", b"child", b"parent 2"]
    finally:
        listener.close()
        watcher.close()
        transport.close()
