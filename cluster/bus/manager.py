"""ClusterManager: python-socketio's PubSubManager seam, adapted.

The manager is what python-socketio talks to (``emit``, room changes,
``disconnect``, acks); it composes the parts that do the work and passes
each only what it needs:

- a :class:`~.transport.Transport` moves bytes (the backends in
  :mod:`.backends`: Redis, kombu);
- the :class:`~.publisher.Publisher` is the one way out: serialize, queue,
  seal, send, with one retry policy;
- the :class:`~.receiver.Receiver` listens, checks and dispatches;
- :class:`~.services.heartbeat.Heartbeat` keeps the node registry and the
  periodic chores; :class:`~.services.acks.AckTable` the ack callbacks;
- the cluster services in :mod:`.services`:
  :class:`~.services.view.ClusterView` (cluster-wide queries) and
  :class:`~.services.presence.Presence` see the bus through a
  :class:`~.services.link.BusLink`;
- :class:`~.local_delivery.LocalDelivery` hands emits to the node's
  clients, its own logged ones in stream order;
- :class:`~.room_routes.RoomRoutes` picks each message's channel and follows
  the channels of the rooms with members here.

An emit from a handler goes manager → publisher → outbox → sender →
transport, and on every other node transport → receiver → manager →
python-socketio's delivery: through each module once, in one direction.
"""
from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any, cast

from socketio.packet import Packet

from cluster import compat
from cluster.bus.binary_data import has_binary
from cluster.bus.channels import ChannelFollower, node_channel
from cluster.bus.clock import ClockWatch
from cluster.bus.codec import UNSERVED_LID, Codec
from cluster.bus.defaults import DEFAULT_CHANNEL
from cluster.bus.local_delivery import LocalDelivery
from cluster.bus.ordered_delivery import OrderedDelivery
from cluster.bus.publisher import Publisher
from cluster.bus.receiver import Receiver
from cluster.bus.room_routes import RoomRoutes
from cluster.bus.runtime import Runtime
from cluster.bus.services.acks import AckTable
from cluster.bus.services.answering import Answering
from cluster.bus.services.heartbeat import Heartbeat
from cluster.bus.services.link import BusLink
from cluster.bus.services.membership import MembershipEvents, named_rooms
from cluster.bus.services.nodes import NodeRegistry
from cluster.bus.services.presence import Presence
from cluster.bus.services.view import ClusterView
from cluster.bus.settings import BusSettings
from cluster.bus.stats import BusStats
from cluster.bus.transport import Subscription, Transport


class _ServerLogger:
    """The manager's logger as python-socketio picks it at each call: the
    one given, else the server's once attached, else python-socketio's."""

    def __init__(self, manager: compat.PubSubSeam) -> None:
        self._manager = manager

    def __getattr__(self, name: str) -> Any:
        return getattr(self._manager.bus_logger(), name)


class ClusterManager(MembershipEvents, compat.PubSubSeam):
    """A python-socketio client manager over a cluster bus.

    Use :func:`cluster.bus.create_manager` (or :class:`~.redis_manager.RedisManager`,
    :class:`~.kombu_manager.KombuManager`), which build the transport.

    :param transport: the backend.
    :param channel: bus channel shared by all nodes and emitters
                    (:data:`~.defaults.DEFAULT_CHANNEL`).
    :param write_only: emit-only mode for processes without a server
                       (Celery workers): no listener, no heartbeat, and each
                       publish is synchronous, raising
                       :class:`~.errors.BusPublishError` after
                       ``publish_timeout`` seconds without the bus.
    :param signing_secret: shared HMAC secret. ``None`` (default) accepts
                           unsigned messages, including those of stock
                           python-socketio emitters.
    :param settings: the rest (``node_name``, the outage buffer, message
        size, batching, backoff, ack and request timeouts, heartbeats,
        replay protection, recovery), as keywords of
        :class:`~.settings.BusSettings`, which documents each one.

    Where the bus is built from a URL, the settings in
    :data:`~.settings.DRIVER_OPTION_SETTINGS` may also be given among the
    driver options.
    """

    name = "cluster"

    def __init__(self, transport: Transport, channel: str = DEFAULT_CHANNEL,
                 write_only: bool = False, logger: Any = None, json: Any = None, *,
                 signing_secret: str | bytes | None = None, **settings: Any) -> None:
        super().__init__(channel=channel, write_only=write_only, logger=logger, json=json)
        self.settings = BusSettings(**settings)
        s = self.settings
        self.transport = transport
        self.name = transport.name
        self.node_name = s.node_name
        self.offset_wait = s.offset_wait
        self.codec = Codec(signing_secret, self.json, s.max_message_age,
                           max_message_bytes=s.max_message_bytes,
                           max_clock_skew=s.max_clock_skew)
        log = cast(logging.Logger, _ServerLogger(self))
        self.bus_stats = BusStats()
        self.runtime = Runtime()
        self.nodes = NodeRegistry(self.host_id, s.node_name, s.silence_limit)
        self.acks = AckTable(self.callbacks, s.ack_timeout, self.bus_stats, self._spawn_safely)
        self.ordered = OrderedDelivery(self.runtime)
        self.publisher = Publisher(transport, self.codec, self.bus_stats, self.runtime,
                                   log, s, host_id=self.host_id,
                                   write_only=write_only, expected_peers=lambda: len(self.nodes))
        self.subscription = Subscription(self.bus_stats, self.nodes, self.runtime,
                                         log, node_timeout=s.silence_limit,
                                         max_backoff=s.max_backoff,
                                         publishing=lambda: self.publisher.healthy)
        self.local_delivery = LocalDelivery(
            self.ordered, self.publisher, self.runtime, self.bus_stats,
            # looked up at each delivery: an instance may replace it
            apply_emit=lambda message: self.apply_emit(message),
            logs_recovery=lambda: self.logs_recovery,
            participants=self.get_participants, recovering=lambda: self.recovering,
            subscribed=lambda: self.subscription.subscribed,
            in_listener=lambda: self.receiver.in_listener(), offset_wait=s.offset_wait)
        link = BusLink(host_id=self.host_id, publish=self._publish_for_services,
                       dumps=self.publisher.dumps, spawn=self._spawn_safely, nodes=self.nodes,
                       logger=log, stats=self.bus_stats,
                       ready=lambda: self.ready, event=self.runtime.event,
                       write_only=write_only)
        #: cluster-wide queries and commands (see :class:`ClusterView`)
        # room_routes is made below: looked up when an answer goes out
        self.cluster = ClusterView(
            link, self, s.request_timeout,
            channel_of=lambda host_id: self.room_routes.node_channel(host_id))
        #: first-join / last-leave room events (see :class:`Presence`)
        self.presence = Presence(link, lambda: named_rooms(self.rooms))
        #: this node's clock against the bus server's (see :mod:`.clock`)
        self.clock = ClockWatch(s.max_clock_skew, log)
        self.heartbeat = Heartbeat(self.nodes, self.publisher, transport, self.subscription,
                                   self.runtime, log, host_id=self.host_id,
                                   node_name=s.node_name, interval=s.heartbeat_interval,
                                   chores=self.acks.expire, clock=self.clock)
        self.heartbeat.on_joined(self.presence.resync)
        self.heartbeat.on_gone(self.cluster.node_gone)
        self.heartbeat.on_gone(self.presence.node_gone)
        self.subscription.on_subscribed(self.presence.resync)
        self.subscription.on_lost(self.local_delivery.stop_waiting)
        #: the room channels this node follows (None: everything travels on
        #: the common channel; see :mod:`.channels`)
        self.follower: ChannelFollower | None = None
        self.routes = bool(transport.routes and s.route_by_room)
        #: what this bus's room and node channels are named after
        self.route_base = transport.route_base(self.channel)
        if self.routes and not write_only:
            self.follower = transport.follower = ChannelFollower(self.runtime.spawn,
                                                                 self.runtime.event)
        self.room_routes = RoomRoutes(
            routes=self.routes, base=self.route_base, follower=self.follower,
            subscribed=lambda: self.subscription.subscribed,
            in_listener=lambda: self.receiver.in_listener(), stats=self.bus_stats)
        #: clients' answers to asks of any process: gather, workers' calls
        #: (see :mod:`.services.answering`)
        self.answering = Answering(
            link, self, self.acks, in_listener=lambda: self.receiver.in_listener(),
            channel_of=self.room_routes.node_channel)
        self.heartbeat.on_gone(self.answering.node_gone)
        self.receiver = Receiver(transport, self.subscription, self.codec, self.bus_stats,
                                 log, host_id=self.host_id,
                                 own_emit=self.local_delivery.came_back,
                                 reset_clients=self._reset_local_clients, handlers={
                                     "emit": self.local_delivery.deliver,
                                     "callback": self.apply_callback,
                                     "disconnect": self.apply_disconnect,
                                     "enter_room": self.apply_enter_room,
                                     "leave_room": self.apply_leave_room,
                                     "close_room": self.apply_close_room,
                                     "heartbeat": self.heartbeat.heard,
                                     "bye": self.heartbeat.goodbye,
                                     "request": self.cluster.handle_request,
                                     "response": self.cluster.handle_response,
                                     "presence": self.presence.handle_message,
                                     "ask": self.answering.handle_ask,
                                     "answer": self.answering.handle_answer,
                                 })
        self._initialized = False
        self._closed = False

    # -- lifecycle ----------------------------------------------------------
    def set_server(self, server: Any) -> None:
        super().set_server(server)
        self.codec.json = self.json
        self.runtime.attach(server)

    def initialize(self) -> None:
        """Start the publisher, listener and heartbeat tasks (idempotent).

        python-socketio calls this on the first client connection; a node
        should call it at start-up so ``ready`` turns true before that.
        """
        if self._initialized or self.write_only:
            return
        self._initialized = True
        if self.server is not None:
            compat.mark_manager_initialized(self.server)
            self._check_monkey_patched()
        self.publisher.start()
        if self.follower is not None:  # answers meant for this node only
            self.follower.follow(node_channel(self.route_base, self.host_id))
        self.thread = self.runtime.spawn(self.receiver.run)
        self.runtime.spawn(self.heartbeat.run)
        self.bus_logger().info("%s bus initialized (node %s, channel %r)",
                               self.name, self.node_name, self.channel)

    def _check_monkey_patched(self) -> None:
        self.runtime.require_monkey_patch()

    def close(self, timeout: float = 2.0) -> None:
        """Say goodbye, flush the publisher for up to ``timeout`` s, stop."""
        if self._closed:
            return
        if self.publisher.started:
            self.heartbeat.say_goodbye()
            self.publisher.close(timeout)
        self._closed = self.subscription.closed = True
        self.subscription.subscribed = False
        try:
            self.transport.close()
        except Exception:  # closing a dead connection may fail; irrelevant
            pass

    # -- what the node asks (see :mod:`.features`) -----------------------------
    @property
    def features(self) -> ClusterManager:
        return self

    @property
    def knows_peers(self) -> bool:
        """True once subscribed for longer than a heartbeat interval.

        Until then a fresh node has not heard the other nodes' heartbeats,
        so cluster-wide queries would ask nobody; a node reports ready only
        after this.
        """
        return self.subscription.knows_peers(self.settings.heartbeat_interval)

    @property
    def ready(self) -> bool:
        """True when connected and subscribed (write-only: last publish ok)."""
        if self._closed:
            return False
        if self.write_only:
            return self.publisher.healthy
        return (self.subscription.subscribed and self.publisher.healthy
                and not self.clock.skewed)

    @property
    def signed(self) -> bool:
        """Whether messages are signed (and unsigned ones dropped)."""
        return self.codec.signed

    @property
    def logs_recovery(self) -> bool:
        """Whether emits are logged for connection state recovery."""
        return self.transport.logs_recovery

    @property
    def recovery(self) -> Any:
        """Reads of the recovery stream, or None when emits are not logged."""
        return self.transport.recovery

    def new_redis_client(self) -> Any:
        """A new client of the bus's Redis (None for other backends)."""
        return self.transport.new_client()

    def stats(self) -> dict[str, int | float]:
        """Counters and gauges; names documented in :mod:`.stats`."""
        values = self.bus_stats.snapshot()
        values["buffered"] = self.publisher.buffered
        values["buffered_bytes"] = self.publisher.buffered_bytes
        values["ready"] = int(self.ready)
        values["live_nodes"] = 0 if self.write_only else len(self.nodes)
        values["pending_acks"] = self.acks.pending()
        values["clock_offset_seconds"] = round(self.clock.offset, 3)
        values["followed_channels"] = self.room_routes.followed()
        return values

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far was published."""
        return self.publisher.flush(timeout)

    # -- sending ------------------------------------------------------------
    def emit(self, event: str, data: Any, namespace: str | None = None,
             room: Any = None, skip_sid: Any = None, callback: Any = None,
             to: Any = None, **kwargs: Any) -> None:
        """Deliver locally, then publish exactly once to the other nodes.

        Same parameters as :meth:`socketio.Server.emit`. The payload is
        serialized first, so a value JSON cannot carry raises
        :class:`~.errors.BusSerializationError` here and nothing is sent.
        """
        room = to if to is not None else room
        if kwargs.get("ignore_queue"):
            if callback is None and self.logs_recovery:
                # never logged: it ends with the "no offset" marker (see LocalDelivery.deliver)
                data = (*(data if isinstance(data, tuple) else (data,)), None)
            self.emit_here(event, data, namespace or "/", room=room,
                           skip_sid=skip_sid, callback=callback)
            return
        namespace = namespace or "/"
        if callback is not None:
            if self.server is None:
                raise RuntimeError("Callbacks can only be issued from the "
                                   "context of a server.")
            if room is None:
                raise ValueError("Cannot use callback without a room set.")
        args = list(data) if isinstance(data, tuple) else [data]
        binary = has_binary(args)
        if binary:
            args, attachments = Packet.deconstruct_binary(args)
            args = [args, *(base64.b64encode(a).decode() for a in attachments)]
        message = {"method": "emit", "event": event, "data": args,
                   "binary": binary, "namespace": namespace, "room": room,
                   "skip_sid": skip_sid, "callback": None,
                   "host_id": self.host_id}
        ack_id = None
        if callback is not None:
            ack_id = self.acks.add(room, callback)
            message["callback"] = [room, namespace, ack_id]
        logged = ack_id is None and self.logs_recovery
        channel = self.room_channel(namespace, room)
        # routed to a room with no member here, it comes back only if one
        # arrives before it does, who then gets it (see the receiver)
        here = channel is None or room in self.rooms.get(namespace, {})
        pending = None
        if not self.write_only:
            if not here:
                message["lid"] = UNSERVED_LID
            elif logged:
                pending = self.ordered.expect()
                message["lid"] = pending.lid
        try:
            body = self.publisher.dumps(message)
        except Exception:
            if ack_id is not None:
                self.acks.discard(room, ack_id)
            if pending is not None:
                self.ordered.abandon(pending)
            raise
        if self.write_only:
            self.publisher.publish(body=body, logged=logged, channel=channel)
        elif pending is not None:
            self.local_delivery.deliver_logged(message, body, pending, channel)
        else:
            if here:
                self.local_delivery.deliver(message)  # this node's clients: no round trip
            self.publisher.publish(body=body, logged=logged and not here, channel=channel)

    def room_channel(self, namespace: str, room: Any) -> str | None:
        """The channel an emit to ``room`` travels on (None: the common one)."""
        return self.room_routes.room_channel(namespace, room)

    def _publish_for_services(self, message: dict[str, Any] | None = None,
                              **kwargs: Any) -> bool:
        """The cluster services' way out (see :class:`~.services.link.BusLink`)."""
        self.room_routes.service_message(message)
        return self.publisher.publish(message, **kwargs)

    def publish_message(self, data: dict[str, Any]) -> Any:
        """python-socketio's own bus messages (room changes, disconnects,
        returned acks) leave through the publisher too, each on the channel
        of the node, sid or room it is for (see :mod:`.channels`)."""
        return self.publisher.publish(data, channel=self.room_routes.message_channel(data))

    def new_ack_id(self, sid: Any, callback: Any) -> int:
        return self.acks.add(sid, callback)

    #: closes every local client connection so that they reconnect and
    #: recover by themselves, returning how many (set by the node's server,
    #: which spreads the closes; None: nothing to close)
    client_closer: Callable[[], int] | None = None
    #: whether a connection (by Engine.IO sid) is being recovered, or was
    #: just now: an emit that did not come back in time skips it, as its
    #: replay may have sent it (set by the node's server)
    recovering: Callable[[Any], bool] | None = None

    def _reset_local_clients(self) -> int:
        """A catch-up could not be exact: this node's clients recover by
        themselves (see :mod:`.catch_up`)."""
        closer = self.client_closer
        return closer() if closer is not None else 0

    def disconnect(self, sid: Any, namespace: str | None = None, **kwargs: Any) -> Any:
        """Disconnect ``sid`` wherever it lives; a write-only emitter (no
        server of its own) only publishes the request."""
        if self.server is None and not kwargs.get("ignore_queue"):
            self._publish_disconnect(sid, namespace)
            return None
        return super().disconnect(sid, namespace=namespace, **kwargs)

    def can_disconnect(self, sid: Any, namespace: str) -> Any:
        if self.server is None:
            self._publish_disconnect(sid, namespace)
            return False
        return super().can_disconnect(sid, namespace)

    def _publish_disconnect(self, sid: Any, namespace: str | None) -> None:
        self.publisher.publish({"method": "disconnect", "sid": sid,
                                "namespace": namespace or "/", "host_id": self.host_id})

    # -- presence hooks: every room change of this node passes here --------
    def basic_enter_room(self, sid: Any, namespace: str, room: Any,
                         eio_sid: Any = None) -> None:
        first = room is not None and room not in self.rooms.get(namespace, {})
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        self.room_routes.entered(namespace, room, first)
        if first and self.presence.enabled and room != sid:
            self.presence.local_added(namespace, room)

    def basic_leave_room(self, sid: Any, namespace: str, room: Any) -> None:
        had = room is not None and room in self.rooms.get(namespace, {})
        super().basic_leave_room(sid, namespace, room)
        if not had or room in self.rooms.get(namespace, {}):
            return  # not the last member here
        self.room_routes.emptied(namespace, room)
        if self.presence.enabled and room != sid:
            self.presence.local_removed(namespace, room)

    def follow_waits_deferred(self) -> AbstractContextManager[None]:
        """Within the block, this task's joins do not wait for their rooms'
        confirmations (see :meth:`.RoomRoutes.follow_waits_deferred`)."""
        return self.room_routes.follow_waits_deferred()

    def await_rooms(self, namespace: str, rooms: Iterable[Any], timeout: float) -> bool:
        """Whether the live traffic of every room in ``rooms`` reaches this
        node, waited for up to ``timeout`` s (see :meth:`.RoomRoutes.await_rooms`)."""
        return self.room_routes.await_rooms(namespace, rooms, timeout)

    def _spawn_safely(self, func: Any, *args: Any) -> Any:
        """Run ``func(*args)`` in a task of its own, logging its errors."""
        def run() -> None:
            try:
                func(*args)
            except Exception:
                self.bus_logger().exception("Error in bus callback %r", func)
        return self.runtime.spawn(run)

