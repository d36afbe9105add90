"""Network namespaces for the fault scenarios: a node on its own test host.

:class:`NetLab` creates network namespaces joined to the root namespace by
veth pairs with private addresses (``10.231.X.(4k+1)`` on the root side,
``10.231.X.(4k+2)`` in the namespace, a /30 each; ``X`` is a /24 no other run
on this machine uses). They are test hosts of this machine: no traffic leaves
it, and nothing is forwarded (the root namespace only talks to its own
veths, so ``ip_forward`` is left alone).

:class:`NetnsNode` runs ``python -m cluster node`` inside one
(``ip netns exec NS ...``, which execs: the PID is the node's) bound to the
namespace's address, not 0.0.0.0. Faults are ``nft`` rules in a table of
the namespace (:meth:`Netns.drop_peer` drops both ways, silently, so TCP
notices nothing: a real partition), removed by :meth:`Netns.heal`.

Clean-up: every name starts with ``cft<pid>`` (the pytest process), so
:meth:`NetLab.close` (called by the fixture's finalizer, after a failure
too) removes exactly this run's namespaces (their ``nft`` tables and veths go
with them), and :func:`sweep` at start removes what a killed run left
(names of a ``cft<pid>`` whose process is gone). Needs root, ``ip``
(iproute2) and ``nft`` (nftables); :func:`unavailable` says what is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from typing import Any

from cluster.devtools.local_cluster import NodeProcess

__all__ = ["NetLab", "Netns", "NetnsNode", "sweep", "unavailable"]

FAMILY = "cft"  # every namespace and veth this harness creates starts with it
SUBNET = "10.231"
TABLE = "cftfault"
_OWNED = re.compile(rf"^{FAMILY}(\d+)")


def _run(*argv: str, stdin: str | None = None, check: bool = True) -> str:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=10,
                          check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): "
                           f"{done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def unavailable() -> str | None:
    """Why namespaces cannot be used here (None: they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            return f"{tool} is missing (apt-get install {package})"
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _namespaces() -> list[str]:
    return [line.split()[0] for line in _run("ip", "netns", "list").splitlines() if line.strip()]


def _delete_namespace(name: str) -> None:
    # a process still inside keeps the namespace (and its veth) alive: stop
    # the leftovers of our own family first, by PID
    for pid in _run("ip", "netns", "pids", name, check=False).split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    _run("ip", "netns", "delete", name, check=False)


def sweep() -> list[str]:
    """Remove the namespaces and veths of runs whose process is gone; returns their names."""
    removed = []
    for name in _namespaces():
        owner = _OWNED.match(name)
        if owner and not _alive(int(owner.group(1))):
            _delete_namespace(name)
            removed.append(name)
    for line in _run("ip", "-o", "link", "show").splitlines():
        ifname = line.split(":")[1].strip().split("@")[0]
        owner = _OWNED.match(ifname)
        if owner and not _alive(int(owner.group(1))):
            _run("ip", "link", "delete", ifname, check=False)
            removed.append(ifname)
    return removed


def _free_third_octet() -> int:
    used = set(re.findall(rf"inet {re.escape(SUBNET)}\.(\d+)\.",
                          _run("ip", "-o", "-4", "addr", "show")))
    start = os.getpid() % 250
    for step in range(250):
        octet = (start + step) % 250
        if str(octet) not in used:
            return octet
    raise RuntimeError(f"no free {SUBNET}.X.0/24 for the fault namespaces")


@dataclass
class Netns:
    """One namespace: ``address`` inside, ``host_address`` on the root side."""

    name: str
    host_if: str
    address: str
    host_address: str
    rules: list[str] = field(default_factory=list)

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def nft(self, script: str) -> None:
        _run(*self.exec_prefix(), "nft", "-f", "-", stdin=script)

    def drop_peer(self, address: str, port: int | None = None, *, local_port: int | None = None
                  ) -> None:
        """Drop, both ways, the packets between this namespace and ``address``
        (only to/from its ``port``, or only of this namespace's ``local_port``)."""
        out = [f"ip daddr {address}"] + ([f"tcp dport {port}"] if port else []) \
            + ([f"tcp sport {local_port}"] if local_port else [])
        into = [f"ip saddr {address}"] + ([f"tcp sport {port}"] if port else []) \
            + ([f"tcp dport {local_port}"] if local_port else [])
        rules = [f"add rule inet {TABLE} out {' '.join(out)} counter drop",
                 f"add rule inet {TABLE} in {' '.join(into)} counter drop"]
        self.nft("\n".join(rules) + "\n")
        self.rules += rules

    def heal(self) -> None:
        """Remove every rule :meth:`drop_peer` added."""
        self.nft(f"flush chain inet {TABLE} out\nflush chain inet {TABLE} in\n")
        self.rules.clear()

    def dropped(self) -> int:
        """Packets the rules dropped so far (proof the fault was real)."""
        text = _run(*self.exec_prefix(), "nft", "list", "table", "inet", TABLE)
        return sum(int(n) for n in re.findall(r"packets (\d+)", text))


class NetLab:
    """This run's namespaces; :meth:`close` removes all of them."""

    def __init__(self) -> None:
        self.prefix = f"{FAMILY}{os.getpid()}"
        self.octet = _free_third_octet()
        self.spaces: list[Netns] = []

    def add(self) -> Netns:
        index = len(self.spaces)
        if index >= 60:
            raise RuntimeError("at most 60 namespaces per run")
        name, host_if, ns_if = f"{self.prefix}n{index}", f"{self.prefix}h{index}", \
            f"{self.prefix}v{index}"
        host_address = f"{SUBNET}.{self.octet}.{4 * index + 1}"
        address = f"{SUBNET}.{self.octet}.{4 * index + 2}"
        space = Netns(name, host_if, address, host_address)
        self.spaces.append(space)  # before creating it, so close() removes a half-made one
        _run("ip", "netns", "add", name)
        _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _run("ip", "link", "set", ns_if, "netns", name)
        _run("ip", "addr", "add", f"{host_address}/30", "dev", host_if)
        _run("ip", "link", "set", host_if, "up")
        inside = space.exec_prefix()
        _run(*inside, "ip", "addr", "add", f"{address}/30", "dev", ns_if)
        _run(*inside, "ip", "link", "set", ns_if, "up")
        _run(*inside, "ip", "link", "set", "lo", "up")
        # the other veths' root-side addresses (e.g. Redis's) are reached via this one
        _run(*inside, "ip", "route", "add", "default", "via", host_address)
        space.nft(f"add table inet {TABLE}\n"
                  f"add chain inet {TABLE} in {{ type filter hook input priority 0; }}\n"
                  f"add chain inet {TABLE} out {{ type filter hook output priority 0; }}\n")
        return space

    def close(self) -> None:
        """Delete every namespace of this run (their nft tables and veths go too)."""
        for space in self.spaces:
            _delete_namespace(space.name)
            _run("ip", "link", "delete", space.host_if, check=False)
        self.spaces.clear()

    def leftovers(self) -> list[str]:
        """Names of this run still present (empty after :meth:`close`)."""
        links = _run("ip", "-o", "link", "show")
        return [n for n in _namespaces() if n.startswith(self.prefix)] + \
            re.findall(rf"\d+: ({self.prefix}\w+)", links)


class NetnsNode(NodeProcess):
    """A :class:`NodeProcess` run inside ``space``, bound to its address."""

    def __init__(self, app: str, space: Netns, *, port: int = 8000, **kwargs: Any) -> None:
        # the namespace is this node's own host: any port is free there (and
        # free_port() cannot bind its address from the root namespace)
        super().__init__(app, host=space.address, port=port, **kwargs)
        self.space = space

    def command(self) -> list[str]:
        return self.space.exec_prefix() + super().command()
