"""The Celery application of the cluster's workers.

Start a worker next to the socket nodes, with the same environment
(:mod:`workers.settings`)::

    celery -A workers.celery_app worker --loglevel INFO
    python -m workers worker            # the same, with the cluster's flags

The default prefork pool needs neither eventlet nor gevent: tasks reach
clients through a write-only :class:`~workers.Emitter` (:func:`get_emitter`),
not through a Socket.IO server. Tasks and results travel as JSON only (no pickle).

Add your own tasks in your modules with ``from workers.celery_app import
app`` and ``@app.task``; :mod:`workers.tasks` holds examples to copy.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from celery import Celery, signals

from cluster.bus import UnsignedBusError, check_signing

from .emitter import Emitter
from .exceptions import ConfigurationError
from .settings import WorkerSettings

__all__ = ["app", "create_celery_app", "get_emitter", "settings"]

log = logging.getLogger("workers")

#: configuration of this process, read once at import
settings = WorkerSettings.from_env()


def create_celery_app(config: WorkerSettings,
                      include: Sequence[str] = ("workers.tasks",)) -> Celery:
    """A Celery application for ``config``.

    Broker: ``config.celery_broker`` (``CELERY_BROKER_URL``, else the bus
    URL; raises :class:`~workers.ConfigurationError` when neither is set).
    Results are ignored unless ``CELERY_RESULT_BACKEND`` is set: tasks
    report to clients through the emitter.
    """
    celery = Celery("workers", broker=config.celery_broker,
                    backend=config.result_backend, include=list(include))
    celery.conf.update(
        # JSON only: a message on the broker is never unpickled
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_ignore_result=config.result_backend is None,
        task_default_queue=config.queue,
        # a worker started before the broker waits for it instead of exiting
        broker_connection_retry_on_startup=True,
    )
    return celery


app = create_celery_app(settings)
if settings.message_queue:
    # a worker on an unsigned bus without the opt-out must not start at all
    # (tasks would fail one by one later): the Emitter refuses the same way
    try:
        check_signing(bool(settings.signing_secret), settings.allow_unsigned_bus,
                      "The worker", "set CLUSTER_ALLOW_UNSIGNED_BUS=1", log)
    except UnsignedBusError as exc:
        raise ConfigurationError(str(exc)) from None

_emitter: Emitter | None = None
_emitter_lock = threading.Lock()


def get_emitter() -> Emitter:
    """The process-wide emitter for :data:`settings`, made on first use.

    Safe in every pool: the emitter reopens its connection after a fork.
    """
    global _emitter
    with _emitter_lock:
        if _emitter is None:
            _emitter = Emitter.from_settings(settings)
        return _emitter


# celery ships no type information: its decorators erase the signature
@signals.worker_ready.connect  # type: ignore[untyped-decorator]
def _check_message_queue(**_: Any) -> None:
    # tasks would fail one by one later; say it once, at start-up
    if not settings.message_queue:
        log.error("MESSAGE_QUEUE_URL (or REDIS_URL) is not set: tasks cannot "
                  "emit to Socket.IO clients. Set it to the socket nodes' "
                  "message queue URL.")
    else:
        log.info("workers emit on channel %r (%s)", settings.channel,
                 "signed" if settings.signing_secret else "unsigned")
