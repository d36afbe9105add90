"""The package's public surface."""

from __future__ import annotations

import inspect
from pathlib import Path

import session_store
from session_store import SessionStore, SessionStoreError


def test_all_is_complete_and_importable() -> None:
    public = {
        name
        for name, obj in vars(session_store).items()
        if not name.startswith("_") and not inspect.ismodule(obj)
    }
    assert public == set(session_store.__all__)
    for name in session_store.__all__:
        assert getattr(session_store, name) is not None


def test_every_exception_derives_from_the_base() -> None:
    errors = [
        getattr(session_store, n)
        for n in session_store.__all__
        if n.endswith(("Error", "Unavailable", "NotFound", "Id"))
    ]
    assert len(errors) == 6
    assert all(issubclass(e, SessionStoreError) for e in errors)


def test_both_stores_implement_the_interface() -> None:
    for cls in (session_store.MemorySessionStore, session_store.RedisSessionStore):
        assert issubclass(cls, SessionStore) and not inspect.isabstract(cls)


def test_py_typed_marker_ships() -> None:
    assert (Path(session_store.__file__).parent / "py.typed").exists()
