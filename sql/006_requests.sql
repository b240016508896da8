-- Requests with methods and bodies: an outcome's identity becomes (job id, method, URL, body
-- hash). Rows of earlier versions are GETs without a body, and their keys do not change.
--
-- documents gets its new unique key in 007 (which adds the page to it), so its table is read
-- once for a new index, not twice; until then it keeps its old key on (job id, URL).
--
-- Locks: ADD COLUMN with a constant default rewrites nothing, but takes an ACCESS EXCLUSIVE lock
-- on documents and fetch_failures, held until this migration's transaction commits, after the
-- fetch_failures unique index is built (it reads the whole table): reads and writes of the two
-- tables wait until then. See docs/upgrading.md.
ALTER TABLE documents
    ADD COLUMN method    text NOT NULL DEFAULT 'GET',
    ADD COLUMN body_hash bytea,   -- SHA-256 of the request body's canonical JSON; NULL: no body
    ADD COLUMN request   jsonb;   -- the request body itself; NULL: no body
ALTER TABLE fetch_failures
    ADD COLUMN method    text NOT NULL DEFAULT 'GET',
    ADD COLUMN body_hash bytea,
    ADD COLUMN request   jsonb;

-- The key of a request: for a GET without a body, exactly harvester_url_key(url), so keys of
-- old rows (and of every plain GET) stay what they were; otherwise a hash of the method, the
-- body hash (a marker byte tells "no body" apart) and the URL. Written with pg_catalog
-- functions only, so an index on it restores under any search_path.
CREATE FUNCTION harvester_request_key(url text, method text, body_hash bytea) RETURNS bytea
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT CASE
        WHEN method = 'GET' AND body_hash IS NULL THEN sha256(convert_to(url, 'UTF8'))
        ELSE sha256(
            convert_to(method, 'UTF8')
            || CASE WHEN body_hash IS NULL THEN '\x00'::bytea ELSE '\x01'::bytea || body_hash END
            || convert_to(url, 'UTF8'))
    END
    $$;

CREATE UNIQUE INDEX fetch_failures_job_request_key
    ON fetch_failures (job_id, harvester_request_key(url, method, body_hash));
DROP INDEX fetch_failures_job_url_key;
