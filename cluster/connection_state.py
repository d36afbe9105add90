"""The rooms a connection had joined, kept beside its forked session.

``session_store`` knows nothing of Socket.IO, so the Socket.IO side of a
resumable connection (its rooms per namespace) lives here, under the same
key prefix and with the same TTL rules as the session: a long lease while
connected, the resume window once the connection ends.

Stored as one JSON string per session: ``{"<namespace>": ["room", ...]}``.
Only JSON is ever read back.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

logger = logging.getLogger("cluster.sessions")

RoomsByNamespace = dict[str, list[str]]


def _decode(raw: Any) -> RoomsByNamespace:
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        return {}
    if not isinstance(value, dict):
        return {}
    return {
        namespace: [room for room in rooms if isinstance(room, str)]
        for namespace, rooms in value.items()
        if isinstance(namespace, str) and isinstance(rooms, list)
    }


class RedisConnectionState:
    """Rooms of resumable connections in Redis (``<prefix>rooms:<session id>``)."""

    def __init__(self, redis_client: Any, key_prefix: str) -> None:
        self.redis = redis_client
        self.key_prefix = key_prefix

    def key(self, session_id: str) -> str:
        return f"{self.key_prefix}rooms:{session_id}"

    def save(self, session_id: str, rooms: RoomsByNamespace, ttl: float) -> None:
        self.redis.set(self.key(session_id), json.dumps(rooms, sort_keys=True),
                       px=max(1, int(ttl * 1000)))

    def load(self, session_id: str) -> RoomsByNamespace:
        raw = self.redis.get(self.key(session_id))
        return _decode(raw) if raw is not None else {}

    def expire(self, session_id: str, ttl: float) -> None:
        self.redis.pexpire(self.key(session_id), max(1, int(ttl * 1000)))


class MemoryConnectionState:
    """The same in one process, for a node without Redis."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, tuple[str, float]] = {}

    def save(self, session_id: str, rooms: RoomsByNamespace, ttl: float) -> None:
        with self._lock:
            self._items[session_id] = (json.dumps(rooms), time.monotonic() + ttl)

    def load(self, session_id: str) -> RoomsByNamespace:
        with self._lock:
            item = self._items.get(session_id)
            if item is None or item[1] < time.monotonic():
                self._items.pop(session_id, None)
                return {}
            return _decode(item[0])

    def expire(self, session_id: str, ttl: float) -> None:
        with self._lock:
            item = self._items.get(session_id)
            if item is not None:
                self._items[session_id] = (item[0], time.monotonic() + ttl)
