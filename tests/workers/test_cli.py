"""workers.cli: the `worker` command, `python -m workers worker` and `socketio-cluster-worker`."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from workers.cli import WORKER_DESCRIPTION, add_worker_parser, build_parser, celery_argv

ROOT = str(Path(__file__).resolve().parents[2])


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(argv)


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
    done = subprocess.run([sys.executable, "-m", "workers", "worker"], capture_output=True,
                          text=True, timeout=60, cwd=ROOT,
                          env={"PYTHONPATH": ROOT, "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2
    assert "error: No Celery broker configured" in done.stderr


def test_another_command_line_can_mount_the_worker_command() -> None:
    parser = argparse.ArgumentParser(prog="mine")
    add_worker_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["worker", "-c", "2"])
    assert celery_argv(args) == ["worker", "--loglevel", args.log_level.upper(),
                                 "--concurrency", "2"]


def test_python_m_workers_help_names_the_worker_command() -> None:
    done = subprocess.run([sys.executable, "-m", "workers", "worker", "--help"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m workers worker")
    assert "--log-level" in done.stdout and "--message-queue" in done.stdout


def test_the_workers_package_does_not_import_the_cluster_runtime() -> None:
    """workers uses cluster's bus and log format, never its command line or dev tooling."""
    code = ("import sys, workers, workers.cli; "
            "sys.exit(sorted(m for m in sys.modules if m.startswith(('cluster.runner.cli', "
            "'cluster.devtools'))) != [])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr
