-- Product: stories. Same-story articles from different feeds grouped into one story
-- (serving/stories/): the duplicate marks of ingestion, plus clustering of each article's
-- sentence embedding (all-MiniLM-L6-v2, 384 dimensions, L2-normalised) against the stories
-- of the same time window.
--
-- Embeddings are plain real[] here; where the pgvector extension can be installed, the block
-- at the end turns both columns into vector(384) and the nearest-story search runs in SQL
-- (`<=>`, cosine distance). The code reads the column type and works with either.

CREATE TABLE stories (
    id                  BIGSERIAL PRIMARY KEY,
    -- mean of the member embeddings (not re-normalised: cosine ignores the length)
    centroid            REAL[] NOT NULL,
    n_articles          INTEGER NOT NULL DEFAULT 0 CHECK (n_articles >= 0),
    first_published_at  TIMESTAMPTZ NOT NULL,
    last_published_at   TIMESTAMPTZ NOT NULL,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- Candidates of the nearest-story search and the listing: stories alive in a time window.
CREATE INDEX stories_last_published_idx ON stories (last_published_at DESC);

-- One row per assigned article: its story, its embedding, and how it joined.
CREATE TABLE story_articles (
    article_id   BIGINT PRIMARY KEY REFERENCES articles (id) ON DELETE CASCADE,
    story_id     BIGINT NOT NULL REFERENCES stories (id) ON DELETE CASCADE,
    embedding    REAL[] NOT NULL,
    -- founder: started the story; duplicate: ingestion marked it a copy of a member;
    -- similar: its embedding was within the threshold of the story's centroid
    joined_by    TEXT NOT NULL CHECK (joined_by IN ('founder', 'duplicate', 'similar')),
    similarity   REAL NOT NULL,  -- cosine to the centroid when it joined (1 for a founder)
    assigned_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX story_articles_story_idx ON story_articles (story_id);

-- pgvector where the server has it; nothing changes (and nothing fails) where it has not.
DO $$
BEGIN
    BEGIN
        CREATE EXTENSION IF NOT EXISTS vector;
    EXCEPTION WHEN OTHERS THEN
        RAISE NOTICE 'pgvector not available (%): story embeddings stay real[]', SQLERRM;
    END;
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'vector') THEN
        ALTER TABLE stories ALTER COLUMN centroid TYPE vector(384) USING centroid::vector(384);
        ALTER TABLE story_articles
            ALTER COLUMN embedding TYPE vector(384) USING embedding::vector(384);
    END IF;
END
$$;
