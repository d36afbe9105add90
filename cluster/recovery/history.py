"""Where a session's recovery history starts, per namespace.

A resumable session records, for each namespace, the recovery stream's
newest offset when it connected there afresh (its *start*: nothing before
it was ever sent to this session, so no replay may begin earlier). When
Redis comes back empty while the session lives, the start moves to where
the new stream begins and is also recorded as *rebased* (see
:func:`cluster.recovery.replay.replay_from`). The records live in the
session's binding (``base_offsets`` and ``rebased``, dicts by namespace,
persisted with the connection record); these functions are the only ones
that write them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol


class History(Protocol):
    """What a session binding keeps of its recovery history."""

    offset: str | None
    base_offsets: dict[str, str]
    rebased: dict[str, str]


def start_fresh(history: History, namespace: str, last_offset: str | None) -> None:
    """A connection starts afresh in ``namespace`` at the stream's newest
    offset ``last_offset`` (``None``: unknown, e.g. Redis down; then no
    recovery from this session)."""
    history.rebased.pop(namespace, None)
    if last_offset is not None:
        history.base_offsets[namespace] = last_offset
    else:
        history.base_offsets.pop(namespace, None)


def restart(history: History, namespaces: Iterable[str], start: str | None) -> None:
    """The stream restarted (Redis lost it) at ``start`` while the session
    lived in ``namespaces`` (``None``: unknown, no recovery from it)."""
    for namespace in namespaces:
        if start is not None:
            history.base_offsets[namespace] = history.rebased[namespace] = start
        else:
            history.base_offsets.pop(namespace, None)
            history.rebased.pop(namespace, None)


def client_offset(auth: Any) -> str | None:
    """The offset a reconnecting client sent in its CONNECT payload."""
    offset = auth.get("offset") if isinstance(auth, dict) else None
    return offset if isinstance(offset, str) else None


def replay_offset(history: History | None, namespace: str) -> str | None:
    """Where the replay of a recovering connection starts: the client's
    offset, else (it received nothing) the session's start."""
    if history is None:
        return None
    return history.offset or history.base_offsets.get(namespace)


def session_start(history: History | None, namespace: str) -> str | None:
    """The session's recorded start in ``namespace``."""
    return history.base_offsets.get(namespace) if history is not None else None


def restart_point(history: History | None, namespace: str) -> str | None:
    """Where the stream restarted while the session lived, if it did."""
    return history.rebased.get(namespace) if history is not None else None
