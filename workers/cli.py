"""``python -m workers worker``: start a Celery worker for the cluster.

Also the ``socketio-cluster-worker worker`` console script (:func:`main`).
The command lives here, beside the Celery application it runs, so that
:mod:`cluster` never imports :mod:`workers`; another command line can still
mount it with :func:`add_worker_parser` and :func:`run_worker`.

It runs exactly ``celery -A workers.celery_app worker --loglevel LEVEL
[--pool P] [--concurrency N] [-Q QUEUE] [CELERY ARGS...]`` in this process,
after putting the flags given here into the environment that
:mod:`workers.settings` reads (so prefork children see them too).
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

__all__ = [
    "WORKER_DESCRIPTION",
    "add_worker_parser",
    "build_parser",
    "celery_argv",
    "main",
    "run_worker",
]

WORKER_DESCRIPTION = """\
Start a Celery worker running workers.celery_app: the same as
`celery -A workers.celery_app worker --loglevel INFO`. Its tasks emit to the
cluster's Socket.IO clients through the message queue, so give it the nodes'
environment: MESSAGE_QUEUE_URL (or REDIS_URL), MESSAGE_QUEUE_CHANNEL,
CLUSTER_SIGNING_SECRET, and CELERY_BROKER_URL (default: the message queue
URL). The default prefork pool needs neither eventlet nor gevent.

Arguments after `--` go to `celery worker` unchanged, e.g.
`python -m workers worker -- --max-tasks-per-child 100`.
"""

#: flag name -> environment variable read by workers.settings
_ENV = {"message_queue": "MESSAGE_QUEUE_URL", "channel": "MESSAGE_QUEUE_CHANNEL",
        "signing_secret": "CLUSTER_SIGNING_SECRET", "broker": "CELERY_BROKER_URL",
        "queue": "CELERY_QUEUE"}


def add_worker_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add the ``worker`` command to ``subparsers`` and return its parser.

    Flags default to ``None``, meaning "the environment decides", so the
    help shows where each value comes from.
    """
    worker = subparsers.add_parser(
        "worker", help="start a Celery worker that emits to the cluster",
        description=WORKER_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    worker.add_argument("--message-queue", metavar="URL",
                        help="bus URL the nodes use (default: $MESSAGE_QUEUE_URL, "
                             "then $REDIS_URL)")
    worker.add_argument("--channel",
                        help="bus channel (default: $MESSAGE_QUEUE_CHANNEL, else "
                             "'flask-socketio', as the nodes)")
    worker.add_argument("--signing-secret",
                        help="bus signing secret (default: $CLUSTER_SIGNING_SECRET); without "
                             "one the worker refuses to start unless --allow-unsigned-bus")
    worker.add_argument("--allow-unsigned-bus", action="store_true", default=None,
                        help="emit unsigned on purpose, for nodes run with "
                             "--allow-unsigned-bus; logged as a warning (default: "
                             "$CLUSTER_ALLOW_UNSIGNED_BUS)")
    worker.add_argument("--broker", metavar="URL",
                        help="Celery broker (default: $CELERY_BROKER_URL, then the "
                             "message queue URL); redis:// or amqp://")
    worker.add_argument("-Q", "--queue",
                        help="queue to consume (default: $CELERY_QUEUE, else 'celery')")
    worker.add_argument("-P", "--pool", choices=("prefork", "threads", "solo"),
                        help="execution pool (default: Celery's, prefork); for eventlet "
                             "or gevent run `celery -A workers.celery_app worker -P ...`")
    worker.add_argument("-c", "--concurrency", type=int,
                        help="worker processes/threads (default: number of CPUs)")
    worker.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"),
                        help="logging level (default: $LOG_LEVEL, else INFO)")
    worker.add_argument("--log-format", choices=("text", "json"),
                        default=os.environ.get("LOG_FORMAT") or "text",
                        help="'text', or 'json' (one object per line); both carry the "
                             "worker's name, $NODE_NAME else Celery's hostname "
                             "(default: $LOG_FORMAT, else text)")
    worker.add_argument("celery_args", nargs=argparse.REMAINDER,
                        help="after `--`: more `celery worker` options")
    worker.set_defaults(func=run_worker)
    return worker


def celery_argv(args: argparse.Namespace) -> list[str]:
    """The ``celery worker`` argument list that :func:`run_worker` runs."""
    argv = ["worker", "--loglevel", str(args.log_level).upper()]
    if getattr(args, "pool", None):
        argv += ["--pool", args.pool]
    if getattr(args, "concurrency", None):
        argv += ["--concurrency", str(args.concurrency)]
    if getattr(args, "queue", None):
        argv += ["--queues", args.queue]
    extra = list(getattr(args, "celery_args", None) or [])
    if extra[:1] == ["--"]:
        extra = extra[1:]
    return argv + extra


def run_worker(args: argparse.Namespace) -> int:
    """Run the worker until it is stopped; return its exit status."""
    if "workers.celery_app" in sys.modules:
        # its settings were read already; flags given now would be ignored
        print("warning: workers.celery_app was imported before run_worker(); "
              "command-line flags may not apply", file=sys.stderr)
    for flag, variable in _ENV.items():
        value = getattr(args, flag, None)
        if value:
            os.environ[variable] = value  # the edge: read once by settings
    if getattr(args, "allow_unsigned_bus", None):
        os.environ["CLUSTER_ALLOW_UNSIGNED_BUS"] = "1"
    from .exceptions import ConfigurationError
    try:
        from .celery_app import app
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _tag_log_lines(getattr(args, "log_format", "text"))
    code = app.start(celery_argv(args))
    return int(code or 0)


def _tag_log_lines(log_format: str) -> None:
    """Format Celery's log handlers with :mod:`cluster.runner.log_format` once it made them."""
    from celery import signals

    from cluster.runner.log_format import install

    def setup(logger: Any = None, **_: Any) -> None:
        node = os.environ.get("NODE_NAME") or f"worker@{os.uname().nodename}"
        for handler in getattr(logger, "handlers", ()):
            install(handler, node, log_format)

    # weak=False: the receiver is a closure that nothing else keeps alive
    signals.after_setup_logger.connect(setup, weak=False)
    signals.after_setup_task_logger.connect(setup, weak=False)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m workers``: one command, ``worker``."""
    parser = argparse.ArgumentParser(
        prog="python -m workers",
        description="Celery workers that emit to the Socket.IO cluster's clients.")
    add_worker_parser(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m workers`` and ``socketio-cluster-worker``; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "worker":
        return run_worker(args)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
