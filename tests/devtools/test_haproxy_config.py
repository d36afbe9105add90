"""Unit tests for cluster.devtools.haproxy_config.render_haproxy_config."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests

from cluster.devtools.haproxy_config import Backend, cookie_value, render_haproxy_config

NODES = [Backend("node1", "127.0.0.1", 5001), Backend("node2", "127.0.0.1", 5002)]


def _section(config: str, header: str) -> list[str]:
    """The stripped lines of one section (``backend socket_nodes``...)."""
    lines = config.splitlines()
    start = lines.index(header)
    body = []
    for line in lines[start + 1 :]:
        if line and not line.startswith(" "):
            break
        if line.strip():
            body.append(line.strip())
    return body


def test_backend_has_stickiness_health_checks_and_redispatch() -> None:
    config = render_haproxy_config(NODES, 8000)
    backend = _section(config, "backend socket_nodes")
    assert "balance roundrobin" in backend
    assert 'cookie SERVERID insert indirect nocache httponly attr "SameSite=Lax"' in backend
    assert "option httpchk GET /readyz" in backend
    assert "http-check expect status 200" in backend
    assert "default-server inter 500ms fall 2 rise 1" in backend
    assert f"server node1 127.0.0.1:5001 check cookie {cookie_value('node1')}" in backend
    assert f"server node2 127.0.0.1:5002 check cookie {cookie_value('node2')}" in backend
    defaults = _section(config, "defaults")
    assert "option redispatch" in defaults
    assert "mode http" in defaults


def test_frontend_binds_loopback_on_the_given_port() -> None:
    config = render_haproxy_config(NODES, 8123)
    assert "bind 127.0.0.1:8123" in _section(config, "frontend socketio_in")
    assert "bind 0.0.0.0:8123" in render_haproxy_config(NODES, 8123, bind_host="0.0.0.0")


def _seconds(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(ms|s|m|h)?", value).groups()  # type: ignore[union-attr]
    return int(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 0.001}[unit]


def test_timeouts_outlast_a_long_poll_and_keep_websockets_open() -> None:
    defaults = _section(render_haproxy_config(NODES, 8000), "defaults")
    timeouts = dict(line.split()[1:3] for line in defaults if line.startswith("timeout "))
    # Engine.IO holds a poll up to ping_interval + ping_timeout (25 s + 20 s).
    assert _seconds(timeouts["client"]) > 45
    assert _seconds(timeouts["server"]) > 45
    assert _seconds(timeouts["tunnel"]) >= 3600
    assert _seconds(timeouts["connect"]) <= 5


def test_tuples_are_accepted_and_options_rendered() -> None:
    config = render_haproxy_config(
        [("a", "10.0.0.1", 80)],
        9000,
        health_path="/ready",
        check_interval="1s",
        fall=3,
        rise=2,
        tunnel_timeout="2h",
    )
    assert f"server a 10.0.0.1:80 check cookie {cookie_value('a')}" in config
    assert "option httpchk GET /ready" in config
    assert "default-server inter 1s fall 3 rise 2" in config
    assert "timeout tunnel 2h" in config


def test_stats_frontend_only_when_asked() -> None:
    assert "stats enable" not in render_haproxy_config(NODES, 8000)
    stats = _section(render_haproxy_config(NODES, 8000, stats_port=8404), "frontend stats")
    assert "bind 127.0.0.1:8404" in stats
    assert "stats enable" in stats


@pytest.mark.parametrize(
    ("backends", "kwargs", "message"),
    [
        ([], {}, "at least one backend"),
        ([Backend("n1", "h", 1), Backend("n1", "h", 2)], {}, "used twice"),
        ([Backend("bad name", "h", 1)], {}, "single token"),
        ([Backend("n;1", "h", 1)], {}, "single token"),
        ([Backend("n1", "h", 70000)], {}, "between 1 and 65535"),
        ([Backend("n1", "", 1)], {}, "invalid host"),
        ([("n1", "h")], {}, "(name, host, port)"),
        (NODES, {"port": 0}, "between 1 and 65535"),
        (NODES, {"tunnel_timeout": "1 hour"}, "'1h'"),
        (NODES, {"stats_port": 8000}, "must differ"),
        (NODES, {"health_path": "readyz"}, "absolute path"),
        (NODES, {"fall": 0}, "at least 1"),
        (NODES, {"log_level": "loud"}, "log_level"),
        (NODES, {"request_timeout": "ten"}, "'30s'"),
        (NODES, {"max_connections_per_source": 0}, "None to switch"),
        (NODES, {"max_requests_per_source": True}, "None to switch"),
    ],
)
def test_invalid_arguments_are_rejected_with_the_fix(
    backends: list, kwargs: dict, message: str
) -> None:
    kwargs = {"port": 8000, **kwargs}
    with pytest.raises(ValueError, match=re.escape(message)):
        render_haproxy_config(backends, **kwargs)


def test_haproxy_accepts_the_rendered_config(tmp_path: Path) -> None:
    haproxy = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if haproxy is None:
        pytest.skip("haproxy is not installed; install it with: apt-get install haproxy")
    path = tmp_path / "haproxy.cfg"
    path.write_text(render_haproxy_config(NODES, 8000, stats_port=8404))
    result = subprocess.run(
        [haproxy, "-c", "-f", str(path)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Warnings would mean a directive HAProxy 2.6 considers wrong or deprecated.
    assert "WARNING" not in result.stdout + result.stderr


def test_the_stickiness_cookie_is_opaque_and_flagged() -> None:
    values = {cookie_value(name) for name in ("node1", "node2", "a")}
    assert len(values) == 3 and all(len(v) == 16 and "node" not in v for v in values)
    assert cookie_value("node1", salt="x") != cookie_value("node1")
    config = render_haproxy_config(NODES, 8000, secure_cookie=True, cookie_salt="x")
    backend = _section(config, "backend socket_nodes")
    assert 'cookie SERVERID insert indirect nocache httponly secure attr "SameSite=Lax"' in backend
    assert f"server node1 127.0.0.1:5001 check cookie {cookie_value('node1', 'x')}" in backend
    assert "cookie node1" not in config


def test_probes_and_metrics_are_refused_by_the_frontend() -> None:
    frontend = _section(render_haproxy_config(NODES, 8000), "frontend socketio_in")
    # decoded and lower-cased, any run of slashes, ;params, trailing / or .
    assert ("acl node_internal path,url_dec,lower -m reg "
            "'^/*(healthz|readyz|metrics)(;[^/]*)?[/.]*$'") in frontend
    # or the last segment of a path with a dot segment
    assert "acl dot_segment path,url_dec -m reg '(^|/)[.][.]?(/|$)'" in frontend
    assert ("http-request deny deny_status 404 if node_internal || dot_segment ends_internal"
            in frontend)
    # the balancer's own checks still go to /readyz on the nodes directly
    assert "option httpchk GET /readyz" in _section(
        render_haproxy_config(NODES, 8000), "backend socket_nodes")


def test_real_haproxy_hides_the_probes_and_sets_an_opaque_cookie(
        node_factory: Any, haproxy_factory: Any) -> None:
    (node,) = node_factory(message_queue=None)
    proxy = haproxy_factory([node])
    for path in ("/metrics", "/readyz", "/healthz", "/%6detrics", "/ready%7A", "/metrics?x=1"):
        # through the balancer: 404, however the path is spelled...
        assert requests.get(proxy.url + path, timeout=5).status_code == 404, path
    # ...while the node itself serves them (its decoded path is /metrics)
    assert requests.get(node.url + "/metrics", timeout=5).status_code == 200
    assert requests.get(node.url + "/%6detrics", timeout=5).status_code == 200
    # and the application and Socket.IO go through
    polled = requests.get(proxy.url + "/socket.io/?EIO=4&transport=polling", timeout=5)
    assert polled.status_code == 200
    cookie = polled.headers["Set-Cookie"]
    assert cookie.startswith(f"SERVERID={cookie_value(node.name)};")
    assert node.name not in cookie
    flags = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=lax"} <= flags and "secure" not in flags


def test_per_source_limits_and_request_deadline_are_on_by_default() -> None:
    config = render_haproxy_config(NODES, 8000)
    frontend = _section(config, "frontend socketio_in")
    assert ("stick-table type ipv6 size 100k expire 30s store conn_cur,http_req_rate(10s)"
            in frontend)
    assert "tcp-request connection track-sc0 src" in frontend
    assert "tcp-request connection reject if { sc0_conn_cur gt 200 }" in frontend
    assert "http-request deny deny_status 429 if { sc0_http_req_rate gt 2000 }" in frontend
    # the limits come before any other rule of the frontend
    assert frontend.index("tcp-request connection track-sc0 src") < frontend.index(
        "acl node_internal path,url_dec,lower -m reg "
        "'^/*(healthz|readyz|metrics)(;[^/]*)?[/.]*$'")
    defaults = _section(config, "defaults")
    assert "option http-buffer-request" in defaults
    assert "timeout http-request 10s" in defaults


def test_per_source_limits_can_be_raised_or_switched_off() -> None:
    raised = render_haproxy_config(NODES, 8000, max_connections_per_source=5000,
                                   max_requests_per_source=None, request_timeout="3s")
    assert "sc0_conn_cur gt 5000" in raised and "http_req_rate gt" not in raised
    assert "timeout http-request 3s" in raised
    off = render_haproxy_config(NODES, 8000, max_connections_per_source=None,
                                max_requests_per_source=None)
    assert "stick-table" not in off and "track-sc0" not in off
