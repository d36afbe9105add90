"""The fan-out benchmark's peers written in Python (the Node peer is in ``benchmarks/node``).

Nothing is imported here: a peer's module must run ``eventlet.monkey_patch()``
before anything else is imported.
"""
