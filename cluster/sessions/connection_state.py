"""The Socket.IO side of a resumable connection, kept beside its session.

``session_store`` knows nothing of Socket.IO, so what a resumed connection
needs besides its forked session (its sid and rooms in each namespace) lives
here, under the same key prefix and with the same TTL rules as the session:
a long lease while connected, the resume window once the connection ends.

Two Redis keys per session:

- ``<prefix>conn:<session id>``, a JSON string written at connect (it
  changes only then)::

      {"sids": {"<namespace>": "<sid>"},
       "base": {"<namespace>": "<recovery offset at connect>"},
       "rebased": {"<namespace>": "<offset>"}}

  ``rebased`` is set when the store lost the session while its connection
  lived (see :mod:`cluster.sessions.leases`): the recovery stream restarted
  there, so a client offset older than it replays from it.

- ``<prefix>conn:<session id>:rooms``, a set of ``["<namespace>", "<room>"]``
  JSON members. A join is one ``SADD`` and a leave one ``SREM``, whatever
  the number of rooms the connection is in (rewriting one record per join
  made a join at 4,000 rooms write 41 KB).

Records written by earlier versions (rooms inside the JSON) still load.
Only JSON is ever read back; anything else reads as empty.

With a secret (the session store's: the bus signing secret, else the app's
``SECRET_KEY``) the record and every room member carry a MAC
(:class:`session_store.record_mac.RecordMac`, bound to the session id), so
someone who can write to Redis cannot put a resuming client into a room
(``admins``) or give it another sid. A record or member whose tag does not
check is ignored, logged and counted (``rejected_records``). Members are
tagged deterministically, so a leave removes exactly what the join added.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from session_store.record_mac import RecordMac

logger = logging.getLogger("cluster.sessions")

ConnectionRecord = dict[str, dict[str, Any]]
RoomKey = tuple[str, str]  # (namespace, room)


def empty_record() -> ConnectionRecord:
    return {"sids": {}, "rooms": {}, "base": {}, "rebased": {}}


def _decode(raw: Any) -> ConnectionRecord:
    record = empty_record()
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        return record
    if not isinstance(value, dict):
        return record
    for key in ("sids", "base", "rebased"):
        mapping = value.get(key)
        if isinstance(mapping, dict):
            record[key] = {ns: text for ns, text in mapping.items()
                           if isinstance(ns, str) and isinstance(text, str)}
    rooms = value.get("rooms")  # the layout before the rooms set
    if isinstance(rooms, dict):
        record["rooms"] = {
            ns: [room for room in members if isinstance(room, str)]
            for ns, members in rooms.items()
            if isinstance(ns, str) and isinstance(members, list)
        }
    return record


def _stored(record: ConnectionRecord) -> dict[str, Any]:
    """The JSON part of a record (the rooms are a set of their own)."""
    stored = {"sids": record["sids"], "base": record["base"]}
    if record.get("rebased"):
        stored["rebased"] = record["rebased"]
    return stored


def encode_member(namespace: str, room: str) -> str:
    return json.dumps([namespace, room])


def _add_members(record: ConnectionRecord, members: Iterable[Any]) -> ConnectionRecord:
    rooms: dict[str, list[str]] = record["rooms"]
    for raw in members:
        try:
            value = json.loads(raw)
        except (TypeError, ValueError):
            continue
        if isinstance(value, list) and len(value) == 2 \
                and all(isinstance(part, str) for part in value):
            namespace_rooms = rooms.setdefault(value[0], [])
            if value[1] not in namespace_rooms:
                namespace_rooms.append(value[1])
    return record


def _ms(ttl: float) -> int:
    return max(1, int(ttl * 1000))


class _Tags:
    """The MAC of one state's records, for the current secret."""

    def __init__(self, secret: Any) -> None:
        self._secret = secret
        self._mac_for: tuple[Any, RecordMac] | None = None
        #: records and room members that failed their MAC check
        self.rejected_records = 0

    def mac(self) -> RecordMac | None:
        secret = self._secret() if callable(self._secret) else self._secret
        if not secret:
            return None
        if self._mac_for is None or self._mac_for[0] != secret:
            self._mac_for = (secret, RecordMac(secret))
        return self._mac_for[1]

    def seal(self, session_id: str, kind: str, value: str) -> str:
        mac = self.mac()
        return value if mac is None else mac.seal_field(session_id, kind, value)

    def open(self, session_id: str, kind: str, stored: Any) -> Any:
        mac = self.mac()
        if mac is None or stored is None:
            return stored
        value = mac.open_field(session_id, kind, stored)
        if value is None:
            self.rejected_records += 1
            logger.warning("connection %s of session %s failed its MAC check; ignored",
                           kind, session_id[:6] + "…")
        return value


class RedisConnectionState:
    """Connection records and room sets in Redis (see the module doc).

    :param secret: what the records' MAC key is derived from, or a callable
        returning it; ``None``: no MACs (see the module doc).
    """

    def __init__(self, redis_client: Any, key_prefix: str, secret: Any = None) -> None:
        self.redis = redis_client
        self.key_prefix = key_prefix
        self._tags = _Tags(secret)

    @property
    def rejected_records(self) -> int:
        return self._tags.rejected_records

    def _member(self, session_id: str, namespace: str, room: str) -> str:
        return self._tags.seal(session_id, "room", encode_member(namespace, room))

    def key(self, session_id: str) -> str:
        return f"{self.key_prefix}conn:{session_id}"

    def rooms_key(self, session_id: str) -> str:
        return f"{self.key_prefix}conn:{session_id}:rooms"

    def save(self, session_id: str, record: ConnectionRecord, ttl: float) -> None:
        """Write the sids and base offsets (not the rooms) and renew both TTLs."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self.key(session_id),
                 self._tags.seal(session_id, "record", json.dumps(_stored(record),
                                                                  sort_keys=True)),
                 px=_ms(ttl))
        pipe.pexpire(self.rooms_key(session_id), _ms(ttl))
        pipe.execute()

    def change_rooms(self, session_id: str, added: list[RoomKey], removed: list[RoomKey],
                     ttl: float) -> None:
        """Apply joins and leaves: O(changes) in one round trip."""
        if not added and not removed:
            return
        key = self.rooms_key(session_id)
        pipe = self.redis.pipeline(transaction=False)
        if added:
            pipe.sadd(key, *(self._member(session_id, ns, room) for ns, room in added))
        if removed:
            pipe.srem(key, *(self._member(session_id, ns, room) for ns, room in removed))
        pipe.pexpire(key, _ms(ttl))  # a set created by SADD has no TTL yet
        pipe.execute()

    def load(self, session_id: str) -> ConnectionRecord:
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(self.key(session_id))
        pipe.smembers(self.rooms_key(session_id))
        raw, members = pipe.execute()
        raw = self._tags.open(session_id, "record", raw)
        record = _decode(raw) if raw is not None else empty_record()
        opened = (self._tags.open(session_id, "room", member) for member in members or ())
        return _add_members(record, (member for member in opened if member is not None))

    def expire(self, session_id: str, ttl: float) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.pexpire(self.key(session_id), _ms(ttl))
        pipe.pexpire(self.rooms_key(session_id), _ms(ttl))
        pipe.execute()

    def renew(self, session_ids: list[str], ttl: float) -> None:
        """Renew the TTLs of many connections' records: one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for session_id in session_ids:
            pipe.pexpire(self.key(session_id), _ms(ttl))
            pipe.pexpire(self.rooms_key(session_id), _ms(ttl))
        pipe.execute()

    def delete(self, session_id: str) -> None:
        self.redis.delete(self.key(session_id), self.rooms_key(session_id))


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
            raw = json.dumps(_stored(record))
            self._items[session_id] = (raw, rooms, time.monotonic() + ttl)

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
            record = _decode(item[0])
            return _add_members(record, (encode_member(ns, room) for ns, room in item[1]))

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
