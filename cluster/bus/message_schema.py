"""The shape of every bus message, checked before anything acts on it.

The listener relies on these types: a message that passes
:func:`check_fields` can be applied without further checks, and one that
does not is dropped (``dropped_malformed``), never half-applied.
"""
from __future__ import annotations

from typing import Any

from cluster.bus.errors import Dropped

#: methods python-socketio's PubSubManager understands
STOCK_METHODS = frozenset(
    {"emit", "callback", "disconnect", "enter_room", "leave_room", "close_room"})
#: methods only cluster nodes speak
CLUSTER_METHODS = frozenset(
    {"heartbeat", "bye", "request", "response", "presence", "ask", "answer"})

def _is_room(value: Any) -> bool:
    return isinstance(value, (str, int)) and not isinstance(value, bool)


def _is_args(value: Any) -> bool:
    """Arguments as :func:`cluster.bus.services.asks.encode_args` sends them."""
    return (isinstance(value, list) and len(value) >= 1 and isinstance(value[0], list)
            and all(isinstance(a, str) for a in value[1:]))


def _is_sids(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(s, str) for s in value)


def _ask_ok(message: dict[str, Any]) -> bool:
    room, skip, timeout = message.get("room"), message.get("skip_sid"), message.get("timeout")
    return (isinstance(message.get("ask_id"), str) and isinstance(message.get("event"), str)
            and _is_args(message.get("args"))
            and (_is_room(room) or (isinstance(room, list) and len(room) > 0
                                    and all(map(_is_room, room))))
            and (skip is None or isinstance(skip, str) or _is_sids(skip))
            and isinstance(timeout, (int, float)) and not isinstance(timeout, bool)
            and timeout > 0)


def _answer_ok(message: dict[str, Any]) -> bool:
    answers = message.get("answers")
    return (isinstance(message.get("ask_id"), str) and isinstance(message.get("to"), str)
            and ("roster" not in message or _is_sids(message["roster"]))
            and ("nodes" not in message or _is_sids(message["nodes"]))
            and (answers is None or (isinstance(answers, dict)
                                     and all(map(_is_args, answers.values()))))
            and ("error" not in message or isinstance(message["error"], str)))


def check_fields(message: dict[str, Any]) -> None:
    """Field checks per method: the listener relies on these types."""
    method = message.get("method")
    ns = message.get("namespace", "/")
    if ns is not None and not isinstance(ns, str):
        raise Dropped("dropped_malformed", "namespace must be a string")
    host = message.get("host_id")
    if host is not None and not isinstance(host, str):
        raise Dropped("dropped_malformed", "host_id must be a string")
    if method == "emit":
        room, skip, cb = (message.get("room"), message.get("skip_sid"),
                          message.get("callback"))
        ok = (isinstance(message.get("event"), str)
              and isinstance(message.get("data"), list)
              and (room is None or _is_room(room) or (
                  isinstance(room, list) and all(map(_is_room, room))))
              and (skip is None or isinstance(skip, str) or (
                  isinstance(skip, list)
                  and all(isinstance(s, str) for s in skip)))
              and (cb is None or (
                  isinstance(cb, list) and len(cb) == 3
                  and isinstance(cb[0], str) and isinstance(cb[2], int)))
              and isinstance(message.get("binary", False), bool))
        if ok and message.get("binary"):
            data = message["data"]
            ok = len(data) >= 1 and all(isinstance(a, str) for a in data[1:])
    elif method == "callback":
        ok = (isinstance(message.get("sid"), str)
              and isinstance(message.get("id"), int)
              and isinstance(message.get("args"), list))
    elif method in ("disconnect", "enter_room", "leave_room"):
        ok = isinstance(message.get("sid"), str) and (
            method == "disconnect" or _is_room(message.get("room")))
    elif method == "close_room":
        ok = _is_room(message.get("room"))
    elif method in CLUSTER_METHODS:
        ok = isinstance(host, str)
        if method == "request":
            ok = ok and isinstance(message.get("op"), str) and isinstance(
                message.get("req_id"), str) and isinstance(
                message.get("args"), dict)
        elif method == "response":
            ok = ok and isinstance(message.get("req_id"), str) and isinstance(
                message.get("to"), str)
        elif method == "ask":
            ok = ok and _ask_ok(message)
        elif method == "answer":
            ok = ok and _answer_ok(message)
        elif method == "presence":
            op = message.get("op")
            ok = ok and op in ("add", "remove", "sync") and _is_room(
                message.get("room"))
            if ok and op == "sync":
                rooms = message.get("rooms")
                ok = isinstance(rooms, list) and all(
                    isinstance(r, list) and len(r) == 2
                    and isinstance(r[0], str) and _is_room(r[1])
                    for r in rooms)
    else:
        raise Dropped("dropped_malformed", f"unknown method {method!r}")
    if not ok:
        raise Dropped("dropped_malformed", f"bad fields for {method!r}")
