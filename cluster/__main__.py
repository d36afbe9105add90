"""``python -m cluster``: see :mod:`cluster.runner.cli`."""

from cluster.runner.cli import entry

entry()
