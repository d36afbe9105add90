"""Module-level helpers used inside handlers, as in Flask-SocketIO.

They find the extension through ``current_app.extensions["socketio"]`` and
default their target to the connection being handled (``request.sid``) and
its namespace (``request.namespace``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import flask

from cluster.exceptions import NotInHandlerError

if TYPE_CHECKING:
    from cluster.flask_integration.extension import SocketIO

__all__ = ["call", "close_room", "disconnect", "emit", "join_room", "leave_room", "rooms", "send"]


def _socketio() -> SocketIO:
    socketio: SocketIO = flask.current_app.extensions["socketio"]
    return socketio


def _current(attribute: str, function: str) -> Any:
    if not flask.has_request_context() or not hasattr(flask.request, attribute):
        raise NotInHandlerError(function)
    return getattr(flask.request, attribute)


def emit(event: str, *args: Any, **kwargs: Any) -> None:
    """Emit ``event``; by default to the client that sent the current event.

    ``broadcast=True`` sends to every client of the namespace, ``to=``/
    ``room=`` to a sid or room, ``include_self=False`` skips the sender,
    ``callback=`` requests an ack, ``namespace=`` overrides the namespace.
    """
    namespace = kwargs.pop("namespace", None) or _current("namespace", "emit")
    broadcast = kwargs.pop("broadcast", False)
    to = kwargs.pop("to", None)
    if to is None:
        to = kwargs.pop("room", None)
    else:
        kwargs.pop("room", None)
    if to is None and not broadcast:
        to = _current("sid", "emit")
    include_self = kwargs.pop("include_self", True)
    skip_sid = kwargs.pop("skip_sid", None)
    if not include_self and skip_sid is None:
        skip_sid = _current("sid", "emit")
    _socketio().emit(event, *args, namespace=namespace, to=to, include_self=include_self,
                     skip_sid=skip_sid, **kwargs)


def call(event: str, *args: Any, **kwargs: Any) -> Any:
    """Emit ``event`` to one client and wait for its ack; return the ack's data.

    By default the client is the one that sent the current event
    (``request.sid``) and the namespace the current one; ``to=``/``room=``
    and ``namespace=`` override them. ``timeout`` (default 60 s) raises
    ``socketio.exceptions.TimeoutError`` when the client does not answer.
    The client may be on any node.
    """
    namespace = kwargs.pop("namespace", None) or _current("namespace", "call")
    to = kwargs.pop("to", None)
    if to is None:
        to = kwargs.pop("room", None)
    else:
        kwargs.pop("room", None)
    if to is None:
        to = _current("sid", "call")
    return _socketio().call(event, *args, namespace=namespace, to=to, **kwargs)


def send(message: Any, **kwargs: Any) -> None:
    """Send a ``message`` (``json`` with ``json=True``) event; targets as in :func:`emit`."""
    json = kwargs.pop("json", False)
    emit("json" if json else "message", message, **kwargs)


def join_room(room: str, sid: str | None = None, namespace: str | None = None) -> None:
    """Put ``sid`` (default: the current client) in ``room``; works across nodes."""
    sid = sid or _current("sid", "join_room")
    namespace = namespace or _current("namespace", "join_room")
    _socketio().server.enter_room(sid, room, namespace=namespace)


def leave_room(room: str, sid: str | None = None, namespace: str | None = None) -> None:
    """Take ``sid`` (default: the current client) out of ``room``."""
    sid = sid or _current("sid", "leave_room")
    namespace = namespace or _current("namespace", "leave_room")
    _socketio().server.leave_room(sid, room, namespace=namespace)


def close_room(room: str, namespace: str | None = None) -> None:
    """Remove every client from ``room`` on every node."""
    namespace = namespace or _current("namespace", "close_room")
    _socketio().server.close_room(room, namespace=namespace)


def rooms(sid: str | None = None, namespace: str | None = None) -> list[str]:
    """The rooms of ``sid`` (default: the current client), its own sid included."""
    sid = sid or _current("sid", "rooms")
    namespace = namespace or _current("namespace", "rooms")
    return list(_socketio().server.rooms(sid, namespace=namespace))


def disconnect(sid: str | None = None, namespace: str | None = None, silent: bool = False) -> None:
    """Disconnect ``sid`` (default: the current client) from the namespace.

    ``silent`` is accepted for Flask-SocketIO compatibility and ignored.
    """
    sid = sid or _current("sid", "disconnect")
    namespace = namespace or _current("namespace", "disconnect")
    _socketio().server.disconnect(sid, namespace=namespace)


