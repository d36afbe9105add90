"""Reach the cluster's Socket.IO clients from Celery workers and any process.

- :class:`Emitter` -- ``emit``/``send`` to sids, rooms or everyone,
  ``join_room``/``leave_room``/``disconnect`` of any sid, ``close_room`` and
  the cluster-wide commands; and answers from clients: ``call`` (one
  client's ack), ``gather`` (a room's answers by a deadline, a
  :class:`GatherResult`) and ``emit(..., callback=f)``.
- :class:`WorkerSettings` -- the nodes' environment variables, read once.
- :mod:`workers.celery_app` -- the Celery application
  (``celery -A workers.celery_app worker``), with example tasks in
  :mod:`workers.tasks`; :mod:`workers.cli` -- ``python -m workers worker``.

Importing this package does not import Celery: a plain script only pays for
the emitter.
"""
from __future__ import annotations

from .emitter import Emitter, GatherResult
from .exceptions import (
    CallTimeoutError,
    ConfigurationError,
    NotConnectedError,
    PayloadError,
    PublishError,
    TooManyCallsError,
    WorkerError,
)
from .settings import DEFAULT_CHANNEL, WorkerSettings

__all__ = [
    "Emitter",
    "GatherResult",
    "WorkerSettings",
    "DEFAULT_CHANNEL",
    "WorkerError",
    "ConfigurationError",
    "PayloadError",
    "PublishError",
    "CallTimeoutError",
    "NotConnectedError",
    "TooManyCallsError",
]
