"""Worker and emitter configuration, read from the environment once.

The variables are the socket node's (``python -m cluster node``), so a
worker started next to the nodes with the same environment lands on the same
bus, channel and signing secret; the ``socketio`` vs ``flask-socketio``
channel mismatch of hand-configured emitters cannot happen.

==========================  ==================================================
variable                    meaning (default)
==========================  ==================================================
``MESSAGE_QUEUE_URL``       the cluster bus URL: ``redis://``, ``rediss://``,
                            ``redis+sentinel://``, ``amqp://``... (falls back
                            to ``REDIS_URL``; one of them is required)
``MESSAGE_QUEUE_CHANNEL``   bus channel / exchange (``flask-socketio``)
``CLUSTER_SIGNING_SECRET``  shared HMAC secret of the bus (required unless
                            ``CLUSTER_ALLOW_UNSIGNED_BUS`` opts out)
``CLUSTER_ALLOW_UNSIGNED_BUS``  ``1`` lets emitters publish unsigned (for
                            nodes that accept stock python-socketio
                            emitters); logged as a warning (off)
``CELERY_BROKER_URL``       Celery's broker (the bus URL: one service to run)
``CELERY_RESULT_BACKEND``   Celery's result backend (none: tasks report to
                            clients through the emitter, not through results)
``CELERY_QUEUE``            the queue tasks are sent to and workers consume
                            (``celery``)
``CONNECTION_STATE_RECOVERY``  seconds of the nodes' recovery window: emits
                            are then logged for recovering clients, like the
                            nodes' own (none: recovery off)
``CLUSTER_REDIS_PARTITIONS``  the nodes' lane count on Redis Cluster (see
                            ``cluster.bus.backends.redis_lanes``; 1)
==========================  ==================================================
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from cluster.bus.defaults import DEFAULT_CHANNEL

from .exceptions import ConfigurationError

__all__ = ["DEFAULT_CHANNEL", "WorkerSettings"]



def _get(environ: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return value
    return None


def _seconds(environ: Mapping[str, str], name: str) -> float | None:
    value = _get(environ, name)
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise ConfigurationError(
            f"{name}={value!r}: expected a number of seconds, e.g. {name}=120.") from None
    if seconds <= 0:
        raise ConfigurationError(f"{name}={value!r}: must be a positive number of seconds.")
    return seconds


def _count(environ: Mapping[str, str], name: str) -> int | None:
    value = _get(environ, name)
    if value is None:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ConfigurationError(f"{name}={value!r}: expected a whole number, 1 or more "
                                 f"(the nodes' value).")
    return int(value)


@dataclass(frozen=True)
class WorkerSettings:
    """Where emitters publish and where Celery takes its tasks from.

    :param message_queue: cluster bus URL; ``None`` only when nothing will
                          be emitted (the emitter refuses to start without).
    :param channel: bus channel, ``"flask-socketio"`` like the nodes.
    :param signing_secret: bus HMAC secret; ``None`` only together with
                           ``allow_unsigned_bus`` (the emitter refuses
                           otherwise).
    :param allow_unsigned_bus: explicit opt-out of signing (``False``).
    :param broker_url: Celery broker; ``None`` means "the bus URL".
    :param result_backend: Celery result backend, ``None`` (results off).
    :param queue: Celery queue name, ``"celery"``.
    :param recovery_window: the nodes' connection state recovery window in
                            seconds, so worker emits are recoverable too;
                            ``None`` (recovery off).
    :param redis_partitions: the nodes' ``--redis-partitions`` on Redis
                             Cluster (room channels are named after it);
                             ``None``: the default, 1.
    """

    message_queue: str | None = None
    channel: str = DEFAULT_CHANNEL
    signing_secret: str | None = field(default=None, repr=False)
    broker_url: str | None = None
    result_backend: str | None = None
    queue: str = "celery"
    recovery_window: float | None = None
    allow_unsigned_bus: bool = False
    redis_partitions: int | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorkerSettings:
        """Read the variables listed in the module doc (``os.environ`` by
        default). Empty values count as unset."""
        env = os.environ if environ is None else environ
        return cls(
            message_queue=_get(env, "MESSAGE_QUEUE_URL", "REDIS_URL"),
            channel=_get(env, "MESSAGE_QUEUE_CHANNEL") or DEFAULT_CHANNEL,
            signing_secret=_get(env, "CLUSTER_SIGNING_SECRET"),
            broker_url=_get(env, "CELERY_BROKER_URL"),
            result_backend=_get(env, "CELERY_RESULT_BACKEND"),
            queue=_get(env, "CELERY_QUEUE") or "celery",
            recovery_window=_seconds(env, "CONNECTION_STATE_RECOVERY"),
            allow_unsigned_bus=(_get(env, "CLUSTER_ALLOW_UNSIGNED_BUS") or "").lower()
            in {"1", "true", "yes", "on"},
            redis_partitions=_count(env, "CLUSTER_REDIS_PARTITIONS"),
        )

    def with_overrides(self, **changes: Any) -> WorkerSettings:
        """A copy with the non-``None`` ``changes`` applied (CLI flags)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @property
    def celery_broker(self) -> str:
        """The broker URL Celery uses; raises when none is configured."""
        url = self.broker_url or self.message_queue
        if not url:
            raise ConfigurationError(
                "No Celery broker configured: set CELERY_BROKER_URL (or "
                "MESSAGE_QUEUE_URL / REDIS_URL, which it defaults to), e.g. "
                "CELERY_BROKER_URL=redis://localhost:6379/0.")
        return url

    def require_message_queue(self) -> str:
        """The bus URL; raises :class:`ConfigurationError` naming the fix."""
        if not self.message_queue:
            raise ConfigurationError(
                "No message queue configured for the emitter: set "
                "MESSAGE_QUEUE_URL (or REDIS_URL) to the URL the socket nodes "
                "use, e.g. MESSAGE_QUEUE_URL=redis://localhost:6379/0.")
        return self.message_queue
