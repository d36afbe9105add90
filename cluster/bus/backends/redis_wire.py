"""The bus's two busy Redis connections, spoken to directly in RESP.

Per emit a node sends one pipeline (the outbox's publish or recovery
script) and reads its own message back from the subscription. Through
redis-py those two cost more than anything else the emit does in Python
(a profile of a node emitting 800 times a second to a room of ten: 18% of
its samples in the publisher's pipeline, 14% in the subscriber's
``get_message``): a pool checkout and check-in with two ``getpid`` calls,
retry wrappers, a parser built for every reply type, and on the subscriber
a readiness probe (a failed ``recv``) per message.

:class:`WireConnection` keeps redis-py for what it does well, opening the
connection (TCP, TLS, unix socket, ``AUTH``, ``HELLO``, client name: every
option the bus was given), then writes commands and parses replies itself:

- one ``recv`` of up to :data:`READ_SIZE` bytes per wake-up; every complete
  reply in it is parsed from the buffer with no further system call;
- only the reply types the bus gets are parsed: bulk and simple strings,
  integers, nulls, errors, arrays and RESP3 pushes;
- an error reply becomes the exception redis-py would raise for the cases
  the bus tells apart (``NOSCRIPT``, ``READONLY``), a
  ``redis.exceptions.ResponseError`` with Redis's text otherwise.

The subscriber is :class:`~.redis_pushes.PushConnection`; the publisher's
pipelines are :class:`WirePipeline`.
"""
from __future__ import annotations

import os
import threading
import time
import weakref
from typing import Any

import redis

__all__ = ["INCOMPLETE", "MAX_BULK", "READ_SIZE", "ProtocolError", "WireConnection",
           "WirePipeline", "encode_command", "parse_reply"]

#: bytes asked of the kernel per read (a burst of small replies in one)
READ_SIZE = 256 * 1024
#: a reply line (type byte, then a length, a number, an error's or a
#: simple string's text, then CRLF) longer than this is not what Redis sends
MAX_LINE = 8192
#: bulk strings longer than this are refused (a bus message is capped at
#: 8 MiB by the manager; Redis's own cap on a bulk string is 512 MB)
MAX_BULK = 64 * 1024 * 1024

#: what :func:`parse_reply` returns for a reply not all read yet
INCOMPLETE = object()

#: error prefixes the bus tells apart, and the class redis-py raises for each
_ERRORS = {
    "NOSCRIPT": redis.exceptions.NoScriptError,
    "READONLY": redis.exceptions.ReadOnlyError,
}


class ProtocolError(redis.exceptions.ConnectionError):
    """What Redis sent is not a reply the bus asked for: the connection is
    dropped (and a new one made)."""


def encode_command(parts: tuple[Any, ...]) -> bytes:
    """One command in RESP: an array of bulk strings (``str`` as UTF-8,
    numbers in decimal, as redis-py writes them)."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        if isinstance(part, str):
            data = part.encode()
        elif isinstance(part, (bytes, bytearray, memoryview)):
            data = bytes(part)
        elif isinstance(part, (int, float)) and not isinstance(part, bool):
            data = repr(part).encode()
        else:
            raise redis.exceptions.DataError(
                f"invalid input of type {type(part).__name__!r} in a Redis command")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _number(text: bytes) -> int:
    try:
        return int(text)
    except ValueError:
        raise ProtocolError(f"not a number in a Redis reply: {text!r:.40}") from None


def _error(text: str) -> redis.exceptions.ResponseError:
    cls = _ERRORS.get(text.split(" ", 1)[0], redis.exceptions.ResponseError)
    return cls(text)


def parse_reply(buf: bytearray, pos: int) -> tuple[Any, int]:
    """One RESP value from ``buf`` at ``pos``: ``(value, next_pos)``, or
    ``(INCOMPLETE, pos)`` when the buffer does not hold all of it yet.
    An error reply is returned (not raised) as its exception.

    :raises ProtocolError: for anything the bus never gets from Redis.
    """
    end = buf.find(b"\r\n", pos, pos + MAX_LINE)
    if end < 0:
        if len(buf) - pos >= MAX_LINE:
            raise ProtocolError("a Redis reply line is too long")
        return INCOMPLETE, pos
    kind = buf[pos]
    head = bytes(buf[pos + 1:end])
    after = end + 2
    if kind == 0x24:  # $ bulk string
        size = _number(head)
        if size < 0:
            return None, after
        if size > MAX_BULK:
            raise ProtocolError(f"a Redis bulk string of {size} bytes")
        stop = after + size
        if len(buf) < stop + 2:
            return INCOMPLETE, pos
        return bytes(buf[after:stop]), stop + 2
    if kind in (0x2A, 0x3E):  # * array, > push (RESP3)
        count = _number(head)
        if count < 0:
            return None, after
        items = []
        for _ in range(count):
            item, after = parse_reply(buf, after)
            if item is INCOMPLETE:
                return INCOMPLETE, pos
            items.append(item)
        return items, after
    if kind == 0x3A:  # : integer
        return _number(head), after
    if kind == 0x2B:  # + simple string
        return head, after
    if kind == 0x2D:  # - error
        return _error(head.decode("utf-8", "replace")), after
    if kind == 0x5F:  # _ null (RESP3)
        return None, after
    raise ProtocolError(f"unexpected Redis reply type {chr(kind)!r}")


class WireConnection:
    """A connection opened by redis-py, written and read here.

    :param client: the redis-py client whose connection options to use
        (its pool makes the connection; nothing else of it is used).
    :param closed_message: what a :class:`ConnectionError` says when Redis
        closes the connection (its likely causes, for the log).

    One task reads (:meth:`next_reply`); any task may write, each command
    whole, under a lock.
    """

    def __init__(self, client: redis.Redis,
                 closed_message: str = "Redis closed the connection") -> None:
        self._connection = client.connection_pool.make_connection()
        self._connection.connect()  # type: ignore[no-untyped-call,unused-ignore]
        self._sock: Any = connected_socket(self._connection)
        #: the read timeout the bus's options set (``socket_timeout``)
        self.timeout: float | None = self._sock.gettimeout()
        self._closed_message = closed_message
        self._buffer = bytearray()
        self._pos = 0
        self._write_lock = threading.Lock()
        #: held by a pipeline from its write to its last reply, so two
        #: callers' replies never interleave
        self.exchange_lock = threading.Lock()
        #: a read or write failed, or the process forked: the connection is
        #: of no further use (here)
        self.broken = False
        #: when bytes last arrived (monotonic seconds): for a health check
        #: of a connection that carries no heartbeats
        self.received_at = time.monotonic()
        _OPEN.add(self)

    def fileno(self) -> int:
        """The socket's descriptor (to wait on several connections at once)."""
        return int(self._sock.fileno())

    def send(self, data: bytes) -> None:
        """Write ``data`` (whole commands) on the connection."""
        try:
            with self._write_lock:
                self._sock.sendall(data)
        except OSError as exc:
            self.broken = True
            raise redis.exceptions.ConnectionError(
                f"writing to Redis failed: {exc}") from exc

    def next_reply(self, timeout: float | None) -> Any:
        """The next reply: from what was read already, or else from reads
        of the socket waiting up to ``timeout`` seconds each (0: do not
        read; None: the connection's own timeout). :data:`INCOMPLETE`
        when none is complete in that time.

        :raises ConnectionError: the connection broke, or Redis sent
            something the bus never gets.
        """
        while True:
            if self._pos < len(self._buffer):
                try:
                    value, pos = parse_reply(self._buffer, self._pos)
                except ProtocolError:
                    self.broken = True
                    raise
                if value is not INCOMPLETE:
                    self._pos = pos
                    if pos == len(self._buffer):
                        self._buffer.clear()
                        self._pos = 0
                    return value
            if timeout is not None and timeout <= 0:
                return INCOMPLETE
            if not self._read(self.timeout if timeout is None else timeout):
                return INCOMPLETE

    def fill(self) -> bool:
        """Read what the socket holds now, without waiting (after a wait for
        several connections said this one is readable); False: nothing."""
        return self._read(0)

    def _read(self, timeout: float | None) -> bool:
        """One read into the buffer; False when nothing came in ``timeout``."""
        if self._pos:
            del self._buffer[:self._pos]
            self._pos = 0
        self._sock.settimeout(timeout)
        try:
            chunk = self._sock.recv(READ_SIZE)
        except (TimeoutError, BlockingIOError):
            return False
        except OSError as exc:
            self.broken = True
            raise redis.exceptions.ConnectionError(f"reading from Redis failed: {exc}") from exc
        if not chunk:
            self.broken = True
            raise redis.exceptions.ConnectionError(self._closed_message)
        self._buffer += chunk
        self.received_at = time.monotonic()
        return True

    def close(self) -> None:
        """Close the connection (safe on a broken one)."""
        self.broken = True
        try:
            self._connection.disconnect()  # type: ignore[no-untyped-call,unused-ignore]
        except Exception:  # noqa: S110 - broken already: nothing to release
            pass


class WirePipeline:
    """Commands queued, then sent in one write and their replies read: the
    part of redis-py's ``Pipeline`` the bus's publisher uses
    (``execute(raise_on_error=False)``: errors in place).

    A read that times out or fails leaves the connection :attr:`~WireConnection.broken`
    (replies may still be on their way): the caller makes a new one.
    """

    def __init__(self, wire: WireConnection) -> None:
        self._wire = wire
        self._commands: list[bytes] = []

    def execute_command(self, *parts: Any) -> WirePipeline:
        self._commands.append(encode_command(parts))
        return self

    def publish(self, channel: str, message: bytes) -> WirePipeline:
        return self.execute_command(b"PUBLISH", channel, message)

    def spublish(self, channel: str, message: bytes) -> WirePipeline:
        return self.execute_command(b"SPUBLISH", channel, message)

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> WirePipeline:
        return self.execute_command(b"EVALSHA", sha, numkeys, *keys_and_args)

    def execute(self, raise_on_error: bool = False) -> list[Any]:
        """Send the queued commands and return their replies in order, an
        error reply in place as its exception (``raise_on_error``: the
        first one raised instead)."""
        commands, self._commands = self._commands, []
        if not commands:
            return []
        wire = self._wire
        replies = []
        with wire.exchange_lock:
            wire.send(b"".join(commands))
            for _ in commands:
                reply = wire.next_reply(None)
                if reply is INCOMPLETE:
                    wire.broken = True
                    raise redis.exceptions.TimeoutError(
                        f"Redis did not answer a pipeline within {wire.timeout} s")
                replies.append(reply)
        if raise_on_error:
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        return replies


#: every connection of this process, so that a forked child stops using them
_OPEN: weakref.WeakSet[WireConnection] = weakref.WeakSet()


def _forked() -> None:
    """In a forked child (a Celery prefork worker given an emitter that
    had published in its parent), a connection inherited from the parent
    shares the parent's socket: replies would go to whichever process
    reads first. Each is marked broken, so its user makes a new one; the
    inherited one is let go, and redis-py closes only this process's copy
    of its socket (it shuts a socket down only in the process that
    connected it). redis-py checks its pools' pid on every command for the
    same reason; a fork hook costs nothing per command."""
    for wire in list(_OPEN):
        wire.broken = True


os.register_at_fork(after_in_child=_forked)


def connected_socket(connection: Any) -> Any:
    """The socket of a connected redis-py ``Connection`` (its ``_sock``: the
    one private name of redis-py this package reads; present from 5.0 to
    8.x, the versions ``pyproject.toml`` allows)."""
    sock = getattr(connection, "_sock", None)
    if sock is None:
        raise redis.exceptions.ConnectionError("the Redis connection has no socket")
    return sock
