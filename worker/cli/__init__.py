"""The ``harvester`` command: argument parsing, exit codes, and one module per command group.

The top of the import graph: commands may use every room, but import them only when they run,
so ``harvester --help`` stays fast. Behaviour is tested in-process through `main`.
"""

from worker.cli.main import main

__all__ = ["main"]
