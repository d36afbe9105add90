"""The Flask integration: the ``SocketIO`` extension (``extension``: setup
and emitting; ``registration``: the handler decorators; ``tasks``: tasks
and serving; ``emitting``: Flask-SocketIO's emit arguments;
``cluster_registrations``: cluster-wide handlers and presence), handler
contexts (``request``, ``session``, Flask-Login), the context functions
(``emit``, ``join_room``...), class-based namespaces, the test client and
singleton background tasks.

Import the modules themselves; this package re-exports nothing.
"""

__all__: list[str] = []
