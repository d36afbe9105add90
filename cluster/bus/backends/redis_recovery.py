"""Reads of the recovery stream, on a Redis client of their own.

A replay may read many pages, and every emit of the node waits on the
publisher's lock (measured: other clients stalled 0.4-0.6 s while replays
ran under it), so reads never share the publisher's connection. Each read
returns its default when Redis fails, logged, and reconnects next time.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import redis

from cluster.bus.backends.redis_connection import RedisConnector, close_quietly
from cluster.recovery.routing import ScanPage
from cluster.recovery.shared_window import ScanSharing
from cluster.recovery.stream import OffsetFacts, RecoveryLog, WindowEntry

if TYPE_CHECKING:
    from cluster.bus.runtime import Runtime

#: reads in progress at once (so connections open at most): recoveries of a
#: reconnect storm queue for a turn instead of opening a connection each
#: (each open costs round trips and CPU, and redis-py refuses past 100)
MAX_CONCURRENT_READS = 16
#: seconds a read waits for its turn before it returns its default
READ_TURN_WAIT = 10.0
#: failures after which a read is tried once more on a new client: the
#: stream may have moved (a Sentinel or Redis Cluster failover: our server
#: is a replica now, MOVED or READONLY, or gone) and the first read after
#: the move would otherwise fail, telling a recovering client
#: ``recovered=False`` for nothing. Not a timeout: that is no move, and a
#: second one would double the wait
_MOVED = (redis.exceptions.ConnectionError, redis.exceptions.ReadOnlyError,
          redis.exceptions.AskError)


class RedisRecoveryReader:
    """A :class:`~cluster.bus.transport.RecoveryReader` over one Redis stream.

    :param mark: a sealed bus payload the stream may hold as a marker
        entry (see :meth:`restart_point`).
    """

    def __init__(self, connector: RedisConnector, log: RecoveryLog,
                 logger: logging.Logger, mark: Callable[[], bytes],
                 runtime: Runtime | None = None,
                 count: Callable[[str], Any] = lambda kind: None) -> None:
        self.connector = connector
        self.log = log
        self.logger = logger
        self.mark = mark
        self._client: redis.Redis | None = None
        self._lock = threading.Lock()
        self._turns = threading.BoundedSemaphore(MAX_CONCURRENT_READS)
        #: scans that overlap share one read of the stream (see
        #: cluster.recovery.shared_window); ``count`` is told of each window
        #: made and each scan answered from one (the bus's stats)
        self.sharing = ScanSharing(
            self._window_read, spawn=runtime.spawn if runtime is not None else None,
            sleep=runtime.sleep if runtime is not None else None,
            on_window=lambda: count("recovery_windows"))
        self._count = count

    def _reader(self) -> redis.Redis:
        with self._lock:  # one client, whoever asks first builds it
            client = self._client
            if client is None or self.connector.stale(client):
                self.close()
                client = self._client = self.connector.client()
            return client

    def _forget(self, client: redis.Redis) -> None:
        """The next read makes a new client (to follow a move of the stream,
        or a Redis that came back elsewhere); reads in progress on this one
        finish on it, which closes when the last of them lets it go: closing
        it here cut all of them, and each then closed the next new client,
        over and over under a reconnect storm (measured: 1,900 failed reads
        in one storm)."""
        with self._lock:
            if self._client is client:
                self._client = None

    def close(self) -> None:
        client, self._client = self._client, None
        close_quietly(client)

    def _read(self, read: Callable[..., Any], *args: Any, default: Any) -> Any:
        if not self._turns.acquire(timeout=READ_TURN_WAIT):
            self.logger.warning("recovery log unreadable (no turn among %d reads within "
                                "%g s: the node is overloaded)", MAX_CONCURRENT_READS,
                                READ_TURN_WAIT)
            return default
        try:
            return self._read_now(read, *args, default=default)
        finally:
            self._turns.release()

    def _read_now(self, read: Callable[..., Any], *args: Any, default: Any) -> Any:
        client = None
        try:
            client = self._reader()
            try:
                return self._read_on(client, read, *args)
            except _MOVED:
                # once more, on a client made now (see _MOVED); a read that
                # began before the move ends on the new server too
                self._forget(client)
                client = self._reader()
                return self._read_on(client, read, *args)
        except Exception as exc:
            self.logger.warning("recovery log unreadable (%s: %s)", type(exc).__name__, exc)
            if client is not None:
                self._forget(client)  # reconnect (and rediscover) next time
            return default

    def _read_on(self, client: redis.Redis, read: Callable[..., Any], *args: Any) -> Any:
        try:
            return read(client, *args)
        except redis.exceptions.ResponseError as exc:
            # a key of another type at the stream's name: move it aside
            # (logged and counted there), then read the new stream
            if "WRONGTYPE" not in str(exc) or not self.log.heal(client):
                raise
            return read(client, *args)

    def last_offset(self) -> str | None:
        """The newest offset in the stream (None if unavailable)."""
        return self._read(self.log.last_offset, default=None)  # type: ignore[no-any-return]

    def server_id(self) -> str | None:
        """The ``run_id`` of the Redis server holding the stream (None if
        unavailable): it changes when that server restarts."""
        info = self._read(lambda client: client.info("server"), default=None)
        run_id = info.get("run_id") if isinstance(info, dict) else None
        return str(run_id) if run_id is not None else None

    def restart_point(self) -> str | None:
        """Where a restored session's history starts (None if unavailable):
        see :meth:`cluster.recovery.stream.RecoveryLog.restart_point`."""
        return self._read(self.log.restart_point, self.mark(),  # type: ignore[no-any-return]
                          default=None)

    def readable(self, offset: str) -> bool | None:
        """Whether a replay from ``offset`` can be trusted (nothing trimmed);
        ``None`` when the stream could not be read."""
        found = self._read(self.log.readable, offset, default=None)
        return None if found is None else bool(found)

    def offset_facts(self, offset: str) -> OffsetFacts | None:
        """Whether ``offset`` is an entry of the stream and whether a replay
        from it can be trusted, in one read; ``None`` when the stream could
        not be read."""
        return self._read(self.log.offset_facts, offset,  # type: ignore[no-any-return]
                          default=None)

    def page(self, offset: str, count: int
             ) -> list[tuple[str, dict[str, Any] | None, int]] | None:
        """Up to ``count`` entries after ``offset`` (None: unreadable)."""
        return self._read(self.log.page, offset, count, default=None)  # type: ignore[no-any-return]

    def raw_page(self, offset: str, until: str, count: int
                 ) -> list[tuple[str, bytes | None]] | None:
        """Up to ``count`` raw entries in ``(offset, until]`` (None:
        unreadable): see :meth:`cluster.recovery.stream.RecoveryLog.raw_page`."""
        return self._read(self.log.raw_page, offset, until, count,  # type: ignore[no-any-return]
                          default=None)

    def scan(self, offset: str, namespace: str, sid: str, rooms: Iterable[Any]
             ) -> ScanPage | None:
        """The entries after ``offset`` that may reach ``sid``, one scan
        call's worth (None: unreadable): see
        :meth:`cluster.recovery.stream.RecoveryLog.scan`."""
        members = list(rooms)
        with self.sharing.scanning() as window:
            if window is not None:
                page = window.scan(offset, namespace, sid, members)
                if page is not None:
                    self._count("recovery_shared_scans")
                    return page
            return self._read(self.log.scan, offset, namespace, sid,  # type: ignore[no-any-return]
                              members, default=None)

    def _window_read(self, after: str, until: str | None, count: int
                     ) -> tuple[list[WindowEntry], int] | None:
        return self._read(self.log.window_read, after, until, count,  # type: ignore[no-any-return]
                          default=None)

    def after(self, offset: str) -> list[tuple[str, dict[str, Any]]] | None:
        """Messages logged after ``offset`` (None: cannot recover from it)."""
        return self._read(self.log.after, offset, default=None)  # type: ignore[no-any-return]

