"""Which bus channel a message travels on, and the room channels a node follows.

Without routing, every cross-node message went on the one common channel,
so every node received, checked and dropped every emit of the cluster:
capacity did not grow with nodes (issue 25 measured 221-263 µs of CPU per
emit on a node with no member of the room). With a backend that routes
(:attr:`~.transport.Transport.routes`: Redis, Sentinel, Redis Cluster's
sharded pub/sub, and kombu, whose node queues are bound to the routing keys
of the channels they follow), the rule is:

===============================================  ==================================
message                                          channel
===============================================  ==================================
emit to one room (a named room or a sid)          that room's channel
close_room; enter/leave_room and disconnect of a  the room's (or the sid's) channel
remote sid
an ack going back to the node that asked (python- the asking node's channel
socketio's ``callback`` message); a node's answer
to a cluster query; clients' answers to an ask
broadcasts (no room), emits to several rooms,     the common channel
heartbeats, presence, cluster queries and
commands
===============================================  ==================================

A room's channel is ``<channel>:room:<digest>`` (``{<channel>}:room:<digest>``
on Redis Cluster: a hash tag puts every room and node channel in the common
channel's slot, where the recovery script may SPUBLISH and where one shard
connection keeps them all in publish order; with ``redis_partitions``
above 1, the hash tag of one of that many lanes instead, chosen by the
digest, so that every shard carries a share: see
:mod:`.backends.redis_lanes`), the digest a 64-bit hash of
the namespace and room (bounded names, whatever a room is called; two rooms
sharing a digest only costs a node a message it then has no client for).
Each room has its own channel rather than one of a fixed set of partitions:
with a room per user (notifications), every node holds members of nearly
every partition, so partitions would filter nothing; Redis keeps a channel in
about a hundred bytes and matches a PUBLISH in O(1).

A node follows (SUBSCRIBEs to) a room's channel while it has at least one
member of the room (every connection is a member of its sid's room), on the
same pub/sub connection as the common channel, so Redis delivers everything
in publish order and the recovery stream's order holds across rooms (with
lanes, one connection per primary: order holds per lane, hence per room).
Follows and unfollows made in the same turn of the event loop go out as one
command (:class:`ChannelFollower`); ``join_room`` waits (up to
:data:`FOLLOW_WAIT` seconds) until Redis confirmed the subscription, so an
emit made right after the join reaches the new member. A CONNECT waits once
for all the rooms it entered (restored on a resume, or joined by the
connect handler), just before its reply, so a connected client's rooms reach
it; a recovering one also reads the tail of what it missed only after that. A join another node
(or an emitter) asked for (``join_room`` of a remote sid, ``sockets_join``)
cannot be waited for: the asking process sends its room emits on the common
channel for :data:`MEMBERSHIP_GRACE` seconds after asking, so they arrive
after the request, in order, as before routing. Stock python-socketio
emitters publish on the common channel, which every node still follows.
"""
from __future__ import annotations

import functools
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

#: seconds a join waits for Redis to confirm the room's subscription
FOLLOW_WAIT = 2.0
#: seconds after a process asked other nodes to join rooms during which its
#: room emits take the common channel (see ``RoomRoutes.room_channel``)
MEMBERSHIP_GRACE = 5.0
#: the cluster commands that make nodes join rooms
MEMBERSHIP_COMMANDS = frozenset({"sockets_join"})


class LanePrefixes(Protocol):
    """Channel names spread over lanes (Redis Cluster's hash tags, see
    :mod:`.backends.redis_lanes`): hashable, as names are cached by it."""

    def prefix(self, digest: str) -> str:
        """What the channel of the room or node with ``digest`` starts with."""
        ...

    def __hash__(self) -> int: ...


#: what room and node channel names start with: one prefix (the transport's
#: ``route_base`` of the common channel), or one per lane
ChannelBase = str | LanePrefixes


def _prefixed(base: ChannelBase, digest: str) -> str:
    return base if isinstance(base, str) else base.prefix(digest)


def room_channel(base: ChannelBase, namespace: str, room: Any) -> str:
    """The channel of ``room`` in ``namespace`` (see the module doc)."""
    try:
        return _cached_room_channel(base, namespace, room)
    except TypeError:  # a room that cannot be a cache key
        return _room_channel(base, namespace, room)


def _room_channel(base: ChannelBase, namespace: str, room: Any) -> str:
    key = json.dumps([namespace, room], separators=(",", ":"), default=str)
    digest = hashlib.blake2b(key.encode(), digest_size=8).hexdigest()
    return f"{_prefixed(base, digest)}:room:{digest}"


# every emit asks: the hash of a busy room is computed once, and the cache
# stays bounded however many rooms come and go
_cached_room_channel = functools.lru_cache(maxsize=65_536, typed=True)(_room_channel)


def node_channel(base: ChannelBase, host_id: str) -> str:
    """The channel only node ``host_id`` follows (answers meant for it)."""
    if isinstance(base, str):
        return f"{base}:node:{host_id}"
    digest = hashlib.blake2b(host_id.encode(), digest_size=8).hexdigest()
    return f"{base.prefix(digest)}:node:{host_id}"


def single_room(room: Any) -> bool:
    """Whether ``room`` names one room (not None: everyone; not a list:
    several rooms, whose union must get the message once)."""
    return room is not None and not isinstance(room, (list, tuple, set))


class ChannelFollower:
    """The room channels a node follows, batched into SUBSCRIBE/UNSUBSCRIBE.

    The listener sets :attr:`pubsub` while it is subscribed and reports each
    confirmation (:meth:`confirmed`); on a resubscription it subscribes to
    :meth:`followed` itself.

    :param spawn: starts a task (the server's): the batch goes out from a
        task of its own, once the caller's turn is over, so the follows and
        unfollows of that turn join it, and the caller never yields in the
        middle of python-socketio's room bookkeeping (a disconnect leaving
        its rooms one by one must not let a resume of the same sid run in
        between).
    :param event: makes an event (the server's kind).
    """

    def __init__(self, spawn: Callable[..., Any], event: Callable[[], Any]) -> None:
        self._spawn = spawn
        self._event = event
        self._lock = threading.Lock()
        self._wanted: set[str] = set()
        # what Redis confirmed on the current subscription
        self._confirmed: set[str] = set()
        self._changes: dict[str, bool] = {}  # channel -> follow (True) / unfollow
        # SUBSCRIBE/UNSUBSCRIBE commands sent per channel and not answered
        # yet: a confirmation counts only when it answers the last one (an
        # unfollow and a follow again in quick succession must not take the
        # first SUBSCRIBE's answer for the second's, while Redis still has
        # the UNSUBSCRIBE in between to process)
        self._unanswered: dict[str, int] = {}
        self._waiters: dict[str, list[Any]] = {}
        self._flushing = False
        #: the listener's pub/sub object while subscribed (None: the next
        #: subscription takes every followed channel)
        self.pubsub: Any = None
        #: SUBSCRIBE/UNSUBSCRIBE commands sent (each carries a batch)
        self.commands = 0

    def __len__(self) -> int:
        return len(self._wanted)

    def followed(self) -> list[str]:
        """Every channel followed now."""
        with self._lock:
            return sorted(self._wanted)

    def follow(self, channel: str, wait: float = 0.0) -> bool:
        """Follow ``channel``; with ``wait``, block up to that many seconds
        for Redis's confirmation (also when another caller asked for it and
        it is not confirmed yet: a second member joining, or resuming, right
        after the first must not go on before the subscription exists).
        True when confirmed."""
        with self._lock:
            if channel in self._confirmed and channel in self._wanted \
                    and channel not in self._changes:
                return True
            lead = False
            if channel not in self._wanted or self._changes.get(channel) is False:
                self._wanted.add(channel)
                self._changes[channel] = True
                lead = not self._flushing
                self._flushing = True
            event = None
            if wait > 0:
                event = self._event()
                self._waiters.setdefault(channel, []).append(event)
        if lead:
            self._spawn(self._flush)
        if event is None:
            return False
        return self._wait(channel, event, wait)

    def _wait(self, channel: str, event: Any, timeout: float) -> bool:
        """Wait for ``event``, a waiter of ``channel``; at the deadline it is
        taken off the waiters (so nothing is left behind)."""
        confirmed = timeout > 0 and bool(event.wait(timeout))
        if not confirmed:
            with self._lock:
                waiting = self._waiters.get(channel, [])
                if event in waiting:
                    waiting.remove(event)
                if not waiting:
                    self._waiters.pop(channel, None)
        return confirmed

    def wait_confirmed(self, channels: Iterable[str], timeout: float) -> bool:
        """Wait up to ``timeout`` seconds in all until Redis confirmed every
        one of ``channels`` (each followed already). False at the deadline,
        or as soon as one is no longer followed (its last member left)."""
        deadline = time.monotonic() + timeout
        for channel in channels:
            with self._lock:
                if channel not in self._wanted:
                    return False
                if channel in self._confirmed and channel not in self._changes:
                    continue
                event = self._event()
                self._waiters.setdefault(channel, []).append(event)
            if not self._wait(channel, event, deadline - time.monotonic()):
                return False
        return True

    def unfollow(self, channel: str) -> None:
        """Stop following ``channel`` (with the next batch)."""
        with self._lock:
            if channel not in self._wanted:
                return
            self._wanted.discard(channel)
            self._confirmed.discard(channel)
            self._changes[channel] = False
            lead = not self._flushing
            self._flushing = True
        if lead:
            self._spawn(self._flush)

    def _flush(self) -> None:
        with self._lock:
            changes, self._changes = self._changes, {}
            self._flushing = False
            pubsub = self.pubsub
            if pubsub is None or not changes:
                return  # the next subscription subscribes to everything wanted
            follow = [channel for channel, on in changes.items() if on]
            drop = [channel for channel, on in changes.items() if not on]
            self._count_sent(changes)  # before sending: the answer may come first
        try:
            if drop:
                self.commands += 1
                pubsub.unsubscribe(*drop)
            if follow:
                self.commands += 1
                pubsub.subscribe(*follow)
        except Exception:  # noqa: S110 - the listener resubscribes to everything wanted
            pass

    def is_confirmed(self, channel: str) -> bool:
        """Whether Redis confirmed ``channel`` on the current subscription."""
        return channel in self._confirmed

    def _count_sent(self, channels: Iterable[str]) -> None:
        for channel in channels:
            self._unanswered[channel] = self._unanswered.get(channel, 0) + 1

    def _answered(self, channel: str) -> bool:
        """One command of ``channel`` answered: True when it was the last."""
        left = self._unanswered.pop(channel, 1) - 1
        if left > 0:
            self._unanswered[channel] = left
        return left <= 0

    def attach(self, pubsub: Any, subscribed: Iterable[str] = ()) -> None:
        """The listener subscribes on ``pubsub`` from now on; it has just
        sent a SUBSCRIBE for ``subscribed``."""
        with self._lock:
            self.pubsub = pubsub
            self._confirmed.clear()
            self._unanswered.clear()
            self._count_sent(subscribed)

    def sent(self, channels: Iterable[str]) -> None:
        """The listener sent a SUBSCRIBE for ``channels`` itself."""
        with self._lock:
            self._count_sent(channels)

    def detach(self, pubsub: Any) -> None:
        """The listener's ``pubsub`` is gone: nothing is confirmed any more
        (the next subscription confirms everything followed again)."""
        with self._lock:
            if self.pubsub is pubsub:
                self.pubsub = None
                self._confirmed.clear()
                self._unanswered.clear()

    def confirmed(self, channel: str) -> None:
        """Redis answered a SUBSCRIBE of ``channel``: when it answers the
        last command sent for it, the channel is confirmed and its joins
        wake."""
        with self._lock:
            if not self._answered(channel):
                return  # an UNSUBSCRIBE or SUBSCRIBE sent later is still on its way
            if channel in self._wanted:
                self._confirmed.add(channel)
            events = self._waiters.pop(channel, [])
        for event in events:
            event.set()

    def unsubscribed(self, channel: str) -> None:
        """Redis answered an UNSUBSCRIBE of ``channel``."""
        with self._lock:
            self._answered(channel)

    def wanted(self, channel: str) -> bool:
        """Whether ``channel`` is followed now."""
        return channel in self._wanted
