"""The Procfile under honcho, as a Heroku-style platform runs it: release, then the formation."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from pathlib import Path

import aiohttp

from tests.helpers import wait_until, worker_env
from tests.helpers.faults import Stack, outcome_counts
from tests.helpers.upstream import Upstream

TOKEN = "procfile-test-token"
QUEUE = "harvester:procfile"


def _env(stack: Stack) -> dict[str, str]:
    env = worker_env(
        stack.database_url,
        stack.redis_url,
        QUEUE,
        api_token=TOKEN,
        concurrency=4,
        per_host=4,
        # honcho sends SIGKILL 5 s after SIGTERM: the worker's grace must end before that.
        shutdown_grace=2,
    )
    # `harvester` as the Procfile names it, from this interpreter's environment.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


async def _honcho(
    repo_root: Path, env: dict[str, str], *processes: str
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("honcho")),
        "--no-colour",
        "-f", str(repo_root / "Procfile"),
        "-d", str(repo_root),
        "start", *processes,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip


async def test_procfile_release_then_formation_stops_cleanly_on_sigterm(
    stack: Stack, upstream: Upstream, repo_root: Path
) -> None:
    """release migrates; worker and api start; a batch posted to the api is in flight when the
    formation gets SIGTERM; both stop cleanly within honcho's 5 s, and a later worker finishes
    the batch with every URL landed once."""
    env = _env(stack)
    release = await _honcho(repo_root, env, "release")
    out, _ = await asyncio.wait_for(release.communicate(), 60)
    assert release.returncode == 0, out.decode()
    assert "migration(s)" in out.decode()

    formation = await _honcho(repo_root, env, "worker", "api")
    assert formation.stdout is not None
    log: list[str] = []

    async def pump() -> None:
        assert formation.stdout is not None
        async for line in formation.stdout:
            log.append(line.decode(errors="replace"))

    reader = asyncio.create_task(pump())
    try:

        async def api_port() -> bool:
            return any("api.started" in line for line in log)

        await wait_until(api_port, timeout=30)
        port = int(re.search(r"api\.started .*port=(\d+)", "".join(log)).group(1))  # type: ignore[union-attr]
        base = f"http://127.0.0.1:{port}"
        urls = [upstream.url(f"/slow/{i}?delay=0.5") for i in range(60)]  # 7.5 s of work
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/healthz") as r:
                assert r.status == 200
            headers = {"Authorization": f"Bearer {TOKEN}"}
            batch = {"urls": urls, "job_id": "procfile-1"}
            async with session.post(f"{base}/batches", json=batch, headers=headers) as r:
                assert r.status == 202

        async def some_landed() -> bool:
            return (await outcome_counts(stack.database_url))[0] >= 4

        await wait_until(some_landed, timeout=30)
        os.killpg(formation.pid, signal.SIGTERM)  # the whole formation, as a platform does
        started = time.monotonic()
        await asyncio.wait_for(formation.wait(), 15)
        stopped_in = time.monotonic() - started
    finally:
        if formation.returncode is None:
            os.killpg(formation.pid, signal.SIGKILL)
            await formation.wait()
        await reader
    text = "".join(log)
    assert stopped_in < 5, text  # before honcho's SIGKILL
    assert "shutdown on SIGTERM" in text, text
    assert "worker.stopped" in text, text
    assert "Traceback" not in text, text
    assert "SIGKILL" not in text, text

    landed_at_stop = (await outcome_counts(stack.database_url))[0]
    assert landed_at_stop < len(urls)  # the job really was cut short
    finish = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", "worker", "--burst", env=env
    )
    assert await asyncio.wait_for(finish.wait(), 60) == 0
    assert await outcome_counts(stack.database_url) == (len(urls), len(urls), 0)
