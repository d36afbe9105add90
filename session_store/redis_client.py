"""The redis-py client of a Redis session store: one server, or a Redis Cluster.

URLs (the cluster bus's grammar, so one ``message_queue`` URL serves the
bus and the sessions)::

    redis://[[user]:password@]host[:port][/db]     one server (Redis.from_url)
    rediss://...                                   the same over TLS
    unix:///path/to/redis.sock[?db=0]              a unix socket
    redis+cluster://[[user]:password@]host1:port1[,host2:port2...]
    rediss+cluster://...                           a Redis Cluster (TLS)

A ``redis://`` URL with the option ``cluster=True`` is a Redis Cluster too.
The hosts of a cluster URL are seeds: redis-py asks them for the slot map
and follows it (``MOVED``, failovers). Other options go in the store's
``redis_options`` (a query string on a cluster URL is ignored, as the bus
ignores it).

``session_store`` cannot import the ``cluster`` package, so this parser is
its own (a few lines); it accepts exactly what the bus's connector accepts.

A Redis Cluster client is made on first use (:class:`LazyClient`): building
redis-py's ``RedisCluster`` connects at once to read the slot map, and a
node must start (and serve, without resumable sessions) while Redis is
away, as it does with one server.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import unquote, urlparse

import redis
from redis.cluster import ClusterNode, ClusterPipeline, RedisCluster

__all__ = ["CLUSTER_SCHEMES", "LazyClient", "LuaScript", "connect", "is_cluster",
           "parse_hosts", "wants_cluster"]

#: URL schemes of a Redis Cluster
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")


def parse_hosts(netloc: str) -> list[tuple[str, int]]:
    """The ``host:port`` pairs of a URL's ``netloc`` (credentials dropped, a
    missing port 6379, IPv6 brackets removed); :class:`ValueError` naming
    the bad item otherwise. The bus's Sentinel and Cluster URLs use it too."""
    hosts = []
    for item in netloc.rsplit("@", 1)[-1].split(","):
        host, _, port = item.rpartition(":")
        if not host:
            host, port = port, "6379"
        try:
            hosts.append((host.strip("[]"), int(port)))
        except ValueError:
            raise ValueError(f"Bad host:port {item!r} in the Redis URL; list the "
                             "servers as HOST1:PORT1,HOST2:PORT2") from None
    return hosts


def _seeds(netloc: str) -> list[ClusterNode]:
    return [ClusterNode(host, port)  # type: ignore[no-untyped-call]
            for host, port in parse_hosts(netloc)]


def wants_cluster(url: str, options: Mapping[str, Any] | None) -> bool:
    """Whether ``url`` (with ``options``) names a Redis Cluster."""
    scheme = urlparse(url).scheme.lower()
    return scheme in CLUSTER_SCHEMES or bool((options or {}).get("cluster"))


def _cluster(url: str, options: dict[str, Any]) -> RedisCluster:
    parsed = urlparse(url)
    if parsed.scheme.lower() not in CLUSTER_SCHEMES:
        return RedisCluster.from_url(url, **options)
    if parsed.username:
        options.setdefault("username", unquote(parsed.username))
    if parsed.password:
        options.setdefault("password", unquote(parsed.password))
    if parsed.scheme.lower().startswith("rediss"):
        options.setdefault("ssl", True)
    return RedisCluster(startup_nodes=_seeds(parsed.netloc), **options)


def connect(url: str, options: Mapping[str, Any] | None = None) -> Any:
    """A client for ``url``: ``redis.Redis``, or a :class:`LazyClient` over
    ``RedisCluster`` for a cluster URL (see the module doc)."""
    options = dict(options or {})
    cluster = options.pop("cluster", False)
    parsed = urlparse(url)
    if parsed.scheme.lower() in CLUSTER_SCHEMES:
        _seeds(parsed.netloc)  # a bad host list fails now, not at the first command
    elif not cluster:
        return _one_server(url, options)
    return LazyClient(lambda: _cluster(url, dict(options)), url)


#: connections of a node's store to one Redis (redis-py's default, 100)
POOL_SIZE = 100
#: seconds a command waits for a free connection when all are busy
POOL_WAIT = 10.0


def _one_server(url: str, options: dict[str, Any]) -> redis.Redis:
    """``redis.Redis.from_url`` over a blocking pool.

    redis-py's default pool raises ``MaxConnectionsError`` once its 100
    connections are busy. A node runs thousands of green threads, and a
    burst of joins (each writes its connection record before its ack) then
    failed those writes and the events lost their acks (seen with 300
    clients joining at once). A blocking pool of the same size makes the
    extra commands wait (up to :data:`POOL_WAIT` seconds) for a connection
    instead. ``max_connections`` and ``timeout`` among the options set its
    size and wait; ``connection_pool`` replaces it.
    """
    if "connection_pool" in options:
        return redis.Redis(**options)
    single = options.pop("single_connection_client", False)
    options.setdefault("max_connections", POOL_SIZE)
    options.setdefault("timeout", POOL_WAIT)
    pool = redis.BlockingConnectionPool.from_url(url, **options)
    client = redis.Redis(connection_pool=pool, single_connection_client=single)
    client.auto_close_connection_pool = True
    return client


class LazyClient:
    """A ``RedisCluster`` made on first use, then used as it is.

    Attribute access is passed to the real client; making it is retried at
    every use until it succeeds (its error, a ``RedisClusterException``,
    reaches the caller).
    """

    def __init__(self, make: Any, url: str) -> None:
        self._make = make
        self._client: RedisCluster | None = None
        self._lock = threading.Lock()
        # for messages: the seeds, never the password
        parsed = urlparse(url)
        self.where = f"Redis Cluster {parsed.netloc.rsplit('@', 1)[-1]}"

    @property
    def client(self) -> RedisCluster:
        """The real client (made now if it was not yet)."""
        with self._lock:
            if self._client is None:
                self._client = self._make()
            return self._client

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


def is_cluster(client: Any) -> bool:
    """Whether ``client`` talks to a Redis Cluster."""
    return isinstance(client, (LazyClient, RedisCluster))


class LuaScript:
    """A Lua script run on any client: ``EVALSHA`` (``EVAL`` when the server
    does not know it yet) on a client, ``EVAL`` in a pipeline.

    redis-py's ``register_script`` would connect a lazy cluster client at
    once, and its cluster pipeline cannot load scripts (a ``NOSCRIPT`` reply
    there is the caller's problem); sending the text in pipelines avoids
    both for a few hundred bytes per call.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode("utf-8")).hexdigest()  # noqa: S324 - Redis's script id

    def command(self, keys: Sequence[str], args: Sequence[Any]
                ) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
        """The script as one pipelined command (an ``EVAL``), in the form
        :class:`~session_store.write_batches.WriteBatches` takes."""
        return ("execute_command", ("EVAL", self.text, len(keys), *keys, *args), {})

    def __call__(self, keys: Sequence[str], args: Sequence[Any], client: Any) -> Any:
        if isinstance(client, (redis.client.Pipeline, ClusterPipeline)):
            # queued: the reply comes with execute(); redis-py's
            # ClusterPipeline.eval() is something else, hence the raw command
            pipe: Any = client
            return pipe.execute_command("EVAL", self.text, len(keys), *keys, *args)
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            return client.eval(self.text, len(keys), *keys, *args)
