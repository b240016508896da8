-- Completion webhooks (worker/engine/webhooks.py): a row per finished job that asked for one
-- (its `notify_url`), written in the transaction that ends the job (ON CONFLICT (job_id) DO
-- NOTHING: a re-run of a finished job adds nothing), and delivered from here by every worker's
-- delivery loop. A row is claimed by moving `next_attempt_at` past the attempt's end (FOR UPDATE
-- SKIP LOCKED), so several workers never deliver one row at once and a killed worker's claim
-- lapses by itself. The body is stored as the exact text that is signed and sent.
--
-- Locks: a new table; nothing else is touched.
CREATE TABLE webhook_outbox (
    id              bigserial PRIMARY KEY,
    job_id          text        NOT NULL UNIQUE,
    delivery_id     uuid        NOT NULL DEFAULT gen_random_uuid(),  -- Harvester-Delivery
    url             text        NOT NULL,
    body            text        NOT NULL,            -- the JSON sent, byte for byte
    state           text        NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    pending_since   timestamptz NOT NULL DEFAULT now(),  -- HARVESTER_WEBHOOK_MAX_AGE runs from here
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_attempt_at timestamptz,
    delivered_at    timestamptz,
    last_status     integer,                          -- the receiver's HTTP status, if it answered
    last_error      text                              -- why the last attempt failed, one line
);

CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at) WHERE state = 'pending';
