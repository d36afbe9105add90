"""The record of recent emits behind connection state recovery.

With recovery on, every emit that is not an ack request is appended to a
capped Redis Stream *and* published on the channel by one Lua script, so the
two can never disagree and an emit still costs one round trip. The stream
entry id (``<ms>-<seq>``, assigned by Redis, the same for every node) is the
packet's offset: it travels with the published message (``@<id>@<payload>``)
and is appended to the event's arguments on delivery, where the official
client picks it up.

A client that comes back sends its last offset; :meth:`RecoveryLog.scan`
returns what was appended since that may reach it (each entry carries its
routing fields, see :mod:`.routing`), :meth:`RecoveryLog.after` all of it.
A key of the wrong type at the stream's name is moved aside by the scripts
(:mod:`.scripts`), logged and counted, and the stream starts anew.

The stream is trimmed by age (entries older than the recovery window go)
and by length, and expires when idle.

The stored payload is the message exactly as published (signed when the bus
signs), and it is only ever read back with ``json.loads`` after the
signature check.

The ``@<id>@`` prefix is added by Redis, after the sender signed, so it is
outside the signature; the sender signs that the message is logged instead,
and receivers accept the prefix only on such a message and only within its
publish time (see :mod:`.codec`, which ``split_published``'s caller hands
the offset to).
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from cluster.recovery.offsets import ZERO, Offset
from cluster.recovery.routing import Route, ScanPage, route_fields, route_of, scan_members
from cluster.recovery.scripts import APPEND, HEAL, QUARANTINE_SECONDS, SCAN
from session_store.quiet_log import QuietLog

logger = logging.getLogger("cluster.recovery.stream")

PREFIX = b"@"

#: stream entries one scan script call looks at (bounds how long Redis is
#: busy with one call: about a millisecond)
SCAN_COUNT = 1000
#: payload bytes one scan call returns at most (one entry always)
SCAN_BYTES = 1024 * 1024

#: seconds between two log lines about healed keys (each one is counted)
HEAL_LOG_EVERY = 60.0


def split_published(raw: Any) -> tuple[str | None, Any]:
    """``(offset, payload)`` of a message from the channel (offset None if absent)."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    if isinstance(raw, (bytes, bytearray)) and raw[:1] == PREFIX:
        end = raw.find(PREFIX, 1)
        if end > 1:
            offset = bytes(raw[1:end]).decode("ascii", "replace")
            if Offset.parse(offset) is not None:
                return offset, bytes(raw[end + 1:])
    return None, raw


class WindowEntry(NamedTuple):
    """A stream entry as :meth:`RecoveryLog.window_read` returns it."""

    offset: str
    #: the message, None when it has no payload or fails its signature check
    message: dict[str, Any] | None
    #: bytes of its payload
    size: int
    #: its routing fields, None when it has none (it may reach anyone)
    route: Route | None


#: turns an archived bus payload back into its message, or None when it
#: cannot be trusted (the bus's codec checks signature and shape)
EntryOpener = Callable[[bytes], "dict[str, Any] | None"]


class OffsetFacts(NamedTuple):
    """What the stream says of a client's offset (see :func:`.replay.trustworthy_offset`)."""

    #: an entry of the stream has this id
    contains: bool
    #: nothing after it was trimmed: a replay from it can be trusted
    readable: bool


class RecoveryLog:
    """Append to and read from the recovery stream of one channel.

    :param window: seconds an entry is kept (the maximum disconnection
        duration).
    :param max_entries: upper bound on the stream's length (approximate, as
        Redis trims whole nodes). Default 100,000.
    """

    def __init__(self, channel: str, open_entry: EntryOpener, window: float,
                 max_entries: int = 100_000, sharded: bool = False) -> None:
        # the hash tag keeps stream and channel in one slot on Redis Cluster
        self.key = f"{{{channel}}}:recovery"
        #: where a wrong-typed key at ``key`` is moved (same slot)
        self.quarantine_key = f"{{{channel}}}:recovery:quarantined"
        #: the first millisecond of the last reset's stream (see :mod:`.scripts`)
        self.reset_mark_key = f"{{{channel}}}:recovery:reset"
        self.channel = channel
        self.open_entry = open_entry
        self.window_ms = max(1000, int(window * 1000))
        self.max_entries = int(max_entries)
        self.publish_command = "SPUBLISH" if sharded else "PUBLISH"
        self._scripts: dict[tuple[int, str], Any] = {}
        self.sha = hashlib.sha1(APPEND.encode()).hexdigest()
        #: wrong-typed keys moved aside by this process (see :mod:`.scripts`)
        self.resets = 0
        #: called once per reset (the bus counts it in its stats)
        self.on_reset: Callable[[], Any] | None = None
        self.logger = logger
        self._quiet = QuietLog(logger, HEAL_LOG_EVERY)

    def append(self, client: Any, payload: bytes, channel: str | None = None) -> Any:
        """Append and publish ``payload`` atomically (on ``channel``, by
        default the stream's own); returns its offset.

        The entry carries the payload's routing fields (see :mod:`.routing`).
        ``client`` may be a pipeline: the call is then queued (as EVALSHA,
        so load the script first with :meth:`load_script`) and the offset is
        in the pipeline's reply (see :meth:`offset_from`).
        """
        args = [channel or self.channel, payload, self.window_ms, self.max_entries,
                self.publish_command, QUARANTINE_SECONDS * 1000, *route_fields(payload)]
        keys = [self.key, self.quarantine_key, self.reset_mark_key]
        if hasattr(client, "execute"):
            # not redis-py's Script: in a pipeline it checks SCRIPT EXISTS
            # first, a second round trip per batch
            return client.evalsha(self.sha, len(keys), *keys, *args)
        return self.offset_from(self._script(client)(keys=keys, args=args))

    def load_script(self, client: Any) -> None:
        """Load the append script into ``client``'s server (once per connection)."""
        client.script_load(APPEND)

    def _script(self, client: Any, text: str = APPEND) -> Any:
        """redis-py's Script for ``text`` on ``client`` (EVALSHA, loading
        the script when Redis lacks it); kept for the newest client only."""
        key = (id(client), text)
        script = self._scripts.get(key)
        if script is None:
            if any(known != id(client) for known, _ in self._scripts):
                self._scripts = {}
            script = self._scripts[key] = client.register_script(text)
        return script

    def offset_from(self, reply: Any) -> str:
        """The offset in the append script's reply (which, when the script
        healed a wrong-typed key, also names the key's old type)."""
        if isinstance(reply, (list, tuple)) and len(reply) == 2:
            self.healed(_text(reply[1]))
            reply = reply[0]
        return _text(reply)

    def heal(self, client: Any) -> bool:
        """Move a wrong-typed key at :attr:`key` aside (see :mod:`.scripts`);
        True when there was one. For readers that met ``WRONGTYPE``."""
        kind = self._script(client, HEAL)(keys=[self.key, self.quarantine_key, self.reset_mark_key],
                                          args=[QUARANTINE_SECONDS * 1000, self.window_ms * 2])
        if kind is None:
            return False
        self.healed(_text(kind))
        return True

    def healed(self, kind: str) -> None:
        """Count a reset, and log it (at most one line per ``HEAL_LOG_EVERY``)."""
        self.resets += 1
        if self.on_reset is not None:
            self.on_reset()
        # the logger is looked up per line: the bus swaps in its own
        self._quiet.logger = self.logger
        self._quiet.log(
            logging.ERROR, "wrong_type",
            "a key of the wrong type (%s) was at %s, where the recovery stream "
            "belongs; moved to %s (kept %d s) and the stream started anew, so "
            "clients away across this reset resume without recovery. Nothing but "
            "the cluster's nodes should write to this Redis: check who does, and its ACLs",
            kind, self.key, self.quarantine_key, QUARANTINE_SECONDS)

    def last_offset(self, client: Any) -> str:
        """The newest offset, or ``"0-0"`` when there is no stream (on a
        stream emptied by a reset, the reset's marker: see :mod:`.scripts`)."""
        entries = client.xrevrange(self.key, count=1)
        if not entries:
            deleted = _max_deleted(client, self.key)
            return str(deleted) if deleted is not None else "0-0"
        entry_id = entries[0][0]
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    def readable(self, client: Any, offset: Any) -> bool:
        """Whether everything after ``offset`` is still in the stream, i.e.
        whether a replay from it can be trusted.

        Trimming removes the oldest entries, so an offset no older than the
        oldest entry kept has lost nothing after it (one cheap read). ``0-0``
        (the start of a session that began on an empty stream) is readable
        only while the stream has never been trimmed.
        """
        parsed = Offset.parse(offset)
        if parsed is None:
            return False
        if parsed == ZERO:
            return _never_trimmed(client, self.key)
        return self._readable_after(client, parsed, client.xrange(self.key, count=1))

    def offset_facts(self, client: Any, offset: Any) -> OffsetFacts:
        """Whether ``offset`` is the id of an entry of the stream, and
        :meth:`readable`, both in one round trip in the common case. A
        resume asks both; as two reads they were 7.4% of a surviving node's
        CPU in issue 29's reconnect storm."""
        parsed = Offset.parse(offset)
        if parsed is None:
            return OffsetFacts(False, False)
        pipe = client.pipeline(transaction=False)
        pipe.xrange(self.key, min=offset, max=offset, count=1)
        pipe.xrange(self.key, count=1)
        found, oldest = pipe.execute()
        if parsed == ZERO:
            return OffsetFacts(bool(found), _never_trimmed(client, self.key))
        return OffsetFacts(bool(found), self._readable_after(client, parsed, oldest))

    def _readable_after(self, client: Any, parsed: Offset, oldest: Any) -> bool:
        """:meth:`readable` of an offset other than ``0-0``, given the
        stream's oldest entry (``XRANGE - + COUNT 1``)."""
        if oldest and not parsed < Offset.of(_text(oldest[0][0])):
            return True
        deleted = _max_deleted(client, self.key)
        if deleted is not None and deleted != ZERO:
            # entries were deleted: trimmed, or the marker of a reset (see
            # .scripts); none after the offset means nothing was lost
            return not parsed < deleted
        if oldest:
            return False
        return parsed.age_ms() <= self.window_ms

    def restart_point(self, client: Any, mark: bytes) -> str:
        """Where a session's history starts now, for a session whose
        recorded start was lost (Redis came back empty): the newest offset,
        or, on an empty stream, the offset of ``mark`` (a sealed message
        that is not an emit, so no replay sends it), appended for that."""
        entries = client.xrevrange(self.key, count=1)
        if entries:
            return _text(entries[0][0])
        entry_id = client.xadd(self.key, {"p": mark}, maxlen=self.max_entries,
                               approximate=True)
        client.pexpire(self.key, self.window_ms * 2)
        return _text(entry_id)

    def page(self, client: Any, offset: str, count: int
             ) -> list[tuple[str, dict[str, Any] | None, int]]:
        """Up to ``count`` entries after ``offset``, oldest first, each as
        ``(offset, message, size)``: ``message`` is ``None`` for an entry
        that fails the signature check (never trusted), ``size`` the bytes
        it holds."""
        Offset.of(offset)  # raises InvalidOffset (a ValueError) for anything else
        entries = client.xrange(self.key, min="(" + offset, count=int(count))
        out: list[tuple[str, dict[str, Any] | None, int]] = []
        for entry_id, fields in entries:
            payload = fields.get(b"p") if isinstance(fields, dict) else None
            out.append((_text(entry_id), *self._opened(payload)))
        return out

    def raw_page(self, client: Any, offset: str, until: str, count: int
                 ) -> list[tuple[str, bytes | None]]:
        """Up to ``count`` entries after ``offset`` and up to ``until``
        (included), oldest first, each as ``(offset, payload)`` exactly as
        published (``None`` for an entry without one), *not* opened: for the
        bus's catch-up, which checks them like live messages (see
        :mod:`cluster.bus.catch_up`)."""
        Offset.of(offset)  # raises InvalidOffset (a ValueError) for anything else
        Offset.of(until)
        entries = client.xrange(self.key, min="(" + offset, max=until, count=int(count))
        out: list[tuple[str, bytes | None]] = []
        for entry_id, fields in entries:
            payload = fields.get(b"p") if isinstance(fields, dict) else None
            out.append((_text(entry_id), payload if isinstance(payload, bytes) else None))
        return out

    def window_read(self, client: Any, after: str, until: str | None, count: int
                    ) -> tuple[list[WindowEntry], int]:
        """Up to ``count`` entries after ``after`` (up to ``until``, included,
        when given), oldest first, each opened like :meth:`page`'s and with
        its routing fields (see :mod:`.routing`); and the stream's length.
        For :mod:`.shared_window`."""
        Offset.of(after)  # raises InvalidOffset (a ValueError) for anything else
        pipe = client.pipeline(transaction=False)
        pipe.xrange(self.key, min="(" + after, max=until or "+", count=int(count))
        pipe.xlen(self.key)
        entries, length = pipe.execute()
        out: list[WindowEntry] = []
        for entry_id, fields in entries:
            fields = fields if isinstance(fields, dict) else {}
            out.append(WindowEntry(_text(entry_id), *self._opened(fields.get(b"p")),
                                   route_of(fields)))
        return out, int(length)

    def _opened(self, payload: Any) -> tuple[dict[str, Any] | None, int]:
        """An entry's message (None: it has no payload, or the payload fails
        its signature check) and the payload's size in bytes."""
        if payload is None:
            return None, 0
        return self.open_entry(payload), len(payload)

    def scan(self, client: Any, offset: str, namespace: str, sid: str,
             rooms: Iterable[Any], count: int = SCAN_COUNT,
             max_bytes: int = SCAN_BYTES) -> ScanPage:
        """Look at up to ``count`` entries after ``offset`` in Redis and
        return those that may reach ``sid`` (in ``namespace``, member of
        ``rooms``), by their routing fields (see :mod:`.routing`), opened
        like :meth:`page`'s. Entries for everyone else never leave Redis,
        so a replay's cost follows its client's own history."""
        Offset.of(offset)  # raises InvalidOffset (a ValueError) for anything else
        reply = self._script(client, SCAN)(
            keys=[self.key], args=[offset, int(count), int(max_bytes), namespace, sid,
                                   *scan_members(sid, rooms)])
        entries: list[tuple[str, dict[str, Any] | None, int]] = []
        for index in range(4, len(reply) - 1, 2):
            entries.append((_text(reply[index]), *self._opened(reply[index + 1])))
        return ScanPage(entries, _text(reply[0]), int(reply[1]), int(reply[2]),
                        bool(int(reply[3])))

    def after(self, client: Any, offset: str, limit: int = 10_000
              ) -> list[tuple[str, dict[str, Any]]] | None:
        """Messages appended after ``offset``, oldest first (at most ``limit``).

        ``None`` when ``offset`` cannot be trusted: malformed, or older than
        what the stream still holds (then packets may have been trimmed and
        recovery must not pretend otherwise).
        """
        if not self.readable(client, offset):
            return None
        return [(entry_offset, message) for entry_offset, message, _
                in self.page(client, offset, limit) if message is not None]


def _max_deleted(client: Any, key: str) -> Offset | None:
    """The newest id ever deleted from the stream (trimmed, or the marker
    of a reset); None when there is no stream or Redis (before 7.0) does
    not say."""
    try:
        info = client.xinfo_stream(key)
    except Exception as exc:  # no stream yet: nothing was ever trimmed
        if "no such key" in str(exc).lower():
            return None
        raise
    deleted = info.get("max-deleted-entry-id") if isinstance(info, dict) else None
    return Offset.parse(_text(deleted)) if deleted is not None else None


def _never_trimmed(client: Any, key: str) -> bool:
    # Redis before 7.0 does not say; as before, trust it
    deleted = _max_deleted(client, key)
    return deleted is None or deleted == ZERO


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

