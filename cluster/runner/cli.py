"""The command line: ``python -m cluster node`` (``socketio-cluster node``).

``node`` serves one socket node. The local cluster of ``./dev up`` is dev
tooling (``python -m cluster.devtools``) and the Celery worker belongs to
:mod:`workers` (``python -m workers worker``); neither is imported here.
Environment variables are read here, once, and
nowhere else: ``MESSAGE_QUEUE_URL`` (then ``REDIS_URL``) for the bus,
``CLUSTER_SIGNING_SECRET`` for message signing, ``CLUSTER_ASYNC_MODE`` for
the runtime, ``CLUSTER_*`` for the limits (see ``--help``).

The runtime (eventlet or gevent, :mod:`cluster.runtime`) is chosen from the
parsed arguments and monkey-patches the process before anything imports
Flask, redis-py, python-socketio or the application.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from cluster import runtime
from cluster.runner import gc_tuning
from cluster.runner.log_format import LOG_FORMATS

if TYPE_CHECKING:
    from cluster.config import NodeConfig

NODE_DESCRIPTION = """\
Serve a Flask + Socket.IO application as one node of the cluster, on
eventlet's or gevent's WSGI server (--async-mode), on one port: the app's
routes, Socket.IO at /socket.io/, and the probes /healthz (alive), /readyz
(ready: bus reachable, not draining) and /metrics (Prometheus).

SIGTERM or SIGINT drains the node: it reports not-ready, disconnects its
clients so they reconnect to other nodes, then exits.
"""


def _env_flag(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _async_mode(value: str) -> str:
    mode = value.strip().lower()
    if mode not in runtime.MODES:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an async mode: choose {' or '.join(runtime.MODES)}")
    return mode


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cluster",
        description="A horizontally scaled Socket.IO cluster for Flask.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    node = commands.add_parser(
        "node", help="serve one socket node", description=NODE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    node.add_argument("--app", required=True, metavar="MODULE:ATTR",
                      help="the application: a module and the name of its cluster.SocketIO "
                           "object or of its Flask app, e.g. 'chat:socketio'")
    node.add_argument("--async-mode", type=_async_mode, metavar="{eventlet,gevent}",
                      default=os.environ.get(runtime.ENV_VAR) or runtime.DEFAULT_MODE,
                      help="the green-thread library the node runs on: eventlet, or gevent "
                           "(pip install 'flask-socketio-cluster[gevent]'); the application's "
                           "SocketIO must not name the other one (default: "
                           f"${runtime.ENV_VAR}, else {runtime.DEFAULT_MODE})")
    node.add_argument("--host", default="127.0.0.1",
                      help="interface to listen on (default: 127.0.0.1; use 0.0.0.0 in a "
                           "container)")
    node.add_argument("--port", type=int, default=5000, help="port to listen on (default: 5000)")
    node.add_argument("--message-queue", metavar="URL",
                      default=os.environ.get("MESSAGE_QUEUE_URL") or os.environ.get("REDIS_URL"),
                      help="bus URL that joins the node to the cluster: redis://, rediss://, "
                           "unix://, redis+sentinel://, redis+cluster:// (Redis Cluster, "
                           "sharded pub/sub) or a kombu URL such as amqp:// "
                           "(default: $MESSAGE_QUEUE_URL, then $REDIS_URL; none: a single node)")
    node.add_argument("--channel", default=os.environ.get("MESSAGE_QUEUE_CHANNEL"),
                      help="bus channel shared by the nodes and the emitters (default: the "
                           "app's setting, else 'flask-socketio')")
    node.add_argument("--redis-partitions", type=int, metavar="N",
                      # a string default goes through type=int (argparse's error)
                      default=os.environ.get("CLUSTER_REDIS_PARTITIONS") or None,
                      help="on Redis Cluster, spread room and node channels over N lanes so "
                           "that every shard carries a share of the bus (a multiple of the "
                           "primaries; not with --recovery-window); every node and emitter "
                           "must use the same N (default: $CLUSTER_REDIS_PARTITIONS, else "
                           "the app's message_queue_options, else 1: one slot)")
    node.add_argument("--signing-secret", default=os.environ.get("CLUSTER_SIGNING_SECRET"),
                      help="shared secret signing every bus message; unsigned messages are "
                           "dropped (default: $CLUSTER_SIGNING_SECRET; a node with a message "
                           "queue and no secret refuses to start unless --allow-unsigned-bus)")
    node.add_argument("--allow-unsigned-bus", action="store_true",
                      default=_env_flag(os.environ.get("CLUSTER_ALLOW_UNSIGNED_BUS"), False),
                      help="run on a bus without a signing secret (logged as a warning); "
                           "without it a node with a message queue and no secret refuses to "
                           "start. Only for stock python-socketio emitters (default: "
                           "$CLUSTER_ALLOW_UNSIGNED_BUS)")
    node.add_argument("--advertise-url", default=os.environ.get("CLUSTER_ADVERTISE_URL"),
                      metavar="URL",
                      help="how the other nodes reach this one, to forward the requests of "
                           "its sessions (default: $CLUSTER_ADVERTISE_URL, else "
                           "http://HOST:PORT, the host's own address for a wildcard HOST)")
    node.add_argument("--name", default=os.environ.get("NODE_NAME"),
                      help="this node's name in logs, metrics and cluster queries (default: "
                           "$NODE_NAME, else host:pid)")
    node.add_argument("--session-ttl", type=float,
                      default=float(os.environ["SESSION_TTL"]) if os.environ.get("SESSION_TTL")
                      else None,
                      help="seconds a disconnected client's session (and rooms) can be resumed "
                           "on any node (default: $SESSION_TTL, else the app's setting, else 120)")
    node.add_argument("--recovery-window", type=float,
                      default=float(os.environ["CONNECTION_STATE_RECOVERY"])
                      if os.environ.get("CONNECTION_STATE_RECOVERY") else None,
                      help="turn connection state recovery on with this maximum disconnection "
                           "duration in seconds (default: $CONNECTION_STATE_RECOVERY, else the "
                           "app's connection_state_recovery setting, else off)")
    node.add_argument("--max-connections", type=int, default=None,
                      help="concurrent connections this node accepts (default: 100000; "
                           "eventlet's own default of 1024 silently hangs connection 1025)")
    # argparse converts string defaults taken from the environment with the
    # flag's type, here and in the flags below
    node.add_argument("--max-backlog", type=int, metavar="BYTES",
                      default=os.environ.get("CLUSTER_MAX_BACKLOG") or None,
                      help="bytes a client may leave unread before it is disconnected, logged "
                           "and counted as a slow consumer (default: $CLUSTER_MAX_BACKLOG, "
                           "else 1048576)")
    node.add_argument("--write-window", type=float, metavar="SECONDS",
                      default=os.environ.get("CLUSTER_WRITE_WINDOW") or None,
                      help="seconds a frame may wait to leave with the next ones on a "
                           "websocket streamed to (one written less than that ago whose "
                           "client sent nothing since): fewer TCP segments, at most that "
                           "much latency; 0: off (default: $CLUSTER_WRITE_WINDOW, else the "
                           "app's write_window, else 0.001)")
    # per-connection limits (cluster.node.limits)
    node.add_argument("--max-events-per-second", type=float, metavar="N",
                      default=os.environ.get("CLUSTER_MAX_EVENTS_PER_SECOND") or None,
                      help="per-connection rate limit of incoming events, bursts of twice "
                           "that; excess events are dropped and counted, a client sending "
                           "10x the rate for 3 s is disconnected; 0 switches the limit off "
                           "(default: $CLUSTER_MAX_EVENTS_PER_SECOND, else the app's setting, "
                           "else 100)")
    node.add_argument("--max-rooms-per-connection", type=int, metavar="N",
                      default=os.environ.get("CLUSTER_MAX_ROOMS_PER_CONNECTION") or None,
                      help="rooms one connection may be in per namespace; join_room past it "
                           "raises RoomLimitExceeded (default: "
                           "$CLUSTER_MAX_ROOMS_PER_CONNECTION, else the app's setting, else "
                           "1000)")
    node.add_argument("--max-namespaces-per-connection", type=int, metavar="N",
                      default=os.environ.get("CLUSTER_MAX_NAMESPACES_PER_CONNECTION") or None,
                      help="namespaces one connection may be connected to at once; a CONNECT "
                           "past it gets a CONNECT_ERROR (default: "
                           "$CLUSTER_MAX_NAMESPACES_PER_CONNECTION, else the app's setting, "
                           "else 10)")
    node.add_argument("--connect-timeout", type=float, metavar="SECONDS",
                      default=os.environ.get("CLUSTER_CONNECT_TIMEOUT") or None,
                      help="close a connection that has not completed a Socket.IO CONNECT "
                           "within this time; refused ones are closed after their "
                           "CONNECT_ERROR (default: $CLUSTER_CONNECT_TIMEOUT, else the app's "
                           "setting, else 45)")
    node.add_argument("--max-replay-packets", type=int, metavar="N",
                      default=os.environ.get("CLUSTER_MAX_REPLAY_PACKETS") or None,
                      help="connection state recovery replays at most this many missed "
                           "packets; past it the client gets a plain resume (default: "
                           "$CLUSTER_MAX_REPLAY_PACKETS, else the app's setting, else 2000)")
    node.add_argument("--max-replay-bytes", type=int, metavar="BYTES",
                      default=os.environ.get("CLUSTER_MAX_REPLAY_BYTES") or None,
                      help="the same bound in bytes; keep it below --max-backlog (default: "
                           "$CLUSTER_MAX_REPLAY_BYTES, else the app's setting, else 524288)")
    node.add_argument("--max-concurrent-connects", type=int, metavar="N",
                      default=os.environ.get("CLUSTER_MAX_CONCURRENT_CONNECTS") or None,
                      help="CONNECTs worked on at once, the others wait (default: "
                           "$CLUSTER_MAX_CONCURRENT_CONNECTS, else the app's setting, else 32)")
    node.add_argument("--http-header-timeout", type=float, metavar="SECONDS",
                      default=os.environ.get("CLUSTER_HTTP_HEADER_TIMEOUT") or None,
                      help="seconds a client has to send a complete HTTP request head; 0 "
                           "switches it off (default: $CLUSTER_HTTP_HEADER_TIMEOUT, else the "
                           "app's setting, else 10)")
    node.add_argument("--http-idle-timeout", type=float, metavar="SECONDS",
                      default=os.environ.get("CLUSTER_HTTP_IDLE_TIMEOUT") or None,
                      help="seconds a kept-alive HTTP connection, a request body or a response "
                           "may stay silent; websockets use their ping timeout instead; 0 "
                           "switches it off (default: $CLUSTER_HTTP_IDLE_TIMEOUT, else the "
                           "app's setting, else 60)")
    node.add_argument("--http-body-timeout", type=float, metavar="SECONDS",
                      default=os.environ.get("CLUSTER_HTTP_BODY_TIMEOUT") or None,
                      help="seconds a request may spend waiting for its body, in total; past "
                           "it the node answers 408 and closes the connection; 0 switches it "
                           "off (default: $CLUSTER_HTTP_BODY_TIMEOUT, else the app's setting, "
                           "else 30)")
    nodelay = node.add_mutually_exclusive_group()
    nodelay.add_argument("--tcp-nodelay", dest="tcp_nodelay", action="store_true", default=None,
                         help="set TCP_NODELAY on the listening socket (the default): small "
                              "frames leave at once instead of waiting ~40 ms for an ACK")
    nodelay.add_argument("--no-tcp-nodelay", dest="tcp_nodelay", action="store_false",
                         help="leave Nagle's algorithm on (fewer packets, more latency)")
    node.add_argument("--websocket-compression", action="store_true", default=None,
                      help="accept permessage-deflate when a client offers it (default: "
                           "declined; it costs 2.5-3x CPU and memory per delivery)")
    node.add_argument("--drain-seconds", type=float,
                      default=float(os.environ.get("CLUSTER_DRAIN_SECONDS", "10")),
                      help="on SIGTERM, how long in-flight handlers may take to finish before "
                           "the node exits (default: 10)")
    node.add_argument("--gc-threshold", type=int, metavar="N",
                      # a string default goes through type=int: a bad value in the
                      # environment is argparse's one-line error, not a traceback
                      default=os.environ.get(gc_tuning.ENV_VAR)
                      or str(gc_tuning.DEFAULT_YOUNG_THRESHOLD),
                      help="allocations between two young garbage collections, set once "
                           "the app is imported (which is then frozen out of collections); "
                           f"700 is CPython's default (default: ${gc_tuning.ENV_VAR}, else "
                           f"{gc_tuning.DEFAULT_YOUNG_THRESHOLD})")
    node.add_argument("--drain-spread-seconds", type=float, metavar="SECONDS",
                      # 5: cluster.node.client_closing.DEFAULT_DRAIN_SPREAD_SECONDS, not
                      # imported here (it would import socketio before the monkey patch)
                      default=float(os.environ.get("CLUSTER_DRAIN_SPREAD_SECONDS") or "5"),
                      help="on SIGTERM, after the handlers finished, close the clients at "
                           "random moments over this window (at most 1 s per 100 clients) so "
                           "that they do not all reconnect to the other nodes at once; 0 "
                           "closes them all at once; SIGTERM then takes up to --drain-seconds "
                           "plus this (default: $CLUSTER_DRAIN_SPREAD_SECONDS, else 5)")
    node.add_argument("--access-log", action="store_true",
                      help="log every HTTP request (default: off; polling makes it noisy)")
    node.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"),
                      help="logging level (default: $LOG_LEVEL, else INFO)")
    node.add_argument("--log-format", choices=LOG_FORMATS,
                      default=os.environ.get("LOG_FORMAT") or "text",
                      help="'text' lines, or 'json': one JSON object per line for log "
                           "collectors; both carry the node's name and the client's sid "
                           "(default: $LOG_FORMAT, else text)")

    return parser


#: flags that override the application's keyword option of the same name
_OVERRIDING_FLAGS = (
    "max_connections", "tcp_nodelay", "websocket_compression", "session_ttl", "max_backlog",
    "write_window",
    "http_header_timeout", "http_idle_timeout", "max_events_per_second",
    "max_rooms_per_connection", "connect_timeout", "max_replay_packets", "max_replay_bytes",
    "max_concurrent_connects",
    "max_namespaces_per_connection",
    "http_body_timeout",
    "channel", "signing_secret",
)


def node_config(base: NodeConfig, args: argparse.Namespace) -> NodeConfig:
    """The application's configuration with the node's flags (and the
    environment variables behind their defaults) applied: a flag that was
    not given keeps the application's setting."""
    overrides: dict[str, Any] = {name: getattr(args, name) for name in _OVERRIDING_FLAGS}
    overrides["message_queue"] = args.message_queue
    if args.redis_partitions is not None:
        options = dict(base.bus.driver_options or {})
        options["redis_partitions"] = args.redis_partitions
        overrides["message_queue_options"] = options
    overrides["node_name"] = args.name
    if args.recovery_window is not None:
        skip = base.recovery.skip_connect_handler if base.recovery is not None else False
        overrides["connection_state_recovery"] = {
            "max_disconnection_duration": args.recovery_window, "skip_connect_handler": skip}
    return base.with_overrides(**overrides)


def select_runtime(mode: str) -> bool:
    """Run this process on ``mode`` (monkey-patching it); False, with one
    ``error:`` line telling the fix, when its library is not installed."""
    try:
        runtime.select(mode)
    except runtime.RuntimeUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return False
    return True


def run_node(args: argparse.Namespace) -> int:
    if not select_runtime(args.async_mode):  # a no-op when main() did it already
        return 2
    from cluster.runner.log_format import configure_logging, default_node_name

    configure_logging(args.log_level, args.log_format, args.name or default_node_name())
    from cluster.bus import BusConfigurationError
    from cluster.bus.startup import check_bus
    from cluster.exceptions import ClusterError
    from cluster.runner.app_loader import load_socketio
    from cluster.runner.serve import serve_node
    from cluster.runner.start_checks import check_bus_url, check_port_free

    try:
        # configuration mistakes stop the node here, before the slow app import
        check_port_free(args.host, args.port)
        if args.message_queue:
            check_bus_url(args.message_queue)
        socketio = load_socketio(args.app)
        if socketio.config is None:
            print("error: the SocketIO object has no Flask app; call init_app(app) in the "
                  "module.", file=sys.stderr)
            return 2
        socketio.reconfigure(node_config(socketio.config, args))
        try:  # an unsigned bus without the opt-out, a Redis that refuses us
            check_bus(socketio.server.manager, args.allow_unsigned_bus)
        except BusConfigurationError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    except (ClusterError, BusConfigurationError) as exc:
        # e.g. a signing secret too short, found as the bus is built
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if socketio.app is None:
        print("error: the SocketIO object has no Flask app; call init_app(app) in the module.",
              file=sys.stderr)
        return 2
    app_mode = socketio.server.async_mode
    if app_mode != args.async_mode:
        fix = (f"or run with --async-mode {app_mode}" if app_mode in runtime.MODES
               else "the node runs on eventlet or gevent only")
        print(f"error: the application's SocketIO has async_mode={app_mode!r}, but the node "
              f"runs on {args.async_mode}: remove async_mode= from SocketIO(...), {fix}.",
              file=sys.stderr)
        return 2
    try:
        gc_tuning.tune(args.gc_threshold)
    except ValueError as exc:
        print(f"error: {exc} (--gc-threshold / {gc_tuning.ENV_VAR})", file=sys.stderr)
        return 2
    try:
        serve_node(socketio, socketio.app, args.host, args.port,
                   log_output=args.access_log, drain_seconds=args.drain_seconds,
                   drain_spread_seconds=args.drain_spread_seconds,
                   advertise_url=args.advertise_url)
    except OSError as exc:
        from cluster.runner.start_checks import listen_error

        message = listen_error(exc, args.host, args.port)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "node":
        # before anything imports Flask, redis-py or the application
        if not select_runtime(args.async_mode):
            return 2
        return run_node(args)
    return 2  # pragma: no cover - argparse rejects unknown commands


def entry() -> NoReturn:
    """The process entry point (``python -m cluster``, ``socketio-cluster``):
    :func:`main`, the exit hooks, then the end of the process without the
    interpreter's finalization.

    Under eventlet that finalization can print a traceback after a clean
    stop: logging's handler weakrefs are collected once greenlets are torn
    down, and their callback takes a green lock (``greenlet is being
    finalized``; seen intermittently with eventlet 0.36). The ``atexit``
    hooks (a singleton task hands its lease over there, logging flushes)
    run first, as they would on a normal exit, and stdio is flushed, so
    nothing is lost.
    """
    try:
        code = main()
    except SystemExit as exc:  # argparse's --help and usage errors
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    # CPython's own exit-hook runner (what a normal exit calls first)
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
