"""Flask-SocketIO's emit arguments, mapped onto python-socketio's.

The extension's ``emit``/``call`` delegate to an :class:`Emitter`, which
keeps Flask-SocketIO's keywords (``to``/``room``, ``include_self``,
``broadcast``, ``*args``); the helpers below turn them into what
:class:`socketio.Server` takes, and run ack callbacks in the Flask context
of the handler that emitted.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import flask

from cluster.exceptions import ConfigurationError
from cluster.flask_integration.singleton_tasks import check_lease

if TYPE_CHECKING:
    from cluster.flask_integration.handler_context import HandlerRunner
    from cluster.node.server import ClusterServer


class Emitter:
    """``emit`` and ``call`` of one extension.

    :param server: returns the server in use (emitting needs ``init_app``).
    :param runner: runs ack callbacks in the emitting handler's Flask context.
    """

    def __init__(self, server: Callable[[], ClusterServer], runner: HandlerRunner) -> None:
        self._server = server
        self._runner = runner

    def emit(self, event: str, *args: Any, **kwargs: Any) -> None:
        target = emit_target(kwargs)
        check_lease()  # a singleton task that lost its lease emits no more
        callback = kwargs.pop("callback", None)
        if callback is not None:
            callback = callback_in_flask_context(self._runner, callback)
        self._server().emit(
            event, event_data(args), to=target.to, skip_sid=target.skip_sid,
            namespace=target.namespace, callback=callback, **kwargs,
        )

    def call(self, event: str, *args: Any, **kwargs: Any) -> Any:
        namespace, to = call_target(kwargs)
        timeout = kwargs.pop("timeout", 60)
        check_lease()
        return self._server().call(
            event, event_data(args), to=to, namespace=namespace, timeout=timeout,
            **kwargs,
        )


def event_data(args: tuple[Any, ...]) -> Any:
    """python-socketio sends a tuple as several arguments and anything else
    as one; Flask-SocketIO's ``emit(event, *args)`` maps onto that."""
    if len(args) == 1:
        return args[0]
    if not args:
        return None
    return tuple(args)


@dataclass(frozen=True)
class EmitTarget:
    namespace: str
    to: Any
    skip_sid: Any


def emit_target(kwargs: dict[str, Any]) -> EmitTarget:
    """Take the target keywords out of ``kwargs`` (what is left goes to
    python-socketio): ``namespace`` (default ``"/"``), ``to``/``room``
    (default everyone), ``include_self`` (default ``True``: with ``False``
    in a handler, the handler's client is skipped), ``skip_sid``;
    ``broadcast`` is dropped (everyone is the default anyway)."""
    namespace = kwargs.pop("namespace", "/") or "/"
    to = kwargs.pop("to", None)
    if to is None:
        to = kwargs.pop("room", None)
    else:
        kwargs.pop("room", None)
    include_self = kwargs.pop("include_self", True)
    skip_sid = kwargs.pop("skip_sid", None)
    if not include_self and skip_sid is None and flask.has_request_context():
        skip_sid = getattr(flask.request, "sid", None)
    kwargs.pop("broadcast", None)
    return EmitTarget(namespace, to, skip_sid)


def call_target(kwargs: dict[str, Any]) -> tuple[str, str]:
    """``(namespace, sid)`` of a ``call``: ``to=``/``sid=``, else the
    client of the handler that calls."""
    namespace = kwargs.pop("namespace", "/") or "/"
    to = kwargs.pop("to", None) or kwargs.pop("sid", None)
    if to is None and flask.has_request_context():
        to = getattr(flask.request, "sid", None)
    if to is None:
        raise ConfigurationError("call() needs the client: pass to=<sid>.")
    return namespace, to


def callback_in_flask_context(runner: HandlerRunner,
                              callback: Callable[..., Any]) -> Callable[..., Any]:
    """Run an ack callback in the Flask context of the emitting handler."""
    if not flask.has_request_context():
        return callback
    sid = getattr(flask.request, "sid", None)
    namespace = getattr(flask.request, "namespace", None) or "/"
    if sid is None:
        return callback

    def ack_in_flask_context(*ack_args: Any) -> Any:
        return runner.run(callback, None, namespace, sid, *ack_args)

    # keeps attributes such as the bus's ack timeout (cluster.bus.with_timeout)
    functools.update_wrapper(ack_in_flask_context, callback)
    return ack_in_flask_context
