"""The example tasks, run eagerly with a recording emitter."""

from __future__ import annotations

from typing import Any

import pytest


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, dict[str, Any]]] = []

    def emit(self, event: str, *args: Any, **kwargs: Any) -> None:
        self.calls.append((event, args[0] if len(args) == 1 else args, kwargs))


@pytest.fixture
def recorder(tasks_module: Any, monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorder = Recorder()
    monkeypatch.setattr(tasks_module, "get_emitter", lambda: recorder)
    monkeypatch.setattr(tasks_module.time, "sleep", lambda seconds: None)
    return recorder


def test_long_job_reports_progress_then_the_result(tasks_module: Any, recorder: Recorder) -> None:
    result = tasks_module.long_job.apply(kwargs={"to": "sid1", "steps": 3}, task_id="job-1")
    assert result.get() == {"job_id": "job-1", "result": 1 + 4 + 9}
    target = {"to": "sid1", "namespace": "/"}
    assert recorder.calls == [
        ("job_progress", {"job_id": "job-1", "step": 1, "steps": 3, "percent": 33}, target),
        ("job_progress", {"job_id": "job-1", "step": 2, "steps": 3, "percent": 67}, target),
        ("job_progress", {"job_id": "job-1", "step": 3, "steps": 3, "percent": 100}, target),
        ("job_result", {"job_id": "job-1", "result": 14}, target),
    ]


def test_a_failing_job_reports_the_error_and_fails(tasks_module: Any, recorder: Recorder,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    slices = iter([None, RuntimeError("disk full")])

    def work(seconds: float) -> None:
        outcome = next(slices)
        if outcome is not None:
            raise outcome

    monkeypatch.setattr(tasks_module.time, "sleep", work)
    result = tasks_module.long_job.apply(kwargs={"to": "room", "steps": 3}, task_id="job-2")
    assert result.failed()
    assert [event for event, _, _ in recorder.calls] == ["job_progress", "job_error"]
    assert recorder.calls[-1][1] == {"job_id": "job-2", "error": "disk full"}


def test_broadcast_task(tasks_module: Any, recorder: Recorder) -> None:
    tasks_module.broadcast.apply(args=("announcement", {"text": "hi"}),
                                 kwargs={"room": "team", "skip_sid": "s1"}).get()
    assert recorder.calls == [("announcement", {"text": "hi"},
                               {"to": "team", "namespace": "/", "skip_sid": "s1"})]
