"""The forked session: what Socket.IO handlers see as ``flask.session``.

A ``ForkedSession`` is a ``dict`` (so it is cheap, and ``json``/templating
code treats it like the cookie session) and a Flask ``SessionMixin`` (so
``permanent``, ``new``, ``modified`` and ``accessed`` exist and Flask-Login
works with it). On top of that it remembers which keys changed or were
deleted since it was last saved, so a store can write only those keys and
two handlers changing different keys of the same session do not overwrite
each other.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from flask.sessions import SessionMixin

from .resume import redact

__all__ = ["ForkedSession", "SessionHandle"]

_T = TypeVar("_T")
_MISSING: Any = object()


class ForkedSession(dict[str, Any], SessionMixin):
    """A per-connection copy of the HTTP session that tracks its changes.

    :param initial: the starting contents. They count as already saved: a
        fresh ``ForkedSession(data)`` has no pending changes.
    :param new: value of Flask's ``new`` attribute; stores set it to ``True``
        for a session they just created and ``False`` for one they loaded.

    Every mutating method is tracked: ``s[k] = v``, ``del s[k]``, ``pop``,
    ``popitem``, ``setdefault`` (only when it inserts), ``update``,
    ``clear`` and ``|=``.

    Mutating a value *inside* the session (``s["cart"].append(x)``) is not
    seen, exactly as with Flask's cookie session. Set ``s.modified = True``
    afterwards: then every key present counts as changed at the next save.
    Setting ``modified = False`` forgets all pending changes.

    Saving follows a two-step protocol that stays correct when several
    handlers of one connection run at once (python-socketio may run them in
    parallel threads): read :attr:`change_mark`, then :meth:`changes`, write
    them, then call ``mark_saved(through=mark)``. A change made during the
    write has a higher mark and stays pending for the next save.
    """

    def __init__(
        self,
        initial: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None,
        *,
        new: bool = False,
    ) -> None:
        # The tracking state must exist before dict.__init__ in case a subclass
        # routes initialisation through __setitem__.
        self._lock = threading.RLock()
        self._counter = 0
        self._changed: dict[str, int] = {}  # key -> mark of its latest change
        self._deleted: dict[str, int] = {}  # key -> mark of its deletion
        self._all_marked: int | None = None  # mark of an explicit modified=True
        super().__init__(initial or ())
        self.new = new
        self.accessed = False

    # -- tracking primitives -------------------------------------------------

    def _bump(self) -> int:
        self._counter += 1
        return self._counter

    def _note_set(self, key: str) -> None:
        self._changed[key] = self._bump()
        self._deleted.pop(key, None)

    def _note_delete(self, key: str) -> None:
        self._deleted[key] = self._bump()
        self._changed.pop(key, None)

    # -- Flask SessionMixin attributes ---------------------------------------

    @property
    def modified(self) -> bool:
        """``True`` while there are changes not yet saved."""
        with self._lock:
            return bool(self._changed or self._deleted or self._all_marked is not None)

    @modified.setter
    def modified(self, value: bool) -> None:
        with self._lock:
            if value:
                self._all_marked = self._bump()
            else:
                self._reset(None)

    # -- change tracking API -------------------------------------------------

    @property
    def change_mark(self) -> int:
        """A number that grows with every tracked change; pass it to :meth:`mark_saved`."""
        return self._counter

    def changes(self) -> tuple[dict[str, Any], set[str]]:
        """Return ``(set_items, deleted)``: what a save has to write.

        ``set_items`` maps each changed key to its current value (every key,
        if ``modified`` was set explicitly); ``deleted`` holds the keys removed
        since the last save. A key never appears in both.
        """
        with self._lock:
            keys: Iterable[str] = self.keys() if self._all_marked is not None else self._changed
            set_items = {k: dict.__getitem__(self, k) for k in keys if dict.__contains__(self, k)}
            return set_items, set(self._deleted)

    def mark_saved(self, through: int | None = None) -> None:
        """Forget pending changes, as after a successful save.

        :param through: forget only changes whose mark is at most this
            :attr:`change_mark` value; newer ones stay pending. ``None``
            forgets everything.
        """
        with self._lock:
            self._reset(through)

    def _reset(self, through: int | None) -> None:
        if through is None:
            self._changed.clear()
            self._deleted.clear()
            self._all_marked = None
            return
        for pending in (self._changed, self._deleted):
            for key in [k for k, mark in pending.items() if mark <= through]:
                del pending[key]
        if self._all_marked is not None and self._all_marked <= through:
            self._all_marked = None

    # -- tracked dict methods ------------------------------------------------

    def __setitem__(self, key: str, value: Any) -> None:
        with self._lock:
            super().__setitem__(key, value)
            self._note_set(key)

    def __delitem__(self, key: str) -> None:
        with self._lock:
            super().__delitem__(key)
            self._note_delete(key)

    def pop(self, key: str, default: Any = _MISSING) -> Any:
        with self._lock:
            if dict.__contains__(self, key):
                value = super().pop(key)
                self._note_delete(key)
                return value
            if default is _MISSING:
                raise KeyError(key)
            return default

    def popitem(self) -> tuple[str, Any]:
        with self._lock:
            key, value = super().popitem()
            self._note_delete(key)
            return key, value

    def setdefault(self, key: str, default: Any = None) -> Any:
        with self._lock:
            if dict.__contains__(self, key):
                return dict.__getitem__(self, key)
            self[key] = default
            return default

    def update(self, *args: Any, **kwargs: Any) -> None:
        # dict.update bypasses __setitem__; route every pair through it.
        with self._lock:
            for key, value in dict(*args, **kwargs).items():
                self[key] = value

    def clear(self) -> None:
        with self._lock:
            for key in list(self.keys()):
                self._note_delete(key)
            super().clear()

    def __ior__(self, other: Any) -> ForkedSession:  # type: ignore[override,misc]
        self.update(other)
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict.__repr__(self)})"

    def copy(self) -> dict[str, Any]:
        """A plain ``dict`` snapshot of the contents (no change tracking)."""
        return dict(self)

    def __reduce__(self) -> Any:
        # The lock cannot be copied; copy.copy/deepcopy rebuild from the
        # contents, giving a session with no pending changes.
        return (type(self), (dict(self),))


# eq=False: the session is a mutable dict, so handles compare by identity.
@dataclass(frozen=True, eq=False)
class SessionHandle:
    """A session just created (:meth:`SessionStore.create
    <session_store.SessionStore.create>`): its id and the live :class:`ForkedSession`."""

    session_id: str
    session: ForkedSession

    def __repr__(self) -> str:
        return f"SessionHandle(session_id={redact(self.session_id)}, keys={len(self.session)})"
