"""Defaults every node and emitter must agree on, each named once."""

#: the pub/sub channel (Redis) or exchange (kombu) of the bus; Flask-SocketIO's
#: and python-socketio's own default, so a stock emitter reaches the nodes
DEFAULT_CHANNEL = "flask-socketio"
