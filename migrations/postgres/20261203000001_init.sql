-- The schema of migrations/sqlite/ as it stands after its last migration, for PostgreSQL: the same tables and
-- columns (app::db's tests compare them), with Postgres' types. Integers are BIGINT (times are Unix milliseconds),
-- timings DOUBLE PRECISION. `runs.rowid` is the insertion order SQLite's implicit rowid gives (history's tie-break
-- between runs made in the same millisecond).
CREATE TABLE sessions (
    id          TEXT PRIMARY KEY NOT NULL,          -- random UUID, also the cookie value
    created_at  BIGINT NOT NULL                     -- unix milliseconds
);

CREATE TABLE runs (
    rowid       BIGSERIAL NOT NULL,
    id          TEXT PRIMARY KEY NOT NULL,          -- random UUID, the shareable id of /r/:id
    session_id  TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    task_id     TEXT,                               -- catalog task the prompt was written for, if any
    inputs      TEXT NOT NULL,                      -- JSON object: template variable -> value
    prompt      TEXT NOT NULL,                      -- the rendered prompt sent to the model
    params      TEXT NOT NULL,                      -- JSON object: generation parameters
    created_at  BIGINT NOT NULL
);
CREATE INDEX runs_by_session ON runs(session_id, created_at DESC);

-- One pane of a run: pending, running, done, cancelled, interrupted, error; finish reasons length, eos,
-- stop_sequence, constraint. A running pane's text is stored while it streams (updated_at says when).
CREATE TABLE outputs (
    run_id           TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    pane             BIGINT NOT NULL,               -- 0-based column of the comparison
    adapter_id       TEXT,                          -- NULL is the base model
    text             TEXT NOT NULL DEFAULT '',
    finish_reason    TEXT,
    error            TEXT,
    prompt_tokens    BIGINT,
    generated_tokens BIGINT,
    ttft_ms          DOUBLE PRECISION,
    tokens_per_s     DOUBLE PRECISION,
    status           TEXT NOT NULL DEFAULT 'pending',
    updated_at       BIGINT,
    PRIMARY KEY (run_id, pane)
);

-- Which pane of a run a visitor found better: one vote per run and session (a new vote replaces the old one).
CREATE TABLE votes (
    run_id      TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    session_id  TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    pane        BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (run_id, session_id)
);

-- Which runs a session has opened (the runs it may vote on).
CREATE TABLE run_views (
    session_id  TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    run_id      TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    opened_at   BIGINT NOT NULL,
    PRIMARY KEY (session_id, run_id)
);
