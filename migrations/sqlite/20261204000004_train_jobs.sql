-- Training jobs of the web app's Train page: a LoRA adapter trained on a catalog task's synthetic data or on a
-- visitor's upload (stored here as the examples read from it, deleted with the job), its loss curve and its score.
-- Statuses: queued, running, done, failed, cancelled, interrupted. The adapter is trained/<id>.
CREATE TABLE train_jobs (
    id          TEXT PRIMARY KEY NOT NULL,          -- random hex, the adapter's name
    session_id  TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,                      -- the visitor's label
    task_id     TEXT NOT NULL,                      -- catalog task whose template the examples fill
    source      TEXT NOT NULL,                      -- synthetic | upload
    data        TEXT,                               -- JSON array of {prompt, completion} (uploads)
    params      TEXT NOT NULL,                      -- JSON object: steps, rank, alpha, targets, lr, batch
    status      TEXT NOT NULL DEFAULT 'queued',
    attempt     INTEGER NOT NULL DEFAULT 0,         -- runs claimed so far; a worker's writes name its own
    error       TEXT,
    examples    INTEGER NOT NULL DEFAULT 0,         -- training examples
    held_out    INTEGER NOT NULL DEFAULT 0,
    skipped     TEXT NOT NULL DEFAULT '[]',         -- JSON array: why rows were left out
    progress    TEXT NOT NULL DEFAULT '[]',         -- JSON array of {step, loss, eval_loss, tokens_per_s, eta_s}
    score       TEXT,                               -- JSON object: metric, n, base, adapter
    published   INTEGER NOT NULL DEFAULT 0,         -- 1: every visitor's gallery shows it
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE INDEX train_jobs_by_session ON train_jobs(session_id, created_at DESC);
CREATE INDEX train_jobs_by_status ON train_jobs(status, created_at);
