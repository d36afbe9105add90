"""MACs on what the store writes to Redis: session values and resume records.

Anyone who can write to Redis could otherwise forge a session (``_user_id``
of an admin) and a resume record pointing to it, and walk in with it. So
every value the store acts on carries an HMAC-SHA256 tag under a key
derived from the deployment's secret, and a value whose tag does not check
is treated as missing (logged and counted by the store):

- a session value (hash field ``d:<key>``) is stored as ``<tag>.<tagged
  JSON>``; the tag covers the session id, the field name and the value, so
  a value cannot be moved to another session or key, nor changed;
- a resume record (``{"s": session id, "i": identity digest}``) gets
  ``"m": <tag>`` over the resume id, the session id and the digest, so no
  one can point a resume id at another session or identity.

What a tag cannot stop, by construction: someone with write access to Redis
can still delete keys or fields, or put back an earlier value of the same
field of the same session. Redis ACLs and TLS (see the README's Security
section) keep such writers out.

Key derivation: ``HMAC-SHA256(secret, LABEL)``, so the session key differs
from the bus signing key even when both come from one secret, and a tag
made for one purpose never verifies for the other. The secret must be the
same on every node (the extension uses the bus signing secret, else the
application's ``SECRET_KEY``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable

__all__ = ["LABEL", "MacForSecret", "RecordMac", "derive_key"]

#: the derivation label; a new label (v2) would invalidate every stored tag
LABEL = b"flask-socketio-cluster/session-store/records/v1"
_TAG_BYTES = 16  # 128-bit tags: forgery odds 2**-128 per try
_TAG_CHARS = 22  # urlsafe base64 of 16 bytes, unpadded
_SEP = "."


def derive_key(secret: str | bytes) -> bytes:
    """The record key for ``secret`` (an HMAC-based derivation with :data:`LABEL`)."""
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    if not secret:
        raise ValueError("the session record secret must not be empty")
    return hmac.new(secret, LABEL, hashlib.sha256).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class RecordMac:
    """Tags and checks session values and resume records under one key."""

    def __init__(self, secret: str | bytes) -> None:
        self._key = derive_key(secret)

    def _tag(self, *parts: str) -> str:
        message = "\0".join(parts).encode("utf-8", "surrogatepass")
        return _b64(hmac.new(self._key, message, hashlib.sha256).digest()[:_TAG_BYTES])

    # -- session values ---------------------------------------------------------

    def seal_field(self, session_id: str, name: str, value: str) -> str:
        """``value`` as stored under field ``name`` of ``session_id``."""
        return self._tag("field", session_id, name, value) + _SEP + value

    def open_field(self, session_id: str, name: str, stored: str | bytes) -> str | None:
        """The value sealed in ``stored``, or ``None`` if its tag does not check."""
        if isinstance(stored, bytes):
            try:
                stored = stored.decode("utf-8")
            except UnicodeDecodeError:
                return None
        tag, sep, value = stored[:_TAG_CHARS], stored[_TAG_CHARS:_TAG_CHARS + 1], \
            stored[_TAG_CHARS + 1:]
        if sep != _SEP:
            return None
        expected = self._tag("field", session_id, name, value)
        return value if hmac.compare_digest(tag, expected) else None

    # -- resume records ---------------------------------------------------------

    def resume_tag(self, resume_id: str, session_id: str, digest: str) -> str:
        """The tag of the record that maps ``resume_id`` to ``session_id``."""
        return self._tag("resume", resume_id, session_id, digest)

    def check_resume(self, resume_id: str, session_id: str, digest: str,
                     tag: object) -> bool:
        """Whether ``tag`` is the record's (constant time)."""
        return isinstance(tag, str) and hmac.compare_digest(
            tag, self.resume_tag(resume_id, session_id, digest))


class MacForSecret:
    """The :class:`RecordMac` of a store's ``secret``: a value, or a callable
    read when needed (an app's ``SECRET_KEY`` set after start-up counts);
    ``None`` or empty means no MACs. The key is derived again only when the
    secret changes."""

    def __init__(self, secret: str | bytes | Callable[[], str | bytes | None] | None) -> None:
        self._secret = secret
        self._cached: tuple[str | bytes, RecordMac] | None = None

    def current(self) -> RecordMac | None:
        """The record MAC for the secret as it is now (``None``: no secret)."""
        secret = self._secret() if callable(self._secret) else self._secret
        if not secret:
            return None
        cached = self._cached
        if cached is None or cached[0] != secret:
            cached = self._cached = (secret, RecordMac(secret))
        return cached[1]
