"""The Flask request context of a Socket.IO event, with its URL matched once
per connection.

Every handler runs in a request context built from the environ of the
request that opened the connection, as in Flask-SocketIO. Pushing one makes
Flask match the request's URL against the application's routes
(:meth:`flask.ctx.RequestContext.match_request`). For a Socket.IO connection
the path is ``/socket.io/``, which no view serves, so the match raises
``NotFound``, and Flask keeps the exception on the request
(``request.routing_exception``) with its traceback. That traceback holds the
frames of the push, and through them the request context that holds the
exception: a reference cycle of about 55 objects per event (frames, the
request, its context, the green thread's frame...), plus the cycle of
werkzeug's recursive matching closure. Reference counting cannot free a
cycle, so every event left its context for the garbage collector. Measured
on one node at 600 emits/s (a room of ten, the fan-out benchmark's ``1x10``
shape): a young collection every 1.6 s freed about 52,000 such objects and
stopped the node for 40-70 ms each time, which was the p99 latency of that
shape (68-90 ms, against a p50 of 1.3-2.5 ms).

The URL of a connection does not change, and Flask allows no new route once
the application has served a request, so the outcome of the match is the
same for every event of a connection. :class:`EventRequestContext` matches
once, keeps the outcome in the connection's environ (the rule and its
arguments, or the routing exception without its traceback, so it holds no
frame), and gives every later event of the connection the same
``url_rule``, ``view_args`` and ``routing_exception`` a match would have
given. Nothing else of the request context changes: the session is opened
before the match as Flask does, and ``url_for`` uses the same URL adapter.
(Handlers get this class, not ``app.request_context()``: an application
that overrides that method to install its own context class is not
followed, as Flask itself offers no setting for the class.)

Each connect pushes one such context to fork the HTTP session, and Flask's
default cookie session builds a new signing serializer for every open,
which itself serializes an empty dict to test its output type: 6% of a
node's CPU per connect (py-spy, 8,000 connects without cookies). When the
application uses that default interface exactly, has a secret key and the
request carries no session cookie, Flask's open would return an empty
``session_class()`` whatever else it did, so the context gets one without
that work (:func:`cookieless_session`). Any other interface, a subclass, a
cookie, or no secret key: Flask opens the session as always.
"""

from __future__ import annotations

from typing import Any

import flask
from flask.sessions import SecureCookieSessionInterface, SessionMixin
from werkzeug.exceptions import HTTPException
from werkzeug.http import parse_cookie

__all__ = ["MATCH_KEY", "EventRequestContext", "cookieless_session"]

#: the environ key under which a connection keeps the outcome of its URL match
MATCH_KEY = "cluster.url_match"


class EventRequestContext(flask.ctx.RequestContext):
    """A request context whose URL match is computed once per environ
    (see the module doc); otherwise Flask's own."""

    def __init__(self, app: flask.Flask, environ: dict[str, Any],
                 request: flask.Request | None = None,
                 session: SessionMixin | None = None) -> None:
        if session is None:  # see the module doc
            session = cookieless_session(app, environ)
        super().__init__(app, environ, request, session)

    def match_request(self) -> None:
        """Give the request the outcome of its URL match, taken from the
        environ when this connection was matched before (against the same
        URL map)."""
        environ = self.request.environ
        url_map = self.app.url_map
        kept = environ.get(MATCH_KEY)
        if kept is None or kept[0] is not url_map:
            kept = (url_map, *self._match())
            environ[MATCH_KEY] = kept
        _, rule, view_args, error = kept
        request = self.request
        if error is not None:
            if error.__traceback__ is not None:
                # a handler raised it: the frames it now holds would stay
                # with the connection
                _drop_frames(error)
            request.routing_exception = error
        else:
            request.url_rule = rule
            # a handler may change its request's view_args: each gets its own
            request.view_args = dict(view_args) if view_args is not None else None

    def _match(self) -> tuple[Any, Any, HTTPException | None]:
        try:
            rule, view_args = self.url_adapter.match(return_rule=True)  # type: ignore[union-attr]
        except HTTPException as exc:
            return None, None, _drop_frames(exc)
        return rule, view_args, None


def _drop_frames(exc: HTTPException) -> HTTPException:
    """``exc`` without its traceback and the exception it was raised from
    or during (werkzeug's NoMatch at the match, with a traceback of its
    own): kept, it then holds no frame, and through them no request context."""
    exc.__context__ = exc.__cause__ = None
    return exc.with_traceback(None)


def cookieless_session(app: flask.Flask, environ: dict[str, Any]) -> SessionMixin | None:
    """The session Flask's default cookie interface opens for a request
    (``environ``) without a session cookie, an empty ``session_class()``,
    made without building a signing serializer; None when Flask must open
    it (another interface or a subclass, no secret key, or a cookie)."""
    interface = app.session_interface
    if type(interface) is not SecureCookieSessionInterface or not app.secret_key:
        return None
    if "HTTP_COOKIE" in environ and parse_cookie(environ).get(interface.get_cookie_name(app)):
        return None
    return interface.session_class()
