"""workers.cli: the `worker` command the cluster CLI mounts."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from workers.cli import WORKER_DESCRIPTION, add_worker_parser, celery_argv

ROOT = str(Path(__file__).resolve().parents[2])


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m cluster")
    add_worker_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_defaults_run_the_documented_celery_command() -> None:
    args = parse("worker")
    assert args.command == "worker"
    assert args.message_queue is None and args.broker is None  # the environment decides
    assert celery_argv(args) == ["worker", "--loglevel", args.log_level.upper()]
    assert "celery -A workers.celery_app worker" in WORKER_DESCRIPTION


def test_flags_and_passthrough() -> None:
    args = parse("worker", "-P", "threads", "-c", "4", "-Q", "jobs", "--log-level", "debug",
                 "--", "--max-tasks-per-child", "10")
    assert celery_argv(args) == ["worker", "--loglevel", "DEBUG", "--pool", "threads",
                                 "--concurrency", "4", "--queues", "jobs",
                                 "--max-tasks-per-child", "10"]


def test_no_broker_exits_2_with_the_fix() -> None:
    done = subprocess.run([sys.executable, "-m", "workers.cli", "worker"], capture_output=True,
                          text=True, timeout=60, cwd=ROOT,
                          env={"PYTHONPATH": ROOT, "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2
    assert "error: No Celery broker configured" in done.stderr
