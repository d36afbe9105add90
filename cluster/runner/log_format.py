"""Log lines that say which node (and which client) they come from.

``python -m cluster node`` and ``python -m workers worker`` call
:func:`configure_logging`; every record then carries ``node`` (the node's
name: ``--name``, ``$NODE_NAME``, else ``host:pid``) and ``sid`` (the
Socket.IO sid of the event being handled, or ``-`` outside a handler), in
one of two formats:

``text`` (the default)::

    2026-12-01 11:02:03,456 INFO node1 sid=Qx3... cluster: message

``json``: one JSON object per line, for log collectors::

    {"time": "2026-12-01T11:02:03.456Z", "level": "INFO", "node": "node1",
     "sid": "Qx3...", "logger": "cluster", "message": "...", "exc_info": "..."}

The sid is read from Flask's request context, where the cluster's handler
context puts ``request.sid``: it is on every line logged while a handler
runs, and on none logged elsewhere. A sid is the client's public id; resume
ids are never added (they are redacted where they are logged).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from typing import Any

__all__ = ["LOG_FORMATS", "ContextFilter", "JsonFormatter", "TextFormatter",
           "configure_logging", "default_node_name", "install"]

#: the values ``--log-format`` accepts
LOG_FORMATS = ("text", "json")

_TEXT = "%(asctime)s %(levelname)s %(node)s sid=%(sid)s %(name)s: %(message)s"


def default_node_name() -> str:
    """``host:pid``, the bus's own default, when no name was given."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _current_sid() -> str | None:
    # Flask is imported by the node anyway; a worker without Flask has no sid
    try:
        from flask import has_request_context, request
    except ImportError:  # pragma: no cover - Flask is a dependency
        return None
    try:
        if has_request_context():
            sid = getattr(request, "sid", None)
            return sid if isinstance(sid, str) else None
    except RuntimeError:
        pass
    return None


class ContextFilter(logging.Filter):
    """Adds ``record.node`` and ``record.sid`` (``-`` when there is none).

    Attached to handlers, not loggers, so records of every library logger
    (python-socketio, engineio, eventlet, Celery) get the fields too.
    """

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "node"):
            record.node = self.node
        if not hasattr(record, "sid"):
            record.sid = _current_sid() or "-"
        return True


class TextFormatter(logging.Formatter):
    """The human format: time, level, node, sid, logger, message."""

    def __init__(self) -> None:
        super().__init__(_TEXT)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (tracebacks included as a string)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "node": getattr(record, "node", None),
            "sid": None if (sid := getattr(record, "sid", "-")) == "-" else sid,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        # default=str: a stray object in a message argument must not lose the line
        return json.dumps(entry, ensure_ascii=False, default=str)


def _formatter(log_format: str) -> logging.Formatter:
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r}: use one of {', '.join(LOG_FORMATS)}")
    return JsonFormatter() if log_format == "json" else TextFormatter()


def install(handler: logging.Handler, node: str, log_format: str = "text") -> None:
    """Give ``handler`` the context filter and the formatter of ``log_format``."""
    handler.setFormatter(_formatter(log_format))
    if not any(isinstance(f, ContextFilter) for f in handler.filters):
        handler.addFilter(ContextFilter(node))


def configure_logging(level: str | int = "INFO", log_format: str = "text",
                      node: str | None = None) -> None:
    """Send every log record to stderr in ``log_format``, tagged with ``node``.

    Replaces the root logger's handlers (like ``logging.basicConfig(force=True)``)
    so a library that configured logging on import cannot leave lines without
    the node's name. ``level`` is a name (``"INFO"``) or a number; an unknown
    name means INFO.
    """
    if isinstance(level, str):
        level = getattr(logging, level.upper(), logging.INFO)
    handler = logging.StreamHandler()
    install(handler, node or default_node_name(), log_format)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
