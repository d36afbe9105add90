"""Exceptions raised by :mod:`workers`.

::

    WorkerError
    ├── ConfigurationError (cluster.bus.BusConfigurationError, ValueError)
    │       no message queue URL, a bad URL, channel, secret or timeout
    ├── PayloadError (cluster.bus.BusSerializationError, TypeError)
    │       an event, room or payload the bus cannot carry; nothing was sent
    ├── PublishError (cluster.bus.BusPublishError)
    │       the message queue could not be reached before the deadline
    ├── CallTimeoutError (socketio.exceptions.TimeoutError, TimeoutError)
    │       the client did not answer a call in time
    ├── NotConnectedError (LookupError)
    │       no node of the cluster has the client a call was for
    └── TooManyCallsError
            ``max_pending_calls`` asks are waiting already in this process

Each also derives from the matching :mod:`cluster.bus` (or python-socketio,
or built-in) error, so code that already catches those keeps working: a
``call`` that times out is caught by ``except TimeoutError`` as well as by
python-socketio's ``socketio.exceptions.TimeoutError``, which ``SocketIO.call``
raises in a handler. Messages name the fix.
"""
from __future__ import annotations

import socketio.exceptions

from cluster.bus import BusConfigurationError, BusPublishError, BusSerializationError

__all__ = ["WorkerError", "ConfigurationError", "PayloadError", "PublishError",
           "CallTimeoutError", "NotConnectedError", "TooManyCallsError"]


class WorkerError(Exception):
    """Base class of every error raised by :mod:`workers`."""


class ConfigurationError(WorkerError, BusConfigurationError):
    """The worker or emitter configuration is missing or unusable."""


class PayloadError(WorkerError, BusSerializationError):
    """An emit could not be encoded for the bus; nothing was sent."""


class PublishError(WorkerError, BusPublishError):
    """The message queue stayed unreachable for ``publish_timeout`` seconds."""


class CallTimeoutError(WorkerError, socketio.exceptions.TimeoutError,  # type: ignore[misc]  # python-socketio is untyped
                       TimeoutError):
    """``Emitter.call``: no answer came within ``timeout`` seconds (the
    client was slow, disconnected meanwhile, or its node died)."""


class NotConnectedError(WorkerError, LookupError):
    """``Emitter.call``: every node of the cluster answered that the client
    is not connected to it (raised after one bus round trip, not at the
    timeout)."""


class TooManyCallsError(WorkerError):
    """This process has ``max_pending_calls`` calls, gathers and callback
    emits waiting for answers already, or a node refused the ask because it
    serves too many."""
