"""A node on an unsigned bus needs the explicit opt-out (issue 16, part 1)."""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from cluster.devtools.processes import free_port
from tests.bus.conftest import BUS_APP

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("CLUSTER_SIGNING_SECRET", "CLUSTER_ALLOW_UNSIGNED_BUS",
                        "MESSAGE_QUEUE_URL", "REDIS_URL")}
    return dict(env, **extra)


def test_a_node_without_a_secret_refuses_to_start_with_the_fix(redis_url: str) -> None:
    node = subprocess.run(
        [sys.executable, "-m", "cluster", "node", "--app", BUS_APP,
         "--port", str(free_port()), "--message-queue", redis_url],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env=_environment())
    assert node.returncode == 2
    assert "no signing secret" in node.stderr
    assert "CLUSTER_SIGNING_SECRET" in node.stderr and "--allow-unsigned-bus" in node.stderr


def test_the_opt_out_starts_an_unsigned_node_with_a_warning(node_factory: Any) -> None:
    (node,) = node_factory(app=BUS_APP, extra_args=["--allow-unsigned-bus"])
    assert "runs on an UNSIGNED cluster bus (explicit opt-out)" in node.log_text()


def test_a_single_node_needs_no_secret(node_factory: Any) -> None:
    # no message queue, no bus to sign: nothing to refuse
    (node,) = node_factory(app=BUS_APP, message_queue=None,
                           env={"CLUSTER_ALLOW_UNSIGNED_BUS": ""})
    assert "UNSIGNED" not in node.log_text()
