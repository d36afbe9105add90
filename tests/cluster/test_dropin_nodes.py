"""Drop-in behaviour on real nodes (issue 17): application errors are not
malformed packets, cluster.Client keeps the application's arguments, an
unknown namespace gets the official server's answer."""

from __future__ import annotations

import queue
import time
from typing import Any

import pytest
import socketio

from cluster import Client
from cluster.client import has_offset_marker
from tests.harness.raw_websocket import metric

APP = "tests.apps.compat_app:socketio"
WAIT = 10.0


def _connect(factory: Any, url: str, cls: type = Client,
             **kwargs: Any) -> tuple[Any, queue.Queue[Any]]:
    events: queue.Queue[Any] = queue.Queue()
    client = factory(cls=cls)

    @client.on("*")
    def any_event(event: str, *args: Any) -> None:
        events.put((event, list(args)))

    @client.on("question")
    def question(text: str) -> str:
        return f"answer to {text}"

    @client.on("echoed_acked")
    def echoed_acked(*args: Any) -> str:
        events.put(("echoed_acked", list(args)))
        return "got it"

    client.connect(url, transports=["websocket"], wait_timeout=WAIT, **kwargs)
    return client, events


def _next(events: queue.Queue[Any], name: str) -> list[Any]:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            event, args = events.get(timeout=0.1)
        except queue.Empty:
            continue
        if event == name:
            return args
    raise AssertionError(f"no {name!r} within {WAIT}s")


def test_application_errors_are_logged_counted_and_the_node_keeps_serving(
        node_factory: Any, sio_client_factory: Any) -> None:
    (node,) = node_factory(app=APP, message_queue=None)
    client, events = _connect(sio_client_factory, node.url, cls=socketio.Client)
    _next(events, "welcome")
    client.emit("crash", "payload")
    # the same connection goes on being served
    assert client.call("echo", "still here", timeout=WAIT) == "sent"
    assert _next(events, "echoed") == ["still here"]
    assert client.connected
    # a KeyError in the app's own connect handler refuses that connection
    refused = sio_client_factory(cls=socketio.Client)
    errors: list[Any] = []
    refused.on("connect_error", errors.append)
    with pytest.raises(socketio.exceptions.ConnectionError):
        refused.connect(node.url, transports=["websocket"], auth={"crash": True},
                        wait_timeout=WAIT)
    assert errors == [{"message": "Internal server error"}]  # no detail leaks
    assert metric(node, "socketio_server_events_total", "handler_errors") == 2
    assert metric(node, "socketio_server_events_total", "malformed_packets") == 0
    log = node.log_path.read_text()
    assert "Malformed" not in log
    assert "ValueError: the handler failed on 'payload'" in log  # the traceback
    assert "KeyError: 'missing key'" in log


@pytest.mark.parametrize("recovery", [False, True], ids=["plain", "recovery"])
def test_client_hands_handlers_the_applications_arguments(
        node_factory: Any, sio_client_factory: Any, recovery: bool) -> None:
    env = {"RECOVERY_WINDOW": "60"} if recovery else None
    (node,) = node_factory(app=APP, env=env)
    client, events = _connect(sio_client_factory, node.url)
    _next(events, "welcome")
    cases: list[list[Any]] = [
        ["hello"], ["a", "hello"], [1, 2], [{"x": 1}], ["1700000000000-0"], [None, "99-1"]]
    for args in cases:
        client.emit("echo", tuple(args) if len(args) > 1 else args[0])
        assert _next(events, "echoed") == args, args
        # acked emits never carry an offset: a trailing string is the app's
        client.emit("echo_acked", tuple(args) if len(args) > 1 else args[0])
        assert _next(events, "echoed_acked") == args, args
    if recovery:
        offset = client.offset()
        assert offset is not None and has_offset_marker(["e", offset])
    else:
        assert client.offset() is None
    assert len(client.call("acks", timeout=WAIT)) == len(cases)
    # the module-level call() asks the sender and returns its answer
    assert client.call("ask_back", "why", timeout=WAIT) == "answer to why"


def test_an_event_delivered_without_an_offset_keeps_a_stream_id_shaped_argument(
        node_factory: Any, sio_client_factory: Any, redis_server: Any) -> None:
    import signal

    (node,) = node_factory(app=APP, env={"RECOVERY_WINDOW": "60"})
    client, events = _connect(sio_client_factory, node.url)
    _next(events, "welcome")
    client.emit("echo", "warm-up")
    assert _next(events, "echoed") == ["warm-up"]
    # Redis frozen: the echo is delivered after offset_wait (2 s) without an
    # offset, so the server marks it with None; a later-looking stream id
    # among the application's arguments must survive
    args = ["a", "99999999999999-7"]
    redis_server.kill(signal.SIGSTOP)
    try:
        client.emit("echo", tuple(args))
        assert _next(events, "echoed") == args
    finally:
        redis_server.kill(signal.SIGCONT)


def test_the_offset_marker_is_a_stream_id_or_none() -> None:
    # what the server appends to every unacked event with recovery on
    assert has_offset_marker(["event", "data", "1700000000000-1"])
    assert has_offset_marker(["event", "1700000000000-0", None])  # delivered without one
    # an event without a marker (a server that does not mark) keeps its arguments
    assert not has_offset_marker(["event", "hello"])
    assert not has_offset_marker(["event", 42])
    assert not has_offset_marker(["event"])


def test_unknown_namespace_gets_invalid_namespace(node_factory: Any,
                                                  sio_client_factory: Any) -> None:
    (node,) = node_factory(app=APP, message_queue=None)
    client = sio_client_factory(cls=socketio.Client)
    errors: list[Any] = []
    client.on("connect_error", errors.append, namespace="/nowhere")
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect(node.url, namespaces=["/nowhere"], transports=["websocket"],
                       wait_timeout=WAIT)
    assert errors == [{"message": "Invalid namespace"}]
