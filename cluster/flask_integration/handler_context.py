"""Run a Socket.IO handler inside the Flask model.

Every handler (decorated functions, ``Namespace`` methods, ack callbacks) runs
through :class:`HandlerRunner.run`, which gives it what a Flask-SocketIO
handler gets:

- an application context (``current_app``, a fresh ``g`` per event);
- the request context of the connection, built from the WSGI environ of the
  request that opened it, with ``request.sid``, ``request.namespace`` and
  ``request.event = {"message": ..., "args": ...}`` set;
- ``session``: the forked session of the connection (``manage_session=True``),
  or the application's own session interface opened for every event and
  saved back when modified (``manage_session=False``, for server-side sessions
  such as Flask-Session's);
- no ``before_request``/``after_request`` hooks: only ``request_context`` is
  pushed, the request is never dispatched.

The forked session is written through after the handler, before its ack.
When the store refuses the write, :class:`session_store.SessionNotSaved`
goes to the application's ``on_error`` handlers (their return value is the
ack, as for any handler error); without one the event gets no ack, so a
client never reads a success for a write that did not happen.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import flask

from cluster.exceptions import ConnectionRefusedError
from cluster.flask_integration.event_context import EventRequestContext
from session_store import SessionNotSaved

if TYPE_CHECKING:
    from cluster.flask_integration.extension import SocketIO

logger = logging.getLogger("cluster.handlers")

#: the environ key of the forked session, Flask-SocketIO's name for it
SAVED_SESSION_KEY = "saved_session"


@lru_cache(maxsize=1024)
def accepts_positional_argument(handler: Callable[..., Any]) -> bool:
    """Whether ``handler`` can take one positional argument.

    Connect handlers are written either as ``def connect()`` or
    ``def connect(auth)`` and disconnect handlers as ``def disconnect()`` or
    ``def disconnect(reason)``. Deciding from the signature (instead of calling
    and catching ``TypeError``) never hides a ``TypeError`` raised inside the
    handler.
    """
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):  # builtins and C callables: assume yes
        return True
    positional = 0
    for parameter in signature.parameters.values():
        if parameter.kind is parameter.VAR_POSITIONAL:
            return True
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            positional += 1
    return positional >= 1


class HandlerRunner:
    """Pushes the Flask contexts around a handler call for one extension."""

    def __init__(self, socketio: SocketIO) -> None:
        self.socketio = socketio
        self.in_flight = 0
        self._lock = threading.Lock()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no handler runs (a draining node's last writes)."""
        deadline = time.monotonic() + timeout
        while self.in_flight > 0:
            if time.monotonic() >= deadline:
                return False
            self.socketio.server.sleep(0.02)
        return True

    def run(
        self,
        handler: Callable[..., Any],
        message: str | None,
        namespace: str,
        sid: str | None,
        *args: Any,
    ) -> Any:
        """Call ``handler`` for ``message`` with python-socketio's ``args``.

        ``args`` are what python-socketio passes after the sid: ``(environ,
        auth)`` for connect, ``(reason,)`` for disconnect, the event's data for
        everything else.
        """
        socketio = self.socketio
        app = socketio.app
        if app is None:
            raise RuntimeError(
                "SocketIO has no Flask application: call socketio.init_app(app) "
                "before handling events."
            )
        environ = socketio.server.get_environ(sid, namespace) if sid else None
        live = environ is not None
        if environ is None:
            # the connection is gone (an ack that arrived after a disconnect,
            # for instance): keep the Flask model with a blank request and
            # no forked session
            environ = _blank_environ(app)
        if message == "connect":
            call_args: tuple[Any, ...] = (args[1],) if len(args) > 1 else (None,)
            if not accepts_positional_argument(handler):
                call_args = ()
        elif message == "disconnect":
            call_args = args[:1] if accepts_positional_argument(handler) else ()
        else:
            call_args = args

        with self._lock:
            self.in_flight += 1
        try:
            return self._run_in_context(app, environ, live, handler, message, namespace, sid,
                                        call_args)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _run_in_context(self, app: flask.Flask, environ: dict[str, Any], live: bool,
                        handler: Callable[..., Any], message: str | None, namespace: str,
                        sid: str | None, call_args: tuple[Any, ...]) -> Any:
        socketio = self.socketio
        request_context = EventRequestContext(app, environ)
        sessions = socketio.sessions if (live and socketio.manage_session) else None
        if sessions is not None:
            forked = sessions.session_for(environ)
            if forked is not None:
                # set before push so Flask does not open the cookie session
                _set_context_session(request_context, forked)
        with request_context:
            if sessions is not None and sessions.session_for(environ) is None:
                # first handler of this connection: fork the HTTP session
                _set_context_session(
                    request_context, sessions.fork(environ, request_context.session))
            request = flask.request
            request.sid = sid  # type: ignore[attr-defined]
            request.namespace = namespace  # type: ignore[attr-defined]
            request.event = {"message": message, "args": call_args}  # type: ignore[attr-defined]
            # True when this connection resumed a session (after a reconnect)
            request.resumed = bool(  # type: ignore[attr-defined]
                sessions is not None and sessions.is_resumed(environ))
            # True when connection state recovery restored the sid and replayed
            request.recovered = bool(  # type: ignore[attr-defined]
                sessions is not None and sessions.is_recovered(environ))
            not_saved: SessionNotSaved | None = None
            try:
                result = handler(*call_args)
            except ConnectionRefusedError:
                raise
            except Exception as exc:
                result = self._handle_exception(exc, namespace)
            finally:
                not_saved = self._persist_session(app, request_context, environ, live)
            if not_saved is not None and message not in ("connect", "disconnect"):
                return self._session_not_saved(not_saved, namespace)
            return result

    def _session_not_saved(self, exc: SessionNotSaved, namespace: str) -> Any:
        """The ack of an event whose session changes were not saved: what
        the application's error handler returns, else none at all
        (python-socketio sends no ack for its ``not_handled``). Already
        counted and logged (once per window) by the sessions."""
        socketio = self.socketio
        if namespace in socketio.exception_handlers or socketio.default_exception_handler:
            return self._handle_exception(exc, namespace)
        return socketio.server.not_handled

    def _handle_exception(self, exc: Exception, namespace: str) -> Any:
        socketio = self.socketio
        error_handler = socketio.exception_handlers.get(namespace)
        if error_handler is None:
            error_handler = socketio.default_exception_handler
        if error_handler is None:
            raise exc
        return error_handler(exc)

    def _persist_session(
        self, app: flask.Flask, request_context: Any, environ: dict[str, Any], live: bool
    ) -> SessionNotSaved | None:
        """Save what the handler changed; the error when the store refused it."""
        session = _context_session(request_context)
        if session is None or not live:
            return None
        socketio = self.socketio
        if socketio.manage_session:
            # where Flask-SocketIO keeps the forked session; tests and
            # extensions written for it read it there
            environ[SAVED_SESSION_KEY] = session
            if socketio.sessions is not None:
                # write-through: saved before the ack or the next event
                try:
                    socketio.sessions.save(environ, session)
                except SessionNotSaved as exc:
                    return exc
        elif session.modified and not app.session_interface.is_null_session(session):
            # server-side sessions (Flask-Session) store on save; the cookie
            # in the throwaway response cannot reach the client and is dropped
            response = app.response_class()
            app.session_interface.save_session(app, session, response)
        return None


def _set_context_session(request_context: Any, session: Any) -> None:
    # Flask 3.1 keeps the session in a private attribute behind a read-only
    # property; older 3.x releases use a plain attribute
    if isinstance(getattr(type(request_context), "session", None), property):
        request_context._session = session
    else:
        request_context.session = session


def _context_session(request_context: Any) -> Any:
    if isinstance(getattr(type(request_context), "session", None), property):
        return request_context._session
    return request_context.session


def _blank_environ(app: flask.Flask) -> dict[str, Any]:
    from werkzeug.test import EnvironBuilder

    builder = EnvironBuilder(path="/socket.io/")
    try:
        return builder.get_environ()
    finally:
        builder.close()
