"""The bus over several Redis Cluster shards: where each lane lives, one
subscriber connection per shard, and publishes grouped by shard.

Used by :class:`~.redis_transport.RedisTransport` when room and node
channels are spread over lanes (:mod:`.redis_lanes`). A lane's channels all
share its slot, so each lives on one primary; :class:`ShardMap` says which,
as the cluster answered when the map was made. A failover or a resharding
makes the map stale: Redis then answers ``MOVED`` to a publish, or
unsubscribes the subscriber from the moved slot's channels, and the
transport makes a new map (and new connections) on its next send or
subscription.
"""
from __future__ import annotations

import select
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis

from cluster.bus.backends.redis_lanes import Lanes
from cluster.bus.backends.redis_pushes import PushConnection, PushMessage
from cluster.bus.backends.redis_wire import WireConnection, WirePipeline

__all__ = ["PING_AFTER", "PONG_WITHIN", "Address", "ShardMap", "ShardPublisher",
           "ShardedPushes", "SlotMoved"]

#: ``(host, port)`` of a primary
Address = tuple[str, int]

#: seconds a subscriber connection may stay silent before it is sent a PING
#: (only the common channel's carries heartbeats)
PING_AFTER = 2.0
#: seconds after a PING within which something must arrive, or the
#: connection counts as broken (the listener then resubscribes everything)
PONG_WITHIN = 3.0

_UNSUBSCRIBED = (b"sunsubscribe", b"unsubscribe")


class SlotMoved(redis.exceptions.ConnectionError):
    """Redis unsubscribed this node from a channel it did not leave: the
    channel's slot moved to another primary (a failover, a resharding)."""


class ShardMap:
    """Which primary owns each lane (and the common channel).

    :param lanes: the bus's lanes.
    :param owners: the primary owning each of ``[lanes.common,
        *lanes.prefixes]``, in that order.
    """

    def __init__(self, lanes: Lanes, owners: list[Address]) -> None:
        if len(owners) != lanes.count + 1:
            raise ValueError("one owner per lane and one for the common channel")
        self.lanes = lanes
        self._owners = owners

    @classmethod
    def resolve(cls, lanes: Lanes, owner_of: Callable[[list[str]], list[Address]]
                ) -> ShardMap:
        """Ask the cluster (``owner_of``: the primary of each key) now."""
        return cls(lanes, owner_of([lanes.common, *lanes.prefixes]))

    def owner(self, channel: str | None) -> Address:
        """The primary ``channel`` lives on (``None``: the common channel)."""
        return self._owners[self.lanes.lane_of(channel)]

    def addresses(self) -> list[Address]:
        """Every primary owning a lane or the common channel, once each."""
        return list(dict.fromkeys(self._owners))


def _by_slot(lanes: Lanes, channels: Iterable[str]) -> list[list[str]]:
    """``channels`` grouped by lane: ``SSUBSCRIBE`` takes channels of one
    slot per command (``CROSSSLOT`` otherwise)."""
    groups: dict[int, list[str]] = {}
    for channel in channels:
        groups.setdefault(lanes.lane_of(channel), []).append(channel)
    return list(groups.values())


class ShardedPushes:
    """The listener's subscriber connections, one per primary, read as one.

    It offers what :class:`~.redis_pushes.PushConnection` offers (the
    follower and the listener use either): :meth:`subscribe` and
    :meth:`unsubscribe` send each channel's command to its primary,
    :meth:`get_message` returns the next message of any connection.

    :param shards: where each lane lives.
    :param connect: opens a subscriber connection to a primary.

    Every primary of the map is connected at once, so a follow never waits
    for a connection, and the listener's wait covers every connection.
    """

    def __init__(self, shards: ShardMap, connect: Callable[[Address], PushConnection]) -> None:
        self.shards = shards
        self._connections: dict[Address, PushConnection] = {}
        try:
            for address in shards.addresses():
                self._connections[address] = connect(address)
        except Exception:
            self.close()
            raise
        self._order = list(self._connections.values())
        self._next = 0
        # UNSUBSCRIBEs sent per channel and not answered: any other
        # unsubscription is Redis's own (the slot moved)
        self._leaving: dict[str, int] = {}
        self._pinged: dict[PushConnection, float] = {}
        self._checked_at = time.monotonic()

    def subscribe(self, *channels: str) -> None:
        for address, group in self._grouped(channels):
            for same_slot in _by_slot(self.shards.lanes, group):
                self._connections[address].subscribe(*same_slot)

    def unsubscribe(self, *channels: str) -> None:
        for channel in channels:
            self._leaving[channel] = self._leaving.get(channel, 0) + 1
        for address, group in self._grouped(channels):
            for same_slot in _by_slot(self.shards.lanes, group):
                self._connections[address].unsubscribe(*same_slot)

    def _grouped(self, channels: Iterable[str]) -> list[tuple[Address, list[str]]]:
        groups: dict[Address, list[str]] = {}
        for channel in channels:
            groups.setdefault(self.shards.owner(channel), []).append(channel)
        return list(groups.items())

    def get_message(self, timeout: float) -> PushMessage | None:
        """The next message of any connection (taken in turn, so a busy
        shard does not starve the others): from what was read already, or,
        with a ``timeout`` above 0, waiting up to that long for one.

        :raises SlotMoved: Redis unsubscribed us from a channel we follow.
        :raises ConnectionError: a connection broke, or did not answer a PING.
        """
        message = self._buffered()
        if message is not None or timeout <= 0:
            return message
        ready, _, _ = select.select(self._order, [], [], timeout)
        for connection in ready:
            connection.fill()  # one read each, then the messages in turn
        return self._buffered()

    def _buffered(self) -> PushMessage | None:
        now = time.monotonic()
        if now - self._checked_at > 0.5:
            self._checked_at = now
            self._check_health(now)
        count = len(self._order)
        for step in range(count):
            index = (self._next + step) % count
            message = self._order[index].get_message(timeout=0)
            if message is not None:
                self._next = (index + 1) % count
                return self._checked(message)
        return None

    def _checked(self, message: PushMessage) -> PushMessage:
        if message[0] in _UNSUBSCRIBED:
            channel = message[1].decode("utf-8", "replace")
            left = self._leaving.get(channel, 0)
            if left <= 0:
                raise SlotMoved(f"Redis unsubscribed this node from {channel!r}: "
                                f"its slot moved to another primary")
            if left == 1:
                del self._leaving[channel]
            else:
                self._leaving[channel] = left - 1
        return message

    def _check_health(self, now: float) -> None:
        """PING a connection silent for :data:`PING_AFTER`; one still silent
        :data:`PONG_WITHIN` after its PING is broken (a shard partitioned
        away sends no error: nothing arrives at all)."""
        for connection in self._order:
            silent_since = connection.received_at
            pinged = self._pinged.get(connection)
            if pinged is not None and silent_since >= pinged:
                del self._pinged[connection]
                pinged = None
            if pinged is not None:
                if now - pinged > PONG_WITHIN:
                    raise redis.exceptions.ConnectionError(
                        f"a Redis Cluster primary answered no PING within {PONG_WITHIN} s")
            elif now - silent_since > PING_AFTER:
                self._pinged[connection] = now
                connection.ping()

    def close(self) -> None:
        """Close every connection (safe on broken ones)."""
        for connection in self._connections.values():
            connection.close()


class ShardPublisher:
    """Publishes on lanes: one pipeline per primary, on a connection of its
    own (:class:`~.redis_wire.WireConnection`).

    :param lanes: the bus's lanes.
    :param owner_of: the primary of each of a list of keys (asks the cluster).
    :param client_at: a redis-py client for the primary at an address.
    """

    def __init__(self, lanes: Lanes, owner_of: Callable[[list[str]], list[Address]],
                 client_at: Callable[[str, int], redis.Redis]) -> None:
        self.lanes = lanes
        self._owner_of = owner_of
        self._client_at = client_at
        self._shards: ShardMap | None = None
        self._wires: dict[Address, WireConnection] = {}
        self._lock = threading.Lock()

    def send(self, payloads: list[bytes], channels: list[str]) -> list[Any]:
        """SPUBLISH each payload on its channel; the replies in ``payloads``'
        order, errors in place.

        A primary whose connection fails gets the exception in place of each
        of its replies (its messages are retried; the other primaries' went
        out and are not sent twice) and a new connection next time; when
        every primary fails, the first exception is raised (the bus is down).
        """
        shards = self._map()
        groups: dict[Address, list[int]] = {}
        for index, channel in enumerate(channels):
            groups.setdefault(shards.owner(channel), []).append(index)
        replies: list[Any] = [None] * len(payloads)
        failures: list[Exception] = []
        for address, indexes in groups.items():
            try:
                pipe = WirePipeline(self._wire_at(address))
                for index in indexes:
                    pipe.spublish(channels[index], payloads[index])
                answers = pipe.execute(raise_on_error=False)
            except Exception as exc:  # this primary is unreachable: its messages wait
                self._drop(address)
                self.forget()  # a failover may be under way: ask again next time
                failures.append(exc)
                answers = [exc] * len(indexes)
            for index, answer in zip(indexes, answers, strict=True):
                replies[index] = answer
        if failures and len(failures) == len(groups):
            raise failures[0]
        return replies

    def _map(self) -> ShardMap:
        shards = self._shards
        if shards is None:
            with self._lock:
                if self._shards is None:
                    self._shards = ShardMap.resolve(self.lanes, self._owner_of)
                shards = self._shards
        return shards

    def _wire_at(self, address: Address) -> WireConnection:
        wire = self._wires.get(address)
        if wire is None or wire.broken:
            with self._lock:
                wire = self._wires.get(address)
                if wire is None or wire.broken:
                    wire = self._wires[address] = WireConnection(self._client_at(*address))
        return wire

    def _drop(self, address: Address) -> None:
        with self._lock:
            wire = self._wires.pop(address, None)
        if wire is not None:
            wire.close()

    def forget(self) -> None:
        """Ask the cluster where the lanes are on the next send (a failover
        moved one: Redis answered ``MOVED``, or unsubscribed the listener)."""
        with self._lock:
            self._shards = None

    def close(self) -> None:
        with self._lock:
            wires, self._wires = self._wires, {}
            self._shards = None
        for wire in wires.values():
            wire.close()
