"""What one connection may cost a node, and the per-connection rate limit.

Every resource a client can grow is bounded by default (see the security
rules of the design). The options, keywords of ``SocketIO(...)`` and flags
of ``python -m cluster node``:

============================  ===========  =====================================
option                        default      bounds
============================  ===========  =====================================
``max_events_per_second``     ``100``      incoming events per connection and
                                           second, burst twice that; ``None``
                                           or ``0`` switches the limit off
``max_rooms_per_connection``  ``1000``     rooms one connection may be in, per
                                           namespace (its own room not counted)
``connect_timeout``           ``45``       seconds an Engine.IO connection has
                                           to complete a Socket.IO CONNECT
``max_replay_packets``        ``2000``     packets one recovery may replay
``max_replay_bytes``          ``524288``   bytes one recovery may replay (keep
                                           it below ``max_backlog``)
============================  ===========  =====================================

The defaults are far above what a chat application does (a person types a
few events a second and joins tens of rooms) and far below what a flood
needs to hurt.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cluster.exceptions import ConfigurationError

logger = logging.getLogger("cluster.node.limits")

DEFAULT_MAX_EVENTS_PER_SECOND = 100.0
DEFAULT_MAX_ROOMS_PER_CONNECTION = 1000
DEFAULT_CONNECT_TIMEOUT = 45.0  # socket.io's connectTimeout
DEFAULT_MAX_REPLAY_PACKETS = 2000
DEFAULT_MAX_REPLAY_BYTES = 512 * 1024

#: a client drops events for at least this long before its next log line
LOG_WINDOW = 10.0
#: a client that tries FLOOD_FACTOR times the rate over FLOOD_SECONDS is cut
FLOOD_FACTOR = 10
FLOOD_SECONDS = 3.0

_MISSING: Any = object()


def _positive(options: Mapping[str, Any], name: str, default: float, *, whole: bool,
              example: str) -> Any:
    value = options.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0 or (whole and int(value) != value):
        kind = "a positive whole number" if whole else "a positive number"
        raise ConfigurationError(f"{name} must be {kind} (got {value!r}); e.g. {example}.")
    return int(value) if whole else float(value)


@dataclass(frozen=True)
class Limits:
    """The per-connection limits of a node (see the module doc for defaults)."""

    max_events_per_second: float | None = DEFAULT_MAX_EVENTS_PER_SECOND
    max_rooms_per_connection: int = DEFAULT_MAX_ROOMS_PER_CONNECTION
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    max_replay_packets: int = DEFAULT_MAX_REPLAY_PACKETS
    max_replay_bytes: int = DEFAULT_MAX_REPLAY_BYTES

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Limits:
        """Read the limits from the extension's keyword options.

        A missing option takes its default. ``max_events_per_second=None``
        (or ``0``) given explicitly switches the rate limit off; the other
        limits cannot be switched off, only raised.
        """
        rate = options.get("max_events_per_second", _MISSING)
        if rate is _MISSING:
            rate = DEFAULT_MAX_EVENTS_PER_SECOND
        elif rate is None or rate == 0:
            rate = None
        else:
            rate = _positive(options, "max_events_per_second", DEFAULT_MAX_EVENTS_PER_SECOND,
                             whole=False, example="max_events_per_second=100, or None for "
                             "no limit")
        return cls(
            max_events_per_second=rate,
            max_rooms_per_connection=_positive(
                options, "max_rooms_per_connection", DEFAULT_MAX_ROOMS_PER_CONNECTION,
                whole=True, example="max_rooms_per_connection=5000"),
            connect_timeout=_positive(options, "connect_timeout", DEFAULT_CONNECT_TIMEOUT,
                                      whole=False, example="connect_timeout=45"),
            max_replay_packets=_positive(options, "max_replay_packets",
                                         DEFAULT_MAX_REPLAY_PACKETS, whole=True,
                                         example="max_replay_packets=5000"),
            max_replay_bytes=_positive(options, "max_replay_bytes", DEFAULT_MAX_REPLAY_BYTES,
                                       whole=True, example="max_replay_bytes=1048576"),
        )


class _Bucket:
    __slots__ = ("tokens", "last", "window_start", "window_events", "logged_at", "unlogged",
                 "flooded")

    def __init__(self, tokens: float, now: float) -> None:
        self.tokens = tokens
        self.last = now
        self.window_start = now
        self.window_events = 0
        self.logged_at: float | None = None
        self.unlogged = 0
        self.flooded = False


ALLOW = "allow"
DROP = "drop"
FLOOD = "flood"


#: flood-cut connections a limiter remembers after they are gone
MAX_REMEMBERED_CUTS = 1024


class RateLimiter:
    """A token bucket per connection: ``rate`` events a second, burst ``2 * rate``.

    :meth:`take` says whether an event may be handled (``ALLOW``), must be
    dropped (``DROP``), or whether the connection floods (``FLOOD``: it tried
    ``FLOOD_FACTOR`` times the rate over ``FLOOD_SECONDS``) and should be
    disconnected. Drops are logged at most once per connection per
    ``LOG_WINDOW`` seconds, with the number dropped since the last line: a
    flood must not turn into a flood of log lines. After ``FLOOD`` every
    event of that connection is dropped, also after :meth:`forget`: packets
    it had already sent may still be read while it is being disconnected,
    and must neither get a fresh bucket nor count as a second flood.
    """

    def __init__(self, rate: float) -> None:
        self.rate = float(rate)
        self.burst = 2.0 * self.rate
        self.flood_events = FLOOD_FACTOR * self.rate * FLOOD_SECONDS
        self._buckets: dict[str, _Bucket] = {}
        # connections cut for flooding, oldest first (Engine.IO sids are
        # random and never reused), bounded so a stream of flooders cannot
        # grow it
        self._cut: dict[str, None] = {}

    def take(self, key: str, now: float) -> str:
        bucket = self._buckets.get(key)
        if bucket is None:
            if key in self._cut:
                return DROP
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        elif bucket.flooded:
            return DROP  # being disconnected: what it still sends goes nowhere
        if now - bucket.window_start >= FLOOD_SECONDS:
            bucket.window_start, bucket.window_events = now, 0
        bucket.window_events += 1
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.last) * self.rate)
        bucket.last = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return ALLOW
        if bucket.window_events >= self.flood_events:
            bucket.flooded = True
            return FLOOD
        self._note_drop(key, bucket, now)
        return DROP

    def _note_drop(self, key: str, bucket: _Bucket, now: float) -> None:
        bucket.unlogged += 1
        if bucket.logged_at is not None and now - bucket.logged_at < LOG_WINDOW:
            return
        logger.warning(
            "Connection %s exceeds max_events_per_second=%g (burst %g): %d event(s) "
            "dropped; further drops of this connection are logged at most every %g s "
            "and counted as rate_limited_events. Raise max_events_per_second "
            "(--max-events-per-second) if legitimate clients send this fast.",
            key[:8], self.rate, self.burst, bucket.unlogged, LOG_WINDOW)
        bucket.logged_at, bucket.unlogged = now, 0

    def forget(self, key: str) -> None:
        """The connection is gone: release its bucket (a flooder's key is
        remembered, see the class doc)."""
        bucket = self._buckets.pop(key, None)
        if bucket is not None and bucket.flooded:
            self._cut[key] = None
            if len(self._cut) > MAX_REMEMBERED_CUTS:
                del self._cut[next(iter(self._cut))]

    def __len__(self) -> int:
        return len(self._buckets)
