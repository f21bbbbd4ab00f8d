-- Training runs (the model registry) and which adapter each model profile serves.
CREATE TABLE training_runs (
    id             BIGSERIAL PRIMARY KEY,
    -- the Ray Train run name: re-running the same name resumes it, so it is unique
    name           TEXT NOT NULL UNIQUE,
    profile        TEXT NOT NULL,
    status         TEXT NOT NULL DEFAULT 'running'
                   CHECK (status IN ('running', 'finished', 'failed')),
    prompt_version TEXT,
    config         JSONB NOT NULL DEFAULT '{}'::jsonb,  -- the run config as trained
    data           JSONB NOT NULL DEFAULT '{}'::jsonb,  -- pair files, counts, teachers, hashes
    metrics        JSONB NOT NULL DEFAULT '{}'::jsonb,  -- eval loss per epoch, ROUGE-L on val
    report         JSONB NOT NULL DEFAULT '{}'::jsonb,  -- skipped/invalid counts, timings
    adapter_path   TEXT,                                -- PEFT adapter folder
    merged_path    TEXT,                                -- optional merged bf16 model
    error          TEXT,
    started_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at    TIMESTAMPTZ
);
CREATE INDEX training_runs_profile_idx ON training_runs (profile, id DESC);

-- Append-only promotion history: a profile serves the adapter of its latest row
-- (run_id NULL = back to the bare base model).
CREATE TABLE adapter_promotions (
    id          BIGSERIAL PRIMARY KEY,
    profile     TEXT NOT NULL,
    run_id      BIGINT REFERENCES training_runs (id) ON DELETE RESTRICT,
    promoted_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    note        TEXT
);
CREATE INDEX adapter_promotions_profile_idx ON adapter_promotions (profile, id DESC);
