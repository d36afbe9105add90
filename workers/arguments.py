"""What an :class:`~workers.Emitter` accepts as targets, checked before
anything is sent, and the bus's errors turned into this package's."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from cluster.bus import BusConfigurationError, BusPublishError, BusSerializationError

from .exceptions import ConfigurationError, PayloadError, PublishError


def is_room(value: Any) -> bool:
    return isinstance(value, (str, int)) and not isinstance(value, bool)


def check_rooms(value: Any, what: str) -> Any:
    """A room (str or int) or a list of them, as the nodes accept it."""
    if value is None or is_room(value):
        return value
    if isinstance(value, (list, tuple, set, frozenset)) and all(map(is_room, value)):
        return list(value)
    raise PayloadError(
        f"{what}={value!r} cannot address clients: use a sid or room name "
        f"(str or int) or a list of them.")


def check_required_rooms(value: Any) -> Any:
    if value is None or value == []:
        raise PayloadError("rooms must name at least one room.")
    return check_rooms(value, "rooms")


def check_sids(value: Any, what: str) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, set, frozenset)) and all(
            isinstance(v, str) for v in value):
        return list(value)
    raise PayloadError(f"{what}={value!r} must be a sid (str) or a list of sids.")


def check_sid(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise PayloadError(f"sid={value!r} must be a non-empty string: the "
                           f"client's request.sid.")
    return value


@contextlib.contextmanager
def bus_errors() -> Iterator[None]:
    """Turn bus errors into this package's, keeping both catchable."""
    try:
        yield
    except BusSerializationError as exc:
        raise PayloadError(str(exc)) from exc
    except BusPublishError as exc:
        raise PublishError(str(exc)) from exc
    except BusConfigurationError as exc:
        raise ConfigurationError(str(exc)) from exc
