-- Serving: webhook alerts (serving/webhooks/). A subscription is a URL with a filter; events
-- go into an outbox (webhook_events) in the same transaction that made a story match or grow,
-- and a dispatcher delivers them at least once, logging every attempt (webhook_deliveries).

CREATE TABLE webhooks (
    id              BIGSERIAL PRIMARY KEY,
    url             TEXT NOT NULL,
    -- HMAC key of the signatures: kept as is (signing needs it), shown once at creation
    secret          TEXT NOT NULL,
    description     TEXT NOT NULL DEFAULT '',
    -- the filter; NULL or '{}' means no constraint
    min_importance  REAL CHECK (min_importance >= 0 AND min_importance <= 100),
    topics          TEXT[] NOT NULL DEFAULT '{}',
    sources         TEXT[] NOT NULL DEFAULT '{}',
    -- story.grew when the metric reaches growth_step more than at this webhook's last event
    growth_metric   TEXT NOT NULL DEFAULT 'articles' CHECK (growth_metric IN ('articles', 'sources')),
    growth_step     INTEGER NOT NULL CHECK (growth_step >= 1),
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The outbox: one row per event and webhook, delivered at least once.
CREATE TABLE webhook_events (
    id               BIGSERIAL PRIMARY KEY,
    event_id         TEXT NOT NULL UNIQUE,           -- X-Newsdesk-Event-Id (receiver dedup)
    webhook_id       BIGINT NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    story_id         BIGINT NOT NULL,                -- no FK: an event outlives its story
    kind             TEXT NOT NULL CHECK (kind IN ('story.matched', 'story.grew')),
    -- 0 for story.matched, the growth metric's value for story.grew: with the unique key
    -- below an event is never enqueued twice, however often the matcher runs
    level            INTEGER NOT NULL,
    size             INTEGER NOT NULL,               -- the growth metric when enqueued
    body             TEXT NOT NULL,                  -- the exact bytes sent and signed
    state            TEXT NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'delivered', 'given_up')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    -- when it is due; a claim moves it a lease ahead, so a dispatcher that dies mid-delivery
    -- leaves the row due again once the lease has passed
    next_attempt_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    claim            UUID,                           -- the dispatcher's claim that may settle it
    last_status_code INTEGER,
    last_error       TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    delivered_at     TIMESTAMPTZ,
    given_up_at      TIMESTAMPTZ,
    UNIQUE (webhook_id, story_id, kind, level)
);
CREATE INDEX webhook_events_due_idx ON webhook_events (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_events_webhook_idx ON webhook_events (webhook_id, created_at DESC);

-- The delivery log: every attempt with its answer.
CREATE TABLE webhook_deliveries (
    id           BIGSERIAL PRIMARY KEY,
    event_row    BIGINT NOT NULL REFERENCES webhook_events (id) ON DELETE CASCADE,
    attempt      INTEGER NOT NULL,
    status_code  INTEGER,
    error        TEXT,
    outcome      TEXT NOT NULL CHECK (outcome IN ('delivered', 'retry', 'given_up')),
    started_at   TIMESTAMPTZ NOT NULL,
    duration_ms  REAL NOT NULL
);
CREATE INDEX webhook_deliveries_event_idx ON webhook_deliveries (event_row, attempt);
