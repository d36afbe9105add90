"""Exceptions raised by :mod:`workers`.

::

    WorkerError
    ├── ConfigurationError (cluster.bus.BusConfigurationError, ValueError)
    │       no message queue URL, a bad URL, channel or secret
    ├── PayloadError (cluster.bus.BusSerializationError, TypeError)
    │       an event, room or payload the bus cannot carry; nothing was sent
    └── PublishError (cluster.bus.BusPublishError)
            the message queue could not be reached before the deadline

Each also derives from the matching :mod:`cluster.bus` error, so code that
already catches those keeps working. Messages name the fix.
"""
from __future__ import annotations

from cluster.bus import BusConfigurationError, BusPublishError, BusSerializationError

__all__ = ["WorkerError", "ConfigurationError", "PayloadError", "PublishError"]


class WorkerError(Exception):
    """Base class of every error raised by :mod:`workers`."""


class ConfigurationError(WorkerError, BusConfigurationError):
    """The worker or emitter configuration is missing or unusable."""


class PayloadError(WorkerError, BusSerializationError):
    """An emit could not be encoded for the bus; nothing was sent."""


class PublishError(WorkerError, BusPublishError):
    """The message queue stayed unreachable for ``publish_timeout`` seconds."""
