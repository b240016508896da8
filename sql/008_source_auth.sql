-- The credential profile a scheduled source's polls use (its `auth`): a profile name on the
-- workers (HARVESTER_CREDENTIALS), never a secret. NULL: no credentials.
ALTER TABLE sources ADD COLUMN auth text;
