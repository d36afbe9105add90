"""Exceptions raised by the session store.

The tree::

    SessionStoreError                    base of everything raised here
     ├── SessionValueError (TypeError)   a session value cannot be stored
     ├── SessionDataError                stored data cannot be decoded
     ├── SessionNotFound (KeyError)      the session expired or was deleted
     ├── InvalidSessionId (ValueError)   not an id this store issued
     ├── SessionStoreUnavailable         the backend (Redis) failed
     │    └── SessionStoreAccessDenied   Redis refused our credentials, or
     │                                   we refused its TLS certificate
     └── SessionNotSaved                 a handler's session changes could not
                                         be written through (raised to the
                                         handler path by the socket node)

Catch ``SessionStoreError`` to handle every failure of the store in one place;
``SessionStoreUnavailable`` is the one a node should treat as "Redis is down,
retry later" rather than as a bug.
"""

from __future__ import annotations

__all__ = [
    "InvalidSessionId",
    "SessionDataError",
    "SessionNotFound",
    "SessionNotSaved",
    "SessionStoreAccessDenied",
    "SessionStoreError",
    "SessionStoreUnavailable",
    "SessionValueError",
]


class SessionStoreError(Exception):
    """Base class of every exception the session store raises."""


class SessionValueError(SessionStoreError, TypeError):
    """A value put in the session cannot be serialized.

    It is also a ``TypeError``, which is what ``json.dumps`` raises for the
    same mistake, so existing ``except TypeError`` handlers keep working.
    """

    def __init__(self, key: object, value: object, reason: str) -> None:
        self.key = key
        self.value_type = type(value).__name__
        super().__init__(
            f"Session key {key!r} holds a {self.value_type} that cannot be saved "
            f"({reason}). Session values must be JSON types (str, int, float, "
            "bool, None, list, dict with str keys) or tuple, bytes, datetime, "
            "UUID or Markup. Convert the value before storing it (for example "
            "list(a_set), str(a_decimal), a_date.isoformat()) or store an id "
            "and look the object up when needed."
        )


class SessionDataError(SessionStoreError):
    """Data read back from the store is not what this store writes.

    Raised when a stored field is not valid JSON (corruption, or another
    program writing under the same key prefix). Nothing read is ever executed
    or unpickled; a node should treat the session as lost and start a fresh one.
    """


class SessionNotFound(SessionStoreError, KeyError):
    """The session does not exist (it expired, or was deleted).

    Raised by operations that need an existing session (``save``,
    ``issue_resume``). ``load`` returns ``None`` instead.
    """

    def __str__(self) -> str:
        # KeyError's __str__ quotes the message; this keeps it readable.
        return str(self.args[0]) if self.args else "session not found"


class InvalidSessionId(SessionStoreError, ValueError):
    """The session id is not of the form this store issues.

    Session ids come from ``create()``; they are URL-safe base64 text. Pass
    the ``session_id`` of the ``SessionHandle`` unchanged.
    """


class SessionStoreUnavailable(SessionStoreError):
    """The backend failed: Redis is unreachable, timed out, or refused a command.

    The message names the server (never its password) and the operation. The
    original exception is chained as ``__cause__``. The store does not retry:
    the caller decides whether to retry, degrade or refuse.
    """


class SessionStoreAccessDenied(SessionStoreUnavailable):
    """Redis refused the credentials or a permission, or its TLS certificate
    is not trusted: a configuration error, which no retry fixes. The message
    says what to change."""


class SessionNotSaved(SessionStoreError):
    """A handler changed the session (or its rooms) and the store refused
    the write, so the change lives only in this connection and would be
    lost with the node.

    The socket node raises it to the application's ``@socketio.on_error``
    handlers (whose return value becomes the ack, as for any handler
    error); without one, the event gets no ack at all, so a client never
    reads a success. The changes stay pending and go with the next save.
    ``session_id`` is redacted in the message; ``__cause__`` is the store's
    error.
    """

    def __init__(self, session: str, cause: BaseException) -> None:
        self.cause = cause
        super().__init__(
            f"The changes to session {session} were not saved: the session store refused "
            f"the write ({cause}). Free memory in Redis or raise its maxmemory (a full "
            "Redis with maxmemory-policy noeviction refuses writes), or check that it is "
            "reachable; the changes stay in this connection and are written with its "
            "next save.")
