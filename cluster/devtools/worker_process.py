"""The local cluster's Celery worker: ``python -m workers worker`` as a child process."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from cluster.devtools.processes import ManagedProcess

__all__ = ["WorkerProcess"]

# One process with a few threads: a prefork pool's children would outlive a
# SIGKILLed worker, and the demo's tasks sleep rather than compute.
_POOL_ARGS = ("--pool", "threads", "--concurrency", "4")
# No broadcast chatter between workers on a one-machine cluster: faster start.
_QUIET_ARGS = ("--without-mingle", "--without-gossip")


class WorkerProcess(ManagedProcess):
    """A Celery worker emitting to the cluster through ``message_queue``.

    Runs ``python -m workers worker`` (``workers.celery_app``, its tasks in
    ``workers.tasks``) with the thread pool; its broker is the bus URL unless
    ``env`` sets ``CELERY_BROKER_URL``. The environment is ours without any
    ``MESSAGE_QUEUE_*``, ``CELERY_*`` or ``REDIS_URL`` (an inherited value
    must not point it elsewhere), then ``NODE_NAME`` = ``name``, then
    ``env``. Ready once Celery logs ``ready.``, within ``start_timeout``
    seconds (30: Celery and the tasks import slowly on a busy machine).
    """

    def __init__(
        self,
        message_queue: str,
        *,
        name: str = "worker1",
        env: Mapping[str, str] | None = None,
        log_level: str = "INFO",
        log_format: str = "text",
        extra_args: Sequence[str] = (),
        python: str | None = None,
        start_timeout: float = 30.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, start_timeout=start_timeout, **kwargs)
        self.message_queue = message_queue
        self.env = dict(env or {})
        self.log_level = log_level
        self.log_format = log_format
        self.extra_args = list(extra_args)
        self.python = python or sys.executable
        self.hostname = f"{name}@{socket.gethostname()}"

    def command(self) -> list[str]:
        return [self.python, "-m", "workers", "worker", "--log-level", self.log_level,
                "--log-format", self.log_format, "--message-queue", self.message_queue,
                "--", *_POOL_ARGS, *_QUIET_ARGS, "--hostname", self.hostname,
                *self.extra_args]  # fmt: skip

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("MESSAGE_QUEUE_", "CELERY_")) and k != "REDIS_URL"}
        env["PYTHONUNBUFFERED"] = "1"
        env["NODE_NAME"] = self.name
        env.update(self.env)
        return env

    def is_ready(self) -> bool:
        return " ready." in self.log_text()
