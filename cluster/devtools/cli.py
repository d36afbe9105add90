"""The dev command line: ``python -m cluster.devtools up``, what ``./dev up`` runs.

``up`` starts a whole cluster on this machine (Redis, N nodes, HAProxy and a
Celery worker) and runs until Ctrl-C; :func:`cluster.devtools.local_cluster.run_local_cluster`
does the work. Installed as the ``socketio-cluster-dev`` console script.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence

from cluster.runner.log_format import LOG_FORMATS

__all__ = ["UP_DESCRIPTION", "build_parser", "main", "run_up"]

UP_DESCRIPTION = """\
Start a whole cluster on this machine, on 127.0.0.1: redis-server on a free
port (unless --redis-url), N socket nodes serving --app, HAProxy on --port
with cookie stickiness, and a Celery worker (broker: the same Redis) that
emits to the clients. Prints every process's URL, PID and log file.

SECRET_KEY and CLUSTER_SIGNING_SECRET are taken from the environment, or
generated at random for this run (said at start); CONNECTION_STATE_RECOVERY
defaults to 120 seconds. Ctrl-C, SIGTERM or closing the terminal (SIGHUP)
stops everything it started; its children also die if it is killed. A
cluster of its own still running (or left over) on the same port is named.
"""


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m cluster.devtools``: one command, ``up``."""
    parser = argparse.ArgumentParser(
        prog="python -m cluster.devtools",
        description="Dev tooling of the Socket.IO cluster: a local cluster on this machine.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = commands.add_parser(
        "up", help="start a local cluster: Redis, N nodes, HAProxy and a Celery worker",
        description=UP_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    up.add_argument("--app", default="demo.app:socketio", metavar="MODULE:ATTR",
                    help="the application, imported from the current directory first "
                         "(default: the demo chat, demo.app:socketio)")
    up.add_argument("--nodes", type=int, default=2, help="number of nodes (default: 2)")
    up.add_argument("--port", type=int, default=8000,
                    help="HAProxy's port, the one browsers use (default: 8000)")
    up.add_argument("--redis-url", default=os.environ.get("REDIS_URL"),
                    help="use this Redis instead of starting one (default: $REDIS_URL)")
    up.add_argument("--no-worker", dest="worker", action="store_false",
                    help="start no Celery worker (default: one, on the cluster's Redis)")
    up.add_argument("--logs", metavar="DIR",
                    help="write the logs to DIR and keep them (default: a temporary "
                         "directory removed when the cluster stops)")
    up.add_argument("--log-format", choices=LOG_FORMATS, default="text",
                    help="the nodes' and the worker's log format (default: text)")
    return parser


def run_up(args: argparse.Namespace) -> int:
    """Run the local cluster that ``args`` (from :func:`build_parser`) describe."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # imported here: --help must not pay for the process machinery
    from cluster.devtools.local_cluster import run_local_cluster

    return run_local_cluster(app=args.app, nodes=args.nodes, port=args.port,
                             redis_url=args.redis_url, worker=args.worker,
                             logs=args.logs, log_format=args.log_format)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cluster.devtools`` and ``socketio-cluster-dev``; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "up":
        return run_up(args)
    return 2  # pragma: no cover - argparse rejects unknown commands

