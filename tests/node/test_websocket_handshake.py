"""The node's own websocket handshake and permessage-deflate
(cluster.node.websocket_handshake), as both runtimes' servers use it."""

from __future__ import annotations

import socket
import zlib
from typing import Any

import pytest

from cluster.node.websocket_handshake import (
    HandshakeRefused,
    NodeWebSocket,
    accept_key,
    handshake,
    negotiate_deflate,
    upgrade,
)
from cluster.runtime import UPGRADE_SOCKET

KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455's example


def _environ(**headers: str) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET", "HTTP_UPGRADE": "websocket",
        "HTTP_CONNECTION": "keep-alive, Upgrade", "HTTP_SEC_WEBSOCKET_VERSION": "13",
        "HTTP_SEC_WEBSOCKET_KEY": KEY}
    environ.update(headers)
    return environ


def test_the_accept_key_of_rfc_6455() -> None:
    assert accept_key(KEY) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    response, deflate = handshake(_environ())
    assert response.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in response
    assert response.endswith(b"\r\n\r\n") and deflate is None
    assert b"Sec-WebSocket-Extensions" not in response


@pytest.mark.parametrize(("headers", "status"), [
    ({"HTTP_UPGRADE": "h2c"}, "400 Bad Request"),
    ({"HTTP_CONNECTION": "keep-alive"}, "400 Bad Request"),
    ({"REQUEST_METHOD": "POST"}, "400 Bad Request"),
    ({"HTTP_SEC_WEBSOCKET_KEY": "short"}, "400 Bad Request"),
    ({"HTTP_SEC_WEBSOCKET_KEY": ""}, "400 Bad Request"),
    ({"HTTP_SEC_WEBSOCKET_VERSION": "8"}, "426 Upgrade Required"),
])
def test_what_is_not_a_version_13_handshake_is_refused(headers: dict[str, str],
                                                        status: str) -> None:
    with pytest.raises(HandshakeRefused) as refused:
        handshake(_environ(**headers))
    assert refused.value.status == status
    if status.startswith("426"):
        assert refused.value.headers == [("Sec-WebSocket-Version", "13")]


@pytest.mark.parametrize(("offer", "agreed", "answer"), [
    ("permessage-deflate", {}, "permessage-deflate"),
    # what browsers offer
    ("permessage-deflate; client_max_window_bits", {}, "permessage-deflate"),
    ("permessage-deflate; server_no_context_takeover; client_no_context_takeover",
     {"server_no_context_takeover": True, "client_no_context_takeover": True},
     "permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
    ("permessage-deflate; server_max_window_bits=10",
     {"server_max_window_bits": 10}, "permessage-deflate; server_max_window_bits=10"),
    # the first acceptable offer wins: 8 cannot be honoured by zlib, "x" is unknown
    ("permessage-deflate; server_max_window_bits=8, permessage-deflate; x, "
     "permessage-deflate; server_max_window_bits=12",
     {"server_max_window_bits": 12}, "permessage-deflate; server_max_window_bits=12"),
    ("x-webkit-deflate-frame, permessage-deflate", {}, "permessage-deflate"),
])
def test_deflate_negotiation(offer: str, agreed: dict[str, Any], answer: str) -> None:
    assert negotiate_deflate(offer) == (agreed, answer)


@pytest.mark.parametrize("offer", [
    None, "", "x-webkit-deflate-frame",
    "permessage-deflate; server_max_window_bits",  # a value is required
    "permessage-deflate; client_max_window_bits=16",
    "permessage-deflate; server_no_context_takeover=1",
    "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
])
def test_deflate_offers_the_node_declines(offer: str | None) -> None:
    assert negotiate_deflate(offer) is None


def _inflate(frame: bytes, inflater: Any) -> tuple[int, str]:
    first, length = frame[0], frame[1] & 0x7F
    assert first & 0x40  # RSV1: compressed
    assert frame[1] & 0x80 == 0  # server frames are not masked
    payload = frame[2:] if length < 126 else frame[4:]
    return first & 0x0F, inflater.decompress(payload + b"\x00\x00\xff\xff").decode()


def test_compressed_frames_keep_their_context_unless_told_not_to() -> None:
    websocket = NodeWebSocket(None, {})
    inflater = zlib.decompressobj(-15)
    first = websocket.compressed_frame('42["chat","hello hello hello"]')
    second = websocket.compressed_frame('42["chat","hello hello hello"]')
    assert len(second) < len(first)  # the second refers back to the first
    assert _inflate(first, inflater) == (0x1, '42["chat","hello hello hello"]')
    assert _inflate(second, inflater) == (0x1, '42["chat","hello hello hello"]')
    fresh = NodeWebSocket(None, {"server_no_context_takeover": True,
                                 "server_max_window_bits": 9})
    one, two = fresh.compressed_frame(b"\x01\x02" * 50), fresh.compressed_frame(b"\x01\x02" * 50)
    assert one == two  # each frame from a new context
    assert _inflate(one, zlib.decompressobj(-9))[0] == 0x2  # bytes: a binary frame


def test_upgrade_hands_the_socket_over_after_the_101() -> None:
    left, right = socket.socketpair()
    served: list[Any] = []
    statuses: list[str] = []
    try:
        environ = _environ(HTTP_SEC_WEBSOCKET_EXTENSIONS="permessage-deflate")
        environ[UPGRADE_SOCKET] = lambda: left
        result = upgrade(environ, lambda status, headers: statuses.append(status),
                         served.append)
        # no WSGI response of its own, and not a list: python-engineio would
        # answer a list with 200 OK (an upgrade from polling)
        assert result == () and statuses == []
        (websocket,) = served
        assert websocket.socket is left and websocket.deflate == {}
        head = right.recv(4096)
        assert head.startswith(b"HTTP/1.1 101 ")
        assert b"Sec-WebSocket-Extensions: permessage-deflate\r\n" in head
    finally:
        left.close()
        right.close()


def test_upgrade_refusals_are_plain_responses() -> None:
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        statuses.append(status)

    taken: list[bool] = []
    environ = _environ(HTTP_SEC_WEBSOCKET_VERSION="7")
    environ[UPGRADE_SOCKET] = lambda: taken.append(True)
    assert b"version 13" in b"".join(upgrade(environ, start_response, lambda ws: None))
    # a server that cannot hand sockets over (not the node's): 400, and why
    body = b"".join(upgrade(_environ(), start_response, lambda ws: None))
    assert statuses == ["426 Upgrade Required", "400 Bad Request"]
    assert b"python -m cluster node" in body and taken == []
