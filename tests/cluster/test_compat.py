"""The private names of python-socketio and python-engineio that
cluster.compat relies on: these fail first when an upgrade moves one of them."""

from __future__ import annotations

import inspect

import engineio
import engineio.socket
import socketio
from socketio import base_manager, base_server
from socketio import packet as sio_packet

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
    params = inspect.signature(engineio.socket.Socket.close).parameters
    assert list(params) == ["self", "wait", "abort", "reason"]


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


# -- python-socketio (the floor is 5.18.1: every name below exists there) -------

def test_socketio_server_hooks_exist_and_are_bound_to_the_public_names() -> None:
    for public, private in compat.SocketServerSeam._HOOKS.items():
        library = getattr(socketio.Server, private)
        assert callable(library), private
        # the seam's public name is the library's own function: no extra call
        assert getattr(compat.SocketServerSeam, public) is library, public

    class Node(compat.SocketServerSeam):
        def send_eio_packet(self, eio_sid: str, eio_pkt: object) -> None:
            pass

    # the library calls the private name: it is the subclass's function itself
    assert Node._send_eio_packet is Node.__dict__["send_eio_packet"]
    assert Node._send_packet is socketio.Server._send_packet
    assert compat.SocketServerSeam.library_handle_connect is socketio.Server._handle_connect
    assert compat.SocketServerSeam.library_trigger_event is socketio.Server._trigger_event


def test_socketio_registers_its_engineio_handlers_by_private_name() -> None:
    source = inspect.getsource(base_server.BaseServer.__init__)
    for name in ("_handle_eio_connect", "_handle_eio_message", "_handle_eio_disconnect"):
        assert f"self.{name}" in source
    assert "self._engineio_server_class()" in source


def test_socketio_server_state_the_seams_read() -> None:
    server = socketio.Server(async_mode="threading")
    assert server.environ == {} and server._binary_packet == {}
    assert compat.pending_binary_packets(server) is server._binary_packet
    assert isinstance(server.eio.sockets, dict)
    assert hasattr(server, "handlers") and hasattr(server, "namespace_handlers")
    connect = inspect.getsource(socketio.Server._handle_connect)
    assert "namespace in self.handlers or namespace in self.namespace_handlers" in connect
    assert "self.environ[eio_sid]" in connect


def test_the_seam_delivers_straight_to_the_socket_unless_in_process() -> None:
    class Node(compat.SocketServerSeam):
        slow: list = []

        def deliver_eio_packet_slowly(self, eio_sid: str, eio_pkt: object) -> None:
            self.slow.append((eio_sid, eio_pkt))

    server = Node(async_mode="threading")
    sent: list = []

    class Socket:
        closed = False

        def send(self, pkt: object) -> None:
            sent.append(pkt)

    server.eio.sockets["e1"] = Socket()
    server.deliver_eio_packet("e1", "pkt")
    assert sent == ["pkt"] and server.slow == []
    server.deliver_eio_packet("gone", "pkt2")
    assert server.slow == [("gone", "pkt2")]
    server.in_process = {"t": print}
    server.deliver_eio_packet("e1", "pkt3")
    assert sent == ["pkt"] and server.slow[-1] == ("e1", "pkt3")
    assert compat.engine_socket(server.eio, "e1") is server.eio.sockets["e1"]
    compat.forget_engine_socket(server.eio, "e1")
    assert compat.engine_socket(server.eio, "e1") is None


def test_socketio_draws_sids_from_engineio_generate_id() -> None:
    # BaseManager.pre_connect draws every new sid there
    source = inspect.getsource(base_manager.BaseManager.pre_connect)
    assert "self.server.eio.generate_id()" in source
    seam = compat.EngineServerSeam(async_mode="threading")
    seam.restore_next_id("old-sid")
    assert seam.generate_id() == "old-sid"
    assert seam.generate_id() != "old-sid"  # once only


def test_room_layout_and_binary_reconstruction() -> None:
    manager = base_manager.BaseManager()
    manager.set_server(socketio.Server(async_mode="threading"))
    manager.basic_enter_room("sid1", "/", "lobby", eio_sid="e1")
    assert compat.room_has_member(manager, "/", "lobby", "sid1")
    assert not compat.room_has_member(manager, "/", "lobby", "sid2")
    assert not compat.room_has_member(manager, "/other", "lobby", "sid1")
    pkt = sio_packet.Packet(sio_packet.EVENT, data=["e", b"\x00\x01"])
    first, attachment = pkt.encode()
    decoded = sio_packet.Packet(encoded_packet=first)
    assert decoded.attachment_count == 1
    assert compat.binary_event_data(decoded.data, [attachment]) == ["e", b"\x00\x01"]
    assert decoded.data == ["e", {"_placeholder": True, "num": 0}]  # left as it was


def test_a_connection_is_local_while_connected_or_connecting() -> None:
    manager = base_manager.BaseManager()
    manager.set_server(socketio.Server(async_mode="threading"))
    connect = getattr(manager, "pre_connect", None) or manager.connect
    sid = connect("e1", "/")
    assert compat.is_local_connection(manager, sid, "/")
    assert not compat.is_local_connection(manager, "other", "/")


def test_socketio_client_privates_the_client_seam_replaces() -> None:
    source = inspect.getsource(socketio.Client._handle_eio_connect)
    for name in ("self._get_real_value(self.connection_auth)", "self.connection_namespaces",
                 "self._send_packet(", "packet.CONNECT"):
        assert name in source, name
    params = inspect.signature(socketio.Client._handle_connect).parameters
    assert list(params) == ["self", "namespace", "data"]
    params = inspect.signature(socketio.Client._handle_event).parameters
    assert list(params) == ["self", "namespace", "id", "data"]
    client = socketio.Client()
    assert client.connection_namespaces == [] and client.connection_auth is None
