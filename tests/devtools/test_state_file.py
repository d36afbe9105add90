"""cluster.devtools.state_file: what a runner that died left behind is named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from cluster.devtools.state_file import StateFile


def test_leftovers_of_a_dead_runner_are_named_with_their_pids(tmp_path: Path) -> None:
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        state = StateFile(4321, tmp_path)
        state.path.write_text(json.dumps({
            "port": 4321, "runner_pid": dead.pid, "runner_argv": [sys.executable, "-c", "pass"],
            "started": time.time(), "workdir": str(tmp_path),
            "processes": [
                {"name": "node1", "pid": orphan.pid, "argv": [sys.executable, "-c"]},
                # a reused pid whose command line differs is not ours
                {"name": "node2", "pid": os.getpid(), "argv": ["/usr/sbin/haproxy", "-f"]},
            ]}))  # fmt: skip
        problem = state.problem()
        assert problem is not None
        assert f"node1 (pid {orphan.pid})" in problem and f"kill {orphan.pid}" in problem
        assert "node2" not in problem
    finally:
        orphan.kill()
        orphan.wait()
    assert state.problem() is None  # nothing of ours runs: the stale file goes
    assert not state.path.exists()
