"""Exceptions raised by the cluster bus.

::

    BusError
    ├── BusConfigurationError (ValueError)   bad URL, option or secret
    │   ├── UnsignedBusError                 no signing secret, no opt-out
    │   ├── BusAccessDenied                  Redis refused our credentials, or
    │   │                                    we refused its TLS certificate
    │   └── BusClockSkew                     our clock is too far from Redis's
    ├── BusSerializationError (TypeError)    payload cannot be sent as JSON
    │   └── BusMessageTooLarge (ValueError)  over ``max_message_bytes``
    ├── BusPublishError                      a write-only publish gave up
    └── ClusterRequestError
        └── ClusterRequestTimeout (TimeoutError)  some node did not answer

Messages name the fix, so that a log line is enough to act on.
"""
from __future__ import annotations

from typing import Any


class BusError(Exception):
    """Base class of every error raised by :mod:`cluster.bus`."""


class BusConfigurationError(BusError, ValueError):
    """The bus URL, a driver option or the signing secret is unusable."""


class UnsignedBusError(BusConfigurationError):
    """A node or worker would run on an unsigned bus without opting out."""


class BusAccessDenied(BusConfigurationError):
    """Redis refused the bus's credentials or a permission, or its TLS
    certificate is not trusted: no retry fixes it (the message says what does)."""


class BusClockSkew(BusConfigurationError):
    """This process's clock differs from the Redis server's by more than
    ``max_clock_skew``: the other nodes would drop its messages (the message
    says by how much, and what to do)."""


class BusSerializationError(BusError, TypeError):
    """A message could not be encoded as JSON; nothing was sent."""


class BusMessageTooLarge(BusSerializationError, ValueError):
    """A message is larger than ``max_message_bytes``; nothing was sent.

    A :class:`BusSerializationError` too (the bus cannot carry it), so code
    that handles unsendable payloads handles this one. ``size`` and
    ``limit`` are in bytes.
    """

    def __init__(self, message: str, size: int, limit: int) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


class BusPublishError(BusError):
    """A write-only publisher could not reach the bus before its deadline."""


class ClusterRequestError(BusError):
    """A cluster-wide query could not be made (e.g. the bus is down)."""


class ClusterRequestTimeout(ClusterRequestError, TimeoutError):
    """Some live nodes did not answer a cluster-wide query in time.

    ``partial`` maps the node ids that did answer to their answers and
    ``missing`` lists the node ids that did not.
    """

    def __init__(self, message: str, partial: dict[str, Any],
                 missing: list[str]) -> None:
        super().__init__(message)
        self.partial = partial
        self.missing = missing


class Dropped(Exception):
    """Raised by :meth:`Codec.open`; ``reason`` is a stats counter name."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason
