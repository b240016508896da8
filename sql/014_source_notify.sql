-- A scheduled source's completion webhook (docs/results.md): each poll job of the source carries
-- it as the job's `notify_url`. Sources with different URLs to notify go out in different poll
-- jobs, as sources with different credential profiles do.
--
-- Locks: a column without a default is a catalog change; the ACCESS EXCLUSIVE lock on sources
-- lasts a moment. Existing sources notify nobody.
ALTER TABLE sources ADD COLUMN notify_url text;  -- NULL: no webhook
