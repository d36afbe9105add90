"""The runner: the ``socketio-cluster node`` command, the WSGI server it
runs on eventlet or gevent (drain on SIGTERM), start-up checks, ``/healthz``,
``/readyz`` and ``/metrics``, and the log format.

Import the modules themselves; this package re-exports nothing.
"""

__all__: list[str] = []
