"""``python -m cluster``: see :mod:`cluster.cli`."""

from cluster.cli import main

raise SystemExit(main())
