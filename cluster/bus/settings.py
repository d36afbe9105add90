"""The bus's settings: one typed, validated object per manager.

Built once from the manager's keyword arguments (:class:`BusSettings`) and
handed to the parts that need them: the publisher, the receiver, the
heartbeat and the queries read fields, never a dict.
"""
from __future__ import annotations

import dataclasses
import os
import socket
from typing import Any

from cluster.bus.codec import DEFAULT_MAX_MESSAGE_BYTES
from cluster.bus.errors import BusConfigurationError
from cluster.bus.outbox import DEFAULT_MAX_BYTES

#: manager settings a user may put among the driver options: the
#: extension passes ``message_queue_options`` on as driver options only,
#: and these are the limits a deployment tunes there
DRIVER_OPTION_SETTINGS = frozenset({"buffer_size", "buffer_bytes", "max_message_bytes",
                                    "max_clock_skew", "route_by_room", "redis_partitions"})

_POSITIVE = ("buffer_size", "buffer_bytes", "max_message_bytes", "max_batch", "max_backoff",
             "request_timeout", "heartbeat_interval", "max_message_age", "publish_timeout")


def split_settings(driver_options: dict[str, Any] | None,
                   settings: dict[str, Any]) -> dict[str, Any]:
    """Move :data:`DRIVER_OPTION_SETTINGS` out of ``driver_options`` (in
    place) into a copy of ``settings``; an explicit keyword wins."""
    merged = dict(settings)
    for key in DRIVER_OPTION_SETTINGS:
        if driver_options and key in driver_options:
            value = driver_options.pop(key)
            merged.setdefault(key, value)
    return merged


def driver_only(options: dict[str, Any] | None) -> dict[str, Any]:
    """A copy of ``options`` without the bus settings, for other clients
    built from the same ``message_queue_options`` (the session store's)."""
    return {k: v for k, v in (options or {}).items() if k not in DRIVER_OPTION_SETTINGS}


@dataclasses.dataclass(frozen=True)
class BusSettings:
    """Every tunable of one bus manager, validated on construction.

    - ``node_name``: label shown in cluster queries; default
      ``"<hostname>:<pid>"``.
    - ``buffer_size`` (10,000 messages) and ``buffer_bytes`` (64 MiB): the
      outage buffer; whichever is reached first refuses further emits,
      counted in ``dropped_buffer_full``. ``buffer_bytes`` is at least
      ``max_message_bytes``.
    - ``max_message_bytes``: largest serialized message (8 MiB). A bigger
      emit raises :class:`~.errors.BusMessageTooLarge` at the caller
      before anything is delivered or sent: Redis disconnects every
      subscriber that falls 32 MB behind (``client-output-buffer-limit
      pubsub``), so one huge message would cut all nodes off the bus.
    - ``max_batch``: messages written per round trip (500).
    - ``max_backoff``: retry delay cap in seconds (1.0); the node is back
      within about this long after the bus returns.
    - ``ack_timeout``: seconds before an unanswered ack callback is
      dropped (60); ``None`` keeps them forever as python-socketio does.
      Per call: :func:`~.services.acks.with_timeout`.
    - ``request_timeout``: default timeout of cluster queries (5.0).
    - ``heartbeat_interval`` (1.0) and ``node_timeout`` (silence after
      which a node counts as gone; ``3 * heartbeat_interval + 0.5``).
    - ``max_message_age``: signed messages older than this many seconds
      are rejected as replays (60).
    - ``max_clock_skew``: seconds host clocks may differ (2.0): a node
      drops signed messages sealed more than this before it started, and
      offsets stamped more than this before their message was sealed.
    - ``publish_timeout``: write-only publish deadline in seconds (5.0).
    - ``resume_wait``: after an outage, wait up to this many seconds for
      the other nodes to resubscribe before flushing the buffer (3.0).
    - ``recovery_window`` / ``recovery_max_entries``: connection state
      recovery's stream (seconds kept, entries kept); off by default.
    - ``route_by_room``: emits to one room travel on the room's own
      channel, which only nodes with a member of the room follow (True; see
      :mod:`.channels`). Nodes and emitters of a cluster must agree: set it
      to False on the new version while nodes from before routing (which
      follow only the common channel) still run, then drop it.
    """

    node_name: str = ""
    buffer_size: int = 10_000
    buffer_bytes: int = DEFAULT_MAX_BYTES
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_batch: int = 500
    max_backoff: float = 1.0
    ack_timeout: float | None = 60.0
    request_timeout: float = 5.0
    heartbeat_interval: float = 1.0
    node_timeout: float | None = None
    max_message_age: float = 60.0
    max_clock_skew: float = 2.0
    publish_timeout: float = 5.0
    resume_wait: float = 3.0
    recovery_window: float | None = None
    recovery_max_entries: int = 100_000
    route_by_room: bool = True

    def __post_init__(self) -> None:
        for key in _POSITIVE:
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise BusConfigurationError(
                    f"Bus option {key}={value!r} must be a positive number.")
        if self.buffer_bytes < self.max_message_bytes:
            raise BusConfigurationError(
                f"Bus option buffer_bytes={self.buffer_bytes!r} is smaller than "
                f"max_message_bytes={self.max_message_bytes!r}: the largest message "
                f"could never be buffered. Raise buffer_bytes or lower "
                f"max_message_bytes.")
        # normalised once here, so that every part reads final values
        set_field = object.__setattr__
        set_field(self, "node_name", self.node_name or f"{socket.gethostname()}:{os.getpid()}")
        for key in ("buffer_size", "buffer_bytes", "max_message_bytes", "max_batch"):
            set_field(self, key, int(getattr(self, key)))
        if not self.node_timeout:
            set_field(self, "node_timeout", 3 * self.heartbeat_interval + 0.5)

    @property
    def silence_limit(self) -> float:
        """Seconds of silence after which a node counts as gone."""
        assert self.node_timeout is not None  # set in __post_init__
        return self.node_timeout

    @property
    def offset_wait(self) -> float:
        """Seconds a logged emit waits to come back through the channel,
        where the listener delivers it (offset and all) in stream order,
        before it is delivered locally without an offset (it is still
        logged later)."""
        return min(2.0, self.publish_timeout)
