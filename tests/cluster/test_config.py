"""cluster.config: one typed, validated configuration per node."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from cluster.bus import DEFAULT_CHANNEL
from cluster.config import (
    DEFAULT_HTTP_HEADER_TIMEOUT,
    DEFAULT_HTTP_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_SESSION_KEY_PREFIX,
    DEFAULT_SESSION_TTL,
    NodeConfig,
)
from cluster.exceptions import ConfigurationError
from cluster.node.frame_writer import DEFAULT_MAX_BACKLOG
from cluster.node.limits import Limits
from cluster.recovery.replay import RecoveryOptions


def test_defaults_are_the_documented_ones() -> None:
    config = NodeConfig.from_options({})
    assert config.bus.url is None
    assert config.bus.channel == DEFAULT_CHANNEL == "flask-socketio"
    assert config.bus.write_only is False
    assert config.bus.signing_secret is None
    assert config.sessions.manage_session is True
    assert config.sessions.ttl == DEFAULT_SESSION_TTL == 120.0
    assert config.sessions.key_prefix == DEFAULT_SESSION_KEY_PREFIX == "sio:sess:"
    assert config.limits == Limits()
    assert config.limits.max_events_per_second == 100
    assert config.recovery is None
    transport = config.transport
    assert transport.max_backlog == DEFAULT_MAX_BACKLOG == 1024 * 1024
    assert transport.write_window == 0.001
    assert transport.websocket_compression is False
    assert transport.tcp_nodelay is True
    assert transport.max_connections == DEFAULT_MAX_CONNECTIONS == 100_000
    assert transport.http_header_timeout == DEFAULT_HTTP_HEADER_TIMEOUT == 10.0
    assert transport.http_idle_timeout == DEFAULT_HTTP_IDLE_TIMEOUT == 60.0
    assert transport.path == "socket.io"
    assert dict(config.server_options) == {}


def test_the_config_is_frozen() -> None:
    config = NodeConfig.from_options({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.limits = Limits(max_rooms_per_connection=5)  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.server_options["ping_interval"] = 5  # type: ignore[index]


def test_options_are_sorted_into_typed_parts() -> None:
    identity = lambda auth: "u1"  # noqa: E731
    config = NodeConfig.from_options({
        "message_queue": "redis://127.0.0.1:6379/0", "channel": "chat",
        "signing_secret": "s3cret", "message_queue_options": {"socket_timeout": 3},
        "node_name": "n1", "session_store": "memory", "session_ttl": 30,
        "session_key_prefix": "app:", "resume_identity": identity, "manage_session": False,
        "max_rooms_per_connection": 7, "max_backlog": 4096, "websocket_compression": True,
        "write_window": 0,
        "tcp_nodelay": False, "max_connections": 10, "http_header_timeout": 0,
        "path": "/live/", "redis_url": "redis://127.0.0.1:6379/1",
        "cors_allowed_origins": ["https://example.org"], "ping_interval": 5,
        "connection_state_recovery": {"max_disconnection_duration": 60,
                                      "skip_connect_handler": True},
    })
    assert config.bus.url == "redis://127.0.0.1:6379/0" and config.bus.channel == "chat"
    assert config.bus.signing_secret == "s3cret" and config.bus.node_name == "n1"
    assert dict(config.bus.driver_options or {}) == {"socket_timeout": 3}
    assert config.sessions.store == "memory" and config.sessions.ttl == 30.0
    assert config.sessions.key_prefix == "app:" and config.sessions.resume_identity is identity
    assert config.sessions.manage_session is False
    assert config.limits.max_rooms_per_connection == 7
    assert config.recovery == RecoveryOptions(60.0, True)
    assert config.transport.max_backlog == 4096 and config.transport.websocket_compression
    assert config.transport.write_window == 0.0  # off
    assert config.transport.tcp_nodelay is False and config.transport.max_connections == 10
    assert config.transport.http_header_timeout is None  # 0 switches it off
    assert config.transport.path == "live"
    assert config.redis_url == "redis://127.0.0.1:6379/1"
    # what the cluster does not consume goes to python-socketio, untouched
    assert dict(config.server_options) == {"cors_allowed_origins": ["https://example.org"],
                                           "ping_interval": 5}


def test_session_ttl_defaults_to_the_recovery_window() -> None:
    recovering = NodeConfig.from_options(
        {"connection_state_recovery": {"max_disconnection_duration": 300}})
    assert recovering.sessions.ttl == 300.0
    explicit = NodeConfig.from_options(
        {"connection_state_recovery": {"max_disconnection_duration": 300}, "session_ttl": 20})
    assert explicit.sessions.ttl == 20.0
    assert NodeConfig.from_options({"connection_state_recovery": True}).recovery == \
        RecoveryOptions()


def test_an_emitter_without_an_app_is_write_only_and_needs_a_bus() -> None:
    emitter = NodeConfig.from_options({"message_queue": "redis://127.0.0.1:1/0"}, has_app=False)
    assert emitter.bus.write_only is True
    listening = NodeConfig.from_options({"message_queue": "redis://127.0.0.1:1/0",
                                         "write_only": False}, has_app=False)
    assert listening.bus.write_only is False
    with pytest.raises(ConfigurationError, match="write-only emitter and needs message_queue"):
        NodeConfig.from_options({}, has_app=False)


@pytest.mark.parametrize("options, message", [
    ({"message_queue": 6379}, r"message_queue must be a string .* e\.g\. message_queue='redis://"),
    ({"channel": 5}, "channel must be a string"),
    ({"signing_secret": 1234}, "signing_secret must be a string or bytes"),
    ({"message_queue_options": "timeout=3"}, "message_queue_options must be a dict"),
    ({"write_only": "yes"}, "write_only must be True or False"),
    ({"session_ttl": "long"}, "session_ttl must be a number of seconds"),
    ({"session_ttl": -5}, "session_ttl must be a positive number"),
    ({"session_store": "redis"}, "session_store must be None .* 'memory' or a session_store"),
    ({"resume_identity": "user_id"}, r"resume_identity must be a function f\(auth\)"),
    ({"session_key_prefix": 3}, "session_key_prefix must be a string"),
    ({"connection_state_recovery": {"maxDisconnectionDuration": 30}},
     "connection_state_recovery: unknown .*max_disconnection_duration"),
    ({"connection_state_recovery": {"max_disconnection_duration": 0}}, "positive"),
    ({"connection_state_recovery": 120}, "takes a dict"),
    ({"max_backlog": 100}, "max_backlog must be a whole number of bytes, at least 1024"),
    ({"write_window": 5}, "write_window must be a number of seconds from 0 .* e.g. "
                          "write_window=0.002 for 2 ms"),
    ({"max_connections": 0}, "max_connections must be a positive whole number"),
    ({"http_idle_timeout": "soon"}, "number of seconds .* or None or 0"),
    ({"http_header_timeout": -1}, "http_header_timeout=-1"),
    ({"max_events_per_second": -1}, "max_events_per_second must be a positive number"),
    ({"max_rooms_per_connection": 2.5}, "max_rooms_per_connection must be a positive whole"),
])
def test_mistakes_raise_a_configuration_error_that_names_the_fix(
        options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        NodeConfig.from_options(options)


def test_overrides_replace_only_what_is_given_and_are_validated() -> None:
    base = NodeConfig.from_options({
        "message_queue": "redis://127.0.0.1:6379/0", "channel": "chat",
        "max_events_per_second": 50, "session_ttl": 30, "ping_interval": 5})
    same = base.with_overrides(session_ttl=None, channel=None)
    assert same is base  # nothing given: nothing changes
    changed = base.with_overrides(max_rooms_per_connection=9, max_events_per_second=0,
                                  signing_secret="s", tcp_nodelay=False)
    assert changed.limits.max_rooms_per_connection == 9
    assert changed.limits.max_events_per_second is None  # 0 switches the limit off
    assert changed.bus.signing_secret == "s" and changed.bus.channel == "chat"
    assert changed.transport.tcp_nodelay is False
    assert changed.sessions.ttl == 30.0 and dict(changed.server_options) == {"ping_interval": 5}
    # the original is untouched
    assert base.limits.max_events_per_second == 50 and base.bus.signing_secret is None
    with pytest.raises(ConfigurationError, match="max_connections"):
        base.with_overrides(max_connections=-3)


def test_a_recovery_override_moves_the_session_ttl_with_it() -> None:
    base = NodeConfig.from_options({})
    recovering = base.with_overrides(
        connection_state_recovery={"max_disconnection_duration": 90})
    assert recovering.recovery == RecoveryOptions(90.0, False)
    assert recovering.sessions.ttl == 90.0


def test_a_new_bus_url_drops_the_manager_built_for_the_old_one() -> None:
    manager = object()
    base = NodeConfig.from_options({"client_manager": manager})
    assert base.bus.client_manager is manager
    assert base.with_overrides(max_backlog=2048).bus.client_manager is manager
    moved = base.with_overrides(message_queue="redis://127.0.0.1:6379/0")
    assert moved.bus.client_manager is None and moved.bus.url == "redis://127.0.0.1:6379/0"


def test_an_emitter_stays_write_only_through_overrides_and_removals() -> None:
    emitter = NodeConfig.from_options({"message_queue": "redis://127.0.0.1:1/0"}, has_app=False)
    assert emitter.with_overrides(channel="c").bus.write_only is True
    single = NodeConfig.from_options({"message_queue": "redis://127.0.0.1:1/0"})
    assert single.without("message_queue").bus.url is None
