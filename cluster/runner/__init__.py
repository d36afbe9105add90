"""The runner: the ``socketio-cluster node`` command, the eventlet WSGI
server it runs (drain on SIGTERM), start-up checks, ``/healthz``,
``/readyz`` and ``/metrics``, and the log format.

Import the modules themselves; this package re-exports nothing.
"""

__all__: list[str] = []
