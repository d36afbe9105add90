"""The bus subscriber's connection, read in bulk rather than message by message.

A :class:`~.redis_wire.WireConnection` (see there why not redis-py's
``PubSub``): a burst of messages costs one ``recv``, and a message is a
``(kind, channel, data)`` tuple of bytes.

redis-py re-subscribes on its own when its pub/sub connection breaks, so
what was published meanwhile was lost without a word; here a broken
connection raises :class:`ConnectionError`, and the listener resubscribes
and reports the outage (logged, counted, the catch-up started).
"""
from __future__ import annotations

from typing import Any

import redis

from cluster.bus.backends.redis_wire import (
    INCOMPLETE,
    ProtocolError,
    WireConnection,
    encode_command,
)

__all__ = ["CLOSED_BY_REDIS", "PushConnection", "PushMessage"]

#: ``(kind, channel, data)``: kind ``b"message"``, ``b"smessage"``,
#: ``b"subscribe"``..., channel bytes, data bytes (or an int: the
#: subscription count of a confirmation)
PushMessage = tuple[bytes, bytes, Any]

CLOSED_BY_REDIS = (
    "Redis closed the subscriber connection. If this repeats, this node reads "
    "the bus too slowly, or bursts of large messages pass Redis's "
    "client-output-buffer-limit for pubsub (32 MB by default): lower "
    "max_message_bytes or raise that limit")


class PushConnection:
    """A subscriber connection.

    :param client: the redis-py client whose connection options to use.
    :param sharded: Redis Cluster's sharded pub/sub (``SSUBSCRIBE``).

    :meth:`get_message` is called by one task (the listener);
    :meth:`subscribe` and the other commands may come from any task.
    """

    def __init__(self, client: redis.Redis, sharded: bool = False) -> None:
        self._wire = WireConnection(client, CLOSED_BY_REDIS)
        # Redis Cluster's shard channels take SSUBSCRIBE/SUNSUBSCRIBE
        self._subscribe, self._unsubscribe = ((b"SSUBSCRIBE", b"SUNSUBSCRIBE") if sharded
                                              else (b"SUBSCRIBE", b"UNSUBSCRIBE"))

    def _send(self, *parts: bytes | str) -> None:
        self._wire.send(encode_command(parts))

    def subscribe(self, *channels: str) -> None:
        """Subscribe to ``channels`` (shard channels when ``sharded``)."""
        if channels:
            self._send(self._subscribe, *channels)

    def unsubscribe(self, *channels: str) -> None:
        """Unsubscribe from ``channels`` (shard channels when ``sharded``)."""
        if channels:
            self._send(self._unsubscribe, *channels)

    def ping(self) -> None:
        self._send(b"PING")

    def fill(self) -> None:
        """Read what the socket holds now, without waiting (see
        :meth:`~.redis_wire.WireConnection.fill`); :meth:`get_message` with
        timeout 0 then returns it."""
        self._wire.fill()

    def fileno(self) -> int:
        """The socket's descriptor (to wait on several connections at once)."""
        return self._wire.fileno()

    @property
    def received_at(self) -> float:
        """When bytes last arrived (monotonic seconds)."""
        return self._wire.received_at

    def get_message(self, timeout: float) -> PushMessage | None:
        """The next message: from what was read already, or, with a
        ``timeout`` above 0, from reads of the socket waiting up to that
        many seconds. None when there is none (yet).

        :raises ConnectionError: the connection broke, or Redis sent
            something a subscriber never gets.
        :raises redis.exceptions.ResponseError: Redis refused a command
            (a ``MOVED`` to a ``SSUBSCRIBE`` whose slot moved).
        """
        while True:
            value = self._wire.next_reply(timeout)
            if value is INCOMPLETE:
                return None
            message = _message(value)
            if message is not None:
                return message

    def close(self) -> None:
        """Close the connection (safe on a broken one)."""
        self._wire.close()


def _message(value: Any) -> PushMessage | None:
    """A reply as a message; None for one that is not (a PING's)."""
    if isinstance(value, Exception):
        raise value
    if isinstance(value, list) and len(value) >= 3 and isinstance(value[0], bytes):
        return value[0], value[1], value[2]
    if isinstance(value, list) and value and value[0] in (b"pong", b"PONG"):
        return None
    if value in (b"PONG", b"OK"):
        return None
    raise ProtocolError(f"unexpected reply on the Redis subscriber connection: {value!r:.80}")
