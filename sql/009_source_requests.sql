-- What a scheduled source's polls send, beyond its URL and credential profile (008): the method,
-- a JSON body and extra non-secret headers (the job contract's rules: never Authorization or
-- Cookie), how its pages are walked (`paginate`, a job's paginate object), and an incremental
-- cursor: `since_value`, read from the last poll's body at
-- `since_path`, goes out as the query parameter `since_param` of the next poll.
--
-- Locks: ADD COLUMN with a constant default rewrites nothing; the ACCESS EXCLUSIVE lock on
-- sources lasts a moment. Existing sources stay plain GETs without a cursor.
ALTER TABLE sources
    ADD COLUMN method      text  NOT NULL DEFAULT 'GET',
    ADD COLUMN body        jsonb,                          -- NULL: no request body
    ADD COLUMN headers     jsonb NOT NULL DEFAULT '{}',    -- {name: value}, never a secret
    ADD COLUMN paginate    jsonb,                          -- NULL: one page
    ADD COLUMN since_param text,                           -- NULL: no incremental cursor
    ADD COLUMN since_path  text,
    ADD COLUMN since_value text;                           -- NULL: no cursor read yet
