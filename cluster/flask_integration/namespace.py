"""Class-based namespaces, as in Flask-SocketIO.

Methods named ``on_<event>`` handle ``<event>``; they run in the same Flask
context as decorated handlers. ``emit``/``send``/``close_room`` default to the
class's namespace.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import socketio
from socketio.exceptions import ConnectionRefusedError

if TYPE_CHECKING:
    from cluster.flask_integration.extension import SocketIO

__all__ = ["Namespace"]


class Namespace(socketio.Namespace):  # type: ignore[misc]  # python-socketio is untyped
    """Base class for class-based namespaces (default namespace ``"/"``)."""

    def __init__(self, namespace: str | None = None) -> None:
        super().__init__(namespace)
        self.socketio: SocketIO | None = None

    def bind(self, socketio_ext: SocketIO) -> None:
        """Attach this instance to the extension it emits through and whose
        handler context its ``on_<event>`` methods run in;
        ``socketio.on_namespace(instance)`` calls it."""
        self.socketio = socketio_ext

    def _extension(self) -> SocketIO:
        if self.socketio is None:
            raise RuntimeError(
                "This Namespace is not registered: call socketio.on_namespace(instance)."
            )
        return self.socketio

    def trigger_event(self, event: str, *args: Any) -> Any:
        """Dispatch ``event`` to ``on_<event>`` inside the Flask context.

        An exception from the handler goes to the instance's ``error(exc)``
        method when the class defines one (its return value is the ack), as
        in Flask-SocketIO; otherwise to the extension's ``on_error``
        handlers. A ``Namespace("*")`` handles every namespace that has no
        handler of its own; ``request.namespace`` is the real one.
        """
        handler_name = "on_" + (event or "")
        handler = getattr(self, handler_name, None)
        if handler is None:
            # no method: ignored, and an ack asked for gets no arguments, as
            # in Flask-SocketIO
            return None
        namespace = self.namespace
        if namespace == "*" and args:
            # python-socketio passes a catch-all namespace the real one first
            namespace, args = args[0], args[1:]
        sid = args[0] if args else None
        try:
            return self._extension().runner.run(handler, event, namespace, sid, *args[1:])
        except ConnectionRefusedError:
            raise
        except Exception as exc:
            error_handler = getattr(self, "error", None)
            if error_handler is None:
                raise
            return error_handler(exc)

    def emit(self, event: str, data: Any = None, room: str | None = None,
             include_self: bool = True, namespace: str | None = None,
             callback: Any = None, **kwargs: Any) -> None:
        """Emit to this namespace unless ``namespace`` says otherwise."""
        to = kwargs.pop("to", None) or room
        args = () if data is None else (data,)
        self._extension().emit(event, *args, to=to, include_self=include_self,
                           namespace=namespace or self.namespace, callback=callback, **kwargs)

    def send(self, data: Any, room: str | None = None, include_self: bool = True,
             namespace: str | None = None, callback: Any = None, **kwargs: Any) -> None:
        """Send a ``message`` event to this namespace."""
        to = kwargs.pop("to", None) or room
        self._extension().send(data, to=to, include_self=include_self,
                           namespace=namespace or self.namespace, callback=callback, **kwargs)

    def close_room(self, room: str, namespace: str | None = None) -> None:
        """Close ``room`` in this namespace."""
        self._extension().close_room(room, namespace=namespace or self.namespace)
