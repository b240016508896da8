"""`harvester status` in a real terminal: tmux panes of 80x24 and 200x50, a real worker's data
in Redis and Postgres, and what the pane shows checked as a person would read it."""

from __future__ import annotations

import shlex
import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest
from arq.connections import ArqRedis

from tests.helpers import Services, wait_until
from tests.helpers.cli import cli_env, run
from tests.helpers.upstream import Upstream
from tests.helpers.workers import long_running, running
from worker.queue.client import enqueue_urls
from worker.settings import Settings

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")

JOB_PREFIX = "catalog-import-2026-01-01-nightly"


@asynccontextmanager
async def tmux_pane(
    tmp_path: Path, env: dict[str, str], size: tuple[int, int], command: list[str]
) -> AsyncIterator[Callable[[], Awaitable[str]]]:
    """``command`` in a tmux pane of ``size`` on a server of its own (killed on the way out);
    yields a function that captures what the pane shows. The pane stays open afterwards."""
    socket_name = f"harvester-test-{uuid.uuid4().hex[:12]}"
    conf = tmp_path / "tmux.conf"
    conf.write_text("set -g status off\nset -g remain-on-exit on\n")
    tmux = ["tmux", "-L", socket_name, "-f", str(conf)]
    width, height = size
    env = {**env, "TERM": "xterm-256color"}
    env.pop("COLUMNS", None)
    shell = f"{shlex.join(command)}; exec cat"  # cat keeps the pane's output on screen
    try:
        started = await run(
            *tmux, "new-session", "-d", "-x", str(width), "-y", str(height), shell, env=env
        )
        assert started.returncode == 0, started.stderr
        shown = await run(*tmux, "display", "-p", "#{pane_width}x#{pane_height}", env=env)
        assert shown.stdout.strip() == f"{width}x{height}", shown.stdout

        async def capture() -> str:
            return (await run(*tmux, "capture-pane", "-p", env=env)).stdout

        yield capture
    finally:
        await run(*tmux, "kill-server", env=env)


async def _screen(capture: Callable[[], Awaitable[str]], *expected: str) -> str:
    """What the pane shows once every ``expected`` text is on it (or a usage error is)."""
    seen = ""

    async def complete() -> bool:
        nonlocal seen
        seen = await capture()
        return all(text in seen for text in expected) or "error:" in seen

    try:
        await wait_until(complete, timeout=60)
    except AssertionError:
        raise AssertionError(f"not all of {expected} on the screen:\n{seen}") from None
    return seen


@pytest.fixture
async def worker_data(
    pool: asyncpg.Pool,
    arq_queue: ArqRedis,
    make_settings: Callable[..., Settings],
    upstream: Upstream,
) -> AsyncIterator[None]:
    """A live worker that has run four jobs with long ids, with documents and failures."""
    urls = [upstream.url(f"/json/t{i}") for i in range(12)]
    urls += [upstream.url("/status/404"), upstream.url("/status/500")]
    job_ids = await enqueue_urls(arq_queue, urls, batch_size=4, job_id_prefix=JOB_PREFIX)
    async with running(long_running(make_settings())):

        async def all_done() -> bool:
            found = await arq_queue.all_job_results()
            return {r.job_id for r in found} == set(job_ids)

        await wait_until(all_done, timeout=60)
        yield


async def test_status_at_80x24_shows_the_queue_workers_and_failures_first(
    services: Services, worker_data: None, tmp_path: Path
) -> None:
    """In an 80x24 terminal the screen starts with the queue summary (nothing scrolled off),
    then the workers and the failures by kind, each line whole; job ids are shortened."""
    command = [sys.executable, "-m", "worker", "status"]
    async with tmux_pane(tmp_path, cli_env(services), (80, 24), command) as capture:
        screen = await _screen(capture, "http_status", f"{JOB_PREFIX[:12]}…")
    lines = screen.split("\n")
    assert lines[0].startswith("harvester queue 'harvester:test' at "), screen
    assert lines[1].startswith("queued 0 (ready 0, deferred 0), oldest ready job waiting"), screen
    assert lines[2].startswith("in progress 0, "), screen
    assert " URLs/s over the last " in lines[2], screen
    assert "workers: 1 alive" in lines, screen
    header = lines.index("workers: 1 alive") + 1
    assert lines[header].split() == [
        "host",
        "pid",
        "state",
        "done",
        "failed",
        "running",
        "held",
        "last",
        "beat",
    ]
    assert " alive " in lines[header + 1], screen
    assert "failures by kind, last hour" in lines, screen
    kinds = {line.split()[0] for line in lines if line.startswith("http_status")}
    assert kinds == {"http_status"}, screen
    assert f"{JOB_PREFIX[:12]}…" in screen
    assert f"{JOB_PREFIX}-0" not in screen


async def test_status_at_200x50_shows_every_panel_and_whole_ids_with_wide(
    services: Services, worker_data: None, tmp_path: Path
) -> None:
    """In a 200x50 terminal `status --wide` shows every panel, and the job ids whole."""
    command = [sys.executable, "-m", "worker", "status", "--wide"]
    async with tmux_pane(tmp_path, cli_env(services), (200, 50), command) as capture:
        screen = await _screen(capture, "URLs landed", f"{JOB_PREFIX}-3")
    lines = screen.split("\n")
    assert lines[0].startswith("harvester queue 'harvester:test' at "), screen
    for panel in ("workers: 1 alive", "failures by kind, last hour", "recent jobs"):
        assert panel in lines, screen
    for n in range(4):
        assert f"{JOB_PREFIX}-{n} " in screen, screen
