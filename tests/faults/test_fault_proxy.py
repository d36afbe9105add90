"""The fault proxy against a real redis-server: latency, stall, reset, refuse."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.bus.loopback import wait_for
from tests.faults.fault_proxy import FaultProxy


@pytest.fixture
def proxy(redis_url: str) -> Iterator[FaultProxy]:
    target = redis.Redis.from_url(redis_url).connection_pool.connection_kwargs
    with FaultProxy(target["host"], target["port"]) as running:
        yield running


def _client(proxy: FaultProxy, **kwargs: Any) -> redis.Redis:
    return redis.Redis.from_url(proxy.url, socket_timeout=5, **kwargs)


def _median_ping(client: redis.Redis, count: int = 5) -> float:
    times = []
    for _ in range(count):
        started = time.monotonic()
        assert client.ping() is True
        times.append(time.monotonic() - started)
    return statistics.median(times)


def test_forwards_commands_and_replies(proxy: FaultProxy) -> None:
    client = _client(proxy)
    client.set("k", "v" * 100_000)  # larger than one chunk
    assert client.get("k") == b"v" * 100_000
    assert proxy.accepted == 1 and proxy.connections == 1
    client.close()


def test_latency_shows_in_ping_round_trips_and_goes_away(proxy: FaultProxy) -> None:
    client = _client(proxy)
    client.ping()
    proxy.set_latency(0.1, 0.0, "up")
    assert _median_ping(client) >= 0.1
    proxy.set_latency(0.1, 0.0)  # both directions: twice per round trip
    assert _median_ping(client) >= 0.2
    proxy.set_latency(0.1, 0.05)
    pings = [_median_ping(client, 1) for _ in range(10)]
    assert min(pings) >= 0.1 and max(pings) < 1.0  # 2 x (0.1 +- 0.05), plus scheduling
    proxy.normal()
    assert _median_ping(client) < 0.1
    client.close()


def test_jitter_never_reorders_a_stream(proxy: FaultProxy) -> None:
    client = _client(proxy)
    proxy.set_latency(0.02, 0.02)
    pipe = client.pipeline(transaction=False)
    for i in range(200):
        pipe.rpush("order", i)
    pipe.execute()
    # one command per round trip too: each chunk draws its own delay
    for i in range(200, 230):
        client.rpush("order", i)
    proxy.normal()
    assert [int(x) for x in client.lrange("order", 0, -1)] == list(range(230))
    client.close()


def test_stall_holds_bytes_until_released(proxy: FaultProxy) -> None:
    client = _client(proxy)
    client.ping()
    proxy.stall()
    done = threading.Event()
    result: list[Any] = []

    def ping() -> None:
        result.append(client.ping())
        done.set()

    thread = threading.Thread(target=ping, daemon=True)
    thread.start()
    assert not done.wait(1.0), "a reply passed a stalled link"
    assert proxy.connections == 1  # held, not dropped
    proxy.unstall()
    assert done.wait(5.0)
    assert result == [True]
    thread.join(5)
    client.close()


def test_reset_makes_redis_py_reconnect(proxy: FaultProxy) -> None:
    client = _client(proxy, retry_on_error=[])
    client.ping()
    assert proxy.reset_all() == 1
    assert proxy.connections == 0
    # the next command finds its connection reset; redis-py then reconnects
    try:
        client.ping()
    except redis.ConnectionError:
        pass
    wait_for(lambda: client.ping() is True, timeout=5)
    assert proxy.accepted == 2 and proxy.resets == 1
    client.close()


def test_refuse_resets_new_connections_until_normal(proxy: FaultProxy) -> None:
    proxy.refuse()
    client = _client(proxy, socket_connect_timeout=2, retry_on_error=[])
    with pytest.raises(redis.ConnectionError):
        client.ping()
    assert proxy.refused >= 1 and proxy.accepted == 0
    proxy.normal()
    assert client.ping() is True
    client.close()


def test_stop_closes_connections_and_joins_threads(redis_url: str) -> None:
    target = redis.Redis.from_url(redis_url).connection_pool.connection_kwargs
    proxy = FaultProxy(target["host"], target["port"]).start()
    client = _client(proxy)
    client.ping()
    proxy.stall()
    before = threading.active_count()
    proxy.stop()
    wait_for(lambda: threading.active_count() <= before - 5, timeout=5)  # acceptor + 4 pipes
    with pytest.raises(redis.ConnectionError):
        _client(proxy, socket_connect_timeout=1).ping()
    client.close()
