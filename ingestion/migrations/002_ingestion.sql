-- Ingestion: what the poller needs beyond 001.

-- Feed metadata learnt from the feed itself, the claim (lease) of the poller fetching it, and
-- the hash of the last body stored (a server without ETag/Last-Modified that serves the same
-- bytes again counts as "not modified" and is not parsed again).
ALTER TABLE feeds
    ADD COLUMN site_url        TEXT,
    ADD COLUMN language        TEXT,
    ADD COLUMN lease_token     UUID,
    ADD COLUMN body_hash       TEXT,
    ADD COLUMN last_success_at TIMESTAMPTZ;

-- Quarantined feeds are still probed, rarely (next_due_at pushed by the backoff cap): a
-- success brings them back. Only disabled feeds are never polled.
CREATE INDEX feeds_pollable_due_idx ON feeds (next_due_at) WHERE status <> 'disabled';

-- The feed's (or site's) name at the time the article was stored: Article.source.
ALTER TABLE articles ADD COLUMN source TEXT;

-- The first article stored with a given content hash. Inserting here under its primary key is
-- what makes cross-feed duplicate marking race-free: of two pollers storing the same text at
-- once, the second waits on the key, then sees the first one's row and points to it.
CREATE TABLE article_contents (
    content_hash     TEXT PRIMARY KEY,
    first_article_id BIGINT NOT NULL REFERENCES articles (id) ON DELETE CASCADE
);
CREATE INDEX article_contents_first_idx ON article_contents (first_article_id);
CREATE INDEX articles_duplicate_of_idx ON articles (duplicate_of) WHERE duplicate_of IS NOT NULL;
CREATE INDEX articles_feed_idx ON articles (feed_id, id DESC);
