"""The arq worker process: `app.WorkerSettings`, the process's resources made in on_startup and
closed in on_shutdown (one session, one pool, one byte budget, the metrics server), the job and
cron registrations, and `worker.HarvesterWorker`, arq's Worker made to ride out Redis faults and
poison jobs. The only room that imports ``jobs``; below the CLI and the devtools.
"""
