"""Driving the Node load generator (``benchmarks/node/loadgen.mjs``) from Python.

The generator takes its whole configuration as one JSON argument and
reports one JSON object per line on stdout; a thread here turns those lines
into a queue so that every wait has a timeout and a generator that died is
noticed at once. Commands go back as lines on its stdin.
"""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Collection
from typing import Any

from .procs import Proc, Procs, SuiteError, child_env
from .targets import NODE_DIR, node_executable

Event = dict[str, Any]


class Loadgen:
    """One run of the load generator; stopped by :meth:`close` (or by its :class:`Procs`)."""

    def __init__(self, procs: Procs, config: dict[str, Any]) -> None:
        self.procs = procs
        self.config = config
        self.proc: Proc = procs.spawn("loadgen", [node_executable(), "loadgen.mjs",
                                                  json.dumps(config)],
                                      cwd=str(NODE_DIR), env=child_env(), pipe=True)
        self.events: queue.Queue[Event | None] = queue.Queue()
        self.errors: list[str] = []
        self._reader = threading.Thread(target=self._read, name="loadgen-stdout", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.popen is not None and self.proc.popen.stdout is not None
        for line in self.proc.popen.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                self.events.put(json.loads(line))
            except ValueError:
                self.errors.append(line[:200])  # a stray console.log; kept for the report
        self.events.put(None)  # end of output: the process exited

    def next_event(self, timeout: float) -> Event:
        try:
            event = self.events.get(timeout=timeout)
        except queue.Empty:
            raise SuiteError(f"no word from the load generator for {timeout:g} s; "
                             f"its log: {self.proc.log_path}") from None
        if event is None:
            raise SuiteError(f"the load generator exited (code {self.proc.popen.poll()}"  # type: ignore[union-attr]
                             f"{'; ' + '; '.join(self.errors[-3:]) if self.errors else ''}):\n"
                             f"{self.proc.log_tail()}")
        if event.get("event") in ("error", "warning"):
            self.errors.append(str(event.get("message"))[:300])
            print(f"    loadgen {event['event']}: {str(event.get('message'))[:300]}", flush=True)
        return event

    def expect(self, names: str | Collection[str], timeout: float,
               on_event: Callable[[Event], None] | None = None) -> Event:
        """Wait for an event named ``names`` (one or several), at most ``timeout`` seconds.

        Other events go to ``on_event`` on the way (the CPU markers).
        """
        wanted = {names} if isinstance(names, str) else set(names)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SuiteError(f"the load generator sent no {'/'.join(sorted(wanted))} "
                                 f"within {timeout:g} s; its log: {self.proc.log_path}")
            event = self.next_event(remaining)
            if event.get("event") in wanted:
                return event
            if on_event is not None:
                on_event(event)

    def send(self, line: str) -> None:
        assert self.proc.popen is not None and self.proc.popen.stdin is not None
        try:
            self.proc.popen.stdin.write(line + "\n")
            self.proc.popen.stdin.flush()
        except BrokenPipeError:
            raise SuiteError(f"the load generator is gone:\n{self.proc.log_tail()}") from None

    def close(self, grace: float = 3.0) -> None:
        """Wait a moment for it to exit by itself, then stop it."""
        if self.proc.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.popen.wait(grace)  # else it is stopped below
        self.procs.stop([self.proc], grace=1.0)
