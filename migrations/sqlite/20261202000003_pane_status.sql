-- Pane states, named as the app and the engine name them (pending, running, done, cancelled, interrupted, error;
-- finish reasons length, eos, stop_sequence); when a pane's row was last written (its text is stored while it
-- streams); and which runs a session has opened (the runs it may vote on).
ALTER TABLE outputs ADD COLUMN status TEXT NOT NULL DEFAULT 'pending';
ALTER TABLE outputs ADD COLUMN updated_at INTEGER;
UPDATE outputs SET status = CASE
    WHEN error IS NOT NULL THEN 'error'
    WHEN finish_reason IN ('length', 'eos', 'stop') THEN 'done'
    WHEN finish_reason = 'cancelled' THEN 'cancelled'
    ELSE 'interrupted'
END;
UPDATE outputs SET finish_reason = 'stop_sequence' WHERE finish_reason = 'stop';
UPDATE outputs SET finish_reason = NULL WHERE finish_reason NOT IN ('length', 'eos', 'stop_sequence');

CREATE TABLE run_views (
    session_id  TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    run_id      TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    opened_at   INTEGER NOT NULL,
    PRIMARY KEY (session_id, run_id)
);
