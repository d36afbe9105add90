"""The Redis transport of the bus: pipelined publishes (through the
recovery stream's script when emits are logged) and one subscriber.

Connections come from :class:`~.redis_connection.RedisConnector` (plain,
TLS, unix socket, Sentinel, Redis Cluster with sharded pub/sub); reads of
the recovery stream from :class:`~.redis_recovery.RedisRecoveryReader`,
on a client of their own.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import redis

from cluster.bus.backends.redis_access import server_time
from cluster.bus.backends.redis_connection import RedisConnector, close_quietly
from cluster.bus.backends.redis_lanes import (
    AGREEMENT_TTL,
    Lanes,
    agreement_key,
    check_agreement,
)
from cluster.bus.backends.redis_pushes import PushConnection, PushMessage
from cluster.bus.backends.redis_recovery import RedisRecoveryReader
from cluster.bus.backends.redis_refusals import moved_to, moves_us, raise_refused
from cluster.bus.backends.redis_shards import ShardedPushes, ShardMap, ShardPublisher
from cluster.bus.backends.redis_wire import WireConnection, WirePipeline
from cluster.bus.channels import ChannelBase
from cluster.bus.errors import BusConfigurationError
from cluster.bus.runtime import Backoff
from cluster.bus.transport import Subscription, Transport
from cluster.recovery.stream import RecoveryLog

#: bus messages handled back to back before the listener yields
LISTEN_BURST = 64

_SUBSCRIBED = (b"subscribe", b"ssubscribe")
_UNSUBSCRIBED = (b"unsubscribe", b"sunsubscribe")


def _channel_name(message: PushMessage) -> str:
    """The channel a pub/sub message or confirmation is about."""
    return message[1].decode("utf-8", "replace")


class RedisTransport(Transport):
    """Publishes and subscribes on the common Redis channel and on the room
    and node channels (see :mod:`cluster.bus.channels`); on Redis Cluster
    with lanes, over every primary that owns one (see :mod:`.redis_lanes`).

    :param connector: makes the clients.
    :param log: the recovery stream when emits are logged (None: plain
        publishes only).
    :param partitions: on Redis Cluster, the lanes room and node channels
        are spread over (see :mod:`.redis_lanes`); 1 keeps them all in the
        common channel's slot.
    """

    name = "redis"

    def __init__(self, connector: RedisConnector, log: RecoveryLog | None,
                 partitions: int = 1) -> None:
        if type(partitions) is not int or partitions < 1:
            raise BusConfigurationError(
                f"redis_partitions={partitions!r} must be a whole number, 1 or more.")
        if partitions > 1 and not connector.sharded:
            raise BusConfigurationError(
                f"redis_partitions={partitions} spreads the bus over a Redis Cluster's "
                f"shards; this bus is not on Redis Cluster. Remove redis_partitions, or "
                f"use a redis+cluster:// URL.")
        if partitions > 1 and log is not None:
            raise BusConfigurationError(
                f"redis_partitions={partitions} cannot be combined with connection state "
                f"recovery yet: its history is one stream in one slot, written in the "
                f"same step as each publish. Use redis_partitions=1 with recovery.")
        self.partitions = partitions
        #: the lanes room and node channels are spread over (None: one slot)
        self.lanes = Lanes(connector.channel, partitions) if partitions > 1 else None
        self._shard_publisher = None if self.lanes is None else ShardPublisher(
            self.lanes, connector.owners, connector.client_at)
        self.connector = connector
        self.channel = connector.channel
        self._channel_bytes = self.channel.encode()
        self.log = log
        self.logs_recovery = log is not None
        # on Redis Cluster, room and node channels are named into the common
        # channel's slot (route_base): the recovery script may SPUBLISH only
        # there, and one shard connection keeps every channel in publish
        # order; with lanes, into their lanes' slots instead
        self.routes = True
        self._pub: redis.Redis | None = None
        # the publisher client and the connection its pipelines are written on
        self._wire: tuple[redis.Redis, WireConnection] | None = None
        # set by the listener when the server took our subscription away
        # (on Redis Cluster: the channel's slot left that primary, e.g. a
        # failover made it a replica); the publisher then moves too, at its
        # next send: the demoted node still takes plain SPUBLISHes (and
        # forwards them to its shard), so without this a node sending only
        # unlogged messages would stay on a replica until that one goes
        self._moved = False
        self._pub_lock = threading.Lock()

    def route_base(self, channel: str) -> ChannelBase:
        """On Redis Cluster, ``{channel}``: a hash tag, so every room and
        node channel (``{channel}:room:...``) lives in the common channel's
        slot, on its shard, as the recovery stream does; or, with lanes,
        the lanes' tags."""
        if self.lanes is not None:
            return self.lanes
        return f"{{{channel}}}" if self.connector.sharded else channel

    def lane_of(self, channel: str | None) -> int:
        return self.lanes.lane_of(channel) if self.lanes is not None else 0

    # -- publishing -------------------------------------------------------------
    def connect(self) -> None:
        """A new publisher client (dropping the current one)."""
        with self._pub_lock:
            self._drop_publisher()
            self._pub = self._new_publisher()

    def _new_publisher(self) -> redis.Redis:
        client = self.connector.client()
        client.ping()
        if self.connector.sharded:
            check_agreement(client, self.channel, self.partitions)
        if self.log is not None:
            self.log.load_script(client)
        return client

    def _drop_publisher(self) -> None:
        """Let the publisher client go (the next send makes a new one).
        Not closed here: another green thread may be reading on it, and
        redis-py closes it when the last user lets go of it."""
        self._pub = None

    def _publisher(self) -> redis.Redis:
        """The publisher client, made now if there is none (or it is stale).

        The outbox and the heartbeat (``server_time``, ``subscriber_count``)
        both ask, from green threads of their own. After an outage both
        found none and each made one, and the second replaced the first
        while the outbox's pipeline was reading on it: redis-py closes a
        client's pool when it is garbage collected (as closing it here
        did), the read ended in ``EOFError``, and the outbox sent again a
        batch Redis had already logged (seen in a SIGKILL failover test: a
        stream entry twice, replayed twice to a recovering client). So a
        client is made under a lock, once; a replaced one is dropped, not
        closed; and every user keeps its own reference while it uses it."""
        client = self._pub
        if client is not None and not self._moved and not self.connector.stale(client):
            return client
        with self._pub_lock:
            if self._moved:
                self._moved = False
                self._drop_publisher()
            if self._pub is None or self.connector.stale(self._pub):
                self._drop_publisher()
                self._pub = self._new_publisher()
            return self._pub

    def send(self, payloads: list[bytes]) -> None:
        raise_refused(self.send_each(payloads, [False] * len(payloads)))

    def send_logged(self, payloads: list[bytes], logged: list[bool]) -> list[str | None]:
        return raise_refused(self.send_each(payloads, logged))

    def send_each(self, payloads: list[bytes], logged: list[bool],
                  channels: list[str | None] | None = None) -> list[str | None | Exception]:
        """One pipeline: logged payloads go through the recovery script
        (stream append + publish), the others are plain publishes; each
        reply is looked at on its own (see :mod:`cluster.bus.batch`): Redis at
        ``maxmemory`` refuses the script's XADD but not a PUBLISH."""
        log = self.log if any(logged) else None
        routes: list[str | None] = (channels if channels is not None and self.routes
                                    else [None] * len(payloads))
        try:
            # errors come back in place; a broken connection still raises
            replies = self._pipeline(log, payloads, logged, routes)
            self._follow_moved(log, payloads, logged, routes, replies)
            if log is not None:
                self._append_unscripted(log, payloads, replies)
        except Exception:
            self._drop_publisher()  # reconnect (and rediscover) next time
            raise
        if any(moves_us(reply) for reply in replies):
            self._drop_publisher()  # e.g. a failover made it a replica
            if self._shard_publisher is not None:
                self._shard_publisher.forget()
        return [reply if isinstance(reply, Exception)
                else log.offset_from(reply) if append and log is not None else None
                for reply, append in zip(replies, logged, strict=True)]

    def _wire_of(self, client: redis.Redis) -> WireConnection:
        """The connection the publisher's pipelines use (see
        :mod:`.redis_wire`), one per publisher client: a new client (a
        failover, a broken connection) gets a new one."""
        made = self._wire
        if made is not None and made[0] is client and not made[1].broken:
            return made[1]
        wire = WireConnection(client)
        self._wire = (client, wire)
        return wire

    def _pipeline(self, log: RecoveryLog | None, payloads: list[bytes], logged: list[bool],
                  routes: list[str | None]) -> list[Any]:
        """Send ``payloads`` in one pipeline (one per shard with lanes); the
        replies, errors in place."""
        if self._shard_publisher is not None:
            if self._moved:
                self._moved = False
                self._shard_publisher.forget()
            return self._shard_publisher.send(
                payloads, [channel or self.channel for channel in routes])
        client = self._publisher()  # referenced until the replies are in
        pipe = WirePipeline(self._wire_of(client))
        command = pipe.spublish if self.connector.sharded else pipe.publish
        for payload, append, channel in zip(payloads, logged, routes, strict=True):
            if append and log is not None:
                log.append(pipe, payload, channel)
            else:
                command(channel or self.channel, payload)
        return pipe.execute(raise_on_error=False)

    def _follow_moved(self, log: RecoveryLog | None, payloads: list[bytes],
                      logged: list[bool], routes: list[str | None], replies: list[Any]) -> None:
        """A Redis Cluster failover moved the channel's slot: the old primary
        answers ``MOVED`` to the recovery script (a write) and ran nothing of
        it. Send everything from the first ``MOVED`` reply on, in order, once
        more to the primary it names, now: waiting for the bus's retry (up to
        a second) would let the emits' local delivery give up on their
        offsets (see :mod:`cluster.bus.ordered_delivery`). A batch never puts
        a plain message behind a logged one (:mod:`cluster.bus.batch`), so
        the plain ones, which the demoted node still takes and forwards to
        its shard, are all before that reply and are not sent twice."""
        first = next((i for i, reply in enumerate(replies) if moved_to(reply) is not None),
                     None)
        if first is None or not self.connector.sharded or self.lanes is not None:
            return  # with lanes, no script: the refused publishes are retried
        host, port = moved_to(replies[first])  # type: ignore[misc]  # not None: found above
        tail = range(first, len(payloads))
        try:
            with self._pub_lock:
                self._drop_publisher()
                client = self.connector.client_at(host, port)
                if log is not None:
                    log.load_script(client)
                self._pub = client
            again = self._pipeline(log, [payloads[i] for i in tail], [logged[i] for i in tail],
                                   [routes[i] for i in tail])
        except Exception:  # the new primary is not reachable yet: the bus retries
            self._drop_publisher()  # the refusals stay in place
            return
        for i, reply in zip(tail, again, strict=True):
            replies[i] = reply

    def _append_unscripted(self, log: RecoveryLog, payloads: list[bytes],
                           replies: list[Any]) -> None:
        """Redis restarted (empty) under redis-py's own reconnect: the
        script is gone while the plain publishes went out. Load it and
        append just those, in their order (they are the batch's tail, see
        :func:`cluster.bus.batch.take`, so the order on the channel is kept)."""
        missing = [i for i, reply in enumerate(replies)
                   if isinstance(reply, redis.exceptions.NoScriptError)]
        if not missing:
            return
        client = self._publisher()
        log.load_script(client)
        again = client.pipeline(transaction=False)
        for i in missing:
            log.append(again, payloads[i])
        for i, reply in zip(missing, again.execute(raise_on_error=False), strict=True):
            replies[i] = reply

    def server_time(self) -> float | None:
        return server_time(self._publisher())

    def subscriber_count(self) -> int | None:
        client = self._publisher()
        if self.connector.sharded:
            reply = client.pubsub_shardnumsub(self.channel)
        else:
            reply = client.pubsub_numsub(self.channel)
        return int(reply[0][1]) if reply else 0

    def check_partitions(self) -> None:
        """On Redis Cluster, refuse (:class:`BusConfigurationError`) a lane
        count other than the cluster's (see :mod:`.redis_lanes`): at start,
        before the node serves anyone."""
        if self.connector.sharded:
            client = self.connector.client()
            try:
                check_agreement(client, self.channel, self.partitions)
            finally:
                close_quietly(client)

    def check(self) -> None:
        self.connector.check()
        if self.connector.sharded:  # keep the lane count's record alive
            client = self._publisher()
            if not client.expire(agreement_key(self.channel), AGREEMENT_TTL):
                check_agreement(client, self.channel, self.partitions)

    def new_client(self) -> redis.Redis:
        """A new redis-py client for the node that carries the bus channel,
        connected the way the bus connects (TLS, password, Sentinel, the
        channel's shard of a Redis Cluster), for other parts that keep
        keys beside the channel (singleton task leases)."""
        return self.connector.client()

    def close(self) -> None:
        client, self._pub = self._pub, None
        close_quietly(client)
        made, self._wire = self._wire, None
        if made is not None:
            made[1].close()
        if self._shard_publisher is not None:
            self._shard_publisher.close()
        if isinstance(self.recovery, RedisRecoveryReader):
            self.recovery.close()

    # -- listening ----------------------------------------------------------------
    def _subscribe(self) -> tuple[Any, PushConnection | ShardedPushes]:
        """Subscribe to the common channel and every followed one; returns
        the client (None with lanes: a connection per primary) and the
        pub/sub connection (to which the follower sends its changes)."""
        client: Any = None
        pubsub: PushConnection | ShardedPushes
        if self.lanes is None:
            client = self.connector.client()
            pubsub = PushConnection(client, self.connector.sharded)
        else:
            # a connection per primary, on a map made now: the seeds are
            # asked once, for every lane and the common channel together
            # (the common channel's client the connector would make first
            # asked them once more, for a primary the map names anyway)
            pubsub = ShardedPushes(
                ShardMap.resolve(self.lanes, self.connector.owners),
                lambda address: PushConnection(self.connector.client_at(*address), True))
        follower = self.follower if self.routes else None
        try:
            expected = {self.channel}
            if follower is None:
                pubsub.subscribe(self.channel)
            else:
                first = follower.followed()
                # one command, so one connection (one shard on a cluster
                # without lanes: every channel is in the common one's slot)
                pubsub.subscribe(self.channel, *first)
                # from now on follows go to this connection; one made since
                # the snapshot either finds it set or is in followed() now
                follower.attach(pubsub, first)
                missed = sorted(set(follower.followed()) - set(first))
                if missed:
                    follower.sent(missed)
                    pubsub.subscribe(*missed)
                expected.update(first, missed)
            # wait for every confirmation: only then are we really listening,
            # to the room channels of the clients connected so far too
            for _ in range(50):
                message = pubsub.get_message(timeout=0.1)
                if message and message[0] in _SUBSCRIBED:
                    if not self._is_common(message):
                        self._confirmed(message)
                    expected.discard(_channel_name(message))
                    if not expected:
                        return client, pubsub
            raise TimeoutError("no subscription confirmation within 5 s")
        except Exception:
            if follower is not None:
                follower.detach(pubsub)
            pubsub.close()
            raise

    def _is_common(self, message: PushMessage) -> bool:
        return message[1] == self._channel_bytes

    def _confirmed(self, message: PushMessage) -> None:
        """A room or node channel's subscription is in place."""
        if self.follower is not None:
            self.follower.confirmed(_channel_name(message))

    def listen(self, subscription: Subscription) -> Iterator[bytes]:
        backoff = Backoff(cap=subscription.max_backoff)
        data_type = b"smessage" if self.connector.sharded else b"message"
        while not subscription.closed:
            pubsub = None
            try:
                client, pubsub = self._subscribe()
                subscription.up()
                backoff.reset()
                burst = 0
                while not subscription.closed:
                    # messages already read off the socket are taken without
                    # yielding (timeout 0), up to LISTEN_BURST: the frames
                    # they produce then leave in one write per client at the
                    # end of the burst, so a busy node coalesces by itself
                    # while an idle one still delivers each message at once
                    message = pubsub.get_message(timeout=0 if burst else 1.0)
                    if message is None and burst:
                        burst = 0
                        continue
                    burst = burst + 1 if burst < LISTEN_BURST else 0
                    if burst == 0:
                        subscription.sleep(0)  # let handlers and the flush run
                    if self.connector.stale(client):
                        raise ConnectionError("the Redis master changed")
                    if message is None:
                        if subscription.deaf():
                            raise ConnectionError(
                                "subscribed but not even our own heartbeats arrive")
                        continue
                    kind = message[0]
                    if kind == data_type:
                        yield message[2]
                    elif not self._is_common(message):
                        if kind in _SUBSCRIBED:  # a room's, asked for by the follower
                            self._confirmed(message)
                        elif kind in _UNSUBSCRIBED and self.follower is not None:
                            self.follower.unsubscribed(_channel_name(message))
                    elif kind in _UNSUBSCRIBED:
                        # e.g. the channel's slot moved to another shard
                        # (a Redis Cluster failover): the publisher follows
                        self._moved = True
                        raise ConnectionError("unsubscribed by the server")
            except Exception as exc:  # any failure: resubscribe with backoff
                if self.lanes is not None:
                    self._moved = True  # the publisher asks where the lanes are too
                if not subscription.retry_after(exc, backoff):
                    break
            finally:
                if pubsub is not None:
                    if self.follower is not None:
                        self.follower.detach(pubsub)
                    pubsub.close()  # safe on a broken connection
