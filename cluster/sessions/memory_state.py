"""The connection records of :mod:`cluster.sessions.connection_state`, kept
in one process, for a node without Redis (same interface, no MACs: nobody
else can write to them)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable

from cluster.sessions.record_codec import (
    ConnectionRecord,
    RoomKey,
    add_members,
    decode,
    empty_record,
    encode_member,
    stored,
)

__all__ = ["MemoryConnectionState"]


class MemoryConnectionState:
    """The same in one process, for a node without Redis."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, tuple[str, set[RoomKey], float]] = {}

    def _live(self, session_id: str) -> tuple[str, set[RoomKey], float] | None:
        item = self._items.get(session_id)
        if item is not None and item[2] < time.monotonic():
            del self._items[session_id]
            return None
        return item

    def save(self, session_id: str, record: ConnectionRecord, ttl: float) -> None:
        with self._lock:
            item = self._live(session_id)
            rooms = item[1] if item is not None else set()
            raw = json.dumps(stored(record))
            self._items[session_id] = (raw, rooms, time.monotonic() + ttl)

    def save_namespace(self, session_id: str, record: ConnectionRecord, namespace: str,
                       ttl: float, forget: Iterable[str] = ()) -> None:
        self.save(session_id, record, ttl)  # in-process: nothing is sent anywhere

    def replace_rooms(self, session_id: str, rooms: list[RoomKey], ttl: float) -> None:
        with self._lock:
            item = self._live(session_id)
            raw = item[0] if item is not None else "{}"
            self._items[session_id] = (raw, set(rooms), time.monotonic() + ttl)

    def clear_wrong_types(self, session_id: str) -> int:
        return 0  # nobody else writes to this process

    def change_rooms(self, session_id: str, added: list[RoomKey], removed: list[RoomKey],
                     ttl: float) -> None:
        with self._lock:
            item = self._live(session_id)
            raw, rooms = (item[0], item[1]) if item is not None else ("{}", set())
            rooms.update(added)
            rooms.difference_update(removed)
            self._items[session_id] = (raw, rooms, time.monotonic() + ttl)

    def load(self, session_id: str) -> ConnectionRecord:
        with self._lock:
            item = self._live(session_id)
            if item is None:
                return empty_record()
            record = decode(item[0])
            return add_members(record, (encode_member(ns, room) for ns, room in item[1]))

    def expire(self, session_id: str, ttl: float) -> None:
        with self._lock:
            item = self._live(session_id)
            if item is not None:
                self._items[session_id] = (item[0], item[1], time.monotonic() + ttl)

    def renew(self, session_ids: list[str], ttl: float) -> None:
        for session_id in session_ids:
            self.expire(session_id, ttl)

    def delete(self, session_id: str) -> None:
        with self._lock:
            self._items.pop(session_id, None)
