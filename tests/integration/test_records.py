"""Records against a real upstream and Postgres: extracted from each landed body, upserted by
(source, key), through the pipeline, the worker, the CLI and scheduled sources."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import orjson
import pytest
from arq.connections import ArqRedis
from arq.worker import Worker

from tests.helpers import Services
from tests.helpers.cli import InProcess, cli_env
from tests.helpers.upstream import Upstream
from worker.engine import pipeline
from worker.engine.chunks import Chunk
from worker.engine.fetch import Fetcher
from worker.engine.outcomes import BatchSummary, Fetched
from worker.engine.pagination import PageSpec
from worker.engine.records import RecordSpec
from worker.engine.requests import Request
from worker.engine.writes import write_chunk
from worker.scheduling import polls, sources
from worker.settings import Settings

Run = Callable[..., Awaitable[BatchSummary]]
ORDERS = RecordSpec("$.data[*]", "$.id")


@pytest.fixture
def run(pool: asyncpg.Pool, settings: Settings, make_fetcher: Callable[[Settings], Fetcher]) -> Run:
    """pipeline.run of one batch with records, on the test pool."""

    def go(
        job_id: str, urls: list[str], spec: RecordSpec = ORDERS, **options: Any
    ) -> Awaitable[BatchSummary]:
        batch = pipeline.Batch(
            job_id=job_id,
            requests=[Request(u) for u in urls],
            source=options.pop("source", "orders"),
            records=spec,
            **options,
        )
        return pipeline.run(batch, fetcher=make_fetcher(settings), pool=pool, settings=settings)

    return go


def serve(upstream: Upstream, name: str, body: object) -> str:
    upstream.served[name] = (orjson.dumps(body), "application/json")
    return upstream.url(f"/served/{name}")


async def _records(pool: asyncpg.Pool, source: str = "orders") -> dict[str, dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT r.key, r.body, r.hash, r.job_id, r.url, r.page, r.first_seen, r.changed_at, "
        "s.last_seen, r.xmin::text AS xmin, r.ctid::text AS ctid "
        "FROM records r JOIN record_seen s USING (source, key) WHERE r.source = $1",
        source,
    )
    return {r["key"]: dict(r) for r in rows}


async def test_records_are_added_changed_and_left_alone_when_unchanged(
    pool: asyncpg.Pool, upstream: Upstream, run: Run
) -> None:
    """The first run adds every record; the second updates only the changed one (body, hash,
    document), adds the new one, and leaves the unchanged one's row as it was (same xmin and
    ctid: no new row version), moving only its last_seen; a record no longer served stays."""
    url = serve(
        upstream, "orders", {"data": [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}, {"id": "x3"}]}
    )
    first = await run("rec-1", [url])
    assert (first.documents, first.records, first.record_failures) == (1, 3, {})
    before = await _records(pool)
    assert set(before) == {"1", "2", "x3"}
    assert before["1"]["body"] == {"id": 1, "v": "a"}
    assert {r["job_id"] for r in before.values()} == {"rec-1"}
    assert before["1"]["url"] == url

    serve(upstream, "orders", {"data": [{"v": "A", "id": 1}, {"id": 2, "v": "b"}, {"id": 4}]})
    second = await run("rec-2", [url])
    assert (second.documents, second.records) == (1, 2)  # 1 changed, 4 added
    after = await _records(pool)
    assert set(after) == {"1", "2", "x3", "4"}
    changed, same = after["1"], after["2"]
    assert changed["body"] == {"id": 1, "v": "A"}
    assert changed["hash"] != before["1"]["hash"]
    assert changed["job_id"] == "rec-2"
    assert changed["xmin"] != before["1"]["xmin"]
    assert changed["first_seen"] == before["1"]["first_seen"]
    assert changed["changed_at"] > before["1"]["changed_at"]
    assert (same["xmin"], same["ctid"], same["job_id"]) == (
        before["2"]["xmin"],
        before["2"]["ctid"],
        "rec-1",
    )
    assert same["last_seen"] > before["2"]["last_seen"]
    assert after["x3"]["last_seen"] == before["x3"]["last_seen"]  # not served again
    assert await pool.fetchval("SELECT count(*) FROM record_failures") == 0


async def test_key_order_does_not_make_a_change(
    pool: asyncpg.Pool, upstream: Upstream, run: Run
) -> None:
    """The hash is of canonical JSON: the same record with its keys in another order is
    unchanged."""
    url = serve(upstream, "o", {"data": [{"id": 1, "a": 1, "b": {"y": 2, "x": 1}}]})
    await run("k-1", [url])
    serve(upstream, "o", {"data": [{"b": {"x": 1, "y": 2}, "a": 1, "id": 1}]})
    assert (await run("k-2", [url])).records == 0
    assert (await _records(pool))["1"]["job_id"] == "k-1"


async def test_a_body_without_the_path_lands_with_a_record_failure(
    pool: asyncpg.Pool, upstream: Upstream, run: Run
) -> None:
    """A body whose path finds nothing is still the URL's document (no fetch failure), and its
    missing records are a records_no_path row of their own."""
    url = serve(upstream, "nopath", {"items": [{"id": 1}]})
    summary = await run("np-1", [url])
    assert (summary.documents, summary.failures) == (1, {})
    assert summary.record_failures == {"records_no_path": 1}
    assert await pool.fetchval("SELECT count(*) FROM documents WHERE job_id = 'np-1'") == 1
    assert await pool.fetchval("SELECT count(*) FROM fetch_failures") == 0
    row = await pool.fetchrow("SELECT * FROM record_failures")
    assert (row["job_id"], row["url"], row["source"], row["kind"]) == (
        "np-1",
        url,
        "orders",
        "records_no_path",
    )
    assert "$.data[*] found nothing" in row["detail"]
    assert await pool.fetchval("SELECT count(*) FROM records") == 0


async def test_records_without_their_key_are_a_failure_and_the_others_land(
    pool: asyncpg.Pool, upstream: Upstream, run: Run
) -> None:
    """Elements without a key (or with a key that is not a string or a number) are counted in
    one records_no_key row; the keyed ones land, and so does the document."""
    body = {"data": [{"id": 1}, {"name": "no id"}, {"id": None}, {"id": "b"}]}
    summary = await run("nk-1", [serve(upstream, "nokey", body)])
    assert (summary.documents, summary.records) == (1, 2)
    assert summary.record_failures == {"records_no_key": 1}
    assert set(await _records(pool)) == {"1", "b"}
    detail = await pool.fetchval("SELECT detail FROM record_failures WHERE kind = 'records_no_key'")
    assert detail.startswith("2 of 4 records have no key at $.id")


async def test_ten_thousand_records_in_one_body(
    pool: asyncpg.Pool, upstream: Upstream, run: Run
) -> None:
    """One body of 10,000 records lands them all in its document's transaction; a second run
    of the same body changes none."""
    body = {"data": [{"id": i, "name": f"item {i}", "price": i * 3} for i in range(10_000)]}
    url = serve(upstream, "big", body)
    assert (await run("big-1", [url])).records == 10_000
    assert await pool.fetchval("SELECT count(*) FROM records WHERE source = 'orders'") == 10_000
    assert await pool.fetchval("SELECT count(*) FROM record_seen") == 10_000
    xmins = await pool.fetchval("SELECT count(DISTINCT xmin::text) FROM records")
    assert (await run("big-2", [url])).records == 0
    assert await pool.fetchval("SELECT count(DISTINCT xmin::text) FROM records") == xmins
    assert await pool.fetchval("SELECT count(*) FROM records WHERE job_id = 'big-1'") == 10_000


async def test_each_page_of_a_walk_gives_its_records(
    pool: asyncpg.Pool, upstream: Upstream, run: Run
) -> None:
    """With pagination, every page's body is extracted; each record names its page. A general
    JSONPath key (`$`: the element itself) works too."""
    url = upstream.url("/pages/json/walk?n=3")
    spec = RecordSpec("$.items[*]", "$")
    summary = await run("walk-1", [url], spec, paginate=PageSpec("json", ("links", "next")))
    assert (summary.pages, summary.records) == (3, 9)
    rows = await _records(pool)
    assert {k: r["page"] for k, r in rows.items()} == {
        str(p * 10 + i): p for p in (1, 2, 3) for i in range(3)
    }
    assert {r["url"] for r in rows.values()} == {url}


async def test_a_scheduled_source_polls_its_records(
    pool: asyncpg.Pool,
    upstream: Upstream,
    arq_queue: ArqRedis,
    make_settings: Callable[..., Settings],
    make_worker: Callable[..., Worker],
) -> None:
    """A source registered with records carries them in its polls: the worker lands the
    document and its records under the source's name."""
    url = serve(upstream, "feed", {"data": [{"id": "a"}, {"id": "b"}]})
    spec = sources.poll_spec(name="feed", request={"records": {"path": "$.data[*]", "key": "$.id"}})
    await sources.add(pool, [url], every=600, name="feed", spec=spec)
    (listed,) = await sources.list_sources(pool)
    assert listed.records == {"path": "$.data[*]", "key": "$.id"}
    await polls.enqueue_due(pool, arq_queue, make_settings())
    await make_worker().main()
    assert set(await _records(pool, "feed")) == {"a", "b"}


async def test_enqueue_with_records_lands_them_through_the_worker(
    cli: InProcess,
    services: Services,
    pool: asyncpg.Pool,
    upstream: Upstream,
    make_worker: Callable[..., Worker],
) -> None:
    """`harvester enqueue --records-path --records-key --source` makes jobs the worker extracts
    records from."""
    url = serve(upstream, "cli", {"data": [{"id": 7, "v": 1}]})
    result = await cli(
        "enqueue",
        "-",
        "--source",
        "cli-orders",
        "--records-path",
        "$.data[*]",
        "--records-key",
        "$.id",
        env=cli_env(services),
        stdin=url + "\n",
    )
    assert result.returncode == 0, result.stderr
    await make_worker().main()
    assert set(await _records(pool, "cli-orders")) == {"7"}


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--records-path", "$.data[", "--records-key", "$.id", "--source", "s"], "not a JSONPath"),
        (["--records-path", "$.data[*]", "--records-key", "$.id"], "'records' needs a 'source'"),
        (["--records-path", "$.data[*]", "--source", "s"], "give both --records-path and"),
    ],
)
async def test_enqueue_refuses_bad_records_flags(
    cli: InProcess, services: Services, flags: list[str], said: str
) -> None:
    """A bad JSONPath, records without a source, or half of the pair: one clear sentence and a
    non-zero exit, before anything is enqueued."""
    result = await cli("enqueue", "-", *flags, env=cli_env(services), stdin="https://a.example/\n")
    assert result.returncode != 0
    assert said in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


async def test_sources_add_refuses_records_without_a_name_or_with_a_bad_path(
    cli: InProcess, services: Services, pool: asyncpg.Pool
) -> None:
    """`sources add --records-path ...` needs --source, and a JSONPath; nothing is registered
    otherwise."""
    base = ["sources", "add", "https://a.example/", "--every", "1h", "--records-key", "$.id"]
    for extra, said in (
        (["--records-path", "$.data[*]"], "'records' needs a 'source'"),
        (["--records-path", "data", "--source", "s"], "must start with '$'"),
    ):
        result = await cli(*base, *extra, env=cli_env(services))
        assert result.returncode != 0
        assert said in result.stderr
        assert "Traceback" not in result.stderr
    assert await pool.fetchval("SELECT count(*) FROM sources") == 0


def _doc(url: str, body: bytes) -> Fetched:
    return Fetched(url, 200, body, 1, 1)


async def test_a_chunk_written_again_or_row_by_row_lands_records_once(pool: asyncpg.Pool) -> None:
    """A chunk landed twice (a retry whose first commit did land) adds no record, no record
    failure and no document; on the row-by-row path (a body Postgres refuses), the refused
    document's records do not land and the others' do."""
    good = _doc("http://ok", b'{"data": [{"id": 1}, {"id": 2}]}')
    nokey = _doc("http://nokey", b'{"data": [{"x": 1}]}')
    chunk = Chunk("w-1", "orders", [good, nokey], records=ORDERS)
    first = await write_chunk(pool, chunk, max_url_length=8192)
    assert (first.documents, first.records, first.record_failures) == (2, 2, ("records_no_key",))
    again = await write_chunk(pool, chunk, max_url_length=8192)
    assert (again.documents, again.records) == (0, 0)
    assert await pool.fetchval("SELECT count(*) FROM record_failures") == 1

    bad = _doc("http://bad", b'{"data": [{"id": 9, "s": "\\u0000"}]}')  # jsonb refuses \u0000
    other = _doc("http://ok2", b'{"data": [{"id": 3}]}')
    refused = await write_chunk(
        pool, Chunk("w-2", "orders", [bad, other], records=ORDERS), max_url_length=8192
    )
    assert [f.url for f in refused.refused] == ["http://bad"]
    assert refused.records == 1
    assert set(await _records(pool)) == {"1", "2", "3"}
