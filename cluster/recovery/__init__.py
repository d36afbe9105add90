"""Connection state recovery: the shared recovery stream in Redis, offsets,
replaying what a returning client missed, and holding live packets until
the replay is out.

- :mod:`.offsets`: the one type of a stream offset (``"<ms>-<seq>"``);
- :mod:`.stream`: the capped Redis Stream written with each publish;
- :mod:`.history`: where a session's history starts, per namespace;
- :mod:`.replay`: options, what a replay holds and reads, the packet hold;
- :mod:`.flow`: the recovery steps around a CONNECT on the node;
- :mod:`.client_state`: a python client's pid and offset bookkeeping.

The bus imports this package, never the other way round. Import the
modules themselves; this package re-exports nothing.
"""

__all__: list[str] = []
