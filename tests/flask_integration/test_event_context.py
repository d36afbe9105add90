"""The request context of an event: its URL matched once per connection,
Flask's empty cookie session made without a serializer when there is no
cookie, and no reference cycle left behind."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, request
from flask.sessions import SecureCookieSessionInterface
from werkzeug.exceptions import NotFound
from werkzeug.test import EnvironBuilder

from cluster import SocketIO
from cluster.flask_integration.event_context import MATCH_KEY, EventRequestContext


def _app_with_catch_all() -> Flask:
    app = Flask(__name__)

    @app.route("/<path:anything>")
    def catch_all(anything: str) -> str:
        return anything

    return app


def test_an_unrouted_path_gets_the_not_found_a_match_gives() -> None:
    app = Flask(__name__)
    environ = EnvironBuilder(path="/socket.io/").get_environ()
    with app.request_context(environ):
        expected = request.routing_exception
    for _ in range(2):  # matched, then taken from the environ
        with EventRequestContext(app, environ):
            assert isinstance(request.routing_exception, NotFound)
            assert type(request.routing_exception) is type(expected)
            assert request.url_rule is None and request.view_args is None
    assert environ[MATCH_KEY][0] is app.url_map


def test_a_routed_path_gets_its_rule_and_own_view_args() -> None:
    app = _app_with_catch_all()
    environ = EnvironBuilder(path="/socket.io/").get_environ()
    seen = []
    for _ in range(2):
        with EventRequestContext(app, environ):
            assert request.routing_exception is None
            assert request.url_rule is not None and request.url_rule.endpoint == "catch_all"
            assert request.view_args == {"anything": "socket.io/"}
            request.view_args["anything"] = "changed by a handler"
            seen.append(request.view_args)
    assert seen[0] is not seen[1]  # one handler's change does not reach the next


def test_the_kept_exception_holds_no_frame() -> None:
    app = Flask(__name__)
    environ = EnvironBuilder(path="/socket.io/").get_environ()
    with EventRequestContext(app, environ):
        error = request.routing_exception
    assert error.__traceback__ is None
    assert error.__context__ is None and error.__cause__ is None
    try:  # a handler that raises it, while handling another error, gives
        try:  # it a traceback and a context...
            raise KeyError("handled")
        except KeyError:
            raise error  # noqa: B904 - the context is what this checks
    except NotFound:
        pass
    assert error.__traceback__ is not None and error.__context__ is not None
    with EventRequestContext(app, environ):  # ...which the next event drops
        assert request.routing_exception is error
        assert error.__traceback__ is None and error.__context__ is None


@pytest.fixture()
def collector_paused() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_events_leave_no_garbage_cycles(collector_paused: None) -> None:
    # before: each event's request context stayed in a cycle through the
    # traceback of its routing exception, about 55 objects per event that
    # only the garbage collector could free (and stopped the node to)
    app = Flask(__name__)
    app.config["SECRET_KEY"] = "test"
    socketio = SocketIO(app)

    @socketio.on("ping_me")
    def ping_me(data: Any) -> Any:
        return {"path": request.path, "data": data}

    client = socketio.test_client(app)
    try:
        client.emit("ping_me", 0, callback=True)  # the first event matches
        gc.collect()
        for number in range(200):
            assert client.emit("ping_me", number, callback=True)["data"] == number
        freed = gc.collect()
    finally:
        client.disconnect()
    # 11,800 before (59 per event); none now, a few allowed for whatever
    # else the test client keeps
    assert freed < 50, f"{freed} objects in reference cycles after 200 events"


def _count_serializers(monkeypatch: pytest.MonkeyPatch, interface: Any) -> list[int]:
    made: list[int] = []
    build = type(interface).get_signing_serializer

    def counted(self: Any, app: Flask) -> Any:
        made.append(1)
        return build(self, app)

    monkeypatch.setattr(type(interface), "get_signing_serializer", counted)
    return made


def test_no_session_cookie_gets_flasks_empty_session_without_a_serializer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    app = Flask(__name__)
    app.secret_key = "k" * 32
    made = _count_serializers(monkeypatch, app.session_interface)
    with EventRequestContext(app, EnvironBuilder(path="/socket.io/").get_environ()) as context:
        assert type(context.session) is app.session_interface.session_class
        assert dict(context.session) == {} and not context.session.modified
    assert made == []
    # a cookie: Flask opens it, and its values are there
    with app.test_request_context("/"):
        signed = app.session_interface.get_signing_serializer(app).dumps({"user": "ada"})
    made.clear()
    cookie = EnvironBuilder(path="/socket.io/",
                            headers={"Cookie": f"session={signed}"}).get_environ()
    with EventRequestContext(app, cookie) as context:
        assert context.session["user"] == "ada"
    assert made == [1]


def test_other_session_setups_are_opened_by_flask(monkeypatch: pytest.MonkeyPatch) -> None:
    environ = EnvironBuilder(path="/socket.io/").get_environ()
    keyless = Flask(__name__)  # no secret key: Flask's null session
    with EventRequestContext(keyless, environ) as context:
        assert keyless.session_interface.is_null_session(context.session)

    class Custom(SecureCookieSessionInterface):
        pass

    app = Flask(__name__)
    app.secret_key = "k" * 32
    app.session_interface = Custom()
    made = _count_serializers(monkeypatch, app.session_interface)
    with EventRequestContext(app, environ) as context:
        assert dict(context.session) == {}
    assert made == [1]  # a subclass may open differently: Flask's own open ran
