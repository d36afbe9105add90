"""The record of recent emits behind connection state recovery.

With recovery on, every emit that is not an ack request is appended to a
capped Redis Stream *and* published on the channel by one Lua script, so the
two can never disagree and an emit still costs one round trip. The stream
entry id (``<ms>-<seq>``, assigned by Redis, the same for every node) is the
packet's offset: it travels with the published message (``@<id>@<payload>``)
and is appended to the event's arguments on delivery, where the official
client picks it up.

A client that comes back sends its last offset; :meth:`RecoveryLog.after`
returns what was appended since. The stream is trimmed by age (entries older
than the recovery window go) and by length, and expires when idle.

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
from collections.abc import Callable
from typing import Any

from cluster.recovery.offsets import ZERO, Offset

PREFIX = b"@"

# KEYS[1] stream; ARGV: channel, payload, window ms, max entries, publish cmd
_APPEND = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[3])
local id = redis.call('XADD', KEYS[1], 'MINID', '~', now - window, '*', 'p', ARGV[2])
redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', ARGV[4])
redis.call('PEXPIRE', KEYS[1], window * 2)
redis.call(ARGV[5], ARGV[1], '@' .. id .. '@' .. ARGV[2])
return id
"""


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


#: turns an archived bus payload back into its message, or None when it
#: cannot be trusted (the bus's codec checks signature and shape)
EntryOpener = Callable[[bytes], "dict[str, Any] | None"]


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
        self.channel = channel
        self.open_entry = open_entry
        self.window_ms = max(1000, int(window * 1000))
        self.max_entries = int(max_entries)
        self.publish_command = "SPUBLISH" if sharded else "PUBLISH"
        self._scripts: dict[int, Any] = {}
        self.sha = hashlib.sha1(_APPEND.encode()).hexdigest()

    def append(self, client: Any, payload: bytes) -> Any:
        """Append and publish ``payload`` atomically; returns its offset.

        ``client`` may be a pipeline: the call is then queued (as EVALSHA,
        so load the script first with :meth:`load_script`) and the offset is
        in the pipeline's reply (see :meth:`offset_from`).
        """
        args = [self.channel, payload, self.window_ms, self.max_entries,
                self.publish_command]
        if hasattr(client, "execute"):
            # not redis-py's Script: in a pipeline it checks SCRIPT EXISTS
            # first, a second round trip per batch
            return client.evalsha(self.sha, 1, self.key, *args)
        return self.offset_from(self._script(client)(keys=[self.key], args=args))

    def load_script(self, client: Any) -> None:
        """Load the append script into ``client``'s server (once per connection)."""
        client.script_load(_APPEND)

    def _script(self, client: Any) -> Any:
        script = self._scripts.get(id(client))
        if script is None:
            script = client.register_script(_APPEND)
            self._scripts = {id(client): script}
        return script

    @staticmethod
    def offset_from(reply: Any) -> str:
        """The offset in the script's reply."""
        return reply.decode() if isinstance(reply, bytes) else str(reply)

    def last_offset(self, client: Any) -> str:
        """The newest offset, or ``"0-0"`` when the stream is empty."""
        entries = client.xrevrange(self.key, count=1)
        if not entries:
            return "0-0"
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
        oldest = client.xrange(self.key, count=1)
        if oldest:
            return not parsed < Offset.of(_text(oldest[0][0]))
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

    def contains(self, client: Any, offset: Any) -> bool:
        """Whether ``offset`` is the id of an entry of the stream."""
        if Offset.parse(offset) is None:
            return False
        return bool(client.xrange(self.key, min=offset, max=offset, count=1))

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
            if payload is None:
                out.append((_text(entry_id), None, 0))
                continue
            out.append((_text(entry_id), self.open_entry(payload), len(payload)))
        return out

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


def _never_trimmed(client: Any, key: str) -> bool:
    try:
        info = client.xinfo_stream(key)
    except Exception as exc:  # no stream yet: nothing was ever trimmed
        if "no such key" in str(exc).lower():
            return True
        raise
    deleted = info.get("max-deleted-entry-id") if isinstance(info, dict) else None
    if deleted is None:
        return True  # Redis before 7.0 does not say; as before, trust it
    return _text(deleted) == "0-0"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

