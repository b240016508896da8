"""The engine: a batch of URLs in, one recorded outcome per URL out.

Fetching (one shared aiohttp session, the SSRF guard, forward proxies, credential profiles
and their OAuth2 tokens, pacing, priority slots, retries), the outcome values, paginated walks
(where a page's next page is, and walking them in a batch), the pipeline that streams outcomes
to COPY writers, records (JSONPath extraction and upsert by key), the store (pool, COPY,
Postgres error translation), each URL's current copy (`latest_documents`), job leases (the fence
on a job's writes), migrations, scheduled-poll rules, and the metric counters it records. It
takes plain arguments (a fetcher, a pool, settings, URLs) and returns typed values, so it is
tested without arq. It imports only the foundation (settings, errors, logs, backoff) and
libraries; never arq, redis, rich, argparse, aiohttp.web, or ``jobs``.
"""
