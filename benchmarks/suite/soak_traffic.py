"""The soak's chat traffic: ``benchmarks/node/soak.mjs`` run and read like the load generator.

The script is the fan-out generator's sibling (the official
``socket.io-client`` under Node, JSON lines out, commands in), so this is
:class:`~.loadgen.Loadgen` pointed at another script: the same bounded waits,
the same notice when the process dies.
"""

from __future__ import annotations

import json
import queue
import threading
from dataclasses import asdict, dataclass
from typing import Any

from .loadgen import Event, Loadgen
from .procs import Procs, SuiteError, child_env
from .targets import NODE_DIR, node_executable


@dataclass(frozen=True)
class TrafficSettings:
    """What the clients do (the knobs of ``python -m benchmarks.soak``)."""

    rooms: int = 3
    listeners: int = 60          # long-lived clients, spread over the rooms
    senders: int = 6             # long-lived clients emitting "to_room"
    rate: float = 20.0           # messages/s over all senders
    churners: int = 3            # concurrent connect/join/send/disconnect loops
    churn_messages: int = 2      # messages per churn cycle
    churn_pause_ms: float = 300.0
    ack_timeout_ms: float = 10_000.0
    reconnect_delay_ms: float = 200.0
    reconnect_delay_max_ms: float = 2_000.0
    transports: tuple[str, ...] = ("polling", "websocket")
    drain_s: float = 15.0        # after "stop": how long late deliveries (replays) may arrive
    tick_s: float = 5.0


class SoakTraffic(Loadgen):
    """One run of ``soak.mjs`` against the balancer at ``lb_url``."""

    def __init__(self, procs: Procs, lb_url: str, settings: TrafficSettings,
                 deadline_s: float) -> None:
        config: dict[str, Any] = {**asdict(settings), "transports": list(settings.transports),
                                  "lb_url": lb_url, "deadline_s": deadline_s}
        # Loadgen.__init__ would start loadgen.mjs; the rest of it (reading,
        # bounded waits, commands, closing) is reused as it is
        self.procs = procs
        self.config = config
        self.proc = procs.spawn("soak-traffic", [node_executable(), "soak.mjs", json.dumps(config)],
                                cwd=str(NODE_DIR), env=child_env(), pipe=True)
        self.events: queue.Queue[Event | None] = queue.Queue()
        self.errors: list[str] = []
        self._reader = threading.Thread(target=self._read, name="soak-traffic-stdout", daemon=True)
        self._reader.start()

    def poll(self) -> list[Event]:
        """Every event already read, without waiting; raises if the script exited."""
        found: list[Event] = []
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return found
            if event is None:
                self.events.put(None)  # keep the end marker for later waits
                raise SuiteError(f"the soak traffic exited (code {self.proc.popen.poll()}"  # type: ignore[union-attr]
                                 f"{'; ' + '; '.join(self.errors[-3:]) if self.errors else ''}):\n"
                                 f"{self.proc.log_tail()}")
            if event.get("event") in ("error", "warning"):
                self.errors.append(str(event.get("message"))[:300])
                print(f"    traffic {event['event']}: {str(event.get('message'))[:300]}",
                      flush=True)
            found.append(event)
