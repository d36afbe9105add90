"""cluster.devtools.worker_process: the local cluster's Celery worker, a real one."""

from __future__ import annotations

import json
from pathlib import Path

from cluster.devtools.processes import RedisServerProcess
from cluster.devtools.worker_process import WorkerProcess


def test_worker_log_lines_carry_its_name_in_json(tmp_path: Path) -> None:
    with RedisServerProcess(workdir=tmp_path / "redis") as redis:
        worker = WorkerProcess(redis.url, log_format="json", log_path=tmp_path / "worker1.log",
                               env={"CLUSTER_SIGNING_SECRET": "w" * 32})
        with worker:
            # Celery's banner is printed, not logged; every logged line is JSON
            logged = [json.loads(line) for line in worker.log_text().splitlines()
                      if line.startswith("{")]
    assert any(entry["message"].endswith(" ready.") for entry in logged)
    assert logged and all(entry["node"] == "worker1" for entry in logged)
    assert {"time", "level", "logger", "sid"} <= set(logged[0])
