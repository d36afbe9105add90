"""Encoding of session values: Flask's tagged JSON, one value at a time.

Each session key is stored as its own field, so values are encoded one by one
with Flask's :class:`~flask.json.tag.TaggedJSONSerializer` tags. That gives
the cookie session's type support: JSON types plus ``tuple``, ``bytes``,
``datetime``, ``UUID`` and ``Markup``. Nothing is ever pickled, and decoding
only ever builds those types, so data read from Redis cannot run code.

Differences from calling ``TaggedJSONSerializer().dumps`` directly, on purpose:

- the standard ``json`` module is used, never the application's JSON
  provider, so encoding does not depend on which app context is active and a
  type that would not round-trip (``set``, ``Decimal``, ``date``, arbitrary
  objects) is refused with :class:`SessionValueError` instead of being turned
  silently into a string;
- output is ASCII-only, so a lone surrogate in a string is escaped rather
  than failing when the driver encodes the command.

As with Flask's cookie session, ``datetime`` values come back as aware UTC
datetimes with whole seconds, and non-string dict keys nested inside values
become strings (that is what JSON does).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from flask.json.tag import TaggedJSONSerializer

from .exceptions import SessionDataError, SessionValueError

__all__ = ["decode_items", "decode_value", "encode_items", "encode_value"]

# Stateless after construction, so one shared instance is thread-safe.
_tagger = TaggedJSONSerializer()


def encode_value(key: str, value: Any) -> str:
    """Encode one session value as tagged JSON text.

    :raises SessionValueError: the value (or something inside it) is not a
        supported type; the message names ``key`` and how to fix it.
    """
    try:
        return json.dumps(_tagger.tag(value), separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        raise SessionValueError(key, value, str(exc)) from exc


def decode_value(key: str, raw: str | bytes) -> Any:
    """Decode text written by :func:`encode_value`.

    :raises SessionDataError: the text is not valid tagged JSON.
    """
    try:
        # object_hook runs innermost-first, which is the order untagging needs.
        return json.loads(raw, object_hook=_tagger.untag)
    except (ValueError, TypeError) as exc:
        raise SessionDataError(
            f"Stored value of session key {key!r} is not valid tagged JSON ({exc}); "
            "it was not written by this session store. Check that no other program "
            "writes under the store's key prefix; the session should be discarded."
        ) from exc


def encode_items(items: Mapping[str, Any]) -> dict[str, str]:
    """Encode every value of ``items``; keys must be strings.

    :raises SessionValueError: a key is not a ``str`` or a value cannot be encoded.
    """
    encoded: dict[str, str] = {}
    for key, value in items.items():
        if not isinstance(key, str):
            raise SessionValueError(key, value, "session keys must be str")
        encoded[key] = encode_value(key, value)
    return encoded


def decode_items(items: Mapping[str, str | bytes]) -> dict[str, Any]:
    """Decode every value of ``items`` (the inverse of :func:`encode_items`)."""
    return {key: decode_value(key, raw) for key, raw in items.items()}
