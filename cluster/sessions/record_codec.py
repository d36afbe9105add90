"""The JSON of a connection record (see :mod:`cluster.sessions.connection_state`):
encoding and decoding only, shared by the Redis and the in-process state.
Only JSON is ever read back; anything else reads as empty."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

ConnectionRecord = dict[str, dict[str, Any]]
RoomKey = tuple[str, str]  # (namespace, room)

__all__ = ["ConnectionRecord", "RoomKey", "add_members", "decode", "empty_record",
           "encode_member", "namespace_entry", "overlay", "stored"]


def empty_record() -> ConnectionRecord:
    return {"sids": {}, "rooms": {}, "base": {}, "rebased": {}}


def decode(raw: Any) -> ConnectionRecord:
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


def stored(record: ConnectionRecord) -> dict[str, Any]:
    """The JSON part of a record (the rooms are a set of their own)."""
    stored = {"sids": record["sids"], "base": record["base"]}
    if record.get("rebased"):
        stored["rebased"] = record["rebased"]
    return stored


def encode_member(namespace: str, room: str) -> str:
    return json.dumps([namespace, room])


def add_members(record: ConnectionRecord, members: Iterable[Any]) -> ConnectionRecord:
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


def namespace_entry(record: ConnectionRecord, namespace: str) -> str:
    """The namespace's field of the ``:ns`` hash."""
    entry = {kind: record[key][namespace] for kind, key in
             (("sid", "sids"), ("base", "base"), ("rebased", "rebased"))
             if namespace in record.get(key, {})}
    return json.dumps(entry, sort_keys=True)


def overlay(record: ConnectionRecord, namespace: str, raw: str) -> None:
    """Apply a namespace's field of the ``:ns`` hash onto ``record``."""
    try:
        entry = json.loads(raw)
    except (TypeError, ValueError):
        return
    if not isinstance(entry, dict):
        return
    for kind, key in (("sid", "sids"), ("base", "base"), ("rebased", "rebased")):
        value = entry.get(kind)
        if isinstance(value, str):
            record[key][namespace] = value
        else:
            record[key].pop(namespace, None)
