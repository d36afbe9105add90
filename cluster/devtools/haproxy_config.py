"""Render an HAProxy 2.6 configuration that fronts a set of socket nodes.

The balancer has three jobs in this product, and each maps to a few lines:

* **Stickiness (optional).** The nodes forward a session's requests to
  the node that owns it (:mod:`cluster.node.forwarding`), so ``sticky=False``
  balances every request round-robin with no cookie. With ``sticky=True``
  (the default here) every request of one session goes to its owner
  directly, saving the forwarding hop: the balancer inserts a ``SERVERID`` cookie
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

And it protects the nodes from one greedy or hostile client:

* **Per-source limits.** A stick table keyed on the client's address
  tracks its open connections and its requests per 10 s. A source past
  ``max_connections_per_source`` (default 200) has further connections
  closed at once (before any HTTP is read, so they hold no slot); past
  ``max_requests_per_source`` (default 2,000 per 10 s, 200/s on average)
  it gets ``429``. Both are generous for a few hundred users behind one
  NAT (a WebSocket client holds one connection and makes a handful of
  requests per connect) and far below ``maxconn`` (4,096), so one source
  can never take every slot. ``None`` switches a limit off.
* **Request deadlines.** ``option http-buffer-request`` makes HAProxy read
  a request's body (up to its buffer, 16 KiB) before it picks a node, and
  ``timeout http-request`` (``request_timeout``, default 10 s) bounds the
  head *and* that body: a client dribbling a POST one byte at a time gets
  ``408`` instead of holding a connection (and a node's green thread) for
  as long as it likes. Engine.IO's polling bodies are far smaller.

And one thing it does not do: route the nodes' probes and metrics
(``/healthz``, ``/readyz``, ``/metrics``) from outside. They tell an
attacker the node's state and figures, and the balancer's own checks and
Prometheus reach the nodes directly; the frontend answers them ``404``.
The match is made on the path as a server might resolve it: URL-decoded,
lower-cased, with repeated slashes, a trailing slash or dot, ``;``
parameters, and dot segments (``/./metrics``, ``/x/../metrics``) all
refused. (HAProxy 2.6's ``normalize-uri`` would rewrite the path instead,
but it is still an experimental directive there.)

:func:`render_haproxy_config` is a pure function; :mod:`cluster.devtools.local_cluster`
writes its result to a file and runs ``haproxy -f FILE -db``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "DEFAULT_MAX_CONNECTIONS_PER_SOURCE", "DEFAULT_MAX_REQUESTS_PER_SOURCE", "INTERNAL_PATHS",
    "Backend", "cookie_value", "render_haproxy_config",
]

#: the node's paths that the public frontend refuses (404)
INTERNAL_PATHS = ("/healthz", "/readyz", "/metrics")
#: concurrent connections one client address may hold through the balancer
DEFAULT_MAX_CONNECTIONS_PER_SOURCE = 200
#: requests one client address may make per 10 s before it gets 429
DEFAULT_MAX_REQUESTS_PER_SOURCE = 2000

# The private paths as regular expressions on the URL-decoded, lower-cased
# path (HAProxy reads them in single quotes: no escapes, hence [.] for a dot).
# One of the names, with any ";params", trailing slashes or dots ...
_PRIVATE_TAIL = (
    "(" + "|".join(p.strip("/") for p in INTERNAL_PATHS) + ")(;[^/]*)?[/.]*$"
)
# ... as the whole path after any run of slashes (//metrics, /METRICS/),
_PRIVATE_PATH_RE = "^/*" + _PRIVATE_TAIL
# or as the last segment of a path with a dot segment (/x/../metrics, /./metrics)
_PRIVATE_LAST_SEGMENT_RE = "/" + _PRIVATE_TAIL
_DOT_SEGMENT_RE = "(^|/)[.][.]?(/|$)"

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
    sticky: bool = True,
    request_timeout: str = "10s",
    max_connections_per_source: int | None = DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
    max_requests_per_source: int | None = DEFAULT_MAX_REQUESTS_PER_SOURCE,
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
    ``sticky=False`` balances every request round-robin with no cookie: the
    nodes forward a session's requests to its owner themselves
    (:mod:`cluster.node.forwarding`), so no stickiness is needed.
    ``request_timeout`` (default ``10s``) is HAProxy's ``timeout
    http-request``: the deadline for a request's head and its buffered
    body. ``max_connections_per_source`` (default 200 open connections) and
    ``max_requests_per_source`` (default 2,000 per 10 s) limit one client
    address; ``None`` switches one off (a benchmark that drives thousands of
    clients from one address raises them instead). ``/healthz``,
    ``/readyz`` and ``/metrics``, however spelled, are answered ``404`` by
    the frontend, whatever the options.

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
        ("request_timeout", request_timeout),
    ):
        _check_duration(what, value)
    for what, limit in (("max_connections_per_source", max_connections_per_source),
                        ("max_requests_per_source", max_requests_per_source)):
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or limit < 1):
            raise ValueError(f"{what} must be a positive whole number, or None to switch "
                             f"the limit off; got {limit!r}")
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
        # the deadline for a request's head and, with http-buffer-request,
        # its body (up to the buffer): a slow POST gets 408, not a slot
        f"    timeout http-request {request_timeout}",
        "    option http-buffer-request",
        "    timeout http-keep-alive 10s",
        "    timeout check 2s",
        # A request whose server refuses the connection is retried, and the
        # last retry goes to another server (redispatch) instead of failing.
        "    retries 2",
        "    option redispatch",
        "",
        "frontend socketio_in",
        f"    bind {bind_host}:{port}",
        *_source_limits(max_connections_per_source, max_requests_per_source),
        # probes and metrics are for the balancer's checks and Prometheus,
        # which reach the nodes directly; matched on the path as a server
        # may resolve it (decoded, any case, slashes and dot segments)
        f"    acl node_internal path,url_dec,lower -m reg '{_PRIVATE_PATH_RE}'",
        f"    acl dot_segment path,url_dec -m reg '{_DOT_SEGMENT_RE}'",
        f"    acl ends_internal path,url_dec,lower -m reg '{_PRIVATE_LAST_SEGMENT_RE}'",
        "    http-request deny deny_status 404 if node_internal || dot_segment ends_internal",
        "    default_backend socket_nodes",
        "",
        "backend socket_nodes",
        "    balance roundrobin",
        *(["    cookie SERVERID insert indirect nocache httponly"
           + (" secure" if secure_cookie else "") + ' attr "SameSite=Lax"'] if sticky else []),
        f"    option httpchk GET {health_path}",
        "    http-check expect status 200",
        f"    default-server inter {check_interval} fall {fall} rise {rise}",
    ]
    lines += [f"    server {b.name} {b.host}:{b.port} check"
              + (f" cookie {cookie_value(b.name, cookie_salt)}" if sticky else "")
              for b in items]
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


def _source_limits(connections: int | None, requests: int | None) -> list[str]:
    """The frontend lines that limit one client address (none if both are off).

    ``ipv6`` keys hold IPv4 addresses too (mapped); entries expire 30 s
    after the source's last activity, so 100k of them cover a large spike.
    """
    if connections is None and requests is None:
        return []
    lines = [
        "    stick-table type ipv6 size 100k expire 30s store conn_cur,http_req_rate(10s)",
        "    tcp-request connection track-sc0 src",
    ]
    if connections is not None:
        # refused before any HTTP is read: an abuser's extra connections
        # never hold a slot while they dribble their request
        lines.append(f"    tcp-request connection reject if {{ sc0_conn_cur gt {connections} }}")
    if requests is not None:
        lines.append(
            f"    http-request deny deny_status 429 if {{ sc0_http_req_rate gt {requests} }}")
    return lines
