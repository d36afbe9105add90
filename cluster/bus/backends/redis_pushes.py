"""The bus subscriber's connection, read in bulk rather than message by message.

redis-py's ``PubSub.get_message`` costs about as much per message as the
rest of the listener together: each call checks the socket for readiness
(a ``recv`` that fails with ``EAGAIN`` when nothing is there, three per
emit in a strace of a busy node), goes through a retry wrapper, a lock and
a RESP parser built for every reply type, and builds a dict. A profile of
a node receiving its own emits back (one node, a room of ten, 800 emits/s)
put 14% of its Python samples there, for messages it then drops by their
header.

:class:`PushConnection` keeps redis-py for what it does well, opening the
connection (TCP, TLS, unix socket, ``AUTH``, ``HELLO``, client name: the
options the bus was given), and reads the subscription itself:

- one ``recv`` of up to :data:`READ_SIZE` bytes per wake-up; every complete
  message in it is parsed from the buffer with no further system call, so
  a burst costs one read;
- only the shapes Redis sends to a subscriber are parsed: arrays (``*``,
  RESP3 pushes ``>``) of bulk strings and integers, and simple replies and
  errors;
- a message is a ``(kind, channel, data)`` tuple of bytes.

redis-py re-subscribes on its own when its pub/sub connection breaks, so
what was published meanwhile was lost without a word; here a broken
connection raises :class:`ConnectionError` and the listener resubscribes
and reports the outage (logged, counted, the catch-up started).
"""
from __future__ import annotations

import threading
from typing import Any

import redis

__all__ = ["INCOMPLETE", "PushConnection", "PushMessage", "ProtocolError", "READ_SIZE",
           "parse_reply"]

#: bytes asked of the kernel per read (a burst of small messages in one)
READ_SIZE = 256 * 1024
#: a reply line (type byte, length or value, CRLF) longer than this is not RESP
_MAX_LINE = 64
#: bulk strings longer than this are refused (a bus message is capped at
#: 8 MiB by the manager; Redis's own cap on a bulk string is 512 MB)
MAX_BULK = 64 * 1024 * 1024

#: ``(kind, channel, data)``: kind ``b"message"``, ``b"smessage"``,
#: ``b"subscribe"``..., channel bytes, data bytes (or an int: the
#: subscription count of a confirmation)
PushMessage = tuple[bytes, bytes, Any]

#: what :func:`parse_reply` returns for a reply not all read yet
INCOMPLETE = object()

CLOSED_BY_REDIS = (
    "Redis closed the subscriber connection. If this repeats, this node reads "
    "the bus too slowly, or bursts of large messages pass Redis's "
    "client-output-buffer-limit for pubsub (32 MB by default): lower "
    "max_message_bytes or raise that limit")


class ProtocolError(redis.exceptions.ConnectionError):
    """What Redis sent is not a reply a subscriber gets: the connection is
    dropped (and the listener subscribes again on a new one)."""


def _encode(parts: tuple[bytes | str, ...]) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _number(text: bytes) -> int:
    try:
        return int(text)
    except ValueError:
        raise ProtocolError(f"not a number in a Redis reply: {text!r:.40}") from None


def parse_reply(buf: bytearray, pos: int) -> tuple[Any, int]:
    """One RESP value from ``buf`` at ``pos``: ``(value, next_pos)``, or
    ``(INCOMPLETE, pos)`` when the buffer does not hold all of it yet."""
    end = buf.find(b"\r\n", pos, pos + _MAX_LINE)
    if end < 0:
        if len(buf) - pos >= _MAX_LINE:
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
        return redis.exceptions.ResponseError(head.decode("utf-8", "replace")), after
    if kind == 0x5F:  # _ null (RESP3)
        return None, after
    raise ProtocolError(f"unexpected Redis reply type {chr(kind)!r} for a subscriber")


class PushConnection:
    """A subscriber connection opened by redis-py and read here.

    :param client: the redis-py client whose connection options to use
        (its pool makes the connection; nothing else of it is used).

    :meth:`get_message` is called by one task (the listener);
    :meth:`subscribe` and the other commands may come from any task, and are
    written whole under a lock.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._connection = client.connection_pool.make_connection()
        self._connection.connect()  # type: ignore[no-untyped-call,unused-ignore]
        self._sock: Any = connected_socket(self._connection)
        self._buffer = bytearray()
        self._pos = 0
        self._write_lock = threading.Lock()
        self.closed = False

    # -- commands ---------------------------------------------------------------
    def _send(self, *parts: bytes | str) -> None:
        data = _encode(parts)
        with self._write_lock:
            self._sock.sendall(data)

    def subscribe(self, *channels: str) -> None:
        if channels:
            self._send(b"SUBSCRIBE", *channels)

    def unsubscribe(self, *channels: str) -> None:
        if channels:
            self._send(b"UNSUBSCRIBE", *channels)

    def ssubscribe(self, *channels: str) -> None:
        if channels:
            self._send(b"SSUBSCRIBE", *channels)

    def sunsubscribe(self, *channels: str) -> None:
        if channels:
            self._send(b"SUNSUBSCRIBE", *channels)

    def ping(self) -> None:
        self._send(b"PING")

    # -- reading ----------------------------------------------------------------
    def get_message(self, timeout: float) -> PushMessage | None:
        """The next message: from what was read already, or, with a
        ``timeout`` above 0, from one read of the socket waiting up to
        that many seconds. None when there is none (yet).

        :raises ConnectionError: the connection broke, or Redis sent
            something a subscriber never gets.
        :raises redis.exceptions.ResponseError: Redis refused a command
            (a ``MOVED`` to a ``SSUBSCRIBE`` whose slot moved).
        """
        while True:
            value, pos = parse_reply(self._buffer, self._pos) if self._pos < len(self._buffer) \
                else (INCOMPLETE, self._pos)
            if value is not INCOMPLETE:
                self._pos = pos
                if pos == len(self._buffer):
                    self._buffer.clear()
                    self._pos = 0
                message = self._message(value)
                if message is not None:
                    return message
                continue
            if timeout <= 0:
                return None
            if not self._read(timeout):
                return None

    def _read(self, timeout: float) -> bool:
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
            raise redis.exceptions.ConnectionError(
                f"the Redis subscriber connection broke: {exc}") from exc
        if not chunk:
            raise redis.exceptions.ConnectionError(CLOSED_BY_REDIS)
        self._buffer += chunk
        return True

    @staticmethod
    def _message(value: Any) -> PushMessage | None:
        """A parsed reply as a message; None for one that is not (the
        reply to a PING)."""
        if isinstance(value, Exception):
            raise value
        if isinstance(value, list) and len(value) >= 3 and isinstance(value[0], bytes):
            return value[0], value[1], value[2]
        if isinstance(value, list) and value and value[0] in (b"pong", b"PONG"):
            return None
        if value in (b"PONG", b"OK"):
            return None
        raise ProtocolError(f"unexpected reply on the Redis subscriber connection: {value!r:.80}")

    def close(self) -> None:
        """Close the connection (safe on a broken one)."""
        self.closed = True
        try:
            self._connection.disconnect()  # type: ignore[no-untyped-call,unused-ignore]
        except Exception:  # noqa: S110 - broken already: nothing to release
            pass


def connected_socket(connection: Any) -> Any:
    """The socket of a connected redis-py ``Connection`` (its ``_sock``: the
    one private name of redis-py this package reads; present from 5.0 to
    8.x, the versions ``pyproject.toml`` allows)."""
    sock = getattr(connection, "_sock", None)
    if sock is None:
        raise redis.exceptions.ConnectionError("the Redis connection has no socket")
    return sock
