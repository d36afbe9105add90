"""Which Redis replies send the bus's publisher elsewhere, and where."""
from __future__ import annotations

import pytest
import redis

from cluster.bus.backends.redis_refusals import moved_to, moves_us, raise_refused


def test_a_moved_reply_names_the_new_primary_in_either_form() -> None:
    # redis-py 6+ raises MovedError; 5.0 leaves a ResponseError with the text
    assert moved_to(redis.exceptions.MovedError("5644 127.0.0.1:7001")) == ("127.0.0.1", 7001)
    assert moved_to(redis.exceptions.ResponseError("MOVED 5644 10.0.0.2:6379")) \
        == ("10.0.0.2", 6379)
    for other in (redis.exceptions.ResponseError("MOVED 5644"),
                  redis.exceptions.ResponseError("MOVED 1 host:port"),
                  redis.exceptions.ResponseError("OOM command not allowed"), "OK", None):
        assert moved_to(other) is None


@pytest.mark.parametrize("reply", [
    redis.exceptions.ReadOnlyError("READONLY You can't write against a read only replica."),
    redis.exceptions.ConnectionError("gone"),
    redis.exceptions.ResponseError("CLUSTERDOWN The cluster is down"),
    redis.exceptions.ResponseError("TRYAGAIN Multiple keys request during rehashing of slot"),
    redis.exceptions.ResponseError("MOVED 5644 127.0.0.1:7001"),
])
def test_failover_refusals_move_the_publisher(reply: object) -> None:
    assert moves_us(reply)


def test_other_refusals_and_replies_do_not() -> None:
    assert not moves_us(redis.exceptions.ResponseError("OOM command not allowed"))
    assert not moves_us(1) and not moves_us(None)


def test_raise_refused_gives_the_offsets_or_the_first_refusal() -> None:
    assert raise_refused(["1-1", None]) == ["1-1", None]
    refusal = redis.exceptions.ResponseError("OOM")
    with pytest.raises(redis.exceptions.ResponseError, match="OOM"):
        raise_refused(["1-1", refusal, redis.exceptions.ConnectionError("later")])
