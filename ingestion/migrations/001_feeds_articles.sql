-- Feeds with their fetch state, and the articles they yield.
CREATE TABLE feeds (
    id                   BIGSERIAL PRIMARY KEY,
    url                  TEXT NOT NULL UNIQUE,
    title                TEXT,
    interval_s           INTEGER NOT NULL DEFAULT 900 CHECK (interval_s > 0),
    -- active: polled; quarantined: too many failures in a row; disabled: 410 Gone or by hand
    status               TEXT NOT NULL DEFAULT 'active'
                         CHECK (status IN ('active', 'quarantined', 'disabled')),
    etag                 TEXT,
    last_modified        TEXT,
    next_due_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_fetched_at      TIMESTAMPTZ,
    last_outcome         TEXT,
    last_http_status     INTEGER,
    last_error           TEXT,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    articles_total       BIGINT NOT NULL DEFAULT 0,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX feeds_due_idx ON feeds (next_due_at) WHERE status = 'active';

CREATE TABLE articles (
    id            BIGSERIAL PRIMARY KEY,
    feed_id       BIGINT NOT NULL REFERENCES feeds (id) ON DELETE CASCADE,
    -- miniflux's key: guid, else link, else hash(title + text); unique per feed
    dedup_key     TEXT NOT NULL,
    guid          TEXT,
    url           TEXT,
    title         TEXT NOT NULL DEFAULT '',
    author        TEXT,
    text          TEXT NOT NULL DEFAULT '',
    language      TEXT,
    content_hash  TEXT NOT NULL,
    published_at  TIMESTAMPTZ NOT NULL,
    fetched_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- the same text first stored from another feed
    duplicate_of  BIGINT REFERENCES articles (id) ON DELETE SET NULL,
    UNIQUE (feed_id, dedup_key)
);
CREATE INDEX articles_content_hash_idx ON articles (content_hash);
CREATE INDEX articles_published_idx ON articles (published_at DESC);
