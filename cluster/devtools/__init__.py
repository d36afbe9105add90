"""Dev tooling: a whole cluster on one machine, for ``./dev up``, the tests and benchmarks.

What lives here, and nothing else: the child processes of a local cluster
(:mod:`.processes`: redis-server and socket nodes; :mod:`.haproxy_process`;
:mod:`.worker_process`), the HAProxy configuration they and ``deploy/`` share
(:mod:`.haproxy_config`, a pure renderer), the state file naming a running
local cluster (:mod:`.state_file`), the composition of all of them
(:mod:`.local_cluster`) and its command line (:mod:`.cli`,
``python -m cluster.devtools up``, the ``socketio-cluster-dev`` script).

The node's runtime never imports this package: a deployed node serves with
:mod:`cluster.runner.cli` alone. This module imports nothing, so importing
``cluster.devtools.haproxy_config`` stays as cheap as the renderer itself.
"""

__all__ = [
    "cli",
    "haproxy_config",
    "haproxy_process",
    "local_cluster",
    "processes",
    "state_file",
    "worker_process",
]
