"""Resume ids and session ids: generation, validation, redaction, results.

Both kinds of id are ``secrets.token_urlsafe(24)``: 192 random bits written
as 32 URL-safe characters, so they can sit in a Redis key, a URL or a
Socket.IO CONNECT payload unchanged.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import TypeGuard

__all__ = [
    "ResumeResult",
    "ResumeStatus",
    "identity_digest",
    "is_well_formed_id",
    "new_claim_token",
    "new_id",
    "redact",
]

ID_BYTES = 24  # 192 bits; the design asks for at least 128
# Accept any URL-safe token of at least 22 characters (>= 132 bits) so ids from
# an older release with a different length still validate; reject the rest
# before they reach Redis, where they would become part of a key name.
_ID_RE = re.compile(r"[A-Za-z0-9_-]{22,128}")


def new_id() -> str:
    """A fresh unguessable id (session id or resume id)."""
    return secrets.token_urlsafe(ID_BYTES)


def new_claim_token() -> str:
    """A fresh token for :meth:`~.base.SessionStore.claim_resume` (made on
    the node, never taken from a client)."""
    return secrets.token_urlsafe(ID_BYTES)


def is_well_formed_id(value: object) -> TypeGuard[str]:
    """Whether ``value`` looks like an id this package issues (a ``str`` token)."""
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


def stored_form(resume_id: str) -> str:
    """What the store keeps of a resume id: its SHA-256 digest (urlsafe
    base64, unpadded), never the id itself.

    Whoever can read Redis (its keys, ``MONITOR``, a dump) then learns no
    usable resume id: presenting one proves possession of what only its
    client received, the preimage.
    """
    digest = hashlib.sha256(resume_id.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def redact(value: object, keep: int = 6) -> str:
    """A loggable form of an id: its first ``keep`` characters and an ellipsis.

    Ids are bearer secrets; logs must never hold one in full. Anything that is
    not a string is shown by type only.
    """
    if not isinstance(value, str):
        return f"<{type(value).__name__}>"
    if len(value) <= keep:
        return "…"
    # repr() keeps control characters from a forged id out of the log line.
    return repr(value[:keep])[1:-1] + "…"


def identity_digest(identity: str | None) -> str:
    """The form an identity is stored in: a SHA-256 digest, or ``"none"``.

    Redis never holds the raw identity (a user id, an e-mail), only enough to
    compare it. ``None`` (anonymous) has its own value, so an anonymous resume
    id matches only an anonymous claimant and vice versa.
    """
    if identity is None:
        return "none"
    if not isinstance(identity, str):
        raise TypeError(
            f"identity must be a str or None, not {type(identity).__name__}; "
            "pass str(user_id) (for Flask-Login, current_user.get_id())."
        )
    return "sha256:" + hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()


class ResumeStatus(enum.StrEnum):
    """Outcome of :meth:`SessionStore.claim_resume`.

    Every value but ``GRANTED`` is a refusal: the client gets a fresh session.
    """

    GRANTED = "granted"
    #: No such resume id: never issued, expired, or its session was deleted.
    UNKNOWN = "unknown"
    #: The id was claimed before (a tombstone remembers it for a while).
    REPLAYED = "replayed"
    #: The id belongs to a different identity than the claimant's.
    IDENTITY_MISMATCH = "identity_mismatch"
    #: Not an id this store could have issued (wrong type, length, alphabet).
    MALFORMED = "malformed"


REFUSALS: tuple[ResumeStatus, ...] = tuple(s for s in ResumeStatus if s is not ResumeStatus.GRANTED)


@dataclass(frozen=True)
class ResumeResult:
    """What :meth:`SessionStore.claim_resume` decided.

    ``session_id`` is set only when ``status`` is ``GRANTED``.
    """

    status: ResumeStatus
    session_id: str | None = None

    @property
    def granted(self) -> bool:
        """``True`` when the claim succeeded and ``session_id`` may be loaded."""
        return self.status is ResumeStatus.GRANTED

    def __repr__(self) -> str:
        return f"ResumeResult({self.status.value}, session_id={redact(self.session_id)})"
