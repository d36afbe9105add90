"""What a store counts and logs about resume claims and rejected records.

A store owns one :class:`ClaimCounts`; the node's ``/metrics`` reads it
through :meth:`SessionStore.resume_counts <session_store.SessionStore.resume_counts>`
and ``SessionStore.rejected_records``. Every refusal is logged with the
resume id redacted.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Any

from .resume import REFUSALS, ResumeResult, ResumeStatus, redact

__all__ = ["ClaimCounts"]

logger = logging.getLogger("session_store")


class ClaimCounts:
    """Thread-safe counts of claim outcomes (every ``ResumeStatus``) and of
    stored records that failed their MAC check."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter({s.value: 0 for s in ResumeStatus})
        self._rejected = 0

    @property
    def rejected(self) -> int:
        """Stored values and resume records that failed their MAC check."""
        return self._rejected

    def count(self, status: ResumeStatus) -> None:
        """Count one claim with this outcome."""
        with self._lock:
            self._counts[status.value] += 1

    def refuse(self, status: ResumeStatus, resume_id: object) -> ResumeResult:
        """Count and log a refused claim; the result to return for it."""
        self.count(status)
        logger.warning("resume %s refused: %s", redact(resume_id), status.value)
        return ResumeResult(status)

    def reject(self, message: str, *args: Any) -> None:
        """Count and log a stored record that failed its MAC check."""
        with self._lock:
            self._rejected += 1
        logger.warning(message + " (written without the deployment's secret, or "
                       "under another one); treated as missing", *args)

    def by_status(self) -> dict[str, int]:
        """Claims so far by outcome, every ``ResumeStatus`` value present (zeros too)."""
        with self._lock:
            return dict(self._counts)

    def refusals(self) -> dict[str, int]:
        """Refused claims so far by reason (every refusal reason present)."""
        counts = self.by_status()
        return {s.value: counts[s.value] for s in REFUSALS}
