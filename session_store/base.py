"""The store interface and the logic every backend shares.

:class:`SessionStore` holds everything that does not depend on where bytes
live: id generation and validation, value encoding, identity hashing, MACs,
refusal counters and logging. A backend implements a handful of
``_backend_*`` primitives, each of which must be atomic on its own (a Lua
script in Redis, a lock in memory). The stored field layout every backend
keeps is in :mod:`session_store.layout`; the claim counters in
:mod:`session_store.claim_counts`.

With a ``secret``, every ``d:`` value and every resume record carries a MAC
(:mod:`session_store.record_mac`); a session with a value that fails the
check, or a resume record that does, is treated as missing, logged and
counted (:attr:`SessionStore.rejected_records`).
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .claim_counts import ClaimCounts
from .codec import decode_items, decode_value, encode_items
from .exceptions import InvalidSessionId, SessionNotFound
from .forked_session import ForkedSession, SessionHandle
from .layout import (
    DATA,
    DEFAULT_KEY_PREFIX,
    DEFAULT_TTL,
    META_CREATED,
    META_IDENTITY,
    META_UPDATED,
    META_VERSION,
    resume_record,
    text,
    ttl_ms,
)
from .record_mac import MacForSecret, RecordMac
from .resume import (
    ResumeResult,
    ResumeStatus,
    identity_digest,
    is_well_formed_id,
    new_claim_token,
    new_id,
    redact,
    stored_form,
)

__all__ = ["SessionStore"]

logger = logging.getLogger("session_store")


class SessionStore(ABC):
    """Forked sessions kept by id, with TTLs and single-use resume ids.

    :param key_prefix: prepended to every key (Redis) so several applications
        can share one database. Default ``"sio:sess:"``.
    :param ttl: seconds a session (and its resume id) survives after
        :meth:`expire` is called, i.e. after its connection ends. Default 120,
        socket.io's default ``maxDisconnectionDuration``.
    :param lease_ttl: seconds of the "connected" lease that :meth:`create`,
        :meth:`persist` and :meth:`issue_resume` apply. Sessions are never
        stored without expiry: if a node dies without calling :meth:`expire`
        the lease still runs out. Default 86400 (one day); a node whose
        connections may live longer calls :meth:`persist_many` periodically.
    :param tombstone_ttl: seconds a claimed resume id is remembered so a
        replay is reported as ``REPLAYED`` rather than ``UNKNOWN``.
        Default 600. After that a replay is still refused, as ``UNKNOWN``.
    :param secret: the deployment's secret, the same on every node, from
        which the MAC key of stored values and resume records is derived;
        or a callable returning it (read when needed, so an app's
        ``SECRET_KEY`` set after start-up counts). ``None`` (default): no
        MACs, for stores that nobody else can write to (memory, tests).

    Thread-safe. Every method that takes a session id raises
    :class:`InvalidSessionId` for an id this store cannot have issued, except
    :meth:`load`, which returns ``None``.
    """

    def __init__(
        self,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        ttl: float = DEFAULT_TTL,
        lease_ttl: float = 86400,
        tombstone_ttl: float = 600,
        secret: str | bytes | Callable[[], str | bytes | None] | None = None,
    ) -> None:
        if not isinstance(key_prefix, str):
            raise TypeError(f"key_prefix must be a str, got {type(key_prefix).__name__}")
        self.key_prefix = key_prefix
        self.ttl = float(ttl)
        self.lease_ttl = float(lease_ttl)
        self.tombstone_ttl = float(tombstone_ttl)
        self._ttl_ms = ttl_ms(ttl, "ttl")
        self._lease_ms = ttl_ms(lease_ttl, "lease_ttl")
        self._tombstone_ms = ttl_ms(tombstone_ttl, "tombstone_ttl")
        self._claims = ClaimCounts()
        self._macs = MacForSecret(secret)

    @property
    def rejected_records(self) -> int:
        """Stored values and resume records that failed their MAC check."""
        return self._claims.rejected

    # -- sessions ------------------------------------------------------------

    def create(self, data: Mapping[str, Any], identity: str | None) -> SessionHandle:
        """Store a fork of ``data`` (the HTTP session) as a new session.

        The session gets the connected lease (``lease_ttl``). Returns its id
        and a :class:`ForkedSession` holding a deep copy of ``data`` (exactly
        what :meth:`load` will return) with ``new=True`` and no pending changes.

        :raises SessionValueError: a value of ``data`` cannot be encoded.
        """
        encoded = encode_items(data)
        session_id = new_id()
        self._backend_create(session_id, self._new_record(session_id, encoded, identity),
                             self._lease_ms)
        logger.debug("created session %s", redact(session_id))
        # Decoding what was stored makes the fork a deep copy (nested values are
        # not shared with the HTTP session) that equals what load() returns.
        return SessionHandle(session_id, ForkedSession(decode_items(encoded), new=True))

    def create_resumable(self, data: Mapping[str, Any],
                         identity: str | None) -> tuple[SessionHandle, str]:
        """:meth:`create` and :meth:`issue_resume` in one step: a new session
        and its first resume id (bound to ``identity``).

        What a new connection needs, written together where the backend can:
        one round trip to Redis instead of four (the two scripts and the
        resume pointer's two writes). Nobody can know the resume id before
        this returns, so no claim can race the writes.

        :raises SessionValueError: a value of ``data`` cannot be encoded.
        """
        encoded = encode_items(data)
        session_id = new_id()
        resume_id = new_id()
        fields = self._new_record(session_id, encoded, identity)
        record = self._resume_record(session_id, resume_id, identity)
        if not self._backend_create_issued(session_id, fields, self._lease_ms,
                                           stored_form(resume_id), record):
            raise SessionNotFound(
                f"Session {redact(session_id)} was lost as it was created; cannot issue a "
                "resume id. Start a new session with create().")
        logger.debug("created session %s with its resume id", redact(session_id))
        return SessionHandle(session_id, ForkedSession(decode_items(encoded), new=True)), resume_id

    def _new_record(self, session_id: str, encoded: Mapping[str, str],
                    identity: str | None) -> dict[str, str]:
        fields = self._sealed(session_id, encoded)
        now = repr(time.time())
        fields.update(
            {
                META_IDENTITY: identity_digest(identity),
                META_CREATED: now,
                META_UPDATED: now,
                META_VERSION: "0",
            }
        )
        return fields

    def restore(self, session_id: str, data: Mapping[str, Any], identity: str | None) -> bool:
        """Write back, under its own id, a session the store has lost.

        For the node holding the session's live connection, after Redis came
        back empty (restarted without persistence, flushed, evicted): the
        connection's copy is the truth. The session gets the connected lease;
        its resume id must be re-armed with :meth:`issue_resume` (``reuse``).
        Returns ``False`` (and writes nothing) if the session still exists.

        :raises SessionValueError: a value of ``data`` cannot be encoded.
        """
        self._check_id(session_id)
        if self._backend_read(session_id) is not None:
            return False
        self._backend_create(session_id, self._new_record(session_id, encode_items(data),
                                                          identity), self._lease_ms)
        logger.info("restored session %s from its live connection", redact(session_id))
        return True

    def load(self, session_id: str) -> ForkedSession | None:
        """The stored session, or ``None`` if it does not exist (or expired).

        :raises SessionDataError: a stored value cannot be decoded.
        """
        if not is_well_formed_id(session_id):
            return None
        fields = self._backend_read(session_id)
        if fields is None:
            return None
        mac = self._mac()
        data: dict[str, Any] = {}
        for raw_name, raw_value in fields.items():
            name = text(raw_name)
            if name.startswith(DATA):
                key = name[len(DATA) :]
                if mac is not None:
                    opened = mac.open_field(session_id, name, raw_value)
                    if opened is None:
                        # one forged or foreign value taints the whole record
                        self._claims.reject("session %s: value %r failed its MAC check",
                                     redact(session_id), key)
                        return None
                    raw_value = opened
                data[key] = decode_value(key, raw_value)
        return ForkedSession(data)

    def save(self, session_id: str, session: ForkedSession) -> None:
        """Write the keys of ``session`` that changed since its last save.

        Only changed keys are set and only deleted keys removed, in one atomic
        step, so two handlers that change different keys of the same session
        concurrently both survive. Afterwards the written changes are marked
        saved on ``session``. Does nothing if there are no changes.

        :raises SessionNotFound: the session expired or was deleted; it is
            not recreated (that would resurrect it without its other keys).
        :raises SessionValueError: a changed value cannot be encoded; nothing
            is written.
        """
        self._check_id(session_id)
        # Read the mark before the changes: a change racing with this save
        # then stays pending instead of being forgotten unsaved.
        mark = session.change_mark
        set_items, deleted = session.changes()
        if not set_items and not deleted:
            return
        fields = self._sealed(session_id, encode_items(set_items))
        if not self._backend_save(
            session_id, fields, [DATA + k for k in deleted], repr(time.time())
        ):
            raise SessionNotFound(
                f"Session {redact(session_id)} no longer exists (expired or deleted); "
                "its changes were not saved. Start a new session with create()."
            )
        session.mark_saved(through=mark)

    def expire(self, session_id: str, ttl: float | None = None,
               resume_id: str | None = None) -> bool:
        """Start the countdown: the session and its resume id live ``ttl`` more
        seconds (default: the store's ``ttl``). Call it when the connection ends.

        ``resume_id``: the session's current resume id, when the caller knows
        it (the one it issued): its countdown then starts in the same round
        trip as the session's (on Redis, one instead of two; a resume id
        replaced meanwhile is found and moved along all the same).

        Returns ``False`` if the session no longer exists.
        """
        self._check_id(session_id)
        ms = self._ttl_ms if ttl is None else ttl_ms(ttl, "ttl")
        if resume_id is not None and is_well_formed_id(resume_id):
            return self._backend_expire_bound(session_id, ms, stored_form(resume_id))
        return self._backend_set_ttl([session_id], ms) == 1

    def persist(self, session_id: str) -> bool:
        """Mark the session connected again: apply the lease (``lease_ttl``)
        to it and its resume id. Call it when a connection resumes the session.

        Returns ``False`` if the session no longer exists.
        """
        return self.persist_many([session_id]) == 1

    def reconnected(self, session_id: str, identity: str | None,
                    reuse: str | None = None) -> str:
        """:meth:`persist` and :meth:`issue_resume` in one step: a connection
        resumed the session, which gets the connected lease and a resume id
        (``reuse`` re-arms the id the connection just claimed).

        One round trip to Redis instead of four (the lease script, its
        pointer's move, the binding script and the pointer's writes).

        :raises SessionNotFound: the session expired or was deleted.
        :raises InvalidSessionId: ``reuse`` is not an id this store issues.
        """
        resume_id, record = self._next_resume(session_id, identity, reuse)
        if not self._backend_lease_issued(session_id, self._lease_ms, stored_form(resume_id),
                                          record):
            raise SessionNotFound(
                f"Session {redact(session_id)} no longer exists; cannot renew it. "
                "Start a new session with create().")
        return resume_id

    def persist_many(self, session_ids: Iterable[str]) -> int:
        """Renew the lease of many sessions in one round trip.

        A node calls this periodically (well within ``lease_ttl``) for the
        sessions of its live connections. Returns how many still existed.
        """
        ids = list(session_ids)
        for session_id in ids:
            self._check_id(session_id)
        return self._backend_set_ttl(ids, self._lease_ms) if ids else 0

    def renew(self, session_ids: Iterable[str]) -> list[str]:
        """Renew the connected lease of many sessions (one round trip on
        Redis); returns the ids that no longer exist, for the caller to
        :meth:`restore`."""
        ids = list(session_ids)
        for session_id in ids:
            self._check_id(session_id)
        found = self._backend_set_ttl_each(ids, self._lease_ms) if ids else []
        return [session_id for session_id, exists in zip(ids, found, strict=True) if not exists]

    def _backend_set_ttl_each(self, session_ids: list[str], ttl_ms: int) -> list[bool]:
        """:meth:`_backend_set_ttl` per session, saying which exist (backends
        may do it in one round trip)."""
        return [self._backend_set_ttl([session_id], ttl_ms) == 1 for session_id in session_ids]

    def delete(self, session_id: str) -> bool:
        """Remove the session and its resume id now. ``False`` if already gone."""
        self._check_id(session_id)
        return self._backend_delete(session_id)

    # -- resume ids ----------------------------------------------------------

    def issue_resume(self, session_id: str, identity: str | None,
                     reuse: str | None = None) -> str:
        """A new single-use resume id for ``session_id``, bound to ``identity``.

        It replaces (and invalidates) the session's previous resume id, and
        has the session's current TTL: the lease while connected, the ``ttl``
        countdown once :meth:`expire` is called.

        ``reuse`` re-arms an id the caller has just claimed instead of
        drawing a new one. Socket.IO's connection state recovery needs that:
        the official client only reports a recovered connection when the
        server answers with the ``pid`` it sent. The id is still claimable by
        one connection at a time.

        :raises SessionNotFound: the session expired or was deleted.
        :raises InvalidSessionId: ``reuse`` is not an id this store issues.
        """
        resume_id, record = self._next_resume(session_id, identity, reuse)
        if not self._backend_issue(session_id, stored_form(resume_id), record):
            raise SessionNotFound(
                f"Session {redact(session_id)} no longer exists; cannot issue a resume id. "
                "Start a new session with create()."
            )
        return resume_id

    def _next_resume(self, session_id: str, identity: str | None,
                     reuse: str | None) -> tuple[str, str]:
        """The resume id to bind (``reuse``, else a new one) and its record;
        both ids checked first."""
        self._check_id(session_id)
        if reuse is not None:
            self._check_id(reuse)
        resume_id = reuse if reuse is not None else new_id()
        return resume_id, self._resume_record(session_id, resume_id, identity)

    def _resume_record(self, session_id: str, resume_id: str, identity: str | None) -> str:
        digest = identity_digest(identity)
        mac = self._mac()
        tag = None if mac is None else mac.resume_tag(resume_id, session_id, digest)
        return resume_record(session_id, digest, tag)

    def claim_resume(self, resume_id: object, identity: str | None,
                     claim_token: str | None = None) -> ResumeResult:
        """Exchange a resume id for its session id, once.

        Granted only if the id exists (was issued and has not expired), was
        not claimed before, and was issued for the same ``identity`` (``None``
        matches only ``None``). Atomic: of concurrent claims of one id exactly
        one is granted. A claim with the wrong identity does not consume the
        id. Refusals are logged (id redacted) and counted by reason; see
        :meth:`resume_counts`. The caller then loads the session, and should
        issue a new resume id for the resumed connection.

        :param claim_token: makes the claim safe to retry: a claim that ran
            but whose answer was lost (the connection to Redis broke, a
            Redis Cluster failover) is granted again to a retry with the same
            token, for as long as the tombstone lives, and to nobody else.
            Default: a new random token (retries within this call only, as
            the Redis client makes them). Keep it secret: it is a proof of
            the first claim.
        """
        digest = identity_digest(identity)
        if not is_well_formed_id(resume_id):
            return self._claims.refuse(ResumeStatus.MALFORMED, resume_id)
        token = claim_token if claim_token is not None else new_claim_token()
        status, session_id, tag = self._backend_claim(stored_form(resume_id), digest,
                                                      self._tombstone_ms, token)
        if status is not ResumeStatus.GRANTED:
            return self._claims.refuse(status, resume_id)
        mac = self._mac()
        if mac is not None and not mac.check_resume(resume_id, session_id or "", digest, tag):
            # written by someone without the secret: as if it did not exist
            self._claims.reject("resume record %s failed its MAC check", redact(resume_id))
            return self._claims.refuse(ResumeStatus.UNKNOWN, resume_id)
        self._claims.count(ResumeStatus.GRANTED)
        logger.info("resume %s granted for session %s", redact(resume_id), redact(session_id))
        return ResumeResult(ResumeStatus.GRANTED, session_id)

    def resume_counts(self) -> dict[str, int]:
        """Claims so far by outcome, every ``ResumeStatus`` value present (zeros too)."""
        return self._claims.by_status()

    @property
    def refusals(self) -> dict[str, int]:
        """Refused claims so far by reason (every refusal reason present)."""
        return self._claims.refusals()

    # -- shared helpers ------------------------------------------------------

    def _mac(self) -> RecordMac | None:
        """The record MAC for the current secret (``None``: no secret)."""
        return self._macs.current()

    def _sealed(self, session_id: str, encoded: Mapping[str, str]) -> dict[str, str]:
        """The ``d:`` fields for encoded values, tagged when there is a secret."""
        mac = self._mac()
        if mac is None:
            return {DATA + k: v for k, v in encoded.items()}
        return {DATA + k: mac.seal_field(session_id, DATA + k, v) for k, v in encoded.items()}

    @staticmethod
    def _check_id(session_id: object) -> None:
        if not is_well_formed_id(session_id):
            raise InvalidSessionId(
                f"{redact(session_id)} is not a session id issued by this store; "
                "pass SessionHandle.session_id (or a granted ResumeResult.session_id) unchanged."
            )

    # -- backend primitives (each atomic) -------------------------------------

    @abstractmethod
    def _backend_create(self, session_id: str, fields: dict[str, str], ttl_ms: int) -> None:
        """Store a new session's fields with a TTL."""

    @abstractmethod
    def _backend_read(self, session_id: str) -> Mapping[str | bytes, str | bytes] | None:
        """All fields of the session, or ``None`` if it does not exist."""

    @abstractmethod
    def _backend_save(
        self, session_id: str, fields: dict[str, str], deleted: list[str], now: str
    ) -> bool:
        """Set ``fields``, delete ``deleted``, bump version and updated time.

        ``False`` (and no write) if the session does not exist. A session found
        without expiry gets the lease, so no key ever lives forever.
        """

    @abstractmethod
    def _backend_set_ttl(self, session_ids: list[str], ttl_ms: int) -> int:
        """Set the TTL of each session and its current resume id; count the existing."""

    @abstractmethod
    def _backend_delete(self, session_id: str) -> bool:
        """Delete the session and its current resume id."""

    def _backend_create_issued(self, session_id: str, fields: dict[str, str], ttl_ms: int,
                               resume_id: str, record: str) -> bool:
        """Create the session and bind ``resume_id`` (stored form) to it;
        ``False`` if the session was gone before the binding. Backends that
        can do both in one step override this; by default it is the two."""
        self._backend_create(session_id, fields, ttl_ms)
        return self._backend_issue(session_id, resume_id, record)

    def _backend_lease_issued(self, session_id: str, lease_ms: int, resume_id: str,
                              record: str) -> bool:
        """Give the session the lease and bind ``resume_id`` (stored form) to
        it; ``False`` if the session does not exist. Backends that can do
        both in one step override this; by default it is the two."""
        if not self._backend_set_ttl([session_id], lease_ms):
            return False
        return self._backend_issue(session_id, resume_id, record)

    def _backend_expire_bound(self, session_id: str, ttl_ms: int, resume_id: str) -> bool:
        """:meth:`_backend_set_ttl` of one session whose resume id (stored
        form) is likely ``resume_id``; by default the caller's hint is unused."""
        return self._backend_set_ttl([session_id], ttl_ms) == 1

    @abstractmethod
    def _backend_issue(self, session_id: str, resume_id: str, record: str) -> bool:
        """Store ``record`` under ``resume_id`` with the session's TTL, replacing
        the session's previous resume id. ``False`` if the session does not exist.

        Backends only ever see the :func:`~.resume.stored_form` of resume ids."""

    @abstractmethod
    def _backend_claim(
        self, resume_id: str, digest: str, tombstone_ms: int, token: str
    ) -> tuple[ResumeStatus, str | None, str | None]:
        """Atomically check and consume a resume id, leaving a tombstone
        that remembers ``token`` (and what the grant returned); returns the
        status, the session id and the record's MAC tag. A claim of a
        consumed id whose tombstone holds the same ``token`` is granted
        again, with what the first grant returned."""
