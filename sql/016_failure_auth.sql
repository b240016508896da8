-- The credential profile (a job's `auth`) a failure was fetched with, so that a replay sends it
-- again (worker/scheduling/replay.py): a profile NAME on the workers (HARVESTER_CREDENTIALS),
-- never a secret. NULL: no credentials (and every row written before this migration).
--
-- Locks: columns without a default are a catalog change, nothing is rewritten. Each ALTER takes
-- an ACCESS EXCLUSIVE lock on its table until the migration commits: a moment, but it waits for
-- a COPY into fetch_failures that is under way (a chunk's transaction), and landing chunks wait
-- behind it meanwhile.
ALTER TABLE fetch_failures ADD COLUMN auth text;
ALTER TABLE replays ADD COLUMN auth text;  -- the profile the replay job was enqueued with
