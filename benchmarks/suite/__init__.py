"""The benchmark suites against the peers (``python -m benchmarks.fanout``,
``python -m benchmarks.scaleout``).

========================  ===================================================
module                    what
========================  ===================================================
:mod:`.procs`             child processes in their own process groups, Redis,
                          free ports, /proc readers, the open-file limit
:mod:`.targets`           the targets (this project, Flask-SocketIO, Node
                          socket.io) and how to start N nodes of each
:mod:`.loadgen`           driving ``benchmarks/node/loadgen.mjs``
:mod:`.measures`          one function per measurement
:mod:`.report`            machine and versions, JSON, Markdown, the PNG plot
:mod:`.celery_sender`     the process that sends Celery tasks and Emitter emits
:mod:`.scaleout_measure`  scale-out: CPU per emit on nodes without members
                          (slope between two rates), the sharded Node peer
:mod:`.scaleout_nodes`    scale-out: cluster CPU per emit at 2, 4, 6 nodes,
                          small rooms and per-user rooms (an Emitter process)
:mod:`.scaleout_report`   its JSON and Markdown
========================  ===================================================
"""
