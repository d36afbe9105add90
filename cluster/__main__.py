"""``python -m cluster``: see :mod:`cluster.runner.cli`."""

from cluster.runner.cli import main

raise SystemExit(main())
