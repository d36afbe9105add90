"""The Flask integration: the ``SocketIO`` extension, handler contexts
(``request``, ``session``, Flask-Login), the context functions (``emit``,
``join_room``...), class-based namespaces, the test client and singleton
background tasks.

Import the modules themselves; this package re-exports nothing.
"""

__all__: list[str] = []
