"""ForkedSession: change tracking of every mutating method, Flask integration."""

from __future__ import annotations

import copy
import threading
from importlib.metadata import version

import flask
import flask_login
import pytest
from flask.ctx import RequestContext
from flask.sessions import SessionMixin
from packaging.version import Version
from werkzeug.test import EnvironBuilder

from session_store import ForkedSession, SessionHandle

FLASK_VERSION = Version(version("flask"))


def pending(s: ForkedSession) -> tuple[dict[str, object], set[str]]:
    return s.changes()


def test_initial_contents_count_as_saved() -> None:
    s = ForkedSession({"a": 1, "b": 2})
    assert s == {"a": 1, "b": 2}
    assert pending(s) == ({}, set())
    assert s.modified is False
    assert s.new is False and s.accessed is False


def test_setitem_and_delitem_are_tracked() -> None:
    s = ForkedSession({"a": 1, "b": 2})
    s["a"] = 10
    s["c"] = 3
    del s["b"]
    assert pending(s) == ({"a": 10, "c": 3}, {"b"})
    assert s.modified is True


def test_set_then_delete_and_delete_then_set_keep_only_the_last() -> None:
    s = ForkedSession({"a": 1})
    s["x"] = 1
    del s["x"]
    del s["a"]
    s["a"] = 2
    assert pending(s) == ({"a": 2}, {"x"})


def test_pop_tracks_only_a_real_removal() -> None:
    s = ForkedSession({"a": 1})
    assert s.pop("missing", None) is None
    assert pending(s) == ({}, set())
    with pytest.raises(KeyError):
        s.pop("missing")
    assert s.pop("a") == 1
    assert pending(s) == ({}, {"a"})


def test_popitem_is_tracked() -> None:
    s = ForkedSession({"a": 1})
    assert s.popitem() == ("a", 1)
    assert pending(s) == ({}, {"a"})


def test_setdefault_tracks_only_an_insert() -> None:
    s = ForkedSession({"a": 1})
    assert s.setdefault("a", 5) == 1
    assert pending(s) == ({}, set())
    assert s.setdefault("b", [1]) == [1]
    assert pending(s) == ({"b": [1]}, set())


def test_update_from_mapping_pairs_and_kwargs_is_tracked() -> None:
    s = ForkedSession()
    s.update({"a": 1}, b=2)
    s.update([("c", 3)])
    assert pending(s) == ({"a": 1, "b": 2, "c": 3}, set())


def test_ior_is_tracked_and_keeps_the_object() -> None:
    s = ForkedSession({"a": 1})
    same = s
    s |= {"b": 2}
    assert s is same and isinstance(s, ForkedSession)
    assert pending(s) == ({"b": 2}, set())


def test_clear_deletes_every_key() -> None:
    s = ForkedSession({"a": 1, "b": 2})
    s["c"] = 3
    s.clear()
    assert s == {}
    assert pending(s) == ({}, {"a", "b", "c"})


def test_nested_mutation_needs_modified_true_like_flask() -> None:
    s = ForkedSession({"cart": [1], "other": "x"})
    s["cart"].append(2)
    assert pending(s) == ({}, set())
    s.modified = True
    assert s.modified is True
    assert pending(s) == ({"cart": [1, 2], "other": "x"}, set())


def test_modified_false_discards_pending_changes() -> None:
    s = ForkedSession({"a": 1})
    s["b"] = 2
    del s["a"]
    s.modified = False
    assert pending(s) == ({}, set())


def test_mark_saved_through_keeps_newer_changes() -> None:
    s = ForkedSession()
    s["a"] = 1
    mark = s.change_mark
    s["b"] = 2  # happens "during" the save of a
    s.mark_saved(through=mark)
    assert pending(s) == ({"b": 2}, set())
    s.mark_saved()
    assert s.modified is False


def test_change_to_a_key_after_the_mark_stays_pending() -> None:
    s = ForkedSession()
    s["a"] = 1
    mark = s.change_mark
    s["a"] = 2
    s.mark_saved(through=mark)
    assert pending(s) == ({"a": 2}, set())


def test_explicit_modified_after_the_mark_stays_pending() -> None:
    s = ForkedSession({"a": 1})
    mark = s.change_mark
    s.modified = True
    s.mark_saved(through=mark)
    assert s.modified is True


def test_concurrent_writers_are_all_tracked() -> None:
    s = ForkedSession()

    def write(n: int) -> None:
        for i in range(200):
            s[f"k{n}-{i}"] = i

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    set_items, _ = s.changes()
    assert len(set_items) == 8 * 200


def test_is_a_flask_session_mixin_and_permanent_is_tracked() -> None:
    s = ForkedSession()
    assert isinstance(s, SessionMixin) and isinstance(s, dict)
    assert s.permanent is False
    s.permanent = True
    assert s.permanent is True
    assert pending(s) == ({"_permanent": True}, set())


def test_copies_keep_contents_but_not_pending_changes() -> None:
    s = ForkedSession({"a": [1]})
    s["b"] = 2
    assert s.copy() == {"a": [1], "b": 2} and type(s.copy()) is dict
    clone = copy.deepcopy(s)
    assert isinstance(clone, ForkedSession) and clone == s
    assert clone["a"] is not s["a"]
    assert clone.modified is False


def test_serves_as_flask_session_for_flask_login() -> None:
    app = flask.Flask(__name__)
    app.secret_key = "test"
    manager = flask_login.LoginManager(app)

    class User(flask_login.UserMixin):
        def __init__(self, uid: str) -> None:
            self.id = uid

    manager.user_loader(lambda uid: User(uid))
    forked = ForkedSession({"theme": "dark"})
    environ = EnvironBuilder(path="/socket.io/").get_environ()

    with RequestContext(app, environ, session=forked):
        assert flask.session is not None and flask.session["theme"] == "dark"
        # from Flask 3.1.3 on, the flask.session proxy marks the session
        # accessed (Vary: Cookie); before, nothing in Flask sets it here
        assert forked.accessed is (FLASK_VERSION >= Version("3.1.3"))
        assert not flask_login.current_user.is_authenticated
        flask_login.login_user(User("42"))

    set_items, _ = forked.changes()
    assert set_items["_user_id"] == "42"

    # A later event of the same connection sees the logged-in user.
    with RequestContext(app, environ, session=forked):
        assert flask_login.current_user.is_authenticated
        assert flask_login.current_user.get_id() == "42"


def test_a_session_handle_compares_by_identity_and_redacts_its_id() -> None:
    session = ForkedSession({"a": 1})
    handle = SessionHandle("s" * 32, session)
    assert handle != SessionHandle("s" * 32, session) and handle == handle
    assert "s" * 32 not in repr(handle) and "keys=1" in repr(handle)
