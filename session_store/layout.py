"""How a session is stored: field names, the resume record, TTL units.

Every backend keeps the same layout, so the shared logic in
:mod:`session_store.base` and each backend's primitives agree on it.

Stored layout of one session (a Redis hash, or a dict in memory)::

    d:<key>      tagged-JSON value of session[key]    (one field per key)
    m:identity   identity digest (see resume.identity_digest)
    m:created    unix time of create()
    m:updated    unix time of the last save()
    m:version    number of saves since create()
    m:resume     the session's current resume id (stored form), if one was issued
    m:resume_record  its resume record (see below)

The ``d:``/``m:`` prefixes keep session keys from ever colliding with metadata.

A resume record, stored under the resume id's
:func:`~session_store.resume.stored_form`, is the JSON object
``{"s": session id, "i": identity digest}``, plus ``"m"``: its MAC tag when
the store has a secret (:mod:`session_store.record_mac`).
"""

from __future__ import annotations

import json

from .resume import ResumeStatus

#: the prefix of every key a store writes, so sessions share a database
DEFAULT_KEY_PREFIX = "sio:sess:"
#: seconds a session stays resumable after its connection ends
DEFAULT_TTL = 120.0

__all__ = [
    "DATA",
    "META_CREATED",
    "META_IDENTITY",
    "META_RESUME",
    "META_RESUME_RECORD",
    "META_UPDATED",
    "META_VERSION",
    "parse_resume_record",
    "resume_record",
    "text",
    "ttl_ms",
]

DATA = "d:"
META_IDENTITY = "m:identity"
META_CREATED = "m:created"
META_UPDATED = "m:updated"
META_VERSION = "m:version"
META_RESUME = "m:resume"
META_RESUME_RECORD = "m:resume_record"


def ttl_ms(seconds: float, name: str) -> int:
    """``seconds`` as whole milliseconds (at least 1), for the backends' TTLs.

    :raises ValueError: ``seconds`` is not a positive number (``name`` says
        which option it was).
    """
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {seconds!r}")
    return max(1, int(seconds * 1000))


def text(value: str | bytes) -> str:
    """A field name as read back from a backend (Redis answers bytes)."""
    return value.decode("utf-8") if isinstance(value, bytes) else value


def resume_record(session_id: str, digest: str, tag: str | None = None) -> str:
    """The stored resume record of ``session_id`` for the identity ``digest``."""
    entry = {"s": session_id, "i": digest}
    if tag is not None:
        entry["m"] = tag
    return json.dumps(entry)


def parse_resume_record(
    record: str | bytes, digest: str
) -> tuple[ResumeStatus, str | None, str | None]:
    """Decide a claim from a stored resume record (for backends without
    scripts): the status, the session id and the record's MAC tag."""
    try:
        parsed = json.loads(record)
        session_id, stored_digest = parsed["s"], parsed["i"]
    except (ValueError, TypeError, KeyError):
        return ResumeStatus.MALFORMED, None, None
    if stored_digest != digest:
        return ResumeStatus.IDENTITY_MISMATCH, None, None
    tag = parsed.get("m")
    return ResumeStatus.GRANTED, session_id, tag if isinstance(tag, str) else None
