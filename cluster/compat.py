"""Every use of a private name of python-engineio or eventlet's websocket.

These libraries offer no public seam for what the node's websocket
transport does (write frames itself, share one frame between recipients),
so the few places where it reaches inside them are gathered here, each
with the reason, and ``tests/cluster/test_compat.py`` fails when an upgrade
moves one of them.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import engineio
import engineio.socket


class EngineSocketSeam(engineio.socket.Socket):
    """python-engineio's socket with its private hooks under public names.

    python-engineio picks a transport's upgrade by name
    (``getattr(self, "_upgrade_" + transport)``); a subclass overrides
    :meth:`upgrade_to_websocket` instead.
    """

    def _upgrade_websocket(self, environ: dict[str, Any], start_response: Any) -> Any:
        return self.upgrade_to_websocket(environ, start_response)

    def upgrade_to_websocket(self, environ: dict[str, Any], start_response: Any) -> Any:
        return super()._upgrade_websocket(environ, start_response)

    def trigger_disconnect(self, reason: Any) -> None:
        """Run the server's disconnect handlers for this socket, now."""
        self.server._trigger_event("disconnect", self.sid, reason, run_async=False)

    def bad_request(self) -> Any:
        return self.server._bad_request()


class EngineServerSeam(engineio.Server):
    """python-engineio's server, told when it has created a socket.

    ``Server._handle_connect`` creates the socket, queues the OPEN packet
    and then fires the ``connect`` event synchronously, before any
    transport serves the socket: :meth:`socket_created` runs there.
    """

    def _trigger_event(self, event: str, *args: Any, **kwargs: Any) -> Any:
        if event == "connect" and args:
            eio_socket = self.sockets.get(args[0])
            if eio_socket is not None:
                self.socket_created(eio_socket)
        return super()._trigger_event(event, *args, **kwargs)

    def socket_created(self, eio_socket: Any) -> None:
        """Called for each new socket before its first transport runs."""


def adopt_socket(eio_socket: Any, socket_class: type) -> None:
    """Make a new python-engineio socket an instance of ``socket_class``.

    python-engineio builds ``engineio.socket.Socket`` by name inside
    ``Server._handle_connect`` with no factory to override; the node's
    subclass only adds methods (no state of its own in ``__init__``), so it
    takes over the object right after creation, before any transport runs.
    """
    if type(eio_socket) is engineio.socket.Socket:
        eio_socket.__class__ = socket_class


def websocket_app(server: Any, handler: Callable[[Any], Any]) -> Any:
    """The async driver's websocket WSGI app (eventlet's ``WebSocketWSGI``,
    which negotiates permessage-deflate) running ``handler(ws)``."""
    factory = server._async["websocket"]
    return None if factory is None else factory(handler, server)


def websocket_socket(ws: Any) -> Any:
    """The green socket beneath an eventlet websocket."""
    return ws.socket


def websocket_deflate_options(ws: Any) -> dict[str, Any] | None:
    """The permessage-deflate parameters eventlet negotiated, if any."""
    return (getattr(ws, "extensions", None) or {}).get("permessage-deflate")


def compressed_frame(ws: Any, payload: str | bytes) -> bytes:
    """A frame of ``payload`` compressed with ``ws``'s own deflate context
    (context takeover makes compressed frames differ per socket)."""
    return ws._pack_message(payload)


def route_websocket_writes(ws: Any, write: Callable[[bytes], None]) -> None:
    """Send the frames eventlet's websocket makes itself (pongs to client
    pings, its closing frame) through ``write``, behind what is pending,
    instead of a ``sendall`` of their own that would interleave with it."""
    ws._send = write


def drain_queue(queue: Any) -> Iterator[Any]:
    """Take what python-engineio queued for a socket while it was polling,
    without blocking, marking each item done."""
    while True:
        try:
            item = queue.get(block=False)
        except Exception:  # the async driver's queue Empty
            return
        queue.task_done()
        yield item



def pending_binary_packets(server: Any) -> dict[str, Any]:
    """python-socketio's binary packets waiting for their attachments, by
    connection (``Server._binary_packet``): the node decodes client packets
    itself to tell malformed ones from application errors
    (:mod:`cluster.node.packet_dispatch`)."""
    return server._binary_packet
