"""The private names of python-engineio and eventlet that cluster.compat
relies on: these fail first when an upgrade moves one of them."""

from __future__ import annotations

import inspect

import engineio
import engineio.socket
from engineio.async_drivers import eventlet as eio_eventlet
from eventlet import websocket as eventlet_websocket

from cluster import compat


def test_engineio_dispatches_the_upgrade_by_name() -> None:
    source = inspect.getsource(engineio.socket.Socket.handle_get_request)
    assert "'_upgrade_' + transport" in source or '"_upgrade_" + transport' in source
    assert hasattr(engineio.socket.Socket, "_upgrade_websocket")


def test_engineio_fires_connect_after_creating_the_socket() -> None:
    source = inspect.getsource(engineio.Server._handle_connect)
    created = source.index("self.sockets[sid] = s")
    assert created < source.index("self._trigger_event('connect'")
    assert created < source.index("handle_get_request")


def test_engineio_server_privates_used_by_the_seam() -> None:
    assert callable(engineio.Server._trigger_event)
    assert callable(engineio.Server._bad_request)
    assert eio_eventlet._async["websocket"] is eio_eventlet.WebSocketWSGI
    params = inspect.signature(engineio.socket.Socket.close).parameters
    assert list(params) == ["self", "wait", "abort", "reason"]


def test_eventlet_websocket_privates() -> None:
    ws_class = eventlet_websocket.RFC6455WebSocket
    assert callable(ws_class._pack_message)
    assert "self._send(payload)" in inspect.getsource(ws_class.send)
    assert "self.socket.sendall" in inspect.getsource(ws_class._send)


def test_adopt_socket_only_takes_stock_sockets() -> None:
    class Adopted(compat.EngineSocketSeam):
        pass

    class Other(engineio.socket.Socket):
        pass

    server = engineio.Server(async_mode="threading")
    stock = engineio.socket.Socket(server, "a")
    compat.adopt_socket(stock, Adopted)
    assert type(stock) is Adopted
    other = Other(server, "b")
    compat.adopt_socket(other, Adopted)
    assert type(other) is Other


def test_drain_queue_takes_everything_without_blocking() -> None:
    server = engineio.Server(async_mode="threading")
    queue = server.create_queue()
    for item in ("a", "b", None):
        queue.put(item)
    assert list(compat.drain_queue(queue)) == ["a", "b", None]
    queue.join()  # every item was marked done
