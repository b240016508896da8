"""``python -m worker`` is the ``harvester`` command."""

from worker.cli.main import main

raise SystemExit(main())
