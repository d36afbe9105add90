"""Routing fields of a recovery stream entry: whom a logged emit may reach.

A replay looks for the packets one client missed among everything the
cluster logged. So that another user's traffic costs that client nothing,
each entry carries, besides its payload ``p``, where the emit went:

- ``ns``: its namespace;
- ``to``: ``*`` for everyone in the namespace, else ``=`` and the room
  names (a sid is a room too) joined by NUL;
- ``sk``: when it skips sids, ``=`` and those sids joined by NUL.

The stream's scan script (:data:`.scripts.SCAN`) returns only the entries
whose fields may reach the client (or that have none: written by an older
node, or not an emit), so a replay reads its own history whatever else the
stream holds. The fields are outside the signature: they are hints that
can only *hide* entries (as anyone who can write to Redis can anyway),
never add one, since every returned entry is still opened (signature
checked) and matched in full by :func:`.replay.message_reaches`.

So the fields must never hide an entry the full match would accept: where
the message has a shape they cannot state exactly (a room that is not a
string, a name holding NUL, a payload that is not JSON), there are none.
"""
from __future__ import annotations

import json
from typing import Any, NamedTuple

#: the field names (kept short: every entry carries them)
NAMESPACE, TARGET, SKIP = "ns", "to", "sk"
#: ``to`` of an emit to everyone in its namespace
EVERYONE = "*"
#: starts a list of names in ``to`` and ``sk``
LISTED = "="
SEPARATOR = "\0"


def _names(value: Any) -> str | None:
    """``value`` (a name or a list of names) as a listed field, or None
    when it cannot be stated exactly."""
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names:
        return None
    if not all(isinstance(name, str) and SEPARATOR not in name for name in names):
        return None
    return LISTED + SEPARATOR.join(names)


def message_of(payload: bytes | str) -> dict[str, Any] | None:
    """The bus message inside a published payload (signed envelope or plain
    JSON), unverified: for routing hints only. None if it is not one."""
    try:
        outer = json.loads(payload)
        body = outer.get("body") if isinstance(outer, dict) else None
        if isinstance(body, str) and "sig" in outer:
            outer = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return outer if isinstance(outer, dict) else None


def route_fields(payload: bytes | str) -> list[str]:
    """The routing fields of a logged payload, flat (``[name, value, ...]``,
    as ``XADD`` takes them); empty when they cannot be stated exactly, and
    then the entry is examined for every replay."""
    message = message_of(payload)
    if message is None or message.get("method") != "emit":
        return []
    namespace = message.get("namespace") or "/"
    if not isinstance(namespace, str):
        return []
    room = message.get("room")
    target = EVERYONE if room is None else _names(room)
    if target is None:
        return []
    fields = [NAMESPACE, namespace, TARGET, target]
    skip = message.get("skip_sid")
    if skip is not None:
        skipped = _names(skip)
        if skipped is not None:  # else none: the full match decides
            fields += [SKIP, skipped]
    return fields


def scan_members(sid: str, rooms: Any) -> list[str]:
    """The names a client is reached by, for the scan script: its rooms
    that are strings (entries to any other room carry no fields, see
    :func:`route_fields`), without its sid (passed apart)."""
    return sorted(room for room in rooms if isinstance(room, str) and room != sid)


class Route(NamedTuple):
    """An entry's routing fields, read back (see the module doc)."""

    #: its namespace
    namespace: str
    #: the names it went to (rooms, sids); None: everyone in the namespace
    targets: frozenset[str] | None
    #: the sids it skips
    skipped: frozenset[str]


#: an entry whose ``to`` field no client matches (neither ``*`` nor a list)
UNREACHABLE = Route("", frozenset(), frozenset())


def route_of(fields: dict[bytes, bytes]) -> Route | None:
    """The routing fields of a stream entry as :data:`.scripts.SCAN`
    reads them; None when it has none (it may reach anyone)."""
    namespace, target = fields.get(NAMESPACE.encode()), fields.get(TARGET.encode())
    if namespace is None or target is None:
        return None
    ns, to = namespace.decode("utf-8", "replace"), target.decode("utf-8", "replace")
    skip = fields.get(SKIP.encode())
    skipped = frozenset(skip.decode("utf-8", "replace")[1:].split(SEPARATOR)) \
        if skip is not None else frozenset()
    if to == EVERYONE:
        return Route(ns, None, skipped)
    if not to.startswith(LISTED):
        return UNREACHABLE
    return Route(ns, frozenset(to[1:].split(SEPARATOR)), skipped)


class ScanPage(NamedTuple):
    """One call of the scan script, read back."""

    #: the entries that may reach the client, oldest first, each
    #: ``(offset, message or None, size in bytes)`` (``None``: it failed
    #: its signature check, never trusted)
    entries: list[tuple[str, dict[str, Any] | None, int]]
    #: the last id looked at (where the next call starts)
    last: str
    #: how many entries were looked at
    scanned: int
    #: the stream's length at the time
    length: int
    #: whether the end of the stream was reached
    done: bool
