"""Forked Flask sessions for Socket.IO connections, persisted so they resume anywhere.

A Socket.IO connection gets a *fork* of the user's HTTP session when it
connects (a :class:`ForkedSession`). Handlers read and change it as
``flask.session``; the store saves only what changed, and a client that
reconnects, to any node, exchanges its single-use resume id for the same
session. This package knows nothing of Socket.IO.

Typical use by a socket node::

    # secret: the deployment's, the same on every node; values and resume
    # records then carry MACs (see session_store.record_mac)
    store = RedisSessionStore("redis://127.0.0.1:6379/0", ttl=120, secret=SECRET)

    # on connect
    handle = store.create(dict(flask.session), identity=user_id)
    resume_id = store.issue_resume(handle.session_id, user_id)

    # after each handler
    store.save(handle.session_id, handle.session)

    # on disconnect: the session and its resume id now live `ttl` seconds
    store.expire(handle.session_id)

    # on a reconnect presenting resume_id
    result = store.claim_resume(resume_id, user_id)
    if result.granted and (session := store.load(result.session_id)) is not None:
        store.persist(result.session_id)
        new_resume_id = store.issue_resume(result.session_id, user_id)
"""

from .base import SessionStore
from .codec import decode_value, encode_value
from .exceptions import (
    InvalidSessionId,
    SessionDataError,
    SessionNotFound,
    SessionNotSaved,
    SessionStoreAccessDenied,
    SessionStoreError,
    SessionStoreUnavailable,
    SessionValueError,
)
from .forked_session import ForkedSession, SessionHandle
from .layout import DEFAULT_KEY_PREFIX, DEFAULT_TTL
from .memory_store import MemorySessionStore
from .redis_store import RedisSessionStore
from .resume import ResumeResult, ResumeStatus, redact

__all__ = [
    "DEFAULT_KEY_PREFIX",
    "DEFAULT_TTL",
    "ForkedSession",
    "InvalidSessionId",
    "MemorySessionStore",
    "RedisSessionStore",
    "ResumeResult",
    "ResumeStatus",
    "SessionDataError",
    "SessionHandle",
    "SessionNotFound",
    "SessionNotSaved",
    "SessionStore",
    "SessionStoreAccessDenied",
    "SessionStoreError",
    "SessionStoreUnavailable",
    "SessionValueError",
    "decode_value",
    "encode_value",
    "redact",
]
