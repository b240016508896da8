"""Operations: the HTTP intake (``harvester api``), what ``harvester status`` reads and how it
is drawn, and metrics serving. Callers outside the worker process live here. It imports the
scheduling room, the queue contract, the engine and the foundation; never the runtime, cli or
``jobs``.
"""
