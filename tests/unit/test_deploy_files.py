"""Procfile and docker-compose.yml: no Docker engine here, so check what can be checked."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml


def _procfile(repo_root: Path) -> dict[str, str]:
    lines = (repo_root / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip())


def test_procfile_has_a_worker_and_the_api_and_no_process_that_exits(repo_root: Path) -> None:
    """worker runs the worker, api serves the intake on the platform's $PORT; no release line,
    which a process manager such as honcho would run as a process and stop the formation with
    when it exits (workers and the API migrate when they start instead)."""
    assert _procfile(repo_root) == {
        "worker": "harvester worker",
        "api": "harvester api --host 0.0.0.0 --port ${PORT:-8080}",
    }


@pytest.mark.parametrize("process", ["worker", "api"])
def test_procfile_commands_exist(repo_root: Path, process: str) -> None:
    """Each Procfile command is a real harvester subcommand."""
    argv = _procfile(repo_root)[process].split()
    assert argv[0] == "harvester"
    run = subprocess.run(
        [sys.executable, "-m", "worker", argv[1], "--help"],
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
    text = (repo_root / "docker-compose.yml").read_text()
    assert "${POSTGRES_PASSWORD:?" in text
    assert "${HARVESTER_API_TOKEN:?" in text
    api = services["api"]
    assert api["command"][:2] == ["harvester", "api"]
    assert api["environment"]["HARVESTER_API_TOKEN"].startswith("${HARVESTER_API_TOKEN:?")
    assert "healthcheck" in api
    worker_env = services["worker"]["environment"]
    assert worker_env["HARVESTER_METRICS_PORT"] == "9100"
    assert services["worker"]["expose"] == ["9100"]
    assert "ports" not in services["worker"]  # published ports would stop --scale worker=N
    assert (repo_root / "Dockerfile").exists()


def test_compose_file_is_valid_against_the_compose_schema(repo_root: Path) -> None:
    """docker-compose.yml validates against the Compose JSON schema (tests/data), and a broken
    copy does not: the check CI can run without a Docker engine."""
    schema = json.loads((repo_root / "tests" / "data" / "compose_spec.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    compose = yaml.safe_load((repo_root / "docker-compose.yml").read_text())
    assert [e.message for e in validator.iter_errors(compose)] == []
    compose["services"]["worker"]["depends_on"] = 5
    compose["services"]["api"]["ports"] = "8080"
    assert len(list(validator.iter_errors(compose))) == 2


def _has_compose() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    return probe.returncode == 0


@pytest.mark.skipif(not _has_compose(), reason="no Docker CLI with the compose plugin here")
def test_docker_compose_config_accepts_the_file(repo_root: Path) -> None:
    """Where a Docker CLI exists, `docker compose config` accepts the file with secrets set."""
    run = subprocess.run(
        ["docker", "compose", "-f", str(repo_root / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "POSTGRES_PASSWORD": "x", "HARVESTER_API_TOKEN": "y" * 16},
    )
    assert run.returncode == 0, run.stderr
