-- Sessions, runs (one prompt with its parameters) and outputs (one pane of a run: the base model or an adapter).
CREATE TABLE sessions (
    id          TEXT PRIMARY KEY NOT NULL,          -- random UUID, also the cookie value
    created_at  INTEGER NOT NULL                    -- unix milliseconds
);

CREATE TABLE runs (
    id          TEXT PRIMARY KEY NOT NULL,          -- random UUID, the shareable id of /r/:id
    session_id  TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    task_id     TEXT,                               -- catalog task the prompt was written for, if any
    inputs      TEXT NOT NULL,                      -- JSON object: template variable -> value
    prompt      TEXT NOT NULL,                      -- the rendered prompt sent to the model
    params      TEXT NOT NULL,                      -- JSON object: generation parameters
    created_at  INTEGER NOT NULL
);
CREATE INDEX runs_by_session ON runs(session_id, created_at DESC);

CREATE TABLE outputs (
    run_id           TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    pane             INTEGER NOT NULL,              -- 0-based column of the comparison
    adapter_id       TEXT,                          -- NULL is the base model
    text             TEXT NOT NULL DEFAULT '',
    finish_reason    TEXT,                          -- length | eos | stop | cancelled | error
    error            TEXT,
    prompt_tokens    INTEGER,
    generated_tokens INTEGER,
    ttft_ms          REAL,
    tokens_per_s     REAL,
    PRIMARY KEY (run_id, pane)
);
