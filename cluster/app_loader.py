"""Resolve ``--app MODULE:ATTR`` to the application's SocketIO extension."""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING, Any

from .exceptions import AppLoadError

if TYPE_CHECKING:
    from .extension import SocketIO


def load_socketio(spec: str) -> "SocketIO":
    """Import ``MODULE:ATTR`` and return its :class:`cluster.SocketIO`.

    ``ATTR`` may name the SocketIO object or the Flask application (its
    extension is then found in ``app.extensions["socketio"]``); without
    ``:ATTR``, ``socketio`` then ``app`` are tried.
    """
    from .extension import SocketIO

    module_name, _, attribute = spec.partition(":")
    if not module_name:
        raise AppLoadError(f"--app {spec!r}: expected MODULE:ATTR, e.g. 'chat.app:socketio'.")
    if os.getcwd() not in sys.path:
        # like `flask run`, the current directory is importable
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AppLoadError(
            f"--app {spec!r}: cannot import module {module_name!r} ({exc}). Run from the "
            "directory that contains it or install it in the environment."
        ) from exc
    candidates = [attribute] if attribute else ["socketio", "app"]
    for name in candidates:
        target: Any = getattr(module, name, None)
        if target is None:
            continue
        if isinstance(target, SocketIO):
            return target
        extensions = getattr(target, "extensions", None)
        if isinstance(extensions, dict) and isinstance(extensions.get("socketio"), SocketIO):
            return extensions["socketio"]
        raise AppLoadError(
            f"--app {spec!r}: {module_name}.{name} is neither a cluster.SocketIO nor a Flask "
            "app with one; create it with `socketio = cluster.SocketIO(app)`."
        )
    raise AppLoadError(
        f"--app {spec!r}: module {module_name!r} has no attribute "
        f"{' or '.join(repr(c) for c in candidates)}."
    )
