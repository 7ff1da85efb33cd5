-- Which pane of a run a visitor found better: one vote per run and session (a new vote replaces the old one).
CREATE TABLE votes (
    run_id      TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    session_id  TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    pane        INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (run_id, session_id)
);
