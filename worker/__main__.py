"""``python -m worker`` is the ``harvester`` command."""

from worker.cli import main

raise SystemExit(main())
