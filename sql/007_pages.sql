-- Paginated walks: each page of a request lands as its own documents row, numbered from 1,
-- with the page's URL; `url` keeps the URL as enqueued, so a caller can reassemble a walk.
-- Rows of unpaginated requests (and of earlier versions) have NULL page columns.
--
-- A walk ends at most once in a failure, so fetch_failures keeps one row per request; its
-- page and page_url say which page could not be landed.
--
-- Locks: ADD COLUMN without a default changes only the catalog. The new unique index is built
-- in this transaction, and documents stays locked until it commits (see docs/upgrading.md).
ALTER TABLE documents
    ADD COLUMN page     integer CHECK (page >= 1),
    ADD COLUMN page_url text,
    ADD COLUMN next_url text;   -- the next page's URL, as this page gave it; NULL: the last
ALTER TABLE fetch_failures
    ADD COLUMN page     integer CHECK (page >= 1),
    ADD COLUMN page_url text;

-- The documents key of requests (006) and pages at once: for a GET without a body and without a
-- page (every earlier row) the same identity as the old (job id, URL) key.
CREATE UNIQUE INDEX documents_job_request_page_key
    ON documents (job_id, harvester_request_key(url, method, body_hash), COALESCE(page, 0));
DROP INDEX documents_job_url_key;
