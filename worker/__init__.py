"""harvester: arq jobs fetch batches of JSON URLs concurrently and land them in PostgreSQL.

The package is laid out in rooms by role; each room's ``__init__`` says what lives there and
what it may import, and ``make lint`` enforces it (import-linter contracts in pyproject.toml).
From the top of the import graph to the bottom:

    cli/         the ``harvester`` command                       may import every room below
    devtools/    embedded servers, sample API, the demo          (never shipped in the wheel)
    runtime/     the arq worker process: resources, jobs, cron   imports jobs, ops and below
    ops/         HTTP intake, status, metrics serving            queue, scheduling, engine
    jobs (top-level package) the thin arq job functions          scheduling, queue, engine
    scheduling/  registered sources, failure replay, retention   queue, engine
    queue/       the job contract: payload model, client, JSON   engine
    engine/      fetch -> queue -> COPY; never sees arq or Redis foundation only
    foundation:  settings.py, errors.py, logs.py, backoff.py,    nothing of harvester's
                 serverurl.py (DATABASE_URL, REDIS_URL and its
                 Sentinel form), proxyurl.py (proxies, NO_PROXY)

See ARCHITECTURE.md for the flow of a URL and where each kind of change goes.
"""
