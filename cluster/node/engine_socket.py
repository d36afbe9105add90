"""What a client sends at the Engine.IO level, decoded strictly.

python-engineio answers a long-polling POST it cannot decode (more than 16
packets, text that is not UTF-8, an unknown packet type, an empty packet)
with ``200 OK`` and a full ERROR traceback in the log, and keeps the session
open: a stranger without a Socket.IO CONNECT could fill the node's disk at
about 2 MB per second. Its websocket loop logs a traceback per undecodable
frame too.

:class:`StrictSocket` is python-engineio's socket with both refused the way
socket.io's engine.io server refuses them (a parse error closes the
transport): the payload is decoded whole before any packet of it is
received, and anything undecodable

- gets ``400 Bad Request`` (a POST) or the connection closed (a websocket);
- ends that Engine.IO session;
- is counted in ``malformed_packets`` and logged by the server at most once
  per window (:meth:`.engine.ClusterEngineServer.malformed_payload`), never
  with a traceback.

The node adopts it for every socket (the websocket transport's
:class:`~.websocket_transport.ClusterSocket` is one too), right after
python-engineio creates it (:func:`cluster.compat.adopt_socket`).
"""

from __future__ import annotations

from typing import Any, NoReturn

from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet
from engineio import payload as eio_payload

from cluster import compat

#: what decoding an Engine.IO payload or packet raises on bad input:
#: UnicodeDecodeError and binascii.Error (bad base64) are ValueErrors, a
#: JSONP body without ``d=`` a KeyError
DECODE_ERRORS = (ValueError, TypeError, KeyError, IndexError, RecursionError)
#: the Engine.IO packets a client sends (OPEN, PING and NOOP come from the
#: server; the upgrade's ``2probe`` is read by the websocket transport itself)
CLIENT_PACKET_TYPES = frozenset({eio_packet.CLOSE, eio_packet.PONG, eio_packet.MESSAGE,
                                 eio_packet.UPGRADE})


class MalformedPayload(eio_exceptions.EngineIOError):  # type: ignore[misc]  # untyped base
    """An Engine.IO payload the node refuses.

    An ``EngineIOError``: python-engineio's ``Server.handle_request`` answers
    one raised by ``handle_post_request`` with 400 and disconnects the session
    (pinned by tests/node/test_engine.py).
    """


def decode_payload(body: bytes) -> list[Any]:
    """The Engine.IO packets of a polling POST body.

    :raises ValueError: (or another of :data:`DECODE_ERRORS`) for an empty
        body, text that is not UTF-8, more packets than python-engineio's
        ``Payload.max_decode_packets`` (16), or a packet that does not decode.
    """
    if not body:
        raise ValueError("an empty payload")  # engine.io clients never send one
    packets: list[Any] = eio_payload.Payload(encoded_payload=body.decode("utf-8")).packets
    return packets


class StrictSocket(compat.EngineSocketSeam):
    """python-engineio's ``Socket`` refusing what it cannot decode (module doc)."""

    sid: str
    server: Any
    closed: bool

    def handle_post_request(self, environ: dict[str, Any]) -> None:
        """Receive a long-polling POST's packets, or refuse the whole body.

        :raises MalformedPayload: the body does not decode, or carries a
            packet type a client may not send; nothing of it was received.
        :raises ContentTooLongError: the body is over ``max_http_buffer_size``
            (python-engineio's own refusal: 400, session closed).
        """
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            self.refuse("polling", "a Content-Length that is not a number")
        if length > self.server.max_http_buffer_size:
            raise eio_exceptions.ContentTooLongError()
        body = environ["wsgi.input"].read(length)
        try:
            packets = decode_payload(body)
        except DECODE_ERRORS as exc:
            self.refuse("polling", str(exc) or type(exc).__name__)
        for pkt in packets:  # all checked before any is received
            self.check_packet_type(pkt, "polling")
        for pkt in packets:
            if self.closed:  # a CLOSE packet, or a malformed message, ended it
                return
            self.receive_client_packet(pkt, "polling")

    def decode_client_packet(self, data: str | bytes, transport: str) -> Any:
        """The Engine.IO packet of one websocket message.

        :raises MalformedPayload: it does not decode (refused, counted).
        """
        try:
            return eio_packet.Packet(encoded_packet=data)
        except DECODE_ERRORS as exc:
            self.refuse(transport, str(exc) or type(exc).__name__)

    def check_packet_type(self, pkt: Any, transport: str) -> None:
        """Refuse a packet type a client may not send (OPEN, PING, NOOP,
        anything past 6), which python-engineio ignores on the websocket.

        :raises MalformedPayload: that packet type (refused, counted).
        """
        if pkt.packet_type not in CLIENT_PACKET_TYPES:
            self.refuse(transport, f"packet type {pkt.packet_type} from a client")

    def receive_client_packet(self, pkt: Any, transport: str) -> None:
        """python-engineio's ``receive`` of a packet whose type was checked.

        :raises MalformedPayload: python-engineio did not know the type either.
        :raises SocketIsClosedError: the node was paused since this
            connection opened (see :mod:`cluster.node.pause_fence`): the
            packet is not received and the connection is closed.
        """
        fence = getattr(self.server, "pause_fence", None)
        if fence is not None and fence.fenced(getattr(self, "fence_generation", 0)):
            self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)
            raise eio_exceptions.SocketIsClosedError()
        try:
            self.receive(pkt)
        except eio_exceptions.UnknownPacketError:
            self.refuse(transport, f"packet type {pkt.packet_type} from a client")

    def refuse(self, transport: str, reason: str) -> NoReturn:
        """Count and log (through the server) what this client sent, close
        the session and raise :class:`MalformedPayload`.

        Closed here without waiting: python-engineio's own disconnect of a
        polling session waits until the client has polled what is queued,
        which a client that sent garbage may never do (the POST would hang).
        """
        report = getattr(self.server, "malformed_payload", None)
        if callable(report):
            report(self.sid, transport, reason)
        self.close(wait=False, abort=False, reason=self.server.reason.TRANSPORT_ERROR)
        raise MalformedPayload(reason)
