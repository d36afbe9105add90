"""Group commit: the Redis writes of concurrent connections in one round trip.

Every accepted connection creates its session with its first resume id
(:meth:`.redis_store.RedisSessionStore.create_resumable`), or renews a
resumed one's lease with its re-armed id, and the node writes its
connection record; every join or leave writes its rooms set
(``cluster.sessions.connection_state``). Each is a pipeline of two or three
commands. A resume also claims its id (a pointer read, the claim, the
pointer's new TTL: three steps, each batched) and loads its session and
record, batched the same way. Under a burst of connects (a deploy, a reconnect storm after a
node crash) each of those pipelines was a round trip of its own, and a
round trip costs the node far more than its commands: redis-py's
connection checkout and reply parsing, and the green thread's wait in the
hub, 150-200 µs of CPU on eventlet (py-spy, ``benchmarks/connect_rate.py``:
these writes were a quarter of the node's CPU per connect and join).

:class:`WriteBatches` runs them as a group commit instead: a write is queued,
and one green thread at a time sends everything queued as one pipeline and
hands each caller its own replies. While that round trip is out, the
writes of the other connections queue behind it, so the batch grows with
the load and a lone write waits for nothing but its own round trip.

Each caller still gets exactly its own replies (errors as values, as a
pipeline executed with ``raise_on_error=False`` gives them) or the exception
its own round trip raised: when a batch fails as a whole, each of its writes
is sent again alone, so one unreachable shard of a Redis Cluster fails only
the writes bound for it. The writes are idempotent operations on one
session's keys each (scripts included: each re-checks and re-sets what it
finds; a claim run again with its token is granted again), and a session's
writes are never in flight together,
so nothing changes in what Redis holds, only in how many round trips carry
it. On Redis Cluster the client's cluster pipeline splits a batch per shard.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from session_store.exceptions import SessionStoreError

__all__ = ["Command", "WriteBatches", "run_pipeline"]


#: one pipelined command: the client method's name, its arguments, its keywords
Command = tuple[str, tuple[Any, ...], dict[str, Any]]

#: commands sent in one round trip at most (a burst of 10,000 connects goes
#: out in rounds of this size rather than as one huge pipeline)
DEFAULT_MAX_COMMANDS = 1024
#: seconds a caller waits for its batch beyond the client's own timeouts
#: before giving up on it (the batch's green thread died)
WAIT_MARGIN = 5.0


def run_pipeline(redis_client: Any, commands: Sequence[Command]) -> list[Any]:
    """``commands`` as one non-transactional pipeline of ``redis_client``:
    their replies, errors as values (the round trip without a batch)."""
    pipe = redis_client.pipeline(transaction=False)
    for name, args, kwargs in commands:
        getattr(pipe, name)(*args, **kwargs)
    return list(pipe.execute(raise_on_error=False))


class _Write:
    """One caller's commands and, once its batch ran, its replies."""

    __slots__ = ("commands", "done", "replies", "failure")

    def __init__(self, commands: Sequence[Command], done: Any) -> None:
        self.commands = commands
        self.done = done
        self.replies: list[Any] = []
        self.failure: BaseException | None = None


class WriteBatches:
    """Sends the writes queued by concurrent callers as one pipeline.

    :param redis_client: the session store's client (a cluster client too).
    :param spawn: starts a green thread (the Socket.IO server's
        ``start_background_task``).
    :param event: makes a green event (python-engineio's ``create_event``).
    :param max_commands: commands per round trip at most (default
        :data:`DEFAULT_MAX_COMMANDS`).
    :param wait_seconds: how long a caller waits for its batch before it
        raises :class:`~session_store.SessionStoreError` (default: the
        client's socket timeout, or 10 s, plus :data:`WAIT_MARGIN`).
    """

    def __init__(self, redis_client: Any, spawn: Callable[..., Any], event: Callable[[], Any],
                 *, max_commands: int = DEFAULT_MAX_COMMANDS,
                 wait_seconds: float | None = None) -> None:
        self.redis = redis_client
        self._spawn = spawn
        self._event = event
        self.max_commands = max(1, int(max_commands))
        if wait_seconds is None:
            kwargs = getattr(getattr(redis_client, "connection_pool", None),
                             "connection_kwargs", {})
            wait_seconds = float(kwargs.get("socket_timeout") or 10.0) + WAIT_MARGIN
        self.wait_seconds = wait_seconds
        self._lock = threading.Lock()
        self._queued: deque[_Write] = deque()
        self._sending = False
        #: round trips made, and the writes they carried (for the metrics)
        self.round_trips = 0
        self.writes = 0

    def execute(self, commands: Sequence[Command]) -> list[Any]:
        """The replies of ``commands``, in order, errors as values.

        :raises Exception: whatever the round trip that carried them raised
            (a connection error, a timeout...).
        :raises SessionStoreError: no answer within ``wait_seconds``.
        """
        write = _Write(commands, self._event())
        with self._lock:
            self._queued.append(write)
            start = not self._sending
            self._sending = True
        if start:
            self._spawn(self._send_all)
        if not write.done.wait(timeout=self.wait_seconds):
            raise SessionStoreError(
                f"no reply from Redis within {self.wait_seconds:g} s for a batched write")
        if write.failure is not None:
            raise write.failure
        return write.replies

    def _pipeline(self, batch: list[_Write]) -> list[Any]:
        return run_pipeline(self.redis, [command for write in batch
                                         for command in write.commands])

    def _take(self) -> list[_Write]:
        with self._lock:
            taken: list[_Write] = []
            count = 0
            while self._queued and (not taken or
                                    count + len(self._queued[0].commands) <= self.max_commands):
                write = self._queued.popleft()
                taken.append(write)
                count += len(write.commands)
            if not taken:
                self._sending = False
            return taken

    def _send_all(self) -> None:
        try:
            while True:
                batch = self._take()
                if not batch:
                    return
                self._send(batch)
        except BaseException:
            # never leave the queue without a sender: the next caller starts one
            with self._lock:
                self._sending = False
            raise

    def _send(self, batch: list[_Write]) -> None:
        try:
            replies = self._pipeline(batch)
        except Exception as exc:  # noqa: BLE001 - told to the callers below
            if len(batch) == 1:
                batch[0].failure = exc
                batch[0].done.set()
                return
            # one shard of a Redis Cluster failing over (say) must not fail
            # the writes bound for the others: each write alone, once (they
            # are idempotent, and one session's writes are never in flight
            # together, so a write applied before the failure is harmless)
            for write in batch:
                self._send([write])
            return
        self.round_trips += 1
        self.writes += len(batch)
        at = 0
        for write in batch:
            count = len(write.commands)
            write.replies = list(replies[at:at + count])
            at += count
            write.done.set()
