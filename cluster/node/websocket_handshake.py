"""The websocket handshake (RFC 6455, 4.2) and permessage-deflate (RFC 7692).

The node does the handshake itself, the same way on eventlet and on gevent:
the runtime's WSGI server hands an upgrade request's socket over
(:data:`cluster.runtime.UPGRADE_SOCKET`), :func:`upgrade` checks the
request, writes the ``101`` response and gives the socket to the node's
websocket transport, which reads it (:mod:`.websocket_reader`) and writes
it (:mod:`.frame_writer`) from then on. Nothing else touches it.

Why not the libraries': gevent's pywsgi has no websocket, and
python-engineio's gevent driver falls back to simple-websocket (a green
thread and a wsproto state machine per connection, neither of which the
node's transport would use); eventlet's websocket object kept per
connection a reference to the request's environ, a semaphore, a deque and
a log string that the node never used. With one handshake of its own, the
transport is the same code on both runtimes.

permessage-deflate is accepted when the client offers it (the node's
``DeclineCompressionMiddleware`` removes the offer unless
``websocket_compression`` is on). The first acceptable offer wins, with
each parameter it asks for; a frame to such a client is compressed with
its own context (:class:`NodeWebSocket`), so it cannot be shared with
other recipients as uncompressed frames are.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import zlib
from collections.abc import Callable, Iterable
from typing import Any

from cluster.node.frames import OPCODE_BINARY, OPCODE_TEXT, frame
from cluster.runtime import UPGRADE_DETACH, UPGRADE_SOCKET

__all__ = ["HandshakeRefused", "NodeWebSocket", "accept_key", "handshake",
           "negotiate_deflate", "upgrade"]

#: RFC 6455's fixed key suffix
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_DEFLATE_TAIL = b"\x00\x00\xff\xff"

logger = logging.getLogger("cluster.transport")
_RSV1 = 0x40


class HandshakeRefused(Exception):
    """The upgrade request is not a websocket handshake the node accepts."""

    def __init__(self, status: str, reason: str,
                 headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.headers = headers or []


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for the client's ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest()).decode()


def _tokens(value: str) -> set[str]:
    return {token.strip().lower() for token in value.split(",")}


def _offers(header: str) -> list[tuple[str, dict[str, str | None]]]:
    """``Sec-WebSocket-Extensions`` as ``(name, {param: value or None})``;
    an offer that repeats a parameter is left out (RFC 7692, 7)."""
    offers = []
    for offer in header.split(","):
        name, *params = (part.strip() for part in offer.split(";"))
        parsed: dict[str, str | None] = {}
        for param in params:
            key, _, value = param.partition("=")
            key = key.strip().lower()
            if key in parsed:
                break
            parsed[key] = value.strip().strip('"') if value else None
        else:
            offers.append((name.lower(), parsed))
    return offers


def negotiate_deflate(header: str | None) -> tuple[dict[str, Any], str] | None:
    """The permessage-deflate parameters agreed on, and the response header
    value, for the client's offer ``header``; ``None``: no acceptable offer.

    The parameters are what :class:`NodeWebSocket` (``server_*``) and
    :class:`~.websocket_reader.WebSocketReader` (``client_*``) read. The
    client's window is never limited (inflating with the largest window
    reads every smaller one), so ``client_max_window_bits`` is not answered.
    """
    if not header:
        return None
    for name, params in _offers(header):
        if name != "permessage-deflate":
            continue
        agreed: dict[str, Any] = {}
        answer = ["permessage-deflate"]
        acceptable = True
        for key, value in params.items():
            if key in ("server_no_context_takeover", "client_no_context_takeover"):
                acceptable = value is None
                agreed[key] = True
                answer.append(key)  # binding on both sides once answered
            elif key == "server_max_window_bits":
                # zlib cannot compress raw deflate with a 256-byte window (8)
                acceptable = value is not None and value.isdigit() and 9 <= int(value) <= 15
                if acceptable:
                    agreed[key] = int(value)  # type: ignore[arg-type]  # checked above
                    answer.append(f"{key}={int(value)}")  # type: ignore[arg-type]
            elif key == "client_max_window_bits":
                acceptable = value is None or (value.isdigit() and 8 <= int(value) <= 15)
            else:
                acceptable = False
            if not acceptable:
                break
        if acceptable:
            return agreed, "; ".join(answer)
    return None


def handshake(environ: dict[str, Any]) -> tuple[bytes, dict[str, Any] | None]:
    """The ``101`` response to a websocket upgrade request, and the
    permessage-deflate parameters agreed on (``None``: uncompressed).

    :raises HandshakeRefused: not a websocket handshake (400), or one of a
        version other than 13 (426, naming the version the node speaks).
    """
    if environ.get("REQUEST_METHOD") != "GET" \
            or environ.get("HTTP_UPGRADE", "").strip().lower() != "websocket" \
            or "upgrade" not in _tokens(environ.get("HTTP_CONNECTION", "")):
        raise HandshakeRefused("400 Bad Request", "not a websocket upgrade request")
    if environ.get("HTTP_SEC_WEBSOCKET_VERSION", "").strip() != "13":
        raise HandshakeRefused("426 Upgrade Required", "websocket version 13 only",
                               [("Sec-WebSocket-Version", "13")])
    key = environ.get("HTTP_SEC_WEBSOCKET_KEY", "").strip()
    try:
        valid_key = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid_key = False
    if not valid_key:
        raise HandshakeRefused("400 Bad Request", "bad Sec-WebSocket-Key")
    lines = [b"HTTP/1.1 101 Switching Protocols", b"Upgrade: websocket",
             b"Connection: Upgrade", b"Sec-WebSocket-Accept: " + accept_key(key).encode()]
    deflate = negotiate_deflate(environ.get("HTTP_SEC_WEBSOCKET_EXTENSIONS"))
    options = None
    if deflate is not None:
        options, answer = deflate
        lines.append(b"Sec-WebSocket-Extensions: " + answer.encode())
    return b"\r\n".join(lines) + b"\r\n\r\n", options


class NodeWebSocket:
    """A connection past the handshake: its socket and its compression.

    :param socket: the connection's green socket.
    :param deflate: the permessage-deflate parameters agreed on, or ``None``.
    :param detach: the server's offer to let the connection outlive the
        request (:data:`cluster.runtime.UPGRADE_DETACH`), or ``None``.
    """

    __slots__ = ("socket", "deflate", "detach", "_compressor")

    def __init__(self, socket: Any, deflate: dict[str, Any] | None = None,
                 detach: Callable[[], Callable[[], None]] | None = None) -> None:
        self.socket = socket
        self.deflate = deflate
        self.detach = detach
        # zlib._Compress: typeshed's name for what zlib.compressobj() returns
        self._compressor: zlib._Compress | None = None

    def compressed_frame(self, payload: str | bytes) -> bytes:
        """A compressed frame of ``payload`` (text for ``str``), made with
        this connection's context."""
        options = self.deflate or {}
        data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
        compressor = self._compressor
        if compressor is None:
            compressor = zlib.compressobj(
                zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED,
                -int(options.get("server_max_window_bits") or zlib.MAX_WBITS))
            if not options.get("server_no_context_takeover"):
                self._compressor = compressor  # context taken over by the next frame
        compressed = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
        if compressed.endswith(_DEFLATE_TAIL):
            compressed = compressed[:-4]
        framed = frame(compressed, OPCODE_TEXT if isinstance(payload, str) else OPCODE_BINARY)
        return bytes((framed[0] | _RSV1,)) + framed[1:]


def upgrade(environ: dict[str, Any], start_response: Callable[..., Any],
            handler: Callable[[NodeWebSocket], Any]) -> Iterable[bytes]:
    """The WSGI side of an upgrade: handshake, then ``handler(websocket)``
    until the connection ends. Refused requests get their status here.

    The result is a tuple, never a list: python-engineio takes a list
    returned by an upgrade from polling for Engine.IO packets and answers
    them with ``200 OK``, on a socket that is no longer HTTP's.
    """
    take_socket = environ.get(UPGRADE_SOCKET)
    if take_socket is None:
        start_response("400 Bad Request", [("Content-Type", "text/plain")])
        return (b"websockets need the node's server: python -m cluster node\n",)
    try:
        response, deflate = handshake(environ)
    except HandshakeRefused as refused:
        start_response(refused.status, [("Connection", "close"), *refused.headers])
        return (str(refused).encode() + b"\n",)
    sock = take_socket()
    try:
        sock.sendall(response)
        handler(NodeWebSocket(sock, deflate, environ.get(UPGRADE_DETACH)))
    except OSError:
        pass  # the client went away: there is no one to answer
    except Exception:
        # the server must not answer on a socket that speaks websocket now
        logger.exception("websocket connection failed")
    return ()
