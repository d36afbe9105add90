"""Handler registration of the extension: what Flask-SocketIO's decorators record.

``socketio.on``, ``on_event``, ``event``, ``on_namespace``, ``on_error`` and
``on_error_default`` delegate to one :class:`HandlerRegistry`. It keeps the
handlers, so they may be registered before ``init_app``, and hands them to
the server when there is one (``server()`` returns it, or ``None`` before
``init_app``); each handler runs in the Flask context of
:mod:`cluster.flask_integration.handler_context` through the ``runner``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from cluster.exceptions import ConfigurationError

if TYPE_CHECKING:
    from cluster.flask_integration.extension import SocketIO
    from cluster.flask_integration.handler_context import HandlerRunner
    from cluster.node.server import ClusterServer

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["HandlerRegistry"]


class HandlerRegistry:
    """The event handlers, namespaces and error handlers of one extension.

    :param server: returns the server in use, or ``None`` before ``init_app``;
        a handler registered while there is one is handed to it at once.
    :param runner: runs a handler in its Flask context.
    :param extension: what class-based namespaces are bound to
        (:meth:`cluster.Namespace.bind`): they emit through it.
    """

    def __init__(self, server: Callable[[], ClusterServer | None], runner: HandlerRunner,
                 extension: SocketIO) -> None:
        self._server = server
        self._runner = runner
        self._extension = extension
        #: ``(event, handler, namespace)``, the handler wrapped for its context
        self.handlers: list[tuple[str, Callable[..., Any], str]] = []
        self.namespace_handlers: list[Any] = []
        self.exception_handlers: dict[str, Callable[[Exception], Any]] = {}
        self.default_exception_handler: Callable[[Exception], Any] | None = None

    def register_on(self, server: ClusterServer) -> None:
        """Hand everything registered so far to a newly created ``server``."""
        for event, handler, namespace in self.handlers:
            server.on(event, handler, namespace=namespace)
        for namespace_handler in self.namespace_handlers:
            server.register_namespace(namespace_handler)

    def on(self, message: str, namespace: str | None = None) -> Callable[[F], F]:
        namespace = namespace or "/"

        def decorator(handler: F) -> F:
            self.on_event(message, handler, namespace)
            return handler

        return decorator

    def on_event(
        self, message: str, handler: Callable[..., Any], namespace: str | None = None
    ) -> None:
        namespace = namespace or "/"
        runner = self._runner

        def run_in_flask_context(*args: Any) -> Any:
            # python-socketio puts what a catch-all caught before the sid:
            # (event, sid, ...), (namespace, sid, ...) or (event, namespace, sid, ...)
            real_namespace = namespace
            caught: tuple[Any, ...] = ()
            if message == "*":
                caught, args = (args[0],), args[1:]
            if namespace == "*":
                real_namespace, args = args[0], args[1:]
            return runner.run(handler, message, real_namespace, args[0], *caught, *args[1:])

        run_in_flask_context.__wrapped__ = handler  # type: ignore[attr-defined]
        server = self._server()
        if server is not None:
            server.on(message, run_in_flask_context, namespace=namespace)
        self.handlers.append((message, run_in_flask_context, namespace))

    def event(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and not kwargs and callable(args[0]):
            handler = args[0]
            return self.on(handler.__name__)(handler)

        def decorator(handler: F) -> F:
            return self.on(handler.__name__, *args, **kwargs)(handler)

        return decorator

    def on_namespace(self, namespace_handler: Any) -> None:
        from cluster.flask_integration.namespace import Namespace

        if not isinstance(namespace_handler, Namespace):
            raise ConfigurationError(
                "on_namespace() takes a cluster.Namespace instance; derive your "
                "class from cluster.Namespace rather than socketio.Namespace."
            )
        namespace_handler.bind(self._extension)
        server = self._server()
        if server is not None:
            server.register_namespace(namespace_handler)
        self.namespace_handlers.append(namespace_handler)

    def on_error(self, namespace: str | None = None) -> Callable[[F], F]:
        namespace = namespace or "/"

        def decorator(exception_handler: F) -> F:
            if not callable(exception_handler):
                raise ConfigurationError("on_error() must decorate a function.")
            self.exception_handlers[namespace] = exception_handler
            return exception_handler

        return decorator

    def on_error_default(self, exception_handler: F) -> F:
        if not callable(exception_handler):
            raise ConfigurationError("on_error_default() must decorate a function.")
        self.default_exception_handler = exception_handler
        return exception_handler
