"""Connection state recovery: the shared recovery stream in Redis, offsets,
replaying what a returning client missed, and holding live packets until
the replay is out.

Import the modules themselves; this package re-exports nothing.
"""

__all__: list[str] = []
