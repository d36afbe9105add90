"""Whether a process may run on an unsigned bus: only by an explicit
opt-out, which logs a warning."""
from __future__ import annotations

from typing import Any

from cluster.bus.errors import UnsignedBusError

UNSIGNED_WARNING = (
    "%s runs on an UNSIGNED cluster bus (explicit opt-out): anyone who can "
    "reach Redis or the broker can emit to, move and disconnect every "
    "client. Set a signing secret shared by every node and worker "
    "(CLUSTER_SIGNING_SECRET) unless stock python-socketio emitters must "
    "reach these nodes.")


def check_signing(signed: bool, allow_unsigned: bool, who: str,
                  opt_out: str, logger: Any) -> None:
    """Refuse an unsigned bus unless ``allow_unsigned`` (then warn).

    ``who`` names the process in the messages ("This node", "The emitter")
    and ``opt_out`` how to opt out (a flag, a keyword), so the error says
    exactly what to change.
    """
    if signed:
        return
    if not allow_unsigned:
        raise UnsignedBusError(
            f"{who} has a message queue but no signing secret: unsigned, "
            f"anyone who can reach Redis or the broker could emit to, move "
            f"and disconnect every client. Give every node and worker the "
            f"same secret with CLUSTER_SIGNING_SECRET (or --signing-secret / "
            f"signing_secret=), e.g. the output of `python -c 'import "
            f"secrets; print(secrets.token_hex(32))'`; or, to run unsigned "
            f"on purpose (stock python-socketio emitters), {opt_out}.")
    logger.warning(UNSIGNED_WARNING, who)
