"""Every use of a private name of python-socketio or python-engineio.

These libraries offer no public seam for what the node's websocket
transport does (write frames itself, share one frame between recipients),
so the few places where it reaches inside them are gathered here, each
with the reason, and ``tests/cluster/test_compat.py`` fails when an upgrade
moves one of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import engineio
import engineio.socket
import socketio
from socketio import packet as sio_packet


class EngineSocketSeam(engineio.socket.Socket):  # type: ignore[misc]  # python-engineio is untyped
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


class EngineServerSeam(engineio.Server):  # type: ignore[misc]  # python-engineio is untyped
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

    _restored_id: str | None = None

    def restore_next_id(self, sid: str | None) -> None:
        """Make the next id drawn ``sid`` (``None``: back to random ones).

        python-socketio draws every new Socket.IO sid from the Engine.IO
        server's ``generate_id`` (``BaseManager.pre_connect``), so setting
        the previous sid right before a connect gives a recovered
        connection its old sid back.
        """
        self._restored_id = sid

    def generate_id(self) -> str:
        sid, self._restored_id = self._restored_id, None
        return sid if sid is not None else self.shape_new_id(super().generate_id())

    def shape_new_id(self, random_id: str) -> str:
        """A new id from python-engineio's random ``random_id`` (restored
        ids do not come here); the default keeps it as it is."""
        return random_id


def adopt_socket(eio_socket: Any, socket_class: type) -> None:
    """Make a new python-engineio socket an instance of ``socket_class``.

    python-engineio builds ``engineio.socket.Socket`` by name inside
    ``Server._handle_connect`` with no factory to override; the node's
    subclass only adds methods (no state of its own in ``__init__``), so it
    takes over the object right after creation, before any transport runs.
    """
    if type(eio_socket) is engineio.socket.Socket:
        eio_socket.__class__ = socket_class


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
    pending: dict[str, Any] = server._binary_packet
    return pending


# -- python-socketio's server ------------------------------------------------


def _bind_hooks(cls: type, hooks: dict[str, str]) -> None:
    """Make each public hook a subclass defines *be* the private method the
    library calls (the same function object, so no extra call per packet on
    the emit path)."""
    for public, private in hooks.items():
        if public in cls.__dict__:
            setattr(cls, private, cls.__dict__[public])


class SocketServerSeam(socketio.Server):  # type: ignore[misc]  # python-socketio is untyped
    """python-socketio's server with its private hooks under public names.

    python-socketio calls these private methods on ``self`` (every one
    exists at the 5.18 floor, with these signatures); a subclass overrides the
    public name and calls ``super()`` for the library's behaviour:

    - ``send_packet(eio_sid, pkt)``: every Socket.IO packet to a client
      (``_send_packet``);
    - ``send_eio_packet(eio_sid, eio_pkt)``: every encoded packet, once per
      recipient of a broadcast (``_send_eio_packet``, called by
      ``BaseManager.emit`` with one shared encoded packet);
    - ``handle_eio_connect(eio_sid, environ)``, ``handle_eio_message(eio_sid,
      data)``, ``handle_eio_disconnect(eio_sid, reason)``: the Engine.IO
      events (``_handle_eio_*``, registered with ``eio.on`` by name);
    - ``handle_connect``, ``handle_disconnect``, ``handle_event``,
      ``handle_event_internal``, ``handle_ack``: the dispatch of a decoded
      packet (``_handle_*``);
    - ``trigger_event(event, namespace, *args)``: the application's handlers
      (``_trigger_event``);
    - ``engineio_server_class()``: the Engine.IO server to build
      (``_engineio_server_class``).
    """

    _HOOKS = {
        "send_packet": "_send_packet",
        "send_eio_packet": "_send_eio_packet",
        "handle_eio_connect": "_handle_eio_connect",
        "handle_eio_message": "_handle_eio_message",
        "handle_eio_disconnect": "_handle_eio_disconnect",
        "handle_connect": "_handle_connect",
        "handle_disconnect": "_handle_disconnect",
        "handle_event": "_handle_event",
        "handle_event_internal": "_handle_event_internal",
        "handle_ack": "_handle_ack",
        "trigger_event": "_trigger_event",
        "engineio_server_class": "_engineio_server_class",
    }

    send_packet = socketio.Server._send_packet
    send_eio_packet = socketio.Server._send_eio_packet
    handle_eio_connect = socketio.Server._handle_eio_connect
    handle_eio_message = socketio.Server._handle_eio_message
    handle_eio_disconnect = socketio.Server._handle_eio_disconnect
    handle_connect = socketio.Server._handle_connect
    handle_disconnect = socketio.Server._handle_disconnect
    handle_event = socketio.Server._handle_event
    handle_event_internal = socketio.Server._handle_event_internal
    handle_ack = socketio.Server._handle_ack
    trigger_event = socketio.Server._trigger_event
    engineio_server_class = socketio.Server._engineio_server_class
    #: the library's own, for collaborators of a subclass that overrides them
    library_handle_connect = socketio.Server._handle_connect
    library_trigger_event = socketio.Server._trigger_event

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _bind_hooks(cls, cls._HOOKS)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.in_process = {}
        super().__init__(*args, **kwargs)

    def deliver_eio_packet(self, eio_sid: str, eio_pkt: Any) -> None:
        """The hot path of every broadcast, once per recipient: straight to
        the Engine.IO socket (``eio.sockets``, python-engineio's sockets by
        sid; its ``send_packet`` adds a lookup that also prunes closed
        sockets, and a log call); unusual cases (socket gone or closed,
        connections served in process) go to :meth:`deliver_eio_packet_slowly`."""
        eio_socket = self.eio.sockets.get(eio_sid)
        if eio_socket is not None and not eio_socket.closed and not self.in_process:
            eio_socket.send(eio_pkt)
            return
        self.deliver_eio_packet_slowly(eio_sid, eio_pkt)

    #: connections served in process (``eio_sid -> sink``): while any exists
    #: :meth:`deliver_eio_packet` always takes the slow way (set in __init__)
    in_process: dict[str, Callable[[Any], None]]

    def deliver_eio_packet_slowly(self, eio_sid: str, eio_pkt: Any) -> None:
        socketio.Server._send_eio_packet(self, eio_sid, eio_pkt)

    def environ_of(self, eio_sid: str) -> dict[str, Any] | None:
        """The WSGI environ of an Engine.IO connection (python-socketio's
        ``environ``, by eio sid; ``get_environ`` wants a Socket.IO sid)."""
        environ: dict[str, Any] | None = self.environ.get(eio_sid)
        return environ

    def serves_namespace(self, namespace: str) -> bool:
        """The test python-socketio's ``_handle_connect`` applies before it
        accepts a CONNECT: a handler, a ``Namespace``, or ``namespaces``."""
        namespaces = getattr(self, "namespaces", None)
        return (namespace in self.handlers or namespace in self.namespace_handlers
                or namespaces == "*" or (namespaces is not None and namespace in namespaces))


def engine_socket(eio: Any, eio_sid: str) -> Any:
    """python-engineio's socket of ``eio_sid`` (``Server.sockets``), or None."""
    return eio.sockets.get(eio_sid)


def forget_engine_socket(eio: Any, eio_sid: str) -> None:
    """Drop a socket closed without ``Server.disconnect`` from ``sockets``."""
    eio.sockets.pop(eio_sid, None)


def room_has_member(manager: Any, namespace: str, room: Any, sid: str) -> bool:
    """Whether ``sid`` is in ``room`` on this node, without copying the room
    (python-socketio's ``BaseManager.rooms[namespace][room][sid]`` layout)."""
    members = manager.rooms.get(namespace, {}).get(room)
    return members is not None and sid in members


def is_local_connection(manager: Any, sid: str, namespace: str) -> bool:
    """Whether ``sid`` is a connection of this node in ``namespace``, also
    while its connect handler runs, when python-socketio holds it as
    *pre-connected* (``BaseManager.is_pre_connected``, from 5.18)."""
    return bool(manager.is_connected(sid, namespace)
                or manager.is_pre_connected(sid, namespace))


def binary_event_data(first: Any, attachments: list[bytes]) -> Any:
    """An event's arguments with its binary attachments put back in their
    placeholders (``Packet.reconstruct_binary``, python-socketio's decoder,
    a classmethod ``(data, attachments)``)."""
    return sio_packet.Packet.reconstruct_binary(first, attachments)


# -- python-socketio's client ------------------------------------------------


class _InOrderEngineClient(engineio.Client):  # type: ignore[misc]  # untyped
    """python-engineio's client handing each message to python-socketio in
    its receive thread, in arrival order (``_trigger_event`` starts a thread
    per ``message`` otherwise, and two threads may run in either order)."""

    def _trigger_event(self, event: str, *args: Any, **kwargs: Any) -> Any:
        if event == "message":
            kwargs["run_async"] = False
        return super()._trigger_event(event, *args, **kwargs)


class ClientSeam(socketio.Client):  # type: ignore[misc]  # python-socketio is untyped
    """python-socketio's client with the hooks a resuming client needs.

    - ``ordered_events``: python-socketio picks its Engine.IO client class
      through ``_engineio_client_class()``, called from its constructor;
      with the flag set it is one that runs handlers in arrival order;

    - :meth:`connect_payload`: the CONNECT payload per namespace. The
      library sends one ``auth`` to every namespace from
      ``_handle_eio_connect`` (its ``connection_auth``, resolved with
      ``_get_real_value``, sent with ``_send_packet`` to each of
      ``connection_namespaces``); this replaces that method, same steps;
    - :meth:`connect_reply`: the CONNECT reply's data, before the library
      handles it (``_handle_connect``);
    - :meth:`event_arguments`: an event's arguments, before its handler
      gets them (``_handle_event``).
    """

    def __init__(self, *args: Any, ordered_events: bool = False, **kwargs: Any) -> None:
        self.ordered_events = ordered_events  # read by the constructor below
        super().__init__(*args, **kwargs)

    def _engineio_client_class(self) -> type:
        if self.ordered_events:
            return _InOrderEngineClient
        return super()._engineio_client_class()  # type: ignore[no-any-return]

    def _handle_eio_connect(self) -> None:
        self.logger.info("Engine.IO connection established")
        self.sid = self.eio.sid
        auth = self._get_real_value(self.connection_auth) or {}
        for namespace in self.connection_namespaces:
            self._send_packet(self.packet_class(
                sio_packet.CONNECT, data=self.connect_payload(namespace, auth),
                namespace=namespace))

    def _handle_connect(self, namespace: str | None, data: Any) -> None:
        namespace = namespace or "/"
        super()._handle_connect(namespace, self.connect_reply(namespace, data))

    def _handle_event(self, namespace: str | None, id: Any, data: Any) -> None:
        namespace = namespace or "/"
        super()._handle_event(namespace, id, self.event_arguments(namespace, id, data))

    def connect_payload(self, namespace: str, auth: Any) -> Any:
        return auth

    def connect_reply(self, namespace: str, data: Any) -> Any:
        return data

    def event_arguments(self, namespace: str, id: Any, data: Any) -> Any:
        return data


# --- bus seam ---
# python-socketio's PubSubManager, the seam the bus is built on (see
# DESIGN.md), under public names. Its private hooks are named here only.

class PubSubSeam(socketio.PubSubManager):  # type: ignore[misc]  # python-socketio is untyped
    """python-socketio's ``PubSubManager`` with its private hooks renamed.

    - ``_publish(data)``: PubSubManager's ``enter_room``, ``leave_room``,
      ``close_room``, ``disconnect``, ``can_disconnect`` and its ack return
      path (``_return_callback``) send their bus message through it; the
      bus implements :meth:`publish_message` instead.
    - ``_generate_ack_id(sid, callback)``: ``Manager.emit`` and
      ``PubSubManager.emit`` number ack callbacks through it; the bus
      implements :meth:`new_ack_id`.
    - ``_handle_emit`` ... ``_handle_close_room``: PubSubManager's appliers
      of incoming bus messages, called by name from its own listener
      (``_thread``), which the bus replaces with its own; offered as
      ``apply_*``.
    - ``_get_logger()``: the server's logger, or python-socketio's default.
    """

    def _publish(self, data: Any) -> Any:
        return self.publish_message(data)

    def publish_message(self, data: dict[str, Any]) -> Any:
        raise NotImplementedError

    def _generate_ack_id(self, sid: Any, callback: Any) -> Any:
        return self.new_ack_id(sid, callback)

    def new_ack_id(self, sid: Any, callback: Any) -> int:
        return int(super()._generate_ack_id(sid, callback))

    def bus_logger(self) -> Any:
        return self._get_logger()

    def emit_here(self, event: str, data: Any, namespace: str, room: Any = None,
                  skip_sid: Any = None, callback: Any = None) -> Any:
        """Deliver to this node's clients only: ``Manager.emit``, skipping
        the publish that ``PubSubManager.emit`` adds."""
        return socketio.Manager.emit(self, event, data, namespace, room=room,
                                     skip_sid=skip_sid, callback=callback)

    def apply_emit(self, message: dict[str, Any]) -> None:
        socketio.PubSubManager._handle_emit(self, message)

    def apply_callback(self, message: dict[str, Any]) -> None:
        socketio.PubSubManager._handle_callback(self, message)

    def apply_disconnect(self, message: dict[str, Any]) -> None:
        socketio.PubSubManager._handle_disconnect(self, message)

    def apply_enter_room(self, message: dict[str, Any]) -> None:
        socketio.PubSubManager._handle_enter_room(self, message)

    def apply_leave_room(self, message: dict[str, Any]) -> None:
        socketio.PubSubManager._handle_leave_room(self, message)

    def apply_close_room(self, message: dict[str, Any]) -> None:
        socketio.PubSubManager._handle_close_room(self, message)


def mark_manager_initialized(server: Any) -> None:
    """Tell python-socketio's server its manager is running
    (``Server.manager_initialized``, checked on the first connection to
    call ``manager.initialize()``), when the node starts the bus itself."""
    server.manager_initialized = True


def register_ack(callbacks: dict[Any, Any], sid: Any, counter: Any, callback: Any) -> int:
    """File ``callback`` under a new id in python-socketio's ack table,
    whose layout is ``callbacks[sid] = {0: id counter, id: callback}``
    (``BaseManager._generate_ack_id``, read by ``trigger_callback``);
    ``counter`` is shared by every sid, so ids stay unique process-wide."""
    table = callbacks.setdefault(sid, {0: counter})
    ack_id = int(next(counter))
    table[ack_id] = callback
    return ack_id


def pop_ack(callbacks: dict[Any, Any], sid: Any, ack_id: int) -> Any:
    """Remove and return one callback of that table (None if answered or
    gone); a sid left with its counter only is dropped."""
    table = callbacks.get(sid)
    if table is None:
        return None
    callback = table.pop(ack_id, None)
    if len(table) <= 1:
        callbacks.pop(sid, None)
    return callback


def ack_pending(callbacks: dict[Any, Any], sid: Any, ack_id: Any) -> bool:
    """Whether ``ack_id`` is a callback of ``sid`` still waiting in that
    table (id 0 is the table's counter, not a callback)."""
    table = callbacks.get(sid)
    return (table is not None and isinstance(ack_id, int) and not isinstance(ack_id, bool)
            and ack_id != 0 and ack_id in table)


def pending_ack_count(callbacks: dict[Any, Any]) -> int:
    """Callbacks waiting in that table (-1: resized by another thread while
    counted)."""
    try:
        return sum(len(table) - 1 for table in list(callbacks.values()))
    except RuntimeError:
        return -1


def forget_pending_connections(manager: Any, sid: Any, namespace: str) -> None:
    """What ``BaseManager.basic_disconnect`` does besides leaving rooms:
    drop ``sid`` from ``pending_connect``/``pending_disconnect``."""
    for pending in (getattr(manager, "pending_connect", None),
                    getattr(manager, "pending_disconnect", None)):
        if pending and namespace in pending and sid in pending[namespace]:
            pending[namespace].remove(sid)
            if not pending[namespace]:
                del pending[namespace]
# --- end bus seam ---


# --- runner: probes and drain ---

def open_engine_sockets(eio: Any) -> list[tuple[str, Any]]:
    """A snapshot of python-engineio's open sockets (``Server.sockets``,
    a dict by Engine.IO sid), safe to iterate while sockets close."""
    return list(eio.sockets.items())


def socketio_environ(server: Any, eio_sid: str) -> dict[str, Any] | None:
    """The WSGI environ python-socketio keeps for Engine.IO connection
    ``eio_sid`` (``Server.environ``), or None."""
    environ: dict[str, Any] | None = server.environ.get(eio_sid)
    return environ


def local_room_counts(manager: Any) -> dict[str, int]:
    """Rooms with members on this node, by namespace (python-socketio's
    ``BaseManager.rooms[namespace][room]`` layout)."""
    return {namespace: len(rooms) for namespace, rooms in list(manager.rooms.items())}
