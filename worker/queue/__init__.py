"""The queue contract: what a job is and how it gets into Redis.

The one payload model (`payload.FetchBatch`) that the worker, the CLI, the HTTP intake and the
OpenAPI document all come from, with its parts (`shapes`), its refusals said in words
(`refusals`) and the job id and URL checks every intake shares (`checks`); the JSON
serialisation (never pickle) and the strict job envelope check; the Redis connection
(`connection`: retries, Sentinel, its errors translated), the client that enqueues batches and
the Redis key names harvester uses; worker heartbeats, the jobs each worker holds, and the
takeover of a dead worker's jobs. It imports the engine (URL checks) and the foundation; never
the runtime, ops, cli or ``jobs``.
"""
