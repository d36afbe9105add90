"""The Socket.IO side of a resumable connection, kept beside its session.

``session_store`` knows nothing of Socket.IO, so what a resumed connection
needs besides its forked session (its sid and rooms in each namespace) lives
here, under the same key prefix and with the same TTL rules as the session:
a long lease while connected, the resume window once the connection ends.

Three Redis keys per session, hash-tagged with the session id like the
session's own keys (:mod:`session_store.redis_store`), so on a Redis
Cluster all of a session's keys are in one slot and each pipeline below
goes to one shard:

- ``<prefix>conn:{<session id>}``, a JSON string written when the connection
  is accepted (and when it is written back after a loss)::

      {"sids": {"<namespace>": "<sid>"},
       "base": {"<namespace>": "<recovery offset at connect>"},
       "rebased": {"<namespace>": "<offset>"}}

  ``rebased`` is set when the store lost the session while its connection
  lived (see :mod:`cluster.sessions.leases`): the recovery stream restarted
  there, so a client offset older than it replays from it.

- ``<prefix>conn:{<session id>}:ns``, a hash with one field per namespace the
  connection CONNECTed to later, ``{"sid": ..., "base": ..., "rebased": ...}``
  (each key optional), which overrides that namespace in the JSON record. A
  later CONNECT is one ``HSET`` of its own field and leaving a namespace one
  ``HDEL``: the bytes written per namespace do not grow with the number of
  namespaces (rewriting the whole record made a connection in 9,000
  namespaces send 1.4 GB to Redis).

- ``<prefix>conn:{<session id>}:rooms``, a set of ``["<namespace>", "<room>"]``
  JSON members. A join is one ``SADD`` and a leave one ``SREM``, whatever
  the number of rooms the connection is in (rewriting one record per join
  made a join at 4,000 rooms write 41 KB).

Records of an earlier format (rooms inside the JSON) still load; records
under the untagged names of releases before the hash tags are not read (the
upgrade note in :mod:`session_store.redis_store`).
Only JSON is ever read back; anything else reads as empty.

With a secret (the session store's: the bus signing secret, else the app's
``SECRET_KEY``) the record and every room member carry a MAC
(:class:`session_store.record_mac.RecordMac`, bound to the session id), so
someone who can write to Redis cannot put a resuming client into a room
(``admins``) or give it another sid. A record or member whose tag does not
check is ignored, logged and counted (``rejected_records``). Members are
tagged deterministically, so a leave removes exactly what the join added.
A namespace field's tag also covers its namespace, so it cannot be moved to
another namespace or session.

A key of the wrong type at one of these names (someone ran ``SET`` on the
rooms set, say) is deleted, counted (``wrong_type_keys``) and logged once
per window with the fix; a load reads it as empty, and a write raises
:class:`KeyTypeCleared` so the caller writes the whole record back from the
live connection (:mod:`cluster.sessions.repair`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

from cluster.sessions.memory_state import MemoryConnectionState
from cluster.sessions.record_codec import (
    ConnectionRecord,
    RoomKey,
    add_members,
    decode,
    empty_record,
    encode_member,
    namespace_entry,
    overlay,
    stored,
)
from session_store import SessionStoreError
from session_store.quiet_log import QuietLog
from session_store.record_mac import RecordMac
from session_store.redis_client import LuaScript
from session_store.redis_store import WRONG_TYPE_FIX
from session_store.write_batches import Command, WriteBatches, run_pipeline

logger = logging.getLogger("cluster.sessions")


__all__ = ["ConnectionRecord", "KeyTypeCleared", "MemoryConnectionState", "RedisConnectionState",
           "RoomKey", "empty_record", "encode_member"]


class KeyTypeCleared(SessionStoreError):
    """A key of the connection record had the wrong type and was deleted:
    write the whole record back (see the module doc)."""


# KEYS[1] any key; ARGV[1] its type: deleted when it has another one.
_CLEAR_WRONG_TYPE = LuaScript("""
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'none' and kind ~= ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end
return 0
""")


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


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

    def __init__(self, redis_client: Any, key_prefix: str, secret: Any = None,
                 batches: WriteBatches | None = None) -> None:
        self.redis = redis_client
        self.key_prefix = key_prefix
        #: group commit of concurrent connections' writes and reads (the
        #: node's; None: a pipeline per call)
        self.batches = batches
        self._tags = _Tags(secret)
        #: keys of the wrong type found and deleted (see the module doc)
        self.wrong_type_keys = 0
        self._quiet = QuietLog(logger)

    @property
    def rejected_records(self) -> int:
        return self._tags.rejected_records

    def _member(self, session_id: str, namespace: str, room: str) -> str:
        return self._tags.seal(session_id, "room", encode_member(namespace, room))

    def key(self, session_id: str) -> str:
        return f"{self.key_prefix}conn:{{{session_id}}}"

    def rooms_key(self, session_id: str) -> str:
        return f"{self.key_prefix}conn:{{{session_id}}}:rooms"

    def namespaces_key(self, session_id: str) -> str:
        return f"{self.key_prefix}conn:{{{session_id}}}:ns"

    def _keys(self, session_id: str) -> tuple[str, str, str]:
        return self.key(session_id), self.namespaces_key(session_id), \
            self.rooms_key(session_id)

    def _execute(self, commands: list[Command], session_id: str) -> list[Any]:
        """Run ``commands`` in one round trip (with the other connections'
        when batched); a WRONGTYPE reply clears the wrong-typed keys and
        raises :class:`KeyTypeCleared` (other errors are raised as they are)."""
        if self.batches is not None:
            replies = self.batches.execute(commands)
        else:
            replies = run_pipeline(self.redis, commands)
        errors = [reply for reply in replies if isinstance(reply, Exception)]
        if any(str(error).startswith("WRONGTYPE") for error in errors):
            self.clear_wrong_types(session_id)
            raise KeyTypeCleared(f"connection record of {session_id[:6]}…: {errors[0]}")
        if errors:
            raise errors[0]
        return list(replies)

    def clear_wrong_types(self, session_id: str) -> int:
        """Delete the session's record keys that have the wrong type."""
        cleared = 0
        for key, kind in zip(self._keys(session_id), ("string", "hash", "set"), strict=True):
            if _CLEAR_WRONG_TYPE([key], [kind], self.redis):
                cleared += 1
                self.wrong_type_keys += 1
                self._quiet.log(logging.WARNING, "wrong-type", WRONG_TYPE_FIX,
                                key.replace(session_id, session_id[:6] + "…"))
        return cleared

    def save(self, session_id: str, record: ConnectionRecord, ttl: float) -> None:
        """Write the whole record (not the rooms) and renew the TTLs: when a
        connection is accepted, and when it is written back after a loss."""
        sealed = self._tags.seal(session_id, "record",
                                 json.dumps(stored(record), sort_keys=True))
        self._execute([
            ("set", (self.key(session_id), sealed), {"px": _ms(ttl)}),
            ("delete", (self.namespaces_key(session_id),), {}),  # now in the record itself
            ("pexpire", (self.rooms_key(session_id), _ms(ttl)), {}),
        ], session_id)

    def save_namespace(self, session_id: str, record: ConnectionRecord, namespace: str,
                       ttl: float, forget: Iterable[str] = ()) -> None:
        """Write ``namespace``'s part of the record only: one ``HSET``, its
        size independent of the connection's other namespaces; ``forget``:
        namespaces the connection left since, whose fields go (``HDEL``)."""
        key = self.namespaces_key(session_id)
        commands: list[Command] = []
        left = [name for name in forget if name != namespace]
        if left:
            commands.append(("hdel", (key, *left), {}))
        entry = namespace_entry(record, namespace)
        commands.append(("hset", (key, namespace,
                                  self._tags.seal(session_id, "ns:" + namespace, entry)), {}))
        commands.append(("pexpire", (key, _ms(ttl)), {}))
        self._execute(commands, session_id)

    def replace_rooms(self, session_id: str, rooms: list[RoomKey], ttl: float) -> None:
        """Make the rooms set exactly ``rooms`` (a write-back after a loss)."""
        key = self.rooms_key(session_id)
        commands: list[Command] = [("delete", (key,), {})]
        if rooms:
            members = tuple(self._member(session_id, ns, room) for ns, room in rooms)
            commands.append(("sadd", (key, *members), {}))
            commands.append(("pexpire", (key, _ms(ttl)), {}))
        self._execute(commands, session_id)

    def change_rooms(self, session_id: str, added: list[RoomKey], removed: list[RoomKey],
                     ttl: float) -> None:
        """Apply joins and leaves: O(changes) in one round trip."""
        if not added and not removed:
            return
        key = self.rooms_key(session_id)
        commands: list[Command] = []
        if added:
            members = tuple(self._member(session_id, ns, room) for ns, room in added)
            commands.append(("sadd", (key, *members), {}))
        if removed:
            members = tuple(self._member(session_id, ns, room) for ns, room in removed)
            commands.append(("srem", (key, *members), {}))
        # a set created by SADD has no TTL yet
        commands.append(("pexpire", (key, _ms(ttl)), {}))
        self._execute(commands, session_id)

    def load(self, session_id: str, _retry: bool = True) -> ConnectionRecord:
        """The stored record; a key of the wrong type is cleared and read as empty."""
        try:
            raw, fields, members = self._execute([
                ("get", (self.key(session_id),), {}),
                ("hgetall", (self.namespaces_key(session_id),), {}),
                ("smembers", (self.rooms_key(session_id),), {}),
            ], session_id)
        except KeyTypeCleared:
            if not _retry:
                raise
            return self.load(session_id, _retry=False)  # the rest has the right types
        raw = self._tags.open(session_id, "record", raw)
        record = decode(raw) if raw is not None else empty_record()
        for name, value in sorted((fields or {}).items()):
            namespace = _text(name)
            opened = self._tags.open(session_id, "ns:" + namespace, value)
            if opened is not None:
                overlay(record, namespace, opened)
        opened_members = (self._tags.open(session_id, "room", member)
                          for member in members or ())
        return add_members(record, (member for member in opened_members
                                     if member is not None))

    def expire(self, session_id: str, ttl: float) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for key in self._keys(session_id):
            pipe.pexpire(key, _ms(ttl))
        pipe.execute()

    def renew(self, session_ids: list[str], ttl: float) -> None:
        """Renew the TTLs of many connections' records: one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for session_id in session_ids:
            for key in self._keys(session_id):
                pipe.pexpire(key, _ms(ttl))
        pipe.execute()

    def delete(self, session_id: str) -> None:
        self.redis.delete(*self._keys(session_id))
