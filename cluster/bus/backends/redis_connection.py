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

The subscriber connection is read by :mod:`.redis_pushes`: when it breaks,
the listener resubscribes and reports the outage (logged, counted in
``reconnects``). Redis cuts a subscriber that falls behind by more than
``client-output-buffer-limit pubsub`` (32 MB by default), which is why a
message is capped at ``max_message_bytes`` (8 MiB) before it is sent.
"""
from __future__ import annotations

import logging
from typing import Any
from urllib.parse import unquote, urlparse

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cluster.bus.errors import BusConfigurationError
from session_store.redis_client import parse_hosts

SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel",
           "redis+cluster", "rediss+cluster")


def _hosts(netloc: str) -> list[tuple[str, int]]:
    try:
        return parse_hosts(netloc)
    except ValueError as exc:
        raise BusConfigurationError(f"{exc} (in the bus URL)") from None


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


class RedisConnector:
    """Makes the bus's redis-py clients, for whichever topology the URL names.

    :param url: Redis URL (see the module doc).
    :param options: driver options for redis-py (``sentinel_kwargs`` is
        taken out for the Sentinel connections).
    :param redis_cluster: Redis Cluster mode for a ``redis://`` URL.
    :param channel: the bus channel: on a Redis Cluster the client talks to
        the shard owning its slot; with Sentinel it is the default service.
    """

    def __init__(self, url: str, options: dict[str, Any] | None, redis_cluster: bool,
                 channel: str, logger: logging.Logger | None = None) -> None:
        options = dict(options or {})
        self.url = url
        self.channel = channel
        self.logger = logger or logging.getLogger("cluster.bus")
        self.sentinel_kwargs = options.pop("sentinel_kwargs", None)
        scheme = urlparse(url).scheme.lower()
        if scheme not in SCHEMES:
            raise BusConfigurationError(
                f"Unsupported Redis URL scheme {scheme!r}; use one of "
                f"{', '.join(s + '://' for s in SCHEMES)}.")
        self.mode = ("sentinel" if scheme.endswith("+sentinel") else
                     "redis_cluster" if scheme.endswith("+cluster") or redis_cluster
                     else "single")
        #: sharded pub/sub (SPUBLISH/SSUBSCRIBE) on a Redis Cluster
        self.sharded = self.mode == "redis_cluster"
        options.setdefault("socket_connect_timeout", 2.0)
        options.setdefault("socket_timeout", 5.0)
        if scheme != "unix" and "unix_socket_path" not in options:
            options.setdefault("socket_keepalive", True)  # TCP only
        options.setdefault("retry", Retry(NoBackoff(), 1))
        if scheme.startswith("rediss+"):
            options.setdefault("ssl", True)
        self.options = options
        self._sentinel: Any = None
        self._master: tuple[str, int] | None = None
        if self.mode == "single":
            self._check_options()

    def _check_options(self) -> None:
        # redis-py only looks at connection options when it first connects,
        # in a background task here: fail at start-up instead
        try:
            pool = redis.Redis.from_url(self.url,
                                        **self.options).connection_pool
            pool.make_connection().disconnect()  # type: ignore[no-untyped-call]
        except (TypeError, ValueError) as exc:
            raise BusConfigurationError(
                f"Invalid Redis bus URL or option ({exc}). Options go to "
                f"redis.Redis(): check their names and values.") from exc

    # -- connections ----------------------------------------------------------
    def client(self) -> redis.Redis:
        """A new client for the node that carries the channel."""
        parsed = urlparse(self.url)
        if self.mode == "single":
            return redis.Redis.from_url(self.url, **self.options)
        if self.mode == "sentinel":
            # resolve the master ourselves (not master_for) so that we know
            # which address each connection uses: stale() compares
            host, port = self._discover_master()
            kwargs = dict(self.options, **_credentials(parsed))
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
            parsed = urlparse(self.url)
            sentinel_kwargs = dict(self.sentinel_kwargs or {
                k: v for k, v in self.options.items()
                if k.startswith("socket_")})
            self._sentinel = Sentinel(  # type: ignore[no-untyped-call,unused-ignore]  # typed from redis-py 8
                _hosts(parsed.netloc), sentinel_kwargs=sentinel_kwargs)
        parts = [p for p in urlparse(self.url).path.split("/") if p]
        service = parts[1] if len(parts) > 1 else self.channel
        host, port = self._sentinel.discover_master(service)
        return host, int(port)

    def check(self) -> None:
        """Follow a Sentinel failover even when the old master stays up
        (it then serves as a replica, where our pub/sub would keep working
        but apart from the nodes that connected after the failover)."""
        if self.mode != "sentinel":
            return
        master = self._discover_master()
        if master != self._master:
            if self._master is not None:
                self.logger.warning(
                    "Sentinel reports a new master %s:%s; moving the bus",
                    *master)
            self._master = master

    def stale(self, client: Any) -> bool:
        address = getattr(client, "bus_address", None)
        return (address is not None and self._master is not None
                and address != self._master)

    def _shard_client(self, parsed: Any) -> redis.Redis:
        # ask the cluster which primary owns the channel's slot, then talk
        # to that primary directly: SPUBLISH/SSUBSCRIBE are per shard
        return self.client_at(*self.owners([self.channel])[0])

    def owners(self, keys: list[str]) -> list[tuple[str, int]]:
        """The Redis Cluster primary owning each of ``keys``' slots, as the
        seeds tell it now."""
        from redis.cluster import ClusterNode, RedisCluster
        parsed = urlparse(self.url)
        kwargs = dict(self.options, **_credentials(parsed))
        kwargs.pop("retry", None)
        if parsed.scheme.endswith("+cluster"):
            seeds = [ClusterNode(h, p)  # type: ignore[no-untyped-call]
                     for h, p in _hosts(parsed.netloc)]
            seed_client = RedisCluster(startup_nodes=seeds, **kwargs)
        else:
            seed_client = RedisCluster.from_url(self.url, **kwargs)
        try:
            nodes = [seed_client.get_node_from_key(key)  # type: ignore[no-untyped-call]
                     for key in keys]
        finally:
            seed_client.close()
        return [(str(node.host), int(node.port)) for node in nodes]

    def client_at(self, host: str, port: int) -> redis.Redis:
        """A client for the Redis Cluster primary at ``host:port``: the one
        a ``MOVED`` reply names after a failover, so the publisher follows
        it without asking the seeds (whose view may lag by a moment)."""
        node_kwargs = dict(self.options, **_credentials(urlparse(self.url)))
        return redis.Redis(host=host, port=int(port), **node_kwargs)
