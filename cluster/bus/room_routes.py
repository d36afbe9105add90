"""This process's side of routing by room: the channel each of its messages
takes, and the room channels the node follows while it has members.

What the channels are and why is told in :mod:`.channels`. The manager
composes one :class:`RoomRoutes` and asks it, for each message it
publishes, which channel to use; its room hooks tell it when a room gains
its first member here or loses its last.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from cluster.bus.channels import (
    FOLLOW_WAIT,
    MEMBERSHIP_COMMANDS,
    MEMBERSHIP_GRACE,
    ChannelBase,
    ChannelFollower,
    node_channel,
    room_channel,
    single_room,
)
from cluster.bus.stats import BusStats

__all__ = ["RoomRoutes"]


class RoomRoutes:
    """Routes a process's messages by room, and follows its rooms' channels.

    :param routes: whether messages travel on room and node channels at all
        (a backend that routes, and ``route_by_room``); False: everything
        takes the common channel.
    :param base: what this bus's room and node channels are named after
        (the transport's ``route_base`` of the common channel: one prefix, or
        one per lane).
    :param follower: the room channels this node follows; None when it
        follows none (no routing, or a write-only emitter, which has no
        clients).
    :param subscribed: whether the bus is subscribed now (a join cannot wait
        for a confirmation while it is not: the next subscription takes the
        channel).
    :param in_listener: whether the caller is the listener, which cannot
        wait for its own confirmations.
    :param stats: counts the joins that went on unconfirmed.
    """

    def __init__(self, *, routes: bool, base: ChannelBase, follower: ChannelFollower | None,
                 subscribed: Callable[[], bool], in_listener: Callable[[], bool],
                 stats: BusStats) -> None:
        self.routes = routes
        self.base = base
        self.follower = follower
        self._subscribed = subscribed
        self._in_listener = in_listener
        self._stats = stats
        # per task (green-thread local once patched): joins that do not wait
        # for their confirmation (see follow_waits_deferred)
        self._deferring = threading.local()
        # until then this process's room emits take the common channel
        # (see memberships_changed_elsewhere)
        self._common_until = 0.0

    # -- which channel a message takes ----------------------------------------
    def room_channel(self, namespace: str, room: Any) -> str | None:
        """The channel an emit to ``room`` travels on (None: the common one)."""
        if self.routes and single_room(room) and time.monotonic() >= self._common_until:
            return room_channel(self.base, namespace, room)
        return None

    def node_channel(self, host_id: str) -> str | None:
        """The channel of node ``host_id`` (None: the common one)."""
        return node_channel(self.base, host_id) if self.routes else None

    def message_channel(self, data: dict[str, Any]) -> str | None:
        """The channel of one of python-socketio's own bus messages (room
        changes, disconnects, returned acks): that of the node, sid or room
        it is for (None: the common one)."""
        if not self.routes:
            return None
        method = data.get("method")
        if method == "callback" and isinstance(data.get("host_id"), str):
            return node_channel(self.base, data["host_id"])
        if method in ("disconnect", "enter_room", "leave_room"):
            if method == "enter_room":
                self.memberships_changed_elsewhere()
            return self.room_channel(data.get("namespace") or "/", data.get("sid"))
        if method == "close_room":
            return self.room_channel(data.get("namespace") or "/", data.get("room"))
        return None

    def service_message(self, message: dict[str, Any] | None) -> None:
        """A cluster service publishes ``message`` (on the common channel):
        one that makes other nodes join rooms starts the grace below."""
        if message is not None and message.get("op") in MEMBERSHIP_COMMANDS:
            self.memberships_changed_elsewhere()

    def memberships_changed_elsewhere(self) -> None:
        """This process asked other nodes to change memberships (a remote
        sid's ``join_room``, ``sockets_join``): the node that joins follows
        the room's channel only once it has read the request, and an emit
        this process makes right after could reach Redis before that
        subscription. For :data:`~.channels.MEMBERSHIP_GRACE` seconds its
        room emits therefore take the common channel, which every node reads
        in order after the request, as before routing."""
        self._common_until = time.monotonic() + MEMBERSHIP_GRACE

    # -- the room channels this node follows ----------------------------------
    def followed(self) -> int:
        """How many channels this node follows."""
        return len(self.follower) if self.follower is not None else 0

    def entered(self, namespace: str, room: Any, first: bool) -> None:
        """A member entered ``room`` here (``first``: the first one)."""
        if room is not None and self.follower is not None and (
                first or not self.follower.is_confirmed(
                    room_channel(self.base, namespace, room))):
            # the first member here asks for the channel; a later one whose
            # room's subscription is not confirmed yet waits for it too
            self._follow(namespace, room)

    def emptied(self, namespace: str, room: Any) -> None:
        """The last member here left ``room``."""
        if self.follower is not None:
            self.follower.unfollow(room_channel(self.base, namespace, room))

    def _follow(self, namespace: str, room: Any) -> None:
        """Follow the room's channel. A handler's join waits (up to
        :data:`~.channels.FOLLOW_WAIT` s) until Redis confirmed, so an emit
        right after it reaches the new member; the listener cannot wait for
        its own confirmation, nor anyone while the bus is down (the next
        subscription takes the channel)."""
        assert self.follower is not None
        wait = FOLLOW_WAIT if (self._subscribed()
                               and not self._in_listener()
                               and not getattr(self._deferring, "on", False)) else 0.0
        channel = room_channel(self.base, namespace, room)
        if not self.follower.follow(channel, wait) and wait:
            self._stats.incr("follow_timeouts")

    @contextmanager
    def follow_waits_deferred(self) -> Iterator[None]:
        """Within the block, this task's joins follow their rooms' channels
        without waiting for each confirmation: a CONNECT restoring (or
        joining) several rooms waits once for all of them, with
        :meth:`await_rooms`, after it gave back its admission slot."""
        before = getattr(self._deferring, "on", False)
        self._deferring.on = True
        try:
            yield
        finally:
            self._deferring.on = before

    def await_rooms(self, namespace: str, rooms: Iterable[Any], timeout: float) -> bool:
        """Whether every room in ``rooms`` has its live traffic reaching this
        node: Redis confirmed the subscription of each room's channel,
        waited for up to ``timeout`` seconds (True at once without routing).

        A recovering connection reads what it missed from the recovery
        stream only after this: what is published from then on arrives
        live, so nothing falls between the two (under a reconnect storm a
        confirmation can take longer than a join's ``FOLLOW_WAIT``)."""
        if self.follower is None:
            return True
        channels = [room_channel(self.base, namespace, room) for room in rooms]
        if self._in_listener():
            return all(self.follower.is_confirmed(channel) for channel in channels)
        return self.follower.wait_confirmed(channels, timeout)
