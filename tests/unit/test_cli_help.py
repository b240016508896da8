"""The ``harvester`` command's parser: version, help, and arguments refused before any
connection (run in-process, with no services)."""

from __future__ import annotations

import argparse
import re
from importlib.metadata import version

import pytest

from tests.helpers.cli import InProcess
from worker.cli.main import build_parser


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every command and subcommand of ``parser`` with its own parser (leaves only)."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _commands(sub, (*path, name))
    return found or [(path, parser)]


async def test_version_prints_the_package_version(cli: InProcess) -> None:
    """`harvester --version` prints ``harvester <version>`` from the package metadata."""
    result = await cli("--version", env={})
    assert result.returncode == 0
    assert result.stdout.strip() == f"harvester {version('harvester')}"


async def test_bare_harvester_prints_the_help(cli: InProcess) -> None:
    """`harvester` alone prints the help listing the commands, exit 0 (not an error)."""
    result = await cli(env={})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: harvester")
    for command in ("enqueue", "worker", "sources", "failures", "status", "migrate"):
        assert f"\n    {command}" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize("argv", [("sources",), ("failures",)])
async def test_a_missing_subcommand_names_no_internal_name(
    cli: InProcess, argv: tuple[str, ...]
) -> None:
    """`harvester sources` says a COMMAND is required, not ``sources_command``."""
    result = await cli(*argv, env={})
    assert result.returncode == 2
    assert "the following arguments are required: COMMAND" in result.stderr
    assert "_command" not in result.stderr


def test_every_command_help_names_its_environment_and_an_example() -> None:
    """Each (sub)command's help lists the environment variables it reads and an example."""
    commands = _commands(build_parser())
    assert len(commands) >= 14
    for path, parser in commands:
        text = parser.format_help()
        assert "\nenvironment:\n" in text, path
        examples = re.search(r"\nexamples?:\n((?:  .*\n?)+)", text)
        assert examples is not None, path
        assert "harvester " + " ".join(path) in examples.group(1), path
        assert "HARVESTER_" in text or "DATABASE_URL" in text or "REDIS_URL" in text, path


@pytest.mark.parametrize(
    "argv",
    [
        ("sources", "add", "https://api.example/a", "--every", "15"),
        ("failures", "list", "--since", "15"),
        ("failures", "replay", "--since", "15"),
    ],
)
async def test_a_duration_without_a_unit_is_refused(cli: InProcess, argv: tuple[str, ...]) -> None:
    """`--every 15` is refused (15 what?) with a message offering the units."""
    result = await cli(*argv, env={})
    assert result.returncode == 2
    assert "15 needs a unit: 15s, 15m, 15h or 15d" in result.stderr


def test_kind_is_repeatable_in_list_and_replay() -> None:
    """`--kind a --kind b` keeps both, for `failures list` as for `failures replay`."""
    parser = build_parser()
    for command in ("list", "replay"):
        args = parser.parse_args(["failures", command, "--kind", "timeout", "--kind", "connect"])
        assert args.kind == ["timeout", "connect"]
