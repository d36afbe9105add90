"""Resume ids out of every log line, python-socketio's and python-engineio's too.

A resume id (the Socket.IO ``pid``) is a bearer secret: whoever presents it
gets the connection's session back. The cluster's own log lines only ever
show it through :func:`session_store.redact`, but python-socketio and
python-engineio log whole packets when their ``logger=True`` /
``engineio_logger=True`` options are on: the CONNECT reply
``{"sid": ..., "pid": ...}`` the node sends, and the CONNECT payload
``{"pid": ..., "offset": ...}`` a returning client sends. So
:class:`ResumeIdFilter` rewrites every record of those loggers, replacing
the value of any ``pid`` key (JSON or Python repr, quoted or escaped inside
a JSON string) with its redacted form, ``'Xy3k_a…'``.

:func:`install` puts the filter on a server's two loggers (whatever logger
objects the application passed); the extension calls it for every server it
builds. A filter on a logger runs only for records that passed the level
check, so with the options off it costs nothing.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from session_store import redact

__all__ = ["ResumeIdFilter", "install", "redact_resume_ids"]

# "pid": "…", 'pid': '…', \"pid\":\"…\" (a packet inside a JSON string)
_PID = re.compile(r"""(\\?["']pid\\?["']\s*:\s*\\?["'])([^"'\\\s]{6,})""")


def redact_resume_ids(text: str) -> str:
    """``text`` with the value of every ``pid`` key redacted."""
    if "pid" not in text:
        return text
    return _PID.sub(lambda m: m.group(1) + redact(m.group(2)), text)


class ResumeIdFilter(logging.Filter):
    """Redacts resume ids in a record's message (never drops a record)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: logging reports it itself
            return True
        redacted = redact_resume_ids(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


_FILTER = ResumeIdFilter()


def install(server: Any) -> None:
    """Put the filter on ``server``'s logger and its Engine.IO server's (once)."""
    for logger in (getattr(server, "logger", None),
                   getattr(getattr(server, "eio", None), "logger", None)):
        if isinstance(logger, logging.Logger) and _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
