"""Work harvester gives itself: registered sources polled on a schedule, failure replay and
retention. Each is a core function over a pool (and a Redis client when it enqueues), called by
a thin cron job in ``jobs`` or by the CLI. It imports the queue contract, the engine and the
foundation; never the runtime, ops, cli or ``jobs``.
"""
