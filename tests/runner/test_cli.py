"""cluster.runner.cli: flags and environment become one config change.

Parsing and applying run in process without serving (the node itself is
exercised by the other runner tests); the exit paths run a real
``python -m cluster node`` process, since ``node`` monkey-patches the
process it runs in.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from cluster import SocketIO
from cluster.exceptions import ConfigurationError
from cluster.runner.cli import build_parser, node_config

ROOT = Path(__file__).resolve().parents[2]

ENVIRONMENT = (
    "MESSAGE_QUEUE_URL", "REDIS_URL", "MESSAGE_QUEUE_CHANNEL", "CLUSTER_SIGNING_SECRET",
    "CLUSTER_ALLOW_UNSIGNED_BUS", "NODE_NAME", "SESSION_TTL", "CONNECTION_STATE_RECOVERY",
    "CLUSTER_MAX_BACKLOG", "CLUSTER_MAX_EVENTS_PER_SECOND", "CLUSTER_MAX_ROOMS_PER_CONNECTION",
    "CLUSTER_CONNECT_TIMEOUT", "CLUSTER_MAX_REPLAY_PACKETS", "CLUSTER_MAX_REPLAY_BYTES",
    "CLUSTER_HTTP_HEADER_TIMEOUT", "CLUSTER_HTTP_IDLE_TIMEOUT", "CLUSTER_DRAIN_SECONDS",
    "LOG_LEVEL", "LOG_FORMAT",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)


def _parse(*flags: str) -> Any:
    return build_parser().parse_args(["node", "--app", "chat:socketio", *flags])


def _socketio(**options: Any) -> SocketIO:
    app = Flask(__name__)
    app.secret_key = "k"
    return SocketIO(app, **options)


def test_without_flags_the_application_settings_stay() -> None:
    socketio = _socketio(max_rooms_per_connection=7, websocket_compression=True)
    args = _parse()
    assert (args.host, args.port, args.drain_seconds, args.log_format) == \
        ("127.0.0.1", 5000, 10.0, "text")
    assert node_config(socketio.config, args) is socketio.config


def test_flags_override_the_application_settings() -> None:
    socketio = _socketio(max_rooms_per_connection=7, session_ttl=30,
                         connection_state_recovery={"max_disconnection_duration": 60,
                                                    "skip_connect_handler": True})
    config = node_config(socketio.config, _parse(
        "--max-events-per-second", "0", "--max-rooms-per-connection", "50",
        "--connect-timeout", "5", "--max-replay-packets", "10", "--max-replay-bytes", "2048",
        "--max-backlog", "4096", "--no-tcp-nodelay", "--websocket-compression",
        "--max-connections", "500", "--http-header-timeout", "3", "--http-idle-timeout", "0",
        "--session-ttl", "15", "--recovery-window", "90", "--name", "n7",
        "--write-window", "0.004"))
    assert config.limits.max_events_per_second is None  # 0: off
    assert config.limits.max_rooms_per_connection == 50
    assert config.limits.connect_timeout == 5.0
    assert (config.limits.max_replay_packets, config.limits.max_replay_bytes) == (10, 2048)
    transport = config.transport
    assert (transport.max_backlog, transport.tcp_nodelay, transport.websocket_compression) == \
        (4096, False, True)
    assert transport.max_connections == 500
    assert transport.write_window == 0.004
    assert (transport.http_header_timeout, transport.http_idle_timeout) == (3.0, None)
    assert config.sessions.ttl == 15.0
    # the window changes; the application's skip_connect_handler stays
    assert config.recovery is not None
    assert (config.recovery.max_disconnection_duration, config.recovery.skip_connect_handler) \
        == (90.0, True)
    assert config.bus.node_name == "n7"


def test_the_environment_sets_the_flag_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESSAGE_QUEUE_URL", "redis://127.0.0.1:6379/3")
    monkeypatch.setenv("MESSAGE_QUEUE_CHANNEL", "chat")
    monkeypatch.setenv("CLUSTER_SIGNING_SECRET", "s3cret")
    monkeypatch.setenv("CLUSTER_MAX_BACKLOG", "8192")
    monkeypatch.setenv("CLUSTER_MAX_EVENTS_PER_SECOND", "25")
    monkeypatch.setenv("CLUSTER_WRITE_WINDOW", "0")
    monkeypatch.setenv("CONNECTION_STATE_RECOVERY", "45")
    monkeypatch.setenv("SESSION_TTL", "50")
    monkeypatch.setenv("CLUSTER_ALLOW_UNSIGNED_BUS", "yes")
    args = _parse()
    assert args.allow_unsigned_bus is True
    config = node_config(_socketio().config, args)
    assert (config.bus.url, config.bus.channel, config.bus.signing_secret) == \
        ("redis://127.0.0.1:6379/3", "chat", "s3cret")
    assert config.transport.max_backlog == 8192
    assert config.transport.write_window == 0.0  # 0: off, not "unset"
    assert config.limits.max_events_per_second == 25.0
    assert config.recovery is not None and config.recovery.max_disconnection_duration == 45.0
    assert config.sessions.ttl == 50.0
    # a flag beats its variable
    assert node_config(_socketio().config, _parse("--max-backlog", "2048")).transport \
        .max_backlog == 2048


def test_redis_url_is_the_fallback_bus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/4")
    assert _parse().message_queue == "redis://127.0.0.1:6379/4"
    monkeypatch.setenv("MESSAGE_QUEUE_URL", "redis://127.0.0.1:6379/5")
    assert _parse().message_queue == "redis://127.0.0.1:6379/5"


def test_a_bad_value_is_a_configuration_error_naming_the_option(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLUSTER_MAX_BACKLOG", "100")
    with pytest.raises(ConfigurationError, match="max_backlog must be a whole number of bytes"):
        node_config(_socketio().config, _parse())
    with pytest.raises(ConfigurationError, match="max_rooms_per_connection"):
        node_config(_socketio().config, _parse("--max-rooms-per-connection", "-1"))
    monkeypatch.delenv("CLUSTER_MAX_BACKLOG")
    with pytest.raises(ConfigurationError, match="write_window must be a number of seconds"):
        node_config(_socketio().config, _parse("--write-window", "2"))  # 2 s, not 2 ms


def test_the_change_is_applied_once_to_the_running_parts() -> None:
    socketio = _socketio()
    manager, sessions = socketio.server.manager, socketio.sessions
    config = node_config(socketio.config, _parse(
        "--max-rooms-per-connection", "3", "--max-backlog", "4096", "--session-ttl", "9",
        "--websocket-compression", "--write-window", "0.003"))
    socketio.reconfigure(config)
    assert socketio.config is config and socketio.server.config is config
    assert socketio.server.limits.max_rooms_per_connection == 3
    assert socketio.server.eio.max_backlog == 4096
    assert socketio.server.eio.write_window == 0.003
    assert socketio.server.manager is manager  # the bus did not change
    assert socketio.sessions is not sessions  # the session settings did
    # the compression middleware asks the config in use per request
    assert socketio.server.config.transport.websocket_compression is True


def test_a_new_bus_replaces_the_manager_before_the_first_client_only() -> None:
    socketio = _socketio()
    single = socketio.server.manager
    socketio.reconfigure(node_config(socketio.config, _parse(
        "--message-queue", "redis://127.0.0.1:1/0", "--channel", "chat")))
    manager = socketio.server.manager
    assert manager is not single and manager.channel == "chat"
    assert socketio.server_options["client_manager"] is manager  # Flask-SocketIO's view
    socketio.server.manager_initialized = True  # as after the first connection
    with pytest.raises(ConfigurationError, match="before the first client connects"):
        socketio.reconfigure(socketio.config.with_overrides(channel="other"))
    assert socketio.server.manager is manager and socketio.config.bus.channel == "chat"


def _free_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def _node(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cluster", "node", "--port", _free_port(),
                           *args], cwd=cwd, capture_output=True, text=True, timeout=60,
                          check=False, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})


def test_a_bad_flag_value_stops_the_node_with_the_fix() -> None:
    done = _node("--app", "tests.apps.chat_app:socketio", "--max-backlog", "100")
    assert done.returncode == 2, done.stderr
    assert "error: max_backlog must be a whole number of bytes, at least 1024" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_module_without_an_app_stops_the_node(tmp_path: Path) -> None:
    (tmp_path / "emitter_only.py").write_text(
        "from cluster import SocketIO\nsocketio = SocketIO()\n")
    done = _node("--app", "emitter_only:socketio", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "has no Flask app; call init_app(app)" in done.stderr


def test_a_gc_threshold_below_one_stops_the_node_with_the_fix() -> None:
    done = _node("--app", "tests.apps.chat_app:socketio", "--gc-threshold", "0")
    assert done.returncode == 2, done.stderr
    assert "error: the young generation's GC threshold must be at least 1, not 0" in done.stderr
    assert "--gc-threshold / CLUSTER_GC_THRESHOLD" in done.stderr
    assert "Traceback" not in done.stderr
