"""The Socket.IO side of a resumable connection, kept beside its session.

``session_store`` knows nothing of Socket.IO, so what a resumed connection
needs besides its forked session (its sid and rooms in each namespace) lives
here, under the same key prefix and with the same TTL rules as the session:
a long lease while connected, the resume window once the connection ends.

Stored as one JSON string per session::

    {"sids": {"<namespace>": "<sid>"}, "rooms": {"<namespace>": ["room", ...]},
     "base": {"<namespace>": "<recovery offset at connect>"}}

Only JSON is ever read back; anything else reads as an empty record.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

logger = logging.getLogger("cluster.sessions")

ConnectionRecord = dict[str, dict[str, Any]]


def empty_record() -> ConnectionRecord:
    return {"sids": {}, "rooms": {}, "base": {}}


def _decode(raw: Any) -> ConnectionRecord:
    record = empty_record()
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        return record
    if not isinstance(value, dict):
        return record
    for key in ("sids", "base"):
        mapping = value.get(key)
        if isinstance(mapping, dict):
            record[key] = {ns: text for ns, text in mapping.items()
                           if isinstance(ns, str) and isinstance(text, str)}
    rooms = value.get("rooms")
    if isinstance(rooms, dict):
        record["rooms"] = {
            ns: [room for room in members if isinstance(room, str)]
            for ns, members in rooms.items()
            if isinstance(ns, str) and isinstance(members, list)
        }
    return record


class RedisConnectionState:
    """Connection records in Redis (``<prefix>conn:<session id>``)."""

    def __init__(self, redis_client: Any, key_prefix: str) -> None:
        self.redis = redis_client
        self.key_prefix = key_prefix

    def key(self, session_id: str) -> str:
        return f"{self.key_prefix}conn:{session_id}"

    def save(self, session_id: str, record: ConnectionRecord, ttl: float) -> None:
        self.redis.set(self.key(session_id), json.dumps(record, sort_keys=True),
                       px=max(1, int(ttl * 1000)))

    def load(self, session_id: str) -> ConnectionRecord:
        raw = self.redis.get(self.key(session_id))
        return _decode(raw) if raw is not None else empty_record()

    def expire(self, session_id: str, ttl: float) -> None:
        self.redis.pexpire(self.key(session_id), max(1, int(ttl * 1000)))


class MemoryConnectionState:
    """The same in one process, for a node without Redis."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, tuple[str, float]] = {}

    def save(self, session_id: str, record: ConnectionRecord, ttl: float) -> None:
        with self._lock:
            self._items[session_id] = (json.dumps(record), time.monotonic() + ttl)

    def load(self, session_id: str) -> ConnectionRecord:
        with self._lock:
            item = self._items.get(session_id)
            if item is None or item[1] < time.monotonic():
                self._items.pop(session_id, None)
                return empty_record()
            return _decode(item[0])

    def expire(self, session_id: str, ttl: float) -> None:
        with self._lock:
            item = self._items.get(session_id)
            if item is not None:
                self._items[session_id] = (item[0], time.monotonic() + ttl)
