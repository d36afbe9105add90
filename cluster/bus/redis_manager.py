"""Redis backend of the cluster bus: plain, TLS, unix socket, Sentinel and
Redis Cluster (sharded pub/sub).

URLs
    ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS),
    ``unix:///path/to/redis.sock[?db=0]``
        one Redis server (``Redis.from_url``).
    ``redis+sentinel://[[user]:password@]host1:port1,host2:port2/db/service``
    (``rediss+sentinel://`` for TLS to the master)
        the master of ``service`` (default: the channel name) as told by
        the Sentinels; a failover reconnects to the new master.
    ``redis+cluster://[[user]:password@]host1:port1[,host2:port2...]``
    (``rediss+cluster://``), or any ``redis://`` URL with
    ``options={"cluster": True}``
        a Redis Cluster. Messages use sharded pub/sub (``SPUBLISH`` /
        ``SSUBSCRIBE``): the channel lives on the shard that owns its slot
        and is not broadcast to every node of the cluster.

``redis_options`` go to redis-py unchanged (``password``, ``ssl_ca_certs``,
``ssl_certfile``, ``socket_keepalive``...), except ``sentinel_kwargs`` which
goes to the Sentinel connections, and the bus limits (``buffer_size``,
``buffer_bytes``, ``max_message_bytes``), which stay with the manager.
Unless given, connect timeout is 2 s, socket timeout 5 s and redis-py
retries once without delay: backoff is the manager's, capped at
``max_backoff``, never redis-py's (up to 10 s).

redis-py reconnects a pub/sub connection by itself when a read fails and
re-subscribes, silently; the listener notices by the second subscription
confirmation and reports it like any lost subscription (logged, counted in
``reconnects``). Redis cuts a subscriber that falls behind by more than
``client-output-buffer-limit pubsub`` (32 MB by default), which is why a
message is capped at ``max_message_bytes`` (8 MiB) before it is sent.
"""
from __future__ import annotations

import threading
from typing import Any
from collections.abc import Iterator
from urllib.parse import unquote, urlparse

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cluster.recovery.stream import RecoveryLog
from cluster.bus.codec import Dropped
from cluster.bus.errors import BusConfigurationError
from cluster.bus.manager import ClusterManager, split_settings
from cluster.bus.runtime import Backoff

#: bus messages handled back to back before the listener yields
LISTEN_BURST = 64

RESUBSCRIBED = (
    "Redis closed the subscriber connection and redis-py re-subscribed; "
    "messages published meanwhile were missed. If this repeats, this node "
    "reads the bus too slowly or bursts of large messages pass Redis's "
    "client-output-buffer-limit for pubsub (32 MB by default): lower "
    "max_message_bytes or raise that limit")

SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel",
           "redis+cluster", "rediss+cluster")


def _hosts(netloc: str) -> list[tuple[str, int]]:
    hosts = []
    for item in netloc.rsplit("@", 1)[-1].split(","):
        host, _, port = item.rpartition(":")
        if not host:
            host, port = port, "6379"
        try:
            hosts.append((host.strip("[]"), int(port)))
        except ValueError:
            raise BusConfigurationError(
                f"Bad host:port {item!r} in the bus URL.") from None
    return hosts


def _credentials(parsed: Any) -> dict[str, str]:
    out = {}
    if parsed.username:
        out["username"] = unquote(parsed.username)
    if parsed.password:
        out["password"] = unquote(parsed.password)
    return out


def close_quietly(client: Any) -> None:
    """Close a redis-py client that may be broken already (``None``: nothing)."""
    if client is not None:
        try:
            client.close()
        except Exception:  # already broken: nothing to release
            pass


class RedisManager(ClusterManager):
    """Cluster bus over Redis pub/sub (see the module doc for URLs).

    :param url: Redis URL; default ``redis://localhost:6379/0``.
    :param redis_options: driver options passed to redis-py.
    :param cluster: force Redis Cluster mode for a ``redis://`` URL.

    Other keyword arguments: see :class:`~.manager.ClusterManager`.
    """

    name = "redis"

    def __init__(self, url: str = "redis://localhost:6379/0",
                 channel: str = "flask-socketio", write_only: bool = False,
                 logger: Any = None, json: Any = None,
                 redis_options: dict[str, Any] | None = None,
                 cluster: bool = False, **kwargs: Any) -> None:
        options = dict(redis_options or {})
        kwargs = split_settings(options, kwargs)
        super().__init__(channel=channel, write_only=write_only,
                         logger=logger, json=json, **kwargs)
        self.redis_url = url
        self.sentinel_kwargs = options.pop("sentinel_kwargs", None)
        scheme = urlparse(url).scheme.lower()
        if scheme not in SCHEMES:
            raise BusConfigurationError(
                f"Unsupported Redis URL scheme {scheme!r}; use one of "
                f"{', '.join(s + '://' for s in SCHEMES)}.")
        self.mode = ("sentinel" if scheme.endswith("+sentinel") else
                     "cluster" if scheme.endswith("+cluster") or cluster
                     else "single")
        self.sharded = self.mode == "cluster"
        options.setdefault("socket_connect_timeout", 2.0)
        options.setdefault("socket_timeout", 5.0)
        if scheme != "unix" and "unix_socket_path" not in options:
            options.setdefault("socket_keepalive", True)  # TCP only
        options.setdefault("retry", Retry(NoBackoff(), 1))
        if scheme.startswith("rediss+"):
            options.setdefault("ssl", True)
        self.redis_options = options
        if self.mode == "single":
            self._check_options()
        self._pub: redis.Redis | None = None
        self._reader: redis.Redis | None = None
        self._reader_lock = threading.Lock()
        self._sentinel: Any = None
        self._master: tuple[str, int] | None = None
        self.recovery_log: RecoveryLog | None = None
        if self.recovery_window:
            self.recovery_log = RecoveryLog(channel, self._open_archived, self.recovery_window,
                                            self.recovery_max_entries, sharded=self.sharded)

    # -- connection state recovery -------------------------------------------
    def _supports_recovery_log(self) -> bool:
        return self.recovery_log is not None

    def _send_logged_batch(self, payloads: list[bytes], logged: list[bool]) -> list[str | None]:
        """One pipeline: logged payloads go through the recovery script
        (stream append + publish), the others are plain publishes."""
        log = self.recovery_log
        if log is None:
            self._send_batch(payloads)
            return [None] * len(payloads)
        pipe = self._publisher().pipeline(transaction=False)
        command = pipe.spublish if self.sharded else pipe.publish
        for payload, append in zip(payloads, logged):
            if append:
                log.append(pipe, payload)
            else:
                command(self.channel, payload)
        try:
            replies = pipe.execute(raise_on_error=False)
            missing = [i for i, reply in enumerate(replies)
                       if isinstance(reply, redis.exceptions.NoScriptError)]
            if missing:
                # Redis restarted (empty) under redis-py's own reconnect:
                # the script is gone, while the plain publishes went out.
                # Load it and append just those, in their order
                log.load_script(self._publisher())
                again = self._publisher().pipeline(transaction=False)
                for i in missing:
                    log.append(again, payloads[i])
                for i, reply in zip(missing, again.execute()):
                    replies[i] = reply
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        except Exception:
            self._close_publisher()  # reconnect (and rediscover) next time
            raise
        return [log.offset_from(reply) if append else None
                for reply, append in zip(replies, logged)]

    # reads of the recovery log go through a client of their own: a replay
    # may read many pages, and every emit of the node waits on the
    # publisher's lock (measured: other clients stalled 0.4-0.6 s while
    # replays ran under it)
    def _recovery_reader(self) -> redis.Redis:
        with self._reader_lock:  # one client, whoever asks first builds it
            reader = self._reader
            if reader is None or self._stale(reader):
                self._close_reader()
                reader = self._reader = self._client()
            return reader

    def _close_reader(self) -> None:
        reader, self._reader = self._reader, None
        close_quietly(reader)

    def _read_recovery_log(self, read: Any, *args: Any, default: Any) -> Any:
        """Run one read of the recovery log on the reader client (never
        under the publisher lock); ``default`` when recovery is off or Redis
        fails (logged)."""
        if self.recovery_log is None:
            return default
        try:
            return read(self._recovery_reader(), *args)
        except Exception as exc:
            self._get_logger().warning("recovery log unreadable (%s)", exc)
            self._close_reader()  # reconnect (and rediscover) next time
            return default

    def _open_archived(self, payload: bytes) -> dict[str, Any] | None:
        try:
            return self._codec.open_archived(payload)[0]
        except Dropped:
            return None

    @property
    def recovery(self) -> Any:
        return _RecoveryReads(self) if self.logs_recovery else None

    def new_redis_client(self) -> redis.Redis:
        return self.new_client()

    def recovery_last_offset(self) -> str | None:
        """The newest offset in the recovery stream (None if unavailable)."""
        log = self.recovery_log
        return self._read_recovery_log(log and log.last_offset, default=None)

    def recovery_restart_point(self) -> str | None:
        """Where a restored session's history starts (None if unavailable):
        see :meth:`.recovery_log.RecoveryLog.restart_point`."""
        log = self.recovery_log
        mark = self._codec.seal(self._codec.dumps(
            {"method": "heartbeat", "host_id": self.host_id, "name": self.node_name}),
            self.host_id)
        return self._read_recovery_log(log and log.restart_point, mark, default=None)

    def recovery_readable(self, offset: str) -> bool:
        """Whether a replay from ``offset`` can be trusted (nothing trimmed)."""
        log = self.recovery_log
        return bool(self._read_recovery_log(log and log.readable, offset, default=False))

    def recovery_contains(self, offset: str) -> bool:
        """Whether ``offset`` is an entry of the recovery stream."""
        log = self.recovery_log
        return bool(self._read_recovery_log(log and log.contains, offset, default=False))

    def recovery_page(self, offset: str, count: int
                      ) -> list[tuple[str, dict[str, Any] | None, int]] | None:
        """Up to ``count`` entries after ``offset`` (None: unreadable)."""
        log = self.recovery_log
        return self._read_recovery_log(log and log.page, offset, count, default=None)

    def recovery_after(self, offset: str) -> list[tuple[str, dict[str, Any]]] | None:
        """Messages logged after ``offset`` (None: cannot recover from it)."""
        log = self.recovery_log
        return self._read_recovery_log(log and log.after, offset, default=None)

    def _check_options(self) -> None:
        # redis-py only looks at connection options when it first connects,
        # in a background task here: fail at start-up instead
        try:
            pool = redis.Redis.from_url(self.redis_url,
                                        **self.redis_options).connection_pool
            pool.make_connection().disconnect()
        except (TypeError, ValueError) as exc:
            raise BusConfigurationError(
                f"Invalid Redis bus URL or option ({exc}). Options go to "
                f"redis.Redis(): check their names and values.") from exc

    # -- connections ----------------------------------------------------------
    def new_client(self) -> redis.Redis:
        """A new redis-py client for the node that carries the bus channel,
        connected the way the bus connects (TLS, password, Sentinel, the
        channel's shard of a Redis Cluster), for other parts that keep
        keys beside the channel (singleton task leases)."""
        return self._client()

    def _client(self) -> redis.Redis:
        """A new client for the node that carries our channel."""
        parsed = urlparse(self.redis_url)
        if self.mode == "single":
            return redis.Redis.from_url(self.redis_url, **self.redis_options)
        if self.mode == "sentinel":
            # resolve the master ourselves (not master_for) so that we know
            # which address each connection uses: _check_backend compares
            host, port = self._discover_master()
            kwargs = dict(self.redis_options, **_credentials(parsed))
            parts = [p for p in parsed.path.split("/") if p]
            if parts:
                kwargs["db"] = int(parts[0])
            client = redis.Redis(host=host, port=port, **kwargs)
            client.bus_address = (host, port)  # type: ignore[attr-defined]
            return client
        return self._shard_client(parsed)

    def _discover_master(self) -> tuple[str, int]:
        if self._sentinel is None:
            from redis.sentinel import Sentinel
            parsed = urlparse(self.redis_url)
            sentinel_kwargs = dict(self.sentinel_kwargs or {
                k: v for k, v in self.redis_options.items()
                if k.startswith("socket_")})
            self._sentinel = Sentinel(_hosts(parsed.netloc),
                                      sentinel_kwargs=sentinel_kwargs)
        parts = [p for p in urlparse(self.redis_url).path.split("/") if p]
        service = parts[1] if len(parts) > 1 else self.channel
        host, port = self._sentinel.discover_master(service)
        return host, int(port)

    def _check_backend(self) -> None:
        """Follow a Sentinel failover even when the old master stays up
        (it then serves as a replica, where our pub/sub would keep working
        but apart from the nodes that connected after the failover)."""
        if self.mode != "sentinel":
            return
        master = self._discover_master()
        if master != self._master:
            if self._master is not None:
                self._get_logger().warning(
                    "Sentinel reports a new master %s:%s; moving the bus",
                    *master)
            self._master = master

    def _stale(self, client: Any) -> bool:
        address = getattr(client, "bus_address", None)
        return (address is not None and self._master is not None
                and address != self._master)

    def _shard_client(self, parsed: Any) -> redis.Redis:
        # ask the cluster which primary owns the channel's slot, then talk
        # to that primary directly: SPUBLISH/SSUBSCRIBE are per shard
        from redis.cluster import ClusterNode, RedisCluster
        kwargs = dict(self.redis_options, **_credentials(parsed))
        kwargs.pop("retry", None)
        if parsed.scheme.endswith("+cluster"):
            seeds = [ClusterNode(h, p) for h, p in _hosts(parsed.netloc)]
            cluster = RedisCluster(startup_nodes=seeds, **kwargs)
        else:
            cluster = RedisCluster.from_url(self.redis_url, **kwargs)
        try:
            node = cluster.get_node_from_key(self.channel)
        finally:
            cluster.close()
        node_kwargs = dict(self.redis_options, **_credentials(parsed))
        return redis.Redis(host=node.host, port=node.port, **node_kwargs)

    def _connect_publisher(self) -> None:
        self._close_publisher()
        client = self._client()
        client.ping()
        if self.recovery_log is not None:
            self.recovery_log.load_script(client)
        self._pub = client

    def _close_publisher(self) -> None:
        client, self._pub = self._pub, None
        close_quietly(client)

    def _publisher(self) -> redis.Redis:
        if self._pub is None or self._stale(self._pub):
            self._connect_publisher()
        assert self._pub is not None  # set by _connect_publisher
        return self._pub

    def _send_batch(self, payloads: list[bytes]) -> None:
        pipe = self._publisher().pipeline(transaction=False)
        command = pipe.spublish if self.sharded else pipe.publish
        for payload in payloads:
            command(self.channel, payload)
        try:
            pipe.execute()
        except Exception:
            self._close_publisher()  # reconnect (and rediscover) next time
            raise

    def _subscriber_count(self) -> int | None:
        client = self._publisher()
        if self.sharded:
            reply = client.pubsub_shardnumsub(self.channel)
        else:
            reply = client.pubsub_numsub(self.channel)
        return int(reply[0][1]) if reply else 0

    def _close_transport(self) -> None:
        self._close_publisher()
        self._close_reader()

    # -- listening ------------------------------------------------------------
    def _subscribe(self) -> tuple[Any, Any]:
        client = self._client()
        pubsub = client.pubsub()
        try:
            if self.sharded:
                pubsub.ssubscribe(self.channel)
            else:
                pubsub.subscribe(self.channel)
            # wait for the confirmation: only then are we really listening
            for _ in range(50):
                message = pubsub.get_message(timeout=0.1)
                if message and message["type"] in ("subscribe", "ssubscribe"):
                    return client, pubsub
            raise TimeoutError("no subscription confirmation within 5 s")
        except Exception:
            pubsub.close()
            raise

    def _listen(self) -> Iterator[bytes]:
        backoff = Backoff(cap=self.max_backoff)
        data_type = "smessage" if self.sharded else "message"
        while not self._closed:
            pubsub = None
            try:
                client, pubsub = self._subscribe()
                self._on_subscribed()
                backoff.reset()
                burst = 0
                while not self._closed:
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
                        self._runtime.sleep(0)  # let handlers and the flush run
                    if self._stale(client):
                        raise ConnectionError("the Redis master changed")
                    if message is None:
                        if self._listener_is_deaf():
                            raise ConnectionError(
                                "subscribed but not even our own heartbeats "
                                "arrive")
                        continue
                    kind = message["type"]
                    if kind == data_type:
                        yield message["data"]
                    elif kind in ("subscribe", "ssubscribe"):
                        # _subscribe took the first confirmation: another one
                        # means redis-py lost the connection and re-subscribed
                        # on its own (e.g. Redis cut us at its pub/sub output
                        # buffer limit); what was published meanwhile is lost
                        self._on_resubscribed(RESUBSCRIBED)
                    elif kind in ("unsubscribe", "sunsubscribe"):
                        # e.g. the channel's slot moved to another shard
                        raise ConnectionError("unsubscribed by the server")
            except Exception as exc:  # any failure: resubscribe with backoff
                if self._closed:
                    break
                self._on_unsubscribed(exc)
                self._runtime.sleep(backoff.next())
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # broken connection: nothing to close
                        pass


class _RecoveryReads:
    def __init__(self, manager: RedisManager) -> None:
        self.last_offset = manager.recovery_last_offset
        self.restart_point = manager.recovery_restart_point
        self.readable = manager.recovery_readable
        self.contains = manager.recovery_contains
        self.page = manager.recovery_page
        self.after = manager.recovery_after
