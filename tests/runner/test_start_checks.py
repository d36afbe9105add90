"""The node runner as a newcomer meets it: mistakes stop it at once, with the fix.

Real ``python -m cluster node`` processes for the command-line cases; the
app loader in-process for the import errors (its messages are the product).
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, request

from cluster.exceptions import AppLoadError, ConfigurationError
from cluster.runner.app_loader import load_socketio
from cluster.runner.log_format import ContextFilter, JsonFormatter, TextFormatter
from cluster.runner.start_checks import _REDIS_SCHEMES, check_bus_url

ROOT = Path(__file__).resolve().parents[2]


def _node(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cluster", "node", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_a_port_in_use_is_a_clean_message_not_a_traceback() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = _node("--app", "tests.apps.chat_app:socketio", "--port", str(port))
    assert done.returncode == 2
    assert f"port {port} on 127.0.0.1 is already in use" in done.stderr
    assert "pass another --port" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unknown_bus_scheme_stops_the_node_at_start() -> None:
    with socket.socket() as probe:  # a free port, so only the URL is wrong
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = _node("--app", "tests.apps.chat_app:socketio", "--port", str(port),
                 "--message-queue", "foo://x", timeout=30)
    assert done.returncode == 2, done.stderr
    assert "unknown scheme 'foo'" in done.stderr
    assert "redis+cluster://" in done.stderr
    assert "Traceback" not in done.stderr


def test_known_bus_schemes_pass_and_match_the_bus() -> None:
    from cluster.bus import REDIS_SCHEMES

    assert set(_REDIS_SCHEMES) == set(REDIS_SCHEMES)
    for url in ("redis://127.0.0.1:6390/0", "redis+cluster://127.0.0.1:7000",
                "amqp://guest:guest@127.0.0.1:5672//", "kombu+memory://"):
        check_bus_url(url)
    with pytest.raises(ConfigurationError, match="is not a URL"):
        check_bus_url("localhost:6379")


def test_node_help_names_every_bus_scheme() -> None:
    done = _node("--help", timeout=30)
    assert done.returncode == 0
    for scheme in ("redis://", "rediss://", "unix://", "redis+sentinel://", "redis+cluster://",
                   "amqp://"):
        assert scheme in done.stdout
    assert "--log-format" in done.stdout


# -- importing the user's module ------------------------------------------------


@pytest.fixture
def app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the loader adds the cwd
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("i18app")]:
        del sys.modules[name]


def test_an_unported_flask_socketio_import_says_to_change_it(app_dir: Path) -> None:
    (app_dir / "i18app_unported.py").write_text(
        "from flask import Flask\nfrom flask_socketio import SocketIO\n")
    with pytest.raises(AppLoadError) as error:
        load_socketio("i18app_unported:socketio")
    message = str(error.value)
    assert "Change the import" in message and "from cluster import SocketIO" in message
    assert "i18app_unported.py\", line 2" in message  # the real traceback


def test_a_missing_dependency_shows_the_real_error(app_dir: Path) -> None:
    (app_dir / "i18app_dep.py").write_text("import os\nimport no_such_dependency_i18\n")
    with pytest.raises(AppLoadError) as error:
        load_socketio("i18app_dep:socketio")
    message = str(error.value)
    assert "No module named 'no_such_dependency_i18'" in message
    assert "i18app_dep.py\", line 2" in message
    assert "Run the command from the directory" not in message  # not a path problem


def test_an_error_raised_by_the_module_shows_its_traceback(app_dir: Path) -> None:
    (app_dir / "i18app_raises.py").write_text(textwrap.dedent("""
        def build():
            raise RuntimeError("SECRET_KEY is not set")
        build()
        """))
    with pytest.raises(AppLoadError) as error:
        load_socketio("i18app_raises:socketio")
    message = str(error.value)
    assert "RuntimeError: SECRET_KEY is not set" in message
    assert "in build" in message


def test_a_missing_module_names_the_working_directory(app_dir: Path) -> None:
    with pytest.raises(AppLoadError) as error:
        load_socketio("i18app_absent:socketio")
    assert "no module named 'i18app_absent'" in str(error.value)
    assert str(app_dir) in str(error.value)


def test_the_working_directory_is_importable(app_dir: Path) -> None:
    (app_dir / "i18app_ok.py").write_text(
        "from flask import Flask\nfrom cluster import SocketIO\n"
        "app = Flask(__name__)\nsocketio = SocketIO(app)\n")
    socketio = load_socketio("i18app_ok:socketio")
    assert socketio.app is not None and socketio.app.name == "i18app_ok"


# -- log lines ------------------------------------------------------------------


def _record(message: str) -> logging.LogRecord:
    record = logging.LogRecord("cluster", logging.INFO, __file__, 1, message, (), None)
    ContextFilter("node7").filter(record)
    return record


def test_log_lines_carry_the_node_and_the_sid_of_the_handler() -> None:
    outside = _record("outside")
    assert TextFormatter().format(outside).endswith("INFO node7 sid=- cluster: outside")
    app = Flask(__name__)
    with app.test_request_context("/socket.io/"):
        request.sid = "SID123"  # type: ignore[attr-defined]
        inside = _record("in a handler")
    assert " node7 sid=SID123 cluster: in a handler" in TextFormatter().format(inside)
    entry: dict[str, Any] = json.loads(JsonFormatter().format(inside))
    assert entry["node"] == "node7" and entry["sid"] == "SID123"
    assert entry["message"] == "in a handler" and entry["level"] == "INFO"
    assert json.loads(JsonFormatter().format(outside))["sid"] is None


def test_json_logs_are_one_object_per_line(node_factory: Any) -> None:
    (node,) = node_factory(extra_args=["--log-format", "json"])
    lines = [line for line in node.log_text().splitlines() if not line.startswith("--- ")]
    assert lines, "the node logged nothing"
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all(entry["node"] == "node1" for entry in entries)
    assert any("Node listening" in entry["message"] for entry in entries)


def test_a_signing_secret_too_short_is_one_line_and_exit_code_2(redis_url: str) -> None:
    with socket.socket() as probe:  # a free port, so only the secret is wrong
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = _node("--app", "tests.apps.chat_app:socketio", "--port", str(port),
                 "--message-queue", redis_url, "--signing-secret", "short")
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: The bus signing secret is too short")
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1
