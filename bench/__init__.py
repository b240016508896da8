"""harvester's benchmark harness: `make bench` (python -m bench). Not a test: CI never runs it."""
