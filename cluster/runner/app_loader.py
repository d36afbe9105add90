"""Resolve ``--app MODULE:ATTR`` to the application's SocketIO extension."""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from typing import TYPE_CHECKING, Any

from cluster.exceptions import AppLoadError

if TYPE_CHECKING:
    from cluster.flask_integration.extension import SocketIO


def load_socketio(spec: str) -> SocketIO:
    """Import ``MODULE:ATTR`` and return its :class:`cluster.SocketIO`.

    ``ATTR`` may name the SocketIO object or the Flask application (its
    extension is then found in ``app.extensions["socketio"]``); without
    ``:ATTR``, ``socketio`` then ``app`` are tried.
    """
    from cluster.flask_integration.extension import SocketIO

    module_name, _, attribute = spec.partition(":")
    if not module_name:
        raise AppLoadError(f"--app {spec!r}: expected MODULE:ATTR, e.g. 'chat.app:socketio'.")
    if os.getcwd() not in sys.path:
        # like `flask run`, the current directory is importable
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise _import_error(spec, module_name, exc) from exc
    except Exception as exc:
        # the module itself raised while importing: its traceback is the news
        raise AppLoadError(
            f"--app {spec!r}: importing {module_name!r} raised "
            f"{type(exc).__name__}: {exc}\n{_traceback(exc)}"
        ) from exc
    candidates = [attribute] if attribute else ["socketio", "app"]
    for name in candidates:
        target: Any = getattr(module, name, None)
        if target is None:
            continue
        if isinstance(target, SocketIO):
            return target
        extensions = getattr(target, "extensions", None)
        found = extensions.get("socketio") if isinstance(extensions, dict) else None
        if isinstance(found, SocketIO):
            return found
        raise AppLoadError(
            f"--app {spec!r}: {module_name}.{name} is neither a cluster.SocketIO nor a Flask "
            "app with one; create it with `socketio = cluster.SocketIO(app)`."
        )
    raise AppLoadError(
        f"--app {spec!r}: module {module_name!r} has no attribute "
        f"{' or '.join(repr(c) for c in candidates)}."
    )


def _traceback(exc: BaseException) -> str:
    """The traceback of ``exc`` without the frames of the import machinery."""
    frames = [frame for frame in traceback.extract_tb(exc.__traceback__)
              if not frame.filename.startswith("<frozen")
              and frame.filename != __file__]
    lines = traceback.format_list(frames)
    lines += traceback.format_exception_only(type(exc), exc)
    return "Traceback (most recent call last):\n" + "".join(lines).rstrip()


def _import_error(spec: str, module_name: str, exc: ImportError) -> AppLoadError:
    """Tell a module that is not found from a module that failed to import."""
    missing = getattr(exc, "name", None) or ""
    if missing.split(".")[0] == "flask_socketio":
        return AppLoadError(
            f"--app {spec!r}: the application imports flask_socketio, which this cluster "
            f"replaces (and which is not installed). Change the import to the cluster's: "
            f"`from cluster import SocketIO, emit, ...` instead of "
            f"`from flask_socketio import ...`.\n{_traceback(exc)}")
    is_the_module = isinstance(exc, ModuleNotFoundError) and (
        module_name == missing or module_name.startswith(missing + "."))
    if is_the_module:
        return AppLoadError(
            f"--app {spec!r}: cannot import module {module_name!r}: no module named "
            f"{missing!r} in {os.getcwd()} or the environment. Run the command from the "
            f"directory that contains "
            f"{module_name.split('.')[0]!r} (./dev up keeps your working directory), or "
            f"pip install your application into the environment.")
    # the module exists but something it imports is missing or broken
    hint = (f" Install the package that provides {missing.split('.')[0]!r} into this "
            f"environment ({sys.executable} -m pip install ...)."
            if isinstance(exc, ModuleNotFoundError) and missing else "")
    return AppLoadError(
        f"--app {spec!r}: importing {module_name!r} failed: {exc}.{hint}\n{_traceback(exc)}")
