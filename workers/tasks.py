"""Example tasks: copy them into your application and adapt.

A Socket.IO handler starts a job for the client that asked::

    from workers.tasks import long_job

    @socketio.on("start_job")
    def start_job(data):
        # progress to the client itself, or to a room it is in
        result = long_job.delay(to=data.get("room") or request.sid, steps=10)
        return {"job_id": result.id}

The worker then emits ``job_progress`` events (in order), and ``job_result``
(or ``job_error``) at the end, to that sid or room, on whichever node its
clients are connected. With ``confirm=True`` it first asks the client
(``job_confirm``, answered by an ack) and starts only if it agrees: a
worker -> client -> worker round trip (``Emitter.call``).

``poll`` asks a whole room and reports who answered what by a deadline
(``Emitter.gather``).
"""
from __future__ import annotations

import time
from typing import Any

from .celery_app import app, get_emitter
from .exceptions import CallTimeoutError, NotConnectedError

__all__ = ["long_job", "broadcast", "poll"]


# celery ships no type information: app.task erases the signature for mypy
@app.task(bind=True)  # type: ignore[untyped-decorator]
def long_job(self: Any, to: Any, steps: int = 5, step_seconds: float = 0.5,
             namespace: str = "/", confirm: bool = False,
             confirm_timeout: float = 30.0) -> dict[str, Any]:
    """Work in ``steps`` slices, reporting progress to ``to`` (a sid or a
    room), then the result.

    Events (all carry ``job_id``, the Celery task id):
    ``job_progress`` ``{"step", "steps", "percent"}`` after each slice;
    ``job_result`` ``{"result"}`` at the end; ``job_error`` ``{"error"}``
    if the work raised (the task then fails as usual).

    With ``confirm``, ``job_confirm`` ``{"job_id", "steps"}`` goes to ``to``
    first (a sid; for a room the first answer decides), whose ack must be
    ``{"ok": true}`` within ``confirm_timeout`` seconds; otherwise the job
    does not start: ``job_cancelled`` when declined, ``job_error`` when
    nobody answered, nothing when the client is gone.
    """
    emitter = get_emitter()
    job_id = self.request.id
    if confirm:
        try:
            answer = emitter.call("job_confirm", {"job_id": job_id, "steps": steps},
                                  to=to, namespace=namespace, timeout=confirm_timeout)
        except NotConnectedError:
            return {"job_id": job_id, "cancelled": "the client is gone"}
        except CallTimeoutError:
            error = f"not confirmed within {confirm_timeout:g} s"
            emitter.emit("job_error", {"job_id": job_id, "error": error},
                         to=to, namespace=namespace)
            return {"job_id": job_id, "cancelled": error}
        if not (isinstance(answer, dict) and answer.get("ok") is True):
            emitter.emit("job_cancelled", {"job_id": job_id}, to=to, namespace=namespace)
            return {"job_id": job_id, "cancelled": "declined"}
    try:
        total = 0
        for step in range(1, steps + 1):
            time.sleep(step_seconds)  # stands for one slice of real work
            total += step * step
            emitter.emit("job_progress", {
                "job_id": job_id, "step": step, "steps": steps,
                "percent": round(100 * step / steps)}, to=to, namespace=namespace)
    except Exception as exc:
        emitter.emit("job_error", {"job_id": job_id, "error": str(exc)},
                     to=to, namespace=namespace)
        raise
    result = {"job_id": job_id, "result": total}
    emitter.emit("job_result", result, to=to, namespace=namespace)
    return result


@app.task  # type: ignore[untyped-decorator]
def broadcast(event: str, data: Any = None, room: Any = None,
              namespace: str = "/", skip_sid: Any = None) -> None:
    """Emit ``event`` with ``data`` to ``room`` (everyone when ``None``),
    except ``skip_sid``: e.g. announce to a room from a periodic task."""
    get_emitter().emit(event, data, to=room, namespace=namespace,
                       skip_sid=skip_sid)


@app.task  # type: ignore[untyped-decorator]
def poll(question: Any, room: Any, timeout: float = 5.0,
         namespace: str = "/") -> dict[str, Any]:
    """Ask every client in ``room`` (on every node) ``poll`` ``question``
    and tell the room the outcome after at most ``timeout`` seconds:
    ``poll_result`` ``{"question", "answers": {sid: answer}, "missing":
    [sids that did not answer]}``, also the task's return value."""
    emitter = get_emitter()
    votes = emitter.gather("poll", question, to=room, namespace=namespace, timeout=timeout)
    outcome = {"question": question, "answers": votes.answers, "missing": votes.missing}
    emitter.emit("poll_result", outcome, to=room, namespace=namespace)
    return outcome
