-- Serving: every Result (and every per-article error of a stored article) with the versions
-- that produced it. One row per article and model/adapter/prompt version; a Result for posted
-- content that matches no stored article is kept under its content hash instead, so the
-- store also answers "was this text already summarized under these versions?" after a
-- restart with cold caches.
CREATE TABLE results (
    id              BIGSERIAL PRIMARY KEY,
    article_id      BIGINT REFERENCES articles (id) ON DELETE CASCADE,
    content_hash    TEXT NOT NULL,
    model_id        TEXT NOT NULL,
    -- '' is the base model: a NULL would make every row distinct under the unique keys
    adapter_id      TEXT NOT NULL DEFAULT '',
    prompt_version  TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('ok', 'error')),
    summary         TEXT,
    importance      REAL CHECK (importance >= 0 AND importance <= 100),
    topics          TEXT[] NOT NULL DEFAULT '{}',
    -- the whole Result as served (importance parts and reasons, timings)
    result          JSONB,
    error_code      TEXT,
    error_message   TEXT,
    attempts        INTEGER NOT NULL DEFAULT 1,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (status = 'error' OR (summary IS NOT NULL AND importance IS NOT NULL
                                AND result IS NOT NULL))
);
CREATE UNIQUE INDEX results_article_version_key
    ON results (article_id, model_id, adapter_id, prompt_version)
    WHERE article_id IS NOT NULL;
CREATE UNIQUE INDEX results_content_version_key
    ON results (content_hash, model_id, adapter_id, prompt_version)
    WHERE article_id IS NULL;
CREATE INDEX results_content_ok_idx
    ON results (content_hash, model_id, adapter_id, prompt_version)
    WHERE status = 'ok';
CREATE INDEX results_article_ok_idx ON results (article_id, updated_at DESC)
    WHERE status = 'ok';
CREATE INDEX results_created_idx ON results (created_at);
CREATE INDEX results_topics_idx ON results USING GIN (topics);
