"""What one connection may cost a node, and the per-connection rate limit.

Every resource a client can grow is bounded by default (see the security
rules of the design). The options, keywords of ``SocketIO(...)`` and flags
of ``python -m cluster node``:

==================================  ===========  ================================
option                              default      bounds
==================================  ===========  ================================
``max_events_per_second``           ``100``      tokens per connection and second,
                                                 burst twice that, drawn by every
                                                 packet a client sends (see
                                                 *Packet costs*); ``None`` or
                                                 ``0`` switches the limit off
``max_rooms_per_connection``        ``1000``     rooms one connection may be in,
                                                 per namespace (its own room not
                                                 counted)
``max_namespaces_per_connection``   ``10``       namespaces one connection may be
                                                 connected to at once; a CONNECT
                                                 past it gets a CONNECT_ERROR
``connect_timeout``                 ``45``       seconds an Engine.IO connection
                                                 has to complete a Socket.IO
                                                 CONNECT
``max_replay_packets``              ``2000``     packets one recovery may replay
``max_replay_bytes``                ``524288``   bytes one recovery may replay
                                                 (keep it below ``max_backlog``)
``max_concurrent_connects``         ``32``       CONNECTs the node works on at
                                                 once, the others wait (see
                                                 :mod:`.connect_admission`)
==================================  ===========  ================================

The defaults are far above what a chat application does (a person types a
few events a second and joins tens of rooms) and far below what a flood
needs to hurt.

Packet costs
------------

Every Socket.IO packet a client sends draws on its token bucket, not only
EVENTs: a DISCONNECT, an ACK or a binary ACK costs one token like an event,
a CONNECT costs :data:`CONNECT_COST` (5; a connection's first CONNECT is
free, so its burst of events stays whole). A CONNECT is the dearest thing a
client can ask for: it binds a forked session (a Redis read), runs the
application's connect handler (often with its own queries and a presence
broadcast), persists the session and the connection record (Redis writes),
and the DISCONNECT that can follow at once runs the disconnect handler and
another write. Five events is a low estimate of that work, yet at the
default rate it still lets a client make 40 CONNECTs in a burst and 20 a
second after that, far more than a page load's few namespaces or a
reconnect need. (Below five a second a CONNECT costs one second of the
rate, so it never takes the whole burst.) A ``41``/``40``
(DISCONNECT/CONNECT) loop costs six tokens a round, so it is refused after
a handful of rounds and cut for flooding within a fraction of a second.
Flooding is measured in tokens too: a connection that tries to spend
``FLOOD_FACTOR`` times the rate over ``FLOOD_SECONDS``, with any mix of
packets, is disconnected.
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
DEFAULT_MAX_NAMESPACES_PER_CONNECTION = 10
DEFAULT_CONNECT_TIMEOUT = 45.0  # socket.io's connectTimeout
DEFAULT_MAX_REPLAY_PACKETS = 2000
DEFAULT_MAX_REPLAY_BYTES = 512 * 1024
DEFAULT_MAX_CONCURRENT_CONNECTS = 32

#: a client drops events for at least this long before its next log line
LOG_WINDOW = 10.0
#: a client that tries FLOOD_FACTOR times the rate over FLOOD_SECONDS is cut
FLOOD_FACTOR = 10
FLOOD_SECONDS = 3.0

#: tokens a packet other than a CONNECT costs (EVENT, DISCONNECT, ACK...)
PACKET_COST = 1.0
#: tokens a Socket.IO CONNECT costs: about the work of five events (see
#: "Packet costs" in the module doc)
CONNECT_COST = 5.0

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
    max_namespaces_per_connection: int = DEFAULT_MAX_NAMESPACES_PER_CONNECTION
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    max_replay_packets: int = DEFAULT_MAX_REPLAY_PACKETS
    max_replay_bytes: int = DEFAULT_MAX_REPLAY_BYTES
    max_concurrent_connects: int = DEFAULT_MAX_CONCURRENT_CONNECTS

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
            max_namespaces_per_connection=_positive(
                options, "max_namespaces_per_connection",
                DEFAULT_MAX_NAMESPACES_PER_CONNECTION, whole=True,
                example="max_namespaces_per_connection=20"),
            connect_timeout=_positive(options, "connect_timeout", DEFAULT_CONNECT_TIMEOUT,
                                      whole=False, example="connect_timeout=45"),
            max_replay_packets=_positive(options, "max_replay_packets",
                                         DEFAULT_MAX_REPLAY_PACKETS, whole=True,
                                         example="max_replay_packets=5000"),
            max_replay_bytes=_positive(options, "max_replay_bytes", DEFAULT_MAX_REPLAY_BYTES,
                                       whole=True, example="max_replay_bytes=1048576"),
            max_concurrent_connects=_positive(
                options, "max_concurrent_connects", DEFAULT_MAX_CONCURRENT_CONNECTS,
                whole=True, example="max_concurrent_connects=64"),
        )


class _Bucket:
    __slots__ = ("tokens", "last", "window_start", "window_cost", "logged_at", "unlogged",
                 "flooded")

    def __init__(self, tokens: float, now: float) -> None:
        self.tokens = tokens
        self.last = now
        self.window_start = now
        self.window_cost = 0.0  # tokens asked for in the flood window
        self.logged_at: float | None = None
        self.unlogged = 0
        self.flooded = False


ALLOW = "allow"
DROP = "drop"
FLOOD = "flood"


#: flood-cut connections a limiter remembers after they are gone
MAX_REMEMBERED_CUTS = 1024


class RateLimiter:
    """A token bucket per connection: ``rate`` tokens a second, burst ``2 * rate``.

    :meth:`take` says whether a packet costing ``cost`` tokens may be
    handled (``ALLOW``), must be dropped (``DROP``), or whether the
    connection floods (``FLOOD``: it asked for ``FLOOD_FACTOR`` times the
    rate's tokens over ``FLOOD_SECONDS``) and should be disconnected. A
    packet costs at most one second of the rate (one token when the rate is
    below one): at a low limit a CONNECT still leaves room in the burst for
    the events after it. Drops are logged at most once per connection per
    ``LOG_WINDOW`` seconds, with the number dropped since the last line: a
    flood must not turn into a flood of log lines. After ``FLOOD`` every
    packet of that connection is dropped, also after :meth:`forget`: packets
    it had already sent may still be read while it is being disconnected,
    and must neither get a fresh bucket nor count as a second flood.
    """

    def __init__(self, rate: float) -> None:
        self.rate = float(rate)
        self.burst = 2.0 * self.rate
        self.flood_cost = FLOOD_FACTOR * self.rate * FLOOD_SECONDS
        self._buckets: dict[str, _Bucket] = {}
        # connections cut for flooding, oldest first (Engine.IO sids are
        # random and never reused), bounded so a stream of flooders cannot
        # grow it
        self._cut: dict[str, None] = {}

    def take(self, key: str, now: float, cost: float = PACKET_COST, *,
             owed: bool = False, opening: bool = False) -> str:
        """Charge ``cost`` tokens to connection ``key`` (see the class doc).

        ``owed``: the packet is handled even without the tokens, unless the
        connection floods (a DISCONNECT, or the answer to an ack the server
        asked for: each is bounded by something the server did, and
        dropping it would leave client and server disagreeing). Its cost is
        then taken as debt, down to ``-burst``, so the packets after it wait
        for it; the verdict is ``ALLOW``, not a logged drop.

        ``opening``: the packet opens the connection (its first CONNECT). As
        the first packet of ``key`` it is free: the Engine.IO handshake
        before it is bounded elsewhere (the balancer's per-source limits,
        ``connect_timeout``), and the burst stays whole for what follows.
        """
        bucket = self._buckets.get(key)
        if bucket is None:
            if key in self._cut:
                return DROP
            bucket = self._buckets[key] = _Bucket(self.burst, now)
            if opening:
                return ALLOW
        elif bucket.flooded:
            return DROP  # being disconnected: what it still sends goes nowhere
        cost = min(cost, max(self.rate, PACKET_COST))
        if now - bucket.window_start >= FLOOD_SECONDS:
            bucket.window_start, bucket.window_cost = now, 0.0
        bucket.window_cost += cost
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.last) * self.rate)
        bucket.last = now
        if bucket.tokens >= cost:
            bucket.tokens -= cost
            return ALLOW
        if bucket.window_cost >= self.flood_cost:
            bucket.flooded = True
            return FLOOD
        if owed:
            bucket.tokens = max(-self.burst, bucket.tokens - cost)
            return ALLOW
        self._note_drop(key, bucket, now)
        return DROP

    def _note_drop(self, key: str, bucket: _Bucket, now: float) -> None:
        bucket.unlogged += 1
        if bucket.logged_at is not None and now - bucket.logged_at < LOG_WINDOW:
            return
        logger.warning(
            "Connection %s exceeds max_events_per_second=%g (burst %g): %d packet(s) "
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

