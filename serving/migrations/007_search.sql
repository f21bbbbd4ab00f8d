-- Serving: full-text search over stored articles and their summaries (GET /v1/search,
-- serving/search/).
--
-- Why serving adds columns to ingestion's articles table: search is a way of *reading* the
-- stored history, and reading it is serving's (ingestion only writes articles and never
-- queries them by words). Ingestion's code and migrations need not know the column exists: it
-- is GENERATED, so PostgreSQL fills it on every INSERT/UPDATE that ingestion already does.
--
-- One text search configuration for every article, whatever its language: newsdesk_search,
-- English (Snowball stemming, English stop words) with accents folded by unaccent first. A
-- query has no language of its own, so a document and a query must go through the same
-- configuration to meet; per-language configurations (from articles.language) would need the
-- query parsed once per language and matched per row's language. With one configuration a
-- word in any language still matches itself exactly (the English stemmer leaves other words
-- nearly as they are, the same on both sides), and English, most of the feeds, gets its
-- plurals and tenses (docs/search.md: hits measured beside 'simple'). Where the unaccent
-- extension cannot be created (a server without it), the configuration is plain English
-- and nothing else changes.
DO $$
BEGIN
    BEGIN
        CREATE EXTENSION IF NOT EXISTS unaccent;
    EXCEPTION WHEN OTHERS THEN
        RAISE NOTICE 'unaccent not available (%): search does not fold accents', SQLERRM;
    END;
    CREATE TEXT SEARCH CONFIGURATION newsdesk_search (COPY = pg_catalog.english);
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'unaccent') THEN
        ALTER TEXT SEARCH CONFIGURATION newsdesk_search
            ALTER MAPPING FOR hword, hword_part, word WITH unaccent, english_stem;
    END IF;
END
$$;

-- The article's words: title weighted A, text (content or description) B. Only the first
-- 100,000 characters of the text: a tsvector holds at most 1 MB, and a feed that sends a
-- longer text must not make ingestion's INSERT fail (no news article is that long).
ALTER TABLE articles ADD COLUMN search_tsv tsvector GENERATED ALWAYS AS (
    setweight(to_tsvector('newsdesk_search'::regconfig, left(title, 1000)), 'A')
    || setweight(to_tsvector('newsdesk_search'::regconfig, left(text, 100000)), 'B')
) STORED;
CREATE INDEX articles_search_idx ON articles USING GIN (search_tsv);

-- The summary's words, weighted B like the text it restates (NULL for an error row).
ALTER TABLE results ADD COLUMN summary_tsv tsvector GENERATED ALWAYS AS (
    setweight(to_tsvector('newsdesk_search'::regconfig, summary), 'B')
) STORED;
CREATE INDEX results_summary_search_idx ON results USING GIN (summary_tsv)
    WHERE status = 'ok' AND article_id IS NOT NULL;
