"""A client's malformed packet apart from an application's exception.

Every message a client sends goes through two steps of
:meth:`cluster.node.server.ClusterServer.handle_eio_message`:

1. :func:`decode_message` turns the Engine.IO message into a complete
   Socket.IO packet (binary attachments collected) and checks its shape.
   Anything it raises is the client's fault: the packet is *malformed*,
   counted in ``malformed_packets``, and the connection is closed, as the
   reference server does on a parse error. An EVENT named after one of
   the :data:`RESERVED_EVENTS` is malformed too, as in socket.io-parser:
   dispatched, ``"disconnect"`` would run the application's disconnect
   handler (and end the connection's session while it is still open), and
   ``"connect"`` would re-run the connect handler with arguments the client
   chose.
2. :func:`dispatch_packet` hands the packet to python-socketio's handlers,
   which run the application's code. An exception from there is not the
   client's fault: it goes to the application's ``on_error`` /
   ``on_error_default`` handlers (or a ``Namespace``'s ``error`` method) as
   in Flask-SocketIO, and when none handles it :func:`report_handler_error`
   logs it with its traceback and counts it in ``handler_errors``; the
   connection and the node keep serving. A connect handler that fails that
   way refuses the connection with :data:`CONNECT_FAILED` (no details of the
   exception reach the client).

The in-process test client (:mod:`cluster.flask_integration.testing`) gets the exception
raised instead, as Flask-SocketIO's test client does.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from socketio import packet as sio_packet

from cluster.compat import pending_binary_packets

if TYPE_CHECKING:
    from cluster.node.server import ClusterServer

logger = logging.getLogger("cluster.node.server")

#: what decoding raises on a packet that cannot be what it claims
#: (RecursionError: JSON nested too deep for the parser)
MALFORMED = (ValueError, TypeError, KeyError, IndexError, RecursionError)

#: the CONNECT_ERROR message when the connect handler raised
CONNECT_FAILED = "Internal server error"

#: event names a client may not send (socket.io-parser's RESERVED_EVENTS):
#: they name the lifecycle events of the server's own handlers
RESERVED_EVENTS = frozenset({"connect", "connect_error", "disconnect", "disconnecting",
                             "newListener", "removeListener"})

_BINARY = (sio_packet.BINARY_EVENT, sio_packet.BINARY_ACK)
_PLAIN = (sio_packet.CONNECT, sio_packet.DISCONNECT, sio_packet.EVENT, sio_packet.ACK)


def decode_message(server: ClusterServer, eio_sid: str, data: Any) -> Any:
    """The packet ``data`` completes, or ``None`` while attachments are due.

    :raises ValueError: (or another of :data:`MALFORMED`) when ``data`` is not
        a well-formed packet a client may send.
    """
    waiting = pending_binary_packets(server)
    pending = waiting.get(eio_sid)
    if pending is not None:
        if not pending.add_attachment(data):
            return None
        del waiting[eio_sid]
        pkt = pending
    else:
        pkt = server.packet_class(encoded_packet=data)
        kind = pkt.packet_type
        if kind in _BINARY:
            if not server.manager.sid_from_eio_sid(eio_sid, pkt.namespace or "/"):
                raise ValueError("a binary packet for a namespace the client is not in")
            waiting[eio_sid] = pkt
            return None
        if kind not in _PLAIN:
            raise ValueError(f"a client may not send packets of type {kind}")
    if pkt.packet_type in (sio_packet.EVENT, sio_packet.BINARY_EVENT):
        if not isinstance(pkt.data, list) or not pkt.data or not isinstance(pkt.data[0], str):
            raise ValueError("an event packet must be a list starting with the event name")
        if pkt.data[0] in RESERVED_EVENTS:
            raise ValueError(f"the event name {pkt.data[0]!r} is reserved")
    elif pkt.packet_type in (sio_packet.ACK, sio_packet.BINARY_ACK):
        if not isinstance(pkt.data, list):
            raise ValueError("an ack packet must carry a list of arguments")
    return pkt


def dispatch_packet(server: ClusterServer, eio_sid: str, pkt: Any) -> None:
    """Run the handlers of a decoded packet (python-socketio's dispatch)."""
    kind = pkt.packet_type
    if kind == sio_packet.CONNECT:
        server.handle_connect(eio_sid, pkt.namespace, pkt.data)
    elif kind == sio_packet.DISCONNECT:
        server.handle_disconnect(eio_sid, pkt.namespace, server.reason.CLIENT_DISCONNECT)
    elif kind in (sio_packet.EVENT, sio_packet.BINARY_EVENT):
        server.handle_event(eio_sid, pkt.namespace, pkt.id, pkt.data)
    else:
        server.handle_ack(eio_sid, pkt.namespace, pkt.id, pkt.data)


def describe(pkt: Any) -> str:
    """A packet in a log line: its kind and, for events, the event name."""
    if pkt.packet_type in (sio_packet.EVENT, sio_packet.BINARY_EVENT):
        return f"event {pkt.data[0]!r}"
    names = {sio_packet.CONNECT: "CONNECT", sio_packet.DISCONNECT: "DISCONNECT"}
    return names.get(pkt.packet_type, "ack")


def report_handler_error(server: ClusterServer, exc: BaseException, eio_sid: str | None,
                         what: str, namespace: str | None) -> None:
    """Log an exception no application error handler took, and count it."""
    server.counters["handler_errors"] += 1
    # a client can make a handler fail at will (wrong arguments): one
    # traceback per exception type per window, the rest counted
    kind = f"handler_error:{type(exc).__module__}.{type(exc).__qualname__}"
    server.quiet_log.log(
        logging.ERROR, kind,
        "Unhandled exception in the application's handler of %s on namespace %s "
        "(connection %s); the node keeps serving. Register @socketio.on_error() "
        "or on_error_default to handle it. handler_errors counts these; one "
        "traceback per exception type per window.", what[:100], (namespace or "/")[:100],
        (eio_sid or "?")[:8],
        exc_info=(type(exc), exc, exc.__traceback__))
