"""Background tasks that run on exactly one node of the cluster.

``socketio.start_background_task`` runs its task in every process that calls
it, as in Flask-SocketIO: with N nodes a periodic broadcast goes out N
times. :meth:`cluster.SocketIO.start_singleton_task` is the opt-in for a
task the whole cluster should run once::

    def ticker():
        while True:
            socketio.sleep(10)
            socketio.emit("tick", {"at": time.time()})

    socketio.start_singleton_task("ticker", ticker)

Every node that calls it competes for a lease in Redis (``SET NX PX``); the
holder runs the task and renews the lease every ``lease_seconds / 5``. If
the holder dies, its lease expires after ``lease_seconds`` (default 5 s) and
another node starts the task within about one more renewal interval. A
draining node (SIGTERM) gives the lease up at once.

Fencing: a holder that cannot renew for ``0.8 * lease_seconds`` (Redis
unreachable, the process stalled) counts the lease as lost before it can
have expired in Redis. From then on ``socketio.sleep()`` and
``socketio.emit()``/``send()``/``call()`` raise :class:`LeaseLost` inside
that task, so the old holder stops before or as the new one starts. Each
acquisition also gets a fencing token, increasing across the cluster
(:func:`current_lease` ``.token``), for work outside Socket.IO that must
refuse a stale holder's writes.

A task that returns ends on its node, which keeps the lease until it stops
(so the task is not run again elsewhere meanwhile); a task that raises is
logged with its traceback and competed for again one renewal interval
later. Without a message queue (one process) the task simply runs there.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cluster.bus.backends.redis_connection import close_quietly
from cluster.bus.features import bus_features
from cluster.bus.settings import driver_only
from cluster.exceptions import ConfigurationError, LeaseLost
from session_store import redis_client

if TYPE_CHECKING:
    from cluster.node.server import ClusterServer
    from cluster.runner.health import NodeState

__all__ = ["Lease", "LeaseLost", "SingletonTask", "check_lease", "current_lease"]

logger = logging.getLogger("cluster.singleton")

DEFAULT_LEASE_SECONDS = 5.0
#: renewals (and, on the other nodes, acquisition attempts) per lease period
RENEWALS_PER_LEASE = 5
#: the part of the lease after which a holder that could not renew stops
LOCAL_VALIDITY = 0.8
REDIS_SCHEMES = ("redis", "rediss", "unix", *redis_client.CLUSTER_SCHEMES)

# the lease is renewed (or released) only by its holder: compare, then act
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
# the token comes with the acquisition, in one step, so tokens only grow
_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return 0
"""

_local: threading.local | None = None


def _task_local() -> threading.local:
    # created on first use: under the node runner eventlet or gevent has
    # patched threading by then, so this is green-thread local
    global _local
    if _local is None:
        _local = threading.local()
    return _local


class Lease:
    """The lease a running singleton task holds (``current_lease()``)."""

    def __init__(self, name: str, token: int, valid_for: float | None) -> None:
        self.name = name
        #: the fencing token of this acquisition; a later holder's is larger
        self.token = token
        self._lost = threading.Event()
        self._valid_for = valid_for
        self._valid_until = None if valid_for is None else time.monotonic() + valid_for

    @property
    def held(self) -> bool:
        """Whether this node still holds the lease."""
        if self._lost.is_set():
            return False
        # checked against the clock too: a process that was stopped (SIGSTOP,
        # a long GC pause) wakes up past its validity before its keeper runs
        return self._valid_until is None or time.monotonic() < self._valid_until

    def check(self) -> None:
        """:raises LeaseLost: when this node no longer holds the lease."""
        if not self.held:
            raise LeaseLost(self.name)

    def _renewed(self, at: float) -> None:
        if self._valid_for is not None:
            self._valid_until = at + self._valid_for

    def _lose(self) -> None:
        self._lost.set()


def current_lease() -> Lease | None:
    """The lease of the singleton task running in this thread, if any."""
    return getattr(_task_local(), "lease", None)


def check_lease() -> None:
    """Inside a singleton task, raise :class:`LeaseLost` once it is lost.

    ``SocketIO.sleep``/``emit``/``send``/``call`` call it; elsewhere it does
    nothing.
    """
    lease = getattr(_task_local(), "lease", None) if _local is not None else None
    if lease is not None:
        lease.check()


class SingletonTask:
    """One task competed for by every node (see the module docstring).

    :param server: the node's server: its async mode runs the keeper and
        the task, its manager is the bus whose Redis holds the lease.
    :param node_state: a draining node gives the lease up at once.
    :param name: the task's name, the same on every node; one lease per name
        and ``channel``.
    :param lease_seconds: how long a lease lasts without renewal (default
        5 s): about how long the cluster goes without the task after its
        node dies.
    :param redis_url: where the lease lives (``redis+cluster://`` too);
        default the Redis of the message queue, reached the way the bus
        reaches it (TLS, password, Sentinel; a Redis Cluster through a
        cluster client of its own), else the ``redis_url`` option.
    """

    def __init__(self, server: ClusterServer, node_state: NodeState, name: str,
                 target: Callable[..., Any],
                 args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None, *,
                 lease_seconds: float = DEFAULT_LEASE_SECONDS,
                 redis_url: str | None = None) -> None:
        if not name:
            raise ConfigurationError("start_singleton_task() needs a name, the same on every node.")
        if lease_seconds <= 0:
            raise ConfigurationError("lease_seconds must be positive (default 5).")
        self.server = server
        self.node_state = node_state
        self.name = name
        self.target = target
        self.args = args
        self.kwargs = kwargs or {}
        self.lease_seconds = float(lease_seconds)
        self.interval = self.lease_seconds / RENEWALS_PER_LEASE
        self.redis_url = redis_url
        self.holder = uuid.uuid4().hex
        #: the lease while this node runs the task, else ``None``
        self.lease: Lease | None = None
        self._task_running = threading.Event()
        self._stopped = False
        self._redis: Any = None
        self._connect: Callable[[], Any] | None = None
        self._redis_failed = False
        self._keeper = server.start_background_task(self._keep)

    @property
    def running(self) -> bool:
        """Whether the task runs on this node now."""
        return self._task_running.is_set()

    def stop(self) -> None:
        """Stop competing; a running task is fenced off and the lease released."""
        self._stopped = True

    # -- the keeper ----------------------------------------------------------

    def _keep(self) -> None:
        try:
            self._keep_leasing()
        except Exception:
            # a bug or a bad redis_url: say so rather than end silently
            logger.exception("singleton task %r: its lease keeper stopped; the task does "
                             "not run on this node", self.name)
            if self.lease is not None:
                self.lease._lose()

    def _keep_leasing(self) -> None:
        server = self.server
        while not server.manager_initialized and not self._stopped:
            # under the node runner the bus URL arrives after the app module
            # ran; the manager starts once the node is about to serve
            server.sleep(0.1)
        self._connect = self._client_factory()
        if self._connect is None:
            if server.config.bus.url:
                logger.error(
                    "singleton task %r does not run: its lease needs Redis and the "
                    "message queue is not a Redis URL; pass redis_url= to "
                    "start_singleton_task().", self.name)
                return
            self._run_alone()
            return
        keys = [self._key("lease"), self._key("fence")]
        # a process that exits before the keeper's next turn still hands over
        atexit.register(self._give_up, keys[0])
        renewed_at = 0.0
        while True:
            attempt_at = time.monotonic()
            if self._stopped or self._draining():
                self._give_up(keys[0])
                return
            current = self.lease
            if current is None:
                if not self._task_running.is_set():  # an old run still winding down waits
                    token = self._call("acquire", _ACQUIRE, keys, self.holder)
                    if token:
                        renewed_at = attempt_at
                        self._start(int(token), attempt_at)
            else:
                renewed = self._call("renew", _RENEW, keys[:1], self.holder)
                if renewed:
                    renewed_at = attempt_at
                    current._renewed(attempt_at)
                elif renewed == 0:  # Redis answered: the key is not ours
                    self._lost("it expired and another node may hold it")
                elif time.monotonic() - renewed_at >= LOCAL_VALIDITY * self.lease_seconds:
                    # no answer for so long that it may expire any moment
                    self._lost("it could not be renewed in time")
            self._nap(self.interval - (time.monotonic() - attempt_at))

    def _nap(self, seconds: float) -> None:
        # in short slices: a draining node hands the task over at once
        deadline = time.monotonic() + seconds
        while not (self._stopped or self._draining()):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.server.sleep(min(left, 0.1))

    def _call(self, what: str, script: str, keys: list[str], holder: str) -> Any:
        """Run a lease script; ``None`` when Redis did not answer."""
        if self._connect is None:
            return None
        try:
            if self._redis is None:
                self._redis = self._connect()
            result = self._redis.eval(script, len(keys), *keys, holder,
                                      int(self.lease_seconds * 1000))
        except Exception as exc:  # redis-py's connection and timeout errors
            if not self._redis_failed:
                logger.warning("singleton task %r: could not %s its lease (%s); retrying "
                               "every %.1f s", self.name, what, exc, self.interval)
            self._redis_failed = True
            self._drop_client()  # a new one next time (a Sentinel failover moves the master)
            return None
        self._redis_failed = False
        return result

    def _start(self, token: int, acquired_at: float) -> None:
        lease = Lease(self.name, token, LOCAL_VALIDITY * self.lease_seconds)
        lease._renewed(acquired_at)
        self.lease = lease
        self._task_running.set()
        logger.info("singleton task %r starts on this node (fencing token %d)", self.name, token)
        self.server.start_background_task(self._run, lease)

    def _lost(self, why: str) -> None:
        lease, self.lease = self.lease, None
        if lease is not None:
            logger.warning("singleton task %r: lease lost (%s); the task stops here",
                           self.name, why)
            lease._lose()

    def _give_up(self, key: str) -> None:
        lease, self.lease = self.lease, None
        if lease is not None:
            lease._lose()
            if self._connect is not None and self._call("release", _RELEASE, [key], self.holder):
                logger.info("singleton task %r: lease released", self.name)

    def _run(self, lease: Lease) -> None:
        local = _task_local()
        local.lease = lease
        try:
            self.target(*self.args, **self.kwargs)
            logger.info("singleton task %r returned; this node keeps its lease", self.name)
        except LeaseLost:
            pass
        except Exception:
            logger.exception("singleton task %r failed; it is run again in %.1f s", self.name,
                             self.interval)
            if self.lease is lease:
                self._give_up(self._key("lease"))
                self.server.sleep(self.interval)
        finally:
            local.lease = None
            self._task_running.clear()

    def _run_alone(self) -> None:
        # one process is the whole cluster: nothing to compete with; a task
        # that failed runs again, as it would on another node
        while not self._stopped:
            lease = Lease(self.name, 1, None)
            self.lease = lease
            self._task_running.set()
            self._run(lease)
            if self.lease is lease:  # returned (a failure gave the lease up)
                return

    # -- helpers -------------------------------------------------------------

    def _client_factory(self) -> Callable[[], Any] | None:
        """How to connect to the lease's Redis, or ``None`` without one."""
        timeouts = {"socket_timeout": self.interval, "socket_connect_timeout": self.interval}
        if self.redis_url:
            url = self.redis_url
            return lambda: redis_client.connect(url, timeouts)
        bus = self.server.config.bus
        if bus.url and redis_client.wants_cluster(bus.url, bus.driver_options):
            # a Redis Cluster bus: a cluster client of our own routes the
            # lease's slot and follows failovers and slot moves by itself
            options = {**driver_only(dict(bus.driver_options or {})), **timeouts}
            bus_url = bus.url
            return lambda: redis_client.connect(bus_url, options)
        features = bus_features(self.server.manager)
        try:
            first = features.new_redis_client()
        except Exception:  # a Redis bus, unreachable now: _call retries
            return features.new_redis_client
        if first is not None:
            # the Redis bus's own connection logic (TLS, password, Sentinel,
            # the channel's shard of a Redis Cluster) and options; the
            # client that told us so is the first one used
            unused = [first]
            return lambda: unused.pop() if unused else features.new_redis_client()
        url = self.server.config.redis_url
        if url and url.split(":", 1)[0] in REDIS_SCHEMES:
            return lambda: redis_client.connect(url, timeouts)
        return None

    def _key(self, kind: str) -> str:
        # hash-tagged with the channel: on a Redis Cluster the lease and its
        # fencing counter share a slot, as the acquire script needs
        channel = self.server.config.bus.channel
        return f"{{{channel}}}:singleton:{self.name}:{kind}"

    def _drop_client(self) -> None:
        client, self._redis = self._redis, None
        close_quietly(client)

    def _draining(self) -> bool:
        return bool(self.node_state.draining)
