"""Render an HAProxy 2.6 configuration that fronts a set of socket nodes.

The balancer has three jobs in this product, and each maps to a few lines:

* **Stickiness.** Engine.IO long-polling sends every request of one session
  to the node that owns it, so the balancer inserts a ``SERVERID`` cookie
  for the node (``cookie SERVERID insert indirect nocache httponly attr
  "SameSite=Lax"``; ``indirect`` keeps the cookie away from the node,
  ``nocache`` stops shared caches from storing a response that carries it,
  ``httponly`` keeps page scripts from reading it). Its value is opaque
  (:func:`cookie_value`: a hash of the node's name and ``cookie_salt``), so
  it does not tell a client the names of the backends; ``secure_cookie``
  adds ``Secure`` behind TLS.
* **WebSocket pass-through.** HAProxy switches a connection to tunnel mode
  once the ``101 Switching Protocols`` answer goes by; from then on only
  ``timeout tunnel`` applies, so it is long (an hour) while ``timeout client``
  and ``timeout server`` stay short enough to reap dead HTTP peers but longer
  than one long-poll (Engine.IO's 25 s ping interval plus its 20 s timeout).
* **Fast failover.** ``/readyz`` is polled every half second and two failures
  take a node out (about one second after it dies or starts draining); one
  success brings it back. ``option redispatch`` lets a client whose sticky
  node is gone be sent to another node instead of failing, which is what
  makes resuming a session on another node possible.

And one thing it does not do: route the nodes' probes and metrics
(``/healthz``, ``/readyz``, ``/metrics``) from outside. They tell an
attacker the node's state and figures, and the balancer's own checks and
Prometheus reach the nodes directly; the frontend answers them ``404``
(matched after URL-decoding, as the node decodes the path before routing).

:func:`render_haproxy_config` is a pure function; :mod:`cluster.devtools.local_cluster`
writes its result to a file and runs ``haproxy -f FILE -db``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["INTERNAL_PATHS", "Backend", "cookie_value", "render_haproxy_config"]

#: the node's paths that the public frontend refuses (404)
INTERNAL_PATHS = ("/healthz", "/readyz", "/metrics")

# HAProxy server names and cookie values must be single tokens; keeping them
# to this alphabet also keeps them safe inside a Set-Cookie header.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Durations as HAProxy reads them: a number with an optional unit.
_DURATION_RE = re.compile(r"^[0-9]+(us|ms|s|m|h|d)?$")


@dataclass(frozen=True)
class Backend:
    """One socket node behind the balancer.

    ``name`` is the HAProxy server name (the ``SERVERID`` cookie carries
    :func:`cookie_value` of it), so it must be a single token (letters,
    digits, ``_``, ``.``, ``-``).
    """

    name: str
    host: str
    port: int


def cookie_value(name: str, salt: str = "") -> str:
    """The ``SERVERID`` cookie value of backend ``name``: 16 hex digits.

    A hash, so the cookie names no backend; deterministic, so every
    balancer rendered with the same ``salt`` (and a test pinning a client
    to a node) agrees on it.
    """
    return hashlib.sha256(f"socketio-cluster\0{salt}\0{name}".encode()).hexdigest()[:16]


def _as_backend(item: Backend | tuple[str, str, int]) -> Backend:
    if isinstance(item, Backend):
        return item
    try:
        name, host, port = item
    except (TypeError, ValueError):
        raise ValueError(
            f"backend {item!r} is neither a Backend nor a (name, host, port) tuple"
        ) from None
    return Backend(str(name), str(host), int(port))


def _check_port(what: str, port: int) -> None:
    if not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"{what} must be a TCP port between 1 and 65535, got {port!r}")


def _check_duration(what: str, value: str) -> None:
    if not _DURATION_RE.match(value):
        raise ValueError(
            f"{what}={value!r} is not an HAProxy duration; write it like '500ms', '30s' or '1h'"
        )


def render_haproxy_config(
    backends: Iterable[Backend | tuple[str, str, int]],
    port: int,
    *,
    bind_host: str = "127.0.0.1",
    health_path: str = "/readyz",
    check_interval: str = "500ms",
    fall: int = 2,
    rise: int = 1,
    connect_timeout: str = "2s",
    client_timeout: str = "60s",
    server_timeout: str = "60s",
    tunnel_timeout: str = "1h",
    stats_port: int | None = None,
    log_level: str = "notice",
    cookie_salt: str = "",
    secure_cookie: bool = False,
) -> str:
    """Return the text of an HAProxy 2.6 config balancing ``backends``.

    ``backends`` are :class:`Backend` objects or ``(name, host, port)``
    tuples; their names must be unique. The frontend listens on
    ``bind_host:port`` (loopback by default: the local cluster is not meant
    to be reachable from the network). ``check_interval``, ``fall`` and
    ``rise`` tune how fast a dead or draining node leaves and comes back;
    ``client_timeout``/``server_timeout`` must exceed one Engine.IO long-poll
    (about 45 s with the defaults), ``tunnel_timeout`` bounds an idle
    WebSocket. ``stats_port``, when given, adds HAProxy's stats page on
    ``bind_host:stats_port`` at ``/`` (``;csv`` gives machine-readable
    server states). HAProxy logs go to its stderr at ``log_level`` and above;
    the default ``notice`` shows servers going up and down but not every
    request. ``cookie_salt`` goes into the opaque cookie values (default
    ``""``: values depend on the names only); ``secure_cookie`` adds the
    ``Secure`` flag (set it when clients reach the balancer over TLS).
    ``/healthz``, ``/readyz`` and ``/metrics`` are answered ``404`` by the
    frontend, whatever the options.

    Raises :class:`ValueError` with the fix when an argument cannot be
    rendered.
    """
    items = [_as_backend(b) for b in backends]
    if not items:
        raise ValueError("at least one backend is needed; start a node before the balancer")
    _check_port("port", port)
    if stats_port is not None:
        _check_port("stats_port", stats_port)
        if stats_port == port:
            raise ValueError("stats_port must differ from port")
    seen: set[str] = set()
    for b in items:
        if not _NAME_RE.match(b.name):
            raise ValueError(
                f"backend name {b.name!r} is not a single token; use letters, digits, '_', '.', '-'"
            )
        if b.name in seen:
            raise ValueError(f"backend name {b.name!r} is used twice; names must be unique")
        seen.add(b.name)
        if not b.host or any(c.isspace() for c in b.host):
            raise ValueError(f"backend {b.name!r} has an invalid host {b.host!r}")
        _check_port(f"port of backend {b.name!r}", b.port)
    if not health_path.startswith("/") or any(c.isspace() for c in health_path):
        raise ValueError(
            f"health_path must be an absolute path without spaces, got {health_path!r}"
        )
    for what, value in (
        ("check_interval", check_interval),
        ("connect_timeout", connect_timeout),
        ("client_timeout", client_timeout),
        ("server_timeout", server_timeout),
        ("tunnel_timeout", tunnel_timeout),
    ):
        _check_duration(what, value)
    if fall < 1 or rise < 1:
        raise ValueError("fall and rise must both be at least 1")
    levels = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
    if log_level not in levels:
        raise ValueError(f"log_level must be one of {', '.join(levels)}")

    lines = [
        "# Generated by cluster.devtools.haproxy_config; edits are overwritten.",
        "global",
        f"    log stderr format short local0 {log_level}",
        "    maxconn 4096",
        "",
        "defaults",
        "    mode http",
        "    log global",
        "    option httplog",
        "    option dontlognull",
        "    option forwardfor",
        f"    timeout connect {connect_timeout}",
        f"    timeout client {client_timeout}",
        f"    timeout server {server_timeout}",
        # Only applies once a connection is upgraded (WebSocket).
        f"    timeout tunnel {tunnel_timeout}",
        "    timeout http-request 10s",
        "    timeout http-keep-alive 10s",
        "    timeout check 2s",
        # A request whose server refuses the connection is retried, and the
        # last retry goes to another server (redispatch) instead of failing.
        "    retries 2",
        "    option redispatch",
        "",
        "frontend socketio_in",
        f"    bind {bind_host}:{port}",
        # probes and metrics are for the balancer's checks and Prometheus,
        # which reach the nodes directly; the node routes on the decoded path
        f"    acl node_internal path,url_dec -m str {' '.join(INTERNAL_PATHS)}",
        "    http-request deny deny_status 404 if node_internal",
        "    default_backend socket_nodes",
        "",
        "backend socket_nodes",
        "    balance roundrobin",
        "    cookie SERVERID insert indirect nocache httponly"
        + (" secure" if secure_cookie else "") + ' attr "SameSite=Lax"',
        f"    option httpchk GET {health_path}",
        "    http-check expect status 200",
        f"    default-server inter {check_interval} fall {fall} rise {rise}",
    ]
    lines += [f"    server {b.name} {b.host}:{b.port} check cookie "
              f"{cookie_value(b.name, cookie_salt)}" for b in items]
    if stats_port is not None:
        lines += [
            "",
            "frontend stats",
            f"    bind {bind_host}:{stats_port}",
            "    stats enable",
            "    stats uri /",
            "    stats refresh 5s",
        ]
    return "\n".join(lines) + "\n"
