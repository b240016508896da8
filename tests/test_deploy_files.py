"""Procfile and docker-compose.yml: no Docker engine here, so check what can be checked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml


def _procfile(repo_root: Path) -> dict[str, str]:
    lines = (repo_root / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip())


def test_procfile_has_release_and_worker(repo_root: Path) -> None:
    """release migrates, worker runs the worker."""
    assert _procfile(repo_root) == {"release": "harvester migrate", "worker": "harvester worker"}


@pytest.mark.parametrize("process", ["release", "worker"])
def test_procfile_commands_exist(repo_root: Path, process: str) -> None:
    """Each Procfile command is a real harvester subcommand."""
    argv = _procfile(repo_root)[process].split()
    assert argv[0] == "harvester"
    run = subprocess.run(
        [sys.executable, "-m", "worker", *argv[1:], "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr


def test_compose_stack_is_complete(repo_root: Path) -> None:
    """postgres and redis with healthchecks and volumes, a one-shot migrate, the worker after it."""
    compose = yaml.safe_load((repo_root / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "migrate", "worker"} <= set(services)
    for name in ("postgres", "redis"):
        assert "healthcheck" in services[name]
        assert services[name]["volumes"]
    assert services["migrate"]["command"] == ["harvester", "migrate"]
    assert (
        services["worker"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    )
    assert services["worker"]["command"] == ["harvester", "worker"]
    assert "${POSTGRES_PASSWORD:?" in (repo_root / "docker-compose.yml").read_text()
    assert (repo_root / "Dockerfile").exists()
