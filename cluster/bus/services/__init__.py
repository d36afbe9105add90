"""Cluster services built on the bus, apart from the publish/receive
pipeline:

- :mod:`.nodes` (the registry of live nodes) and :mod:`.heartbeat` (which
  keeps it, plus the periodic chores);
- :mod:`.acks`: ack callbacks of emits sent to other nodes;
- :mod:`.asks` and :mod:`.answering`: answers from clients to any process
  (``gather``, workers' ``call``): the asking side's bookkeeping, and what a
  node does with an ask;
- :mod:`.link`: the narrow view of the bus the services below publish through;
- :mod:`.view`: cluster-wide queries and commands (``manager.cluster``);
- :mod:`.presence`: first-join / last-leave room events;
- :mod:`.membership`: room-change events and the single-node
  :class:`~.membership.LocalManager`.

Direction: a service may import the pipeline (publisher, transport,
codec, stats, runtime) and other services; the pipeline and the backends
never import a service (the subscription reaches the node registry through
a protocol), and only the manager composes them. This package re-exports
nothing.
"""
