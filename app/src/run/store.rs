//! The SQL of runs: a run and one row per pane; a pane's text written while it streams, and its end.

use super::types::{
    FinishReason, PaneEvent, PaneStatus, PaneTimings, PaneView, RunPage, RunParams, RunRequest, RunSummary, RunView,
    HISTORY_PAGE,
};
use crate::context::now_ms;
use crate::db::{Backend, Db, DbRow};
use futures_util::stream::{self, BoxStream, StreamExt};
use sqlx::Row;

/// A pane whose row has not been written for this long while `running` was cut off with its process (a generating
/// pane's row is written at least every [`HEARTBEAT_EVERY`]).
pub const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(20);
/// The longest a generating pane's row goes unwritten, new text or not: a pane waiting for its first token (its
/// adapter coming from the hub, room in a full batch, a long prompt's prefill) is alive, and must not look like one
/// whose process died to a replica that follows it or starts up.
pub const HEARTBEAT_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
/// How often a pane generated elsewhere is read back from the database.
pub const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_millis(400);

/// A stored run and the session that made it.
#[derive(Clone, Debug)]
pub struct StoredRun {
    /// The run.
    pub view: RunView,
    /// Its owner.
    pub session: String,
}

/// Inserts the run and one pending row per pane.
pub async fn insert_run(db: &Db, session: &str, r: &RunRequest, prompt: &str) -> sqlx::Result<String> {
    let id = uuid::Uuid::new_v4().to_string();
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT INTO runs (id, session_id, task_id, inputs, prompt, params, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&id)
    .bind(session)
    .bind(&r.task)
    .bind(serde_json::to_string(&r.inputs).unwrap_or_default())
    .bind(prompt)
    .bind(serde_json::to_string(&r.params).unwrap_or_default())
    .bind(now_ms())
    .execute(&mut *tx)
    .await?;
    for (i, adapter) in r.panes.iter().enumerate() {
        sqlx::query(
            "INSERT INTO outputs (run_id, pane, adapter_id, status, updated_at) VALUES ($1, $2, $3, 'pending', $4)",
        )
        .bind(&id)
        .bind(i as i64)
        .bind(adapter)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(id)
}

/// Claims a pane that is to run (pending, or interrupted and run again by its owner) for a generation in this
/// process: marks it running from scratch (its text cleared). False when it is no longer in either state: another
/// process (a replica that read the row at the same moment) claimed it first, and generates it.
pub async fn claim_pane(db: &Db, run: &str, pane: i64) -> sqlx::Result<bool> {
    let claimed = sqlx::query(
        "UPDATE outputs SET status = 'running', text = '', finish_reason = NULL, error = NULL, generated_tokens = NULL, \
         ttft_ms = NULL, tokens_per_s = NULL, updated_at = $1 WHERE run_id = $2 AND pane = $3 \
         AND status IN ('pending', 'interrupted')",
    )
    .bind(now_ms())
    .bind(run)
    .bind(pane)
    .execute(db)
    .await?;
    Ok(claimed.rows_affected() == 1)
}

/// A pane another process generates, read back from its row every [`FOLLOW_EVERY`] from byte `sent` of its text
/// until it ends: the new text, then its status. A row that stops being written while `running` (its process
/// died) is stored and ends as `interrupted`.
pub fn follow_row(db: Db, run: String, pane: i64, sent: usize) -> BoxStream<'static, PaneEvent> {
    let rest = stream::unfold(Some((db, run, sent)), move |st| async move {
        let (db, run, sent) = st?;
        loop {
            tokio::time::sleep(FOLLOW_EVERY).await;
            let Ok(Some((p, updated))) = load_pane(&db, &run, pane).await else {
                return Some((vec![], None));
            };
            let mut out = Vec::new();
            if p.text.len() > sent && p.text.is_char_boundary(sent) {
                out.push(PaneEvent::Text { pane, text: p.text[sent..].to_string() });
            }
            let sent = p.text.len().max(sent);
            let stale = now_ms() - updated > STALE_AFTER.as_millis() as i64;
            if p.status != PaneStatus::Running {
                out.push(PaneEvent::status_of(&p));
                return Some((out, None));
            }
            if stale {
                let cut = PaneView { status: PaneStatus::Interrupted, ..p };
                let _ = finish_pane(&db, &run, &cut).await;
                out.push(PaneEvent::status_of(&cut));
                return Some((out, None));
            }
            if !out.is_empty() {
                return Some((out, Some((db, run, sent))));
            }
        }
    });
    rest.flat_map(stream::iter).boxed()
}

/// Stores a generating pane's text so far (the same text again says the pane is alive). False when the row is no
/// longer `running`: something else ended it.
pub async fn save_text(db: &Db, run: &str, pane: i64, text: &str) -> sqlx::Result<bool> {
    let saved = sqlx::query(
        "UPDATE outputs SET text = $1, updated_at = $2 WHERE run_id = $3 AND pane = $4 AND status = 'running'",
    )
    .bind(text)
    .bind(now_ms())
    .bind(run)
    .bind(pane)
    .execute(db)
    .await?;
    Ok(saved.rows_affected() == 1)
}

/// Stores a pane's end (or, for a transient failure, its return to `pending`).
pub async fn finish_pane(db: &Db, run: &str, p: &PaneView) -> sqlx::Result<()> {
    let t = p.timings;
    sqlx::query(
        "UPDATE outputs SET text = $1, status = $2, finish_reason = $3, error = $4, generated_tokens = $5, ttft_ms = $6, \
         tokens_per_s = $7, updated_at = $8 WHERE run_id = $9 AND pane = $10",
    )
    .bind(&p.text)
    .bind(p.status.as_str())
    .bind(p.finish_reason.map(FinishReason::as_str))
    .bind(&p.error)
    .bind(t.map(|t| t.generated_tokens))
    .bind(t.map(|t| t.ttft_ms))
    .bind(t.and_then(|t| t.tokens_per_s))
    .bind(now_ms())
    .bind(run)
    .bind(p.pane)
    .execute(db)
    .await?;
    Ok(())
}

/// At start: panes that no process generates any more are `interrupted` (their text so far is kept). A SQLite
/// database belongs to one process, so every pane left `running` was its previous run's. Postgres is shared by
/// replicas that may be generating right now: only the panes whose row has not been written for
/// [`STALE_AFTER`] are cut off (a stream that follows a pane marks it so, too, once it
/// goes stale).
pub async fn interrupt_running(db: &Db) -> sqlx::Result<u64> {
    let before = match Backend::of_pool(db) {
        Backend::Sqlite => i64::MAX,
        Backend::Postgres => now_ms() - STALE_AFTER.as_millis() as i64,
    };
    let done = sqlx::query(
        "UPDATE outputs SET status = 'interrupted', updated_at = $1 \
         WHERE status = 'running' AND COALESCE(updated_at, 0) < $2",
    )
    .bind(now_ms())
    .bind(before)
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// The session that made `run`.
pub async fn owner(db: &Db, run: &str) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT session_id FROM runs WHERE id = $1").bind(run).fetch_optional(db).await
}

/// The columns [`pane_of`] reads (a macro, so that queries stay literal strings).
macro_rules! pane_columns {
    () => {
        "pane, adapter_id, text, status, finish_reason, error, generated_tokens, ttft_ms, tokens_per_s, updated_at"
    };
}

fn pane_of(r: &DbRow) -> PaneView {
    let timings = r.get::<Option<i64>, _>("generated_tokens").map(|generated_tokens| PaneTimings {
        generated_tokens,
        ttft_ms: r.get::<Option<f64>, _>("ttft_ms").unwrap_or(0.0),
        tokens_per_s: r.get("tokens_per_s"),
    });
    PaneView {
        pane: r.get("pane"),
        adapter: r.get("adapter_id"),
        text: r.get("text"),
        status: PaneStatus::parse(r.get::<&str, _>("status")).unwrap_or(PaneStatus::Interrupted),
        finish_reason: r.get::<Option<&str>, _>("finish_reason").and_then(FinishReason::parse),
        error: r.get("error"),
        timings,
    }
}

/// One pane as stored, and when its row was last written (Unix milliseconds).
pub async fn load_pane(db: &Db, run: &str, pane: i64) -> sqlx::Result<Option<(PaneView, i64)>> {
    let row = sqlx::query(concat!("SELECT ", pane_columns!(), " FROM outputs WHERE run_id = $1 AND pane = $2"))
        .bind(run)
        .bind(pane)
        .fetch_optional(db)
        .await?;
    Ok(row.map(|r| (pane_of(&r), r.get::<Option<i64>, _>("updated_at").unwrap_or(0))))
}

/// A run with its panes.
pub async fn load_run(db: &Db, id: &str) -> sqlx::Result<Option<RunView>> {
    Ok(load_stored(db, id).await?.map(|r| r.view))
}

/// A run with its panes and its owner.
pub async fn load_stored(db: &Db, id: &str) -> sqlx::Result<Option<StoredRun>> {
    let Some(row) =
        sqlx::query("SELECT id, session_id, task_id, inputs, prompt, params, created_at FROM runs WHERE id = $1")
            .bind(id)
            .fetch_optional(db)
            .await?
    else {
        return Ok(None);
    };
    let panes = sqlx::query(concat!("SELECT ", pane_columns!(), " FROM outputs WHERE run_id = $1 ORDER BY pane"))
        .bind(id)
        .fetch_all(db)
        .await?
        .iter()
        .map(pane_of)
        .collect();
    let view = RunView {
        id: row.get("id"),
        task: row.get("task_id"),
        inputs: serde_json::from_str(row.get::<&str, _>("inputs")).unwrap_or_default(),
        prompt: row.get("prompt"),
        params: serde_json::from_str::<RunParams>(row.get::<&str, _>("params")).unwrap_or_default(),
        created_at: row.get("created_at"),
        panes,
    };
    Ok(Some(StoredRun { view, session: row.get("session_id") }))
}

/// A page of a session's runs, newest first.
pub async fn list_runs(db: &Db, session: &str, page: i64) -> sqlx::Result<RunPage> {
    let rows = sqlx::query(
        "SELECT r.id, r.task_id, substr(r.prompt, 1, 160) AS excerpt, r.created_at, \
           (SELECT COUNT(*) FROM outputs o WHERE o.run_id = r.id) AS panes, \
           (SELECT COUNT(*) FROM outputs o WHERE o.run_id = r.id AND o.status IN ('done', 'error', 'cancelled')) \
             AS finished \
         FROM runs r WHERE r.session_id = $1 ORDER BY r.created_at DESC, r.rowid DESC LIMIT $2 OFFSET $3",
    )
    .bind(session)
    .bind(HISTORY_PAGE + 1)
    .bind(page * HISTORY_PAGE)
    .fetch_all(db)
    .await?;
    let more = rows.len() as i64 > HISTORY_PAGE;
    let runs = rows
        .into_iter()
        .take(HISTORY_PAGE as usize)
        .map(|r| RunSummary {
            id: r.get("id"),
            task: r.get("task_id"),
            excerpt: r.get("excerpt"),
            created_at: r.get("created_at"),
            panes: r.get("panes"),
            finished: r.get("finished"),
        })
        .collect();
    Ok(RunPage { runs, more })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::create_session;
    use std::collections::BTreeMap;

    #[tokio::test]
    async fn history_pages_newest_first_and_per_session() {
        for (_, db) in crate::db::test_databases().await {
            history_pages(&db).await;
        }
    }

    async fn history_pages(db: &Db) {
        let me = create_session(db).await.unwrap();
        let other = create_session(db).await.unwrap();
        let inputs: BTreeMap<String, String> = [("question".to_string(), "1+1?".to_string())].into();
        let req = RunRequest { task: "gsm8k".into(), inputs, params: RunParams::default(), panes: vec![None] };
        let mut mine = Vec::new();
        for i in 0..(HISTORY_PAGE + 5) {
            mine.push(insert_run(db, &me, &req, &format!("prompt {i}")).await.unwrap());
        }
        insert_run(db, &other, &req, "not mine").await.unwrap();
        let first = list_runs(db, &me, 0).await.unwrap();
        assert_eq!(first.runs.len(), HISTORY_PAGE as usize);
        assert!(first.more);
        assert_eq!(first.runs[0].id, *mine.last().unwrap(), "newest first");
        let second = list_runs(db, &me, 1).await.unwrap();
        assert_eq!(second.runs.len(), 5);
        assert!(!second.more);
        assert_eq!(second.runs[4].id, mine[0]);
        assert!(first.runs.iter().chain(&second.runs).all(|r| r.excerpt != "not mine" && r.panes == 1));
    }

    #[tokio::test]
    async fn a_pane_streams_into_its_row_ends_there_and_a_restart_interrupts_it() {
        for (backend, db) in crate::db::test_databases().await {
            pane_rows(backend, &db).await;
        }
    }

    async fn pane_rows(backend: Backend, db: &Db) {
        let session = create_session(db).await.unwrap();
        let inputs: BTreeMap<String, String> = [("sentence".to_string(), "a fine film".to_string())].into();
        let req = RunRequest {
            task: "glue_sst2".into(),
            inputs,
            params: RunParams::default(),
            panes: vec![Some("glue_sst2".into()), None],
        };
        let id = insert_run(db, &session, &req, "the prompt").await.unwrap();
        let run = load_stored(db, &id).await.unwrap().unwrap();
        assert_eq!((run.session.as_str(), run.view.prompt.as_str()), (session.as_str(), "the prompt"));
        assert_eq!(run.view.inputs["sentence"], "a fine film");
        assert_eq!(run.view.panes.len(), 2);
        assert_eq!(run.view.panes[0].adapter.as_deref(), Some("glue_sst2"));
        assert_eq!(run.view.panes[1].status, PaneStatus::Pending);
        assert!(claim_pane(db, &id, 1).await.unwrap());
        assert!(!claim_pane(db, &id, 1).await.unwrap(), "a running pane is not claimed twice");
        save_text(db, &id, 1, "1 2").await.unwrap();
        let (pane, _) = load_pane(db, &id, 1).await.unwrap().unwrap();
        assert_eq!((pane.status, pane.text.as_str()), (PaneStatus::Running, "1 2"));
        let done = PaneView {
            text: "1 2 3".into(),
            status: PaneStatus::Done,
            finish_reason: Some(FinishReason::Eos),
            timings: Some(PaneTimings { generated_tokens: 3, ttft_ms: 12.5, tokens_per_s: Some(30.0) }),
            ..pane
        };
        finish_pane(db, &id, &done).await.unwrap();
        assert_eq!(load_run(db, &id).await.unwrap().unwrap().panes[1], done);
        // A pane the previous process left running is interrupted, with its text: on SQLite at once, on Postgres
        // (whose other replicas may be generating it) once its row has gone stale.
        assert!(claim_pane(db, &id, 0).await.unwrap());
        save_text(db, &id, 0, "par").await.unwrap();
        if backend == Backend::Postgres {
            assert_eq!(interrupt_running(db).await.unwrap(), 0, "a fresh row is another replica's");
            let stale = now_ms() - STALE_AFTER.as_millis() as i64 - 1;
            sqlx::query("UPDATE outputs SET updated_at = $1 WHERE run_id = $2")
                .bind(stale)
                .bind(&id)
                .execute(db)
                .await
                .unwrap();
        }
        assert_eq!(interrupt_running(db).await.unwrap(), 1);
        let (cut, _) = load_pane(db, &id, 0).await.unwrap().unwrap();
        assert_eq!((cut.status, cut.text.as_str()), (PaneStatus::Interrupted, "par"));
        // Its owner runs it again: claimed once, from scratch; a done pane is not claimed.
        assert!(claim_pane(db, &id, 0).await.unwrap());
        assert!(!claim_pane(db, &id, 0).await.unwrap());
        assert_eq!(load_pane(db, &id, 0).await.unwrap().unwrap().0.text, "");
        assert!(!claim_pane(db, &id, 1).await.unwrap(), "pane 1 is done");
        assert!(load_run(db, "no-such-run").await.unwrap().is_none());
        assert_eq!(owner(db, &id).await.unwrap().as_deref(), Some(session.as_str()));
    }
}
