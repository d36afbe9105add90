"""A ``store`` fixture that runs the shared contract tests on every backend."""

from __future__ import annotations

import pytest

from session_store import MemorySessionStore, RedisSessionStore, SessionStore

#: the secret of the ``redis-mac`` store: records carry MACs
RECORD_SECRET = "session-store-tests-record-secret"


@pytest.fixture(params=["memory", "redis", "redis-mac", "redis-cluster"])
def store(request: pytest.FixtureRequest) -> SessionStore:
    """A store with a 1 s disconnect TTL; the Redis ones on the harness
    server, ``redis-mac`` with MACs on every record, ``redis-cluster`` (with
    MACs) on the harness's real 3-master Redis Cluster."""
    if request.param == "memory":
        return MemorySessionStore(ttl=1)
    if request.param == "redis-cluster":
        return RedisSessionStore(request.getfixturevalue("redis_cluster_url"), ttl=1,
                                 secret=RECORD_SECRET)
    secret = RECORD_SECRET if request.param == "redis-mac" else None
    return RedisSessionStore(request.getfixturevalue("redis_url"), ttl=1, secret=secret)
