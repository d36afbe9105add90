"""session_store.redis_client: the client a node's store talks to one Redis with."""
from __future__ import annotations

import threading
from typing import Any

import redis

from session_store.redis_client import POOL_SIZE, connect


def test_more_concurrent_commands_than_connections_wait_instead_of_failing(
        redis_url: str) -> None:
    # a node's green threads outnumber the pool in a burst of joins; with
    # redis-py's default pool the extra commands raised MaxConnectionsError
    client = connect(redis_url, {"max_connections": 2, "socket_timeout": 5})
    assert isinstance(client.connection_pool, redis.BlockingConnectionPool)
    errors: list[BaseException] = []
    start = threading.Barrier(20)

    def work(n: int) -> None:
        try:
            start.wait(timeout=5)
            # BLPOP holds its connection for a moment, like a slow write
            client.blpop([f"pool-test:{n}"], timeout=0.05)
            client.set(f"pool-test:{n}", n, ex=10)
        except BaseException as exc:  # noqa: BLE001 - collected for the assert
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert [client.get(f"pool-test:{n}") for n in range(20)] == [str(n).encode() for n in range(20)]
    client.close()


def test_the_default_pool_is_as_large_as_redis_pys_and_options_still_apply(
        redis_url: str) -> None:
    client: Any = connect(redis_url, {"decode_responses": True})
    assert client.connection_pool.max_connections == POOL_SIZE
    client.set("pool-test:decoded", "yes", ex=10)
    assert client.get("pool-test:decoded") == "yes"
    client.close()
