"""codec: tagged JSON per value, clear errors, never pickle."""

from __future__ import annotations

import datetime
import pickle
import uuid
from decimal import Decimal

import pytest
from markupsafe import Markup

from session_store import SessionDataError, SessionValueError
from session_store.codec import decode_items, decode_value, encode_items, encode_value

ROUND_TRIP = [
    None,
    True,
    0,
    -7,
    1.5,
    "text",
    "ünïcode ✓",
    [1, "a", None],
    {"nested": {"deep": [1, 2]}},
    (1, 2, "three"),
    [(1, 2), (3,)],
    b"\x00\xffraw bytes",
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    Markup("<b>safe</b>"),
    datetime.datetime(2024, 5, 17, 12, 30, 45, tzinfo=datetime.UTC),
    {" t": "a dict whose only key looks like a tag"},
    {" di": [1]},
]


@pytest.mark.parametrize("value", ROUND_TRIP, ids=repr)
def test_round_trip_keeps_value_and_type(value: object) -> None:
    text = encode_value("k", value)
    assert isinstance(text, str) and text.isascii()
    back = decode_value("k", text)
    assert back == value
    assert type(back) is type(value)


def test_decode_accepts_bytes_as_redis_returns_them() -> None:
    assert decode_value("k", encode_value("k", (1, b"x")).encode()) == (1, b"x")


def test_datetime_comes_back_as_utc_whole_seconds_like_flask() -> None:
    naive = datetime.datetime(2024, 1, 2, 3, 4, 5, 678)
    back = decode_value("when", encode_value("when", naive))
    assert back == datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)


def test_lone_surrogate_is_escaped_not_an_encoding_error() -> None:
    text = encode_value("k", "a\udc80b")
    assert text.encode("utf-8")  # would raise if the surrogate were raw
    assert decode_value("k", text) == "a\udc80b"


@pytest.mark.parametrize(
    "value",
    [{1, 2}, Decimal("1.5"), datetime.date(2024, 1, 1), object(), {"inner": {1, 2}}],
    ids=["set", "Decimal", "date", "object", "nested set"],
)
def test_unsupported_value_names_the_key_and_the_fix(value: object) -> None:
    with pytest.raises(SessionValueError) as info:
        encode_value("cart", value)
    message = str(info.value)
    assert "'cart'" in message
    assert "Convert the value" in message
    assert info.value.key == "cart"
    assert isinstance(info.value, TypeError)


def test_circular_value_is_a_session_value_error() -> None:
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(SessionValueError, match="'loop'"):
        encode_value("loop", loop)


def test_non_str_session_key_is_refused() -> None:
    with pytest.raises(SessionValueError, match="session keys must be str"):
        encode_items({1: "x"})  # type: ignore[dict-item]


def test_items_round_trip() -> None:
    items = {"a": (1,), "b": b"2"}
    assert decode_items(encode_items(items)) == items


@pytest.mark.parametrize(
    "raw", ["not json", '{"unterminated"', '{" b":"***not base64***"}', '{" u":"not-a-uuid"}']
)
def test_garbage_is_a_session_data_error(raw: str) -> None:
    with pytest.raises(SessionDataError, match="'k'"):
        decode_value("k", raw)


def test_pickle_bytes_are_never_unpickled() -> None:
    class Boom:
        def __reduce__(self) -> tuple[object, ...]:
            return (exec, ("raise SystemExit('executed')",))

    payload = pickle.dumps(Boom())
    # As a stored value, a pickle is just bytes and comes back as bytes.
    assert decode_value("p", encode_value("p", payload)) == payload
    # As raw stored text it is not JSON, so decoding refuses it.
    with pytest.raises(SessionDataError):
        decode_value("p", payload)


def test_no_module_of_the_package_imports_an_unsafe_deserializer() -> None:
    import ast
    from pathlib import Path

    import session_store

    unsafe = {"pickle", "cPickle", "dill", "marshal", "shelve", "jsonpickle", "yaml"}
    for path in Path(session_store.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not unsafe & {n.split(".")[0] for n in names}, f"{path.name} imports {names}"
