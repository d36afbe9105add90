"""An in-process session store for a single node, tests and development.

Same interface and semantics as :class:`~session_store.RedisSessionStore`
(values go through the same codec, TTLs run out, resume ids are single-use),
but nothing survives the process and nothing is shared between processes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .base import SessionStore
from .layout import (
    DEFAULT_KEY_PREFIX,
    DEFAULT_TTL,
    META_RESUME,
    META_UPDATED,
    META_VERSION,
    parse_resume_record,
)
from .resume import ResumeStatus

__all__ = ["MemorySessionStore"]


@dataclass
class _Item:
    deadline: float
    fields: dict[str, str] = field(default_factory=dict)  # sessions
    record: str = ""  # resume ids
    #: tombstones: the claim token, session id and MAC tag of the grant
    claim: tuple[str, str | None, str | None] | None = None


class MemorySessionStore(SessionStore):
    """:class:`SessionStore` kept in a dict guarded by a lock.

    Takes the same keyword arguments as :class:`SessionStore` (``ttl``,
    ``lease_ttl``, ``tombstone_ttl``; ``key_prefix`` is accepted and unused).

    :param clock: monotonic time source in seconds, replaceable in tests to
        expire entries without sleeping. Default :func:`time.monotonic`.

    Expired entries are dropped when touched and in a sweep every 256 writes,
    so memory stays bounded by the live sessions.
    """

    _SWEEP_EVERY = 256

    def __init__(
        self,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        ttl: float = DEFAULT_TTL,
        lease_ttl: float = 86400,
        tombstone_ttl: float = 600,
        clock: Callable[[], float] = time.monotonic,
        secret: str | bytes | Callable[[], str | bytes | None] | None = None,
    ) -> None:
        super().__init__(
            key_prefix=key_prefix, ttl=ttl, lease_ttl=lease_ttl, tombstone_ttl=tombstone_ttl,
            secret=secret,
        )
        self._clock = clock
        self._lock = threading.RLock()
        self._sessions: dict[str, _Item] = {}
        self._resumes: dict[str, _Item] = {}
        self._tombstones: dict[str, _Item] = {}
        self._writes = 0

    # -- helpers (call with the lock held) --------------------------------------

    def _deadline(self, ttl_ms: int) -> float:
        return self._clock() + ttl_ms / 1000

    def _live(self, table: dict[str, _Item], key: str) -> _Item | None:
        item = table.get(key)
        if item is not None and item.deadline <= self._clock():
            del table[key]
            return None
        return item

    def _wrote(self) -> None:
        self._writes += 1
        if self._writes % self._SWEEP_EVERY == 0:
            now = self._clock()
            for table in (self._sessions, self._resumes, self._tombstones):
                for key in [k for k, item in table.items() if item.deadline <= now]:
                    del table[key]

    def _session_fields(self, session_id: str) -> dict[str, str] | None:
        item = self._live(self._sessions, session_id)
        return item.fields if item is not None else None

    # -- primitives ------------------------------------------------------------

    def _backend_create(self, session_id: str, fields: dict[str, str], ttl_ms: int) -> None:
        with self._lock:
            self._sessions[session_id] = _Item(self._deadline(ttl_ms), dict(fields))
            self._wrote()

    def _backend_read(self, session_id: str) -> Mapping[str | bytes, str | bytes] | None:
        with self._lock:
            fields = self._session_fields(session_id)
            if fields is None:
                return None
            copied: dict[str | bytes, str | bytes] = dict(fields.items())
            return copied

    def _backend_save(
        self, session_id: str, fields: dict[str, str], deleted: list[str], now: str
    ) -> bool:
        with self._lock:
            stored = self._session_fields(session_id)
            if stored is None:
                return False
            stored.update(fields)
            for name in deleted:
                stored.pop(name, None)
            stored[META_UPDATED] = now
            stored[META_VERSION] = str(int(stored.get(META_VERSION, "0")) + 1)
            self._wrote()
            return True

    def _backend_set_ttl(self, session_ids: list[str], ttl_ms: int) -> int:
        with self._lock:
            found = 0
            for session_id in session_ids:
                item = self._live(self._sessions, session_id)
                if item is None:
                    continue
                found += 1
                item.deadline = self._deadline(ttl_ms)
                resume = self._live(self._resumes, item.fields.get(META_RESUME, ""))
                if resume is not None:
                    resume.deadline = item.deadline
            return found

    def _backend_delete(self, session_id: str) -> bool:
        with self._lock:
            item = self._live(self._sessions, session_id)
            if item is None:
                return False
            self._resumes.pop(item.fields.get(META_RESUME, ""), None)
            del self._sessions[session_id]
            return True

    def _backend_issue(self, session_id: str, resume_id: str, record: str) -> bool:
        with self._lock:
            item = self._live(self._sessions, session_id)
            if item is None:
                return False
            self._resumes.pop(item.fields.get(META_RESUME, ""), None)
            item.fields[META_RESUME] = resume_id
            self._resumes[resume_id] = _Item(item.deadline, record=record)
            self._wrote()
            return True

    def _backend_claim(
        self, resume_id: str, digest: str, tombstone_ms: int, token: str
    ) -> tuple[ResumeStatus, str | None, str | None]:
        with self._lock:
            item = self._live(self._resumes, resume_id)
            if item is None:
                stone = self._live(self._tombstones, resume_id)
                if stone is not None:
                    claimed = stone.claim
                    if claimed is not None and claimed[0] == token:
                        return ResumeStatus.GRANTED, claimed[1], claimed[2]
                    return ResumeStatus.REPLAYED, None, None
                return ResumeStatus.UNKNOWN, None, None
            status, session_id, tag = parse_resume_record(item.record, digest)
            if status is ResumeStatus.GRANTED:
                del self._resumes[resume_id]
                self._tombstones[resume_id] = _Item(self._deadline(tombstone_ms),
                                                    claim=(token, session_id, tag))
                self._wrote()
            return status, session_id, tag
