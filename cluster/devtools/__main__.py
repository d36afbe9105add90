"""``python -m cluster.devtools``: see :mod:`cluster.devtools.cli`."""

from cluster.devtools.cli import main

raise SystemExit(main())
