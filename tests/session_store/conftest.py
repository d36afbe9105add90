"""A ``store`` fixture that runs the shared contract tests on every backend."""

from __future__ import annotations

import pytest

from session_store import MemorySessionStore, RedisSessionStore, SessionStore


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> SessionStore:
    """A store with a 1 s disconnect TTL; the Redis one on the harness server."""
    if request.param == "memory":
        return MemorySessionStore(ttl=1)
    return RedisSessionStore(request.getfixturevalue("redis_url"), ttl=1)
