"""An in-process Socket.IO client for unit tests (``socketio.test_client``).

It speaks to the server without a network: packets from the client go
straight into the server's packet handler, and packets the server sends to
this client's connection are decoded and queued for :meth:`get_received`.
Handlers run inline (the test client switches the server to synchronous
handlers) so that a test can emit and then read what came back.

Cookies of a Flask test client (``flask_test_client=``) are sent with the
connection request, which is how a test logs in over HTTP and then connects.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import flask
from socketio import packet as sio_packet
from werkzeug.test import EnvironBuilder

if TYPE_CHECKING:
    from cluster.flask_integration.extension import SocketIO

__all__ = ["SocketIOTestClient"]


class SocketIOTestClient:
    """A test client bound to one application and one extension.

    :param namespace: namespace connected at construction (default ``"/"``).
    :param query_string: query string of the connection request.
    :param headers: extra HTTP headers of the connection request.
    :param auth: the ``auth`` dict sent in the CONNECT packet.
    :param flask_test_client: a ``app.test_client()`` whose cookies (the
        session cookie after a login, for instance) go with the connection.
    """

    #: every test client by its Engine.IO sid, as in Flask-SocketIO
    clients: dict[str, SocketIOTestClient] = {}

    def __init__(self, app: flask.Flask, socketio: SocketIO, namespace: str | None = None,
                 query_string: str | None = None, headers: dict[str, str] | None = None,
                 auth: dict[str, Any] | None = None, flask_test_client: Any = None) -> None:
        self.app = app
        self.socketio = socketio
        self.flask_test_client = flask_test_client
        self.eio_sid = uuid.uuid4().hex
        self.queue: list[dict[str, Any]] = []
        self.acks: dict[int, list[Any]] = {}
        self.connected: dict[str, bool] = {}
        self.connect_errors: dict[str, Any] = {}
        self._next_ack_id = 1
        self._pending_binary: Any = None
        self._eio_connected = False
        socketio.server.async_handlers = False
        self.connect(namespace=namespace, query_string=query_string, headers=headers, auth=auth)

    # -- connection --------------------------------------------------------

    def connect(self, namespace: str | None = None, query_string: str | None = None,
                headers: dict[str, str] | None = None, auth: dict[str, Any] | None = None) -> None:
        """Connect to ``namespace`` (default ``"/"``)."""
        namespace = namespace or "/"
        server = self.socketio.server
        if not self._eio_connected:
            environ = self._connection_environ(query_string, headers)
            server.test_sinks[self.eio_sid] = self._receive
            self.clients[self.eio_sid] = self
            server.handle_eio_connect(self.eio_sid, environ)
            self._eio_connected = True
        self.connected[namespace] = False
        self.connect_errors.pop(namespace, None)
        pkt = server.packet_class(sio_packet.CONNECT, data=auth, namespace=namespace)
        server.handle_eio_message(self.eio_sid, pkt.encode())

    def disconnect(self, namespace: str | None = None) -> None:
        """Disconnect from ``namespace`` (default ``"/"``)."""
        namespace = namespace or "/"
        if not self.is_connected(namespace):
            raise RuntimeError("not connected")
        server = self.socketio.server
        pkt = server.packet_class(sio_packet.DISCONNECT, namespace=namespace)
        server.handle_eio_message(self.eio_sid, pkt.encode())
        self.connected[namespace] = False
        if not any(self.connected.values()):
            server.handle_eio_disconnect(self.eio_sid, server.reason.CLIENT_DISCONNECT)
            server.test_sinks.pop(self.eio_sid, None)
            self.clients.pop(self.eio_sid, None)
            self._eio_connected = False

    def is_connected(self, namespace: str | None = None) -> bool:
        """Whether the client is connected to ``namespace``."""
        return self.connected.get(namespace or "/", False)

    # -- sending -----------------------------------------------------------

    def emit(self, event: str, *args: Any, **kwargs: Any) -> Any:
        """Emit ``event``; with ``callback=True`` return the ack's data."""
        namespace = kwargs.pop("namespace", None) or "/"
        if not self.is_connected(namespace):
            # as Flask-SocketIO's test client, also after the server
            # disconnected this client
            raise RuntimeError("not connected")
        want_ack = kwargs.pop("callback", False)
        ack_id = None
        if want_ack:
            ack_id = self._next_ack_id
            self._next_ack_id += 1
        server = self.socketio.server
        pkt = server.packet_class(sio_packet.EVENT, data=[event, *args],
                                  namespace=namespace, id=ack_id)
        encoded = pkt.encode()
        for part in encoded if isinstance(encoded, list) else [encoded]:
            server.handle_eio_message(self.eio_sid, part)
        if ack_id is not None and ack_id in self.acks:
            ack = self.acks.pop(ack_id)
            return ack[0] if len(ack) == 1 else ack
        return None

    def send(self, data: Any, json: bool = False, callback: bool = False,
             namespace: str | None = None) -> Any:
        """Send a ``message`` (or ``json``) event."""
        return self.emit("json" if json else "message", data, callback=callback,
                         namespace=namespace)

    def get_received(self, namespace: str | None = None) -> list[dict[str, Any]]:
        """Events received for ``namespace`` since the last call, then cleared.

        Each is ``{"name", "args", "namespace"}``; ``args`` is the list of
        arguments, except for ``message``/``json`` events where it is the one
        payload, as in Flask-SocketIO.
        """
        namespace = namespace or "/"
        if not self.is_connected(namespace):
            raise RuntimeError("not connected")
        received = [item for item in self.queue if item["namespace"] == namespace]
        self.queue = [item for item in self.queue if item["namespace"] != namespace]
        return received

    # -- internals ---------------------------------------------------------

    def _connection_environ(self, query_string: str | None,
                            headers: dict[str, str] | None) -> dict[str, Any]:
        # only the application's own query string, as Flask-SocketIO's test
        # client: handlers reading request.args see what the test passed
        query = query_string or ""
        if query.startswith("?"):
            query = query[1:]
        builder = EnvironBuilder(
            path="/" + self.socketio.server.socketio_path + "/",
            query_string=query, headers=list((headers or {}).items()),
        )
        try:
            environ = builder.get_environ()
        finally:
            builder.close()
        environ["flask.app"] = self.app  # as Flask-SocketIO's middleware sets it
        if self.flask_test_client is not None:
            # the test client's cookie jar becomes the Cookie header, so a
            # session set by an HTTP login is the one forked at connect
            self.flask_test_client._add_cookies_to_wsgi(environ)
        return environ

    def _receive(self, encoded: Any) -> None:
        server = self.socketio.server
        if self._pending_binary is not None:
            if self._pending_binary.add_attachment(encoded):
                pkt, self._pending_binary = self._pending_binary, None
                self._record(pkt)
            return
        pkt = server.packet_class(encoded_packet=encoded)
        if pkt.attachment_count > 0:
            self._pending_binary = pkt
            return
        self._record(pkt)

    def _record(self, pkt: Any) -> None:
        namespace = pkt.namespace or "/"
        if pkt.packet_type == sio_packet.CONNECT:
            self.connected[namespace] = True
        elif pkt.packet_type == sio_packet.CONNECT_ERROR:
            self.connected[namespace] = False
            self.connect_errors[namespace] = pkt.data
        elif pkt.packet_type == sio_packet.DISCONNECT:
            self.connected[namespace] = False
        elif pkt.packet_type in (sio_packet.EVENT, sio_packet.BINARY_EVENT):
            name, args = pkt.data[0], pkt.data[1:]
            if name in ("message", "json"):
                self.queue.append({"name": name, "args": args[0] if args else None,
                                   "namespace": namespace})
            else:
                self.queue.append({"name": name, "args": args, "namespace": namespace})
            if pkt.id is not None:
                # the server asked for an ack: answer with no data, as the
                # Flask-SocketIO test client does
                reply = self.socketio.server.packet_class(
                    sio_packet.ACK, data=[], namespace=namespace, id=pkt.id)
                self.socketio.server.handle_eio_message(self.eio_sid, reply.encode())
        elif pkt.packet_type in (sio_packet.ACK, sio_packet.BINARY_ACK):
            self.acks[pkt.id] = pkt.data
