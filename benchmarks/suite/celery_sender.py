"""Send time-stamped room messages the way a Celery user does, and through an Emitter.

Run by :func:`benchmarks.suite.measures.measure_celery` in its own process,
with the nodes' environment (``MESSAGE_QUEUE_URL``, ``CELERY_BROKER_URL``)::

    python -m benchmarks.suite.celery_sender --kind celery --count 100 --rate 20

``celery``: ``workers.tasks.broadcast`` is sent to the broker (``apply_async``);
a real worker runs it and emits through the bus. ``emitter``: this process
emits with :class:`workers.Emitter` itself. Each message carries its send time
(``time.time()`` in ms) so the load generator's clients compute the latency
from the send of the task to their receipt. A few ``warm`` messages go first
(the worker's first task opens its emitter's connection); the clients ignore them.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

ROOM = "bench"
PAD = "x" * 40


def message(kind: str, seq: int) -> dict[str, Any]:
    return {"r": ROOM, "s": 0, "q": seq, "k": kind, "t": time.time() * 1000, "p": PAD}


def sender(kind: str) -> Callable[[dict[str, Any]], None]:
    if kind == "celery":
        from workers.tasks import broadcast  # reads the environment at import

        return lambda m: broadcast.apply_async(args=("msg", m, ROOM))
    from workers import Emitter

    emitter = Emitter.from_env()
    return lambda m: emitter.emit("msg", m, to=ROOM)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.suite.celery_sender")
    parser.add_argument("--kind", choices=("celery", "emitter"), required=True)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--rate", type=float, default=20.0, help="messages per second")
    parser.add_argument("--warm", type=int, default=3)
    args = parser.parse_args(argv)
    send = sender(args.kind)
    for i in range(args.warm):
        send({**message("warm", i), "k": "warm"})
    time.sleep(1.0)
    start = time.monotonic()
    for i in range(args.count):
        # paced, not bursted: the latency of one message, not of a queue
        delay = start + i / args.rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        send(message(args.kind, i))
    print(f"sent {args.count} {args.kind} messages in {time.monotonic() - start:.1f} s",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
