//! Runs: one prompt written for a catalog task, answered by several panes (the task's adapter, the base model,
//! other adapters). `start_run` checks and stores a run for the visitor's session; the browser then opens
//! `/runs/{id}/stream` (server-sent events, see [`crate::run_stream`]) and each pane's answer streams in; every
//! finished pane is stored. `get_run` and `list_runs` read them back for `/r/:id` and `/history`.

use leptos::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most panes in one run (the compare page's limit).
pub const MAX_PANES: usize = 4;
/// Largest `max_new_tokens` the app asks for.
pub const MAX_APP_NEW_TOKENS: u32 = 256;

/// Generation parameters of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunParams {
    /// Tokens to generate at most.
    pub max_new_tokens: u32,
    /// 0 is greedy.
    pub temperature: f32,
    /// Nucleus sampling mass (1 = off).
    pub top_p: f32,
    /// Seed of the sampler.
    pub seed: u64,
}

impl Default for RunParams {
    fn default() -> Self {
        Self { max_new_tokens: 64, temperature: 0.0, top_p: 1.0, seed: 0 }
    }
}

impl RunParams {
    /// Checks every range; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_APP_NEW_TOKENS).contains(&self.max_new_tokens) {
            return Err(format!("max new tokens must be between 1 and {MAX_APP_NEW_TOKENS}"));
        }
        if !(0.0..=2.0).contains(&self.temperature) {
            return Err("temperature must be between 0 and 2".into());
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err("top-p must be greater than 0 and at most 1".into());
        }
        Ok(())
    }
}

/// What the visitor asks for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRequest {
    /// The catalog task whose template the inputs fill.
    pub task: String,
    /// A value per template variable.
    pub inputs: BTreeMap<String, String>,
    /// Generation parameters.
    pub params: RunParams,
    /// One entry per pane: an adapter id, or `None` for the base model.
    pub panes: Vec<Option<String>>,
}

/// One pane of a stored run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PaneView {
    /// Column index.
    pub pane: i64,
    /// The adapter, `None` for the base model.
    pub adapter: Option<String>,
    /// The answer so far (the whole answer once finished).
    pub text: String,
    /// `length`, `eos`, `stop`, `error`; `None` while running or if it was stopped.
    pub finish_reason: Option<String>,
    /// The error, when it failed.
    pub error: Option<String>,
    /// Tokens generated.
    pub generated_tokens: Option<i64>,
    /// Time to first token, in milliseconds.
    pub ttft_ms: Option<f64>,
    /// Decode speed.
    pub tokens_per_s: Option<f64>,
}

/// A stored run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunView {
    /// The run id (the `/r/:id` link).
    pub id: String,
    /// The catalog task.
    pub task: Option<String>,
    /// The template inputs.
    pub inputs: BTreeMap<String, String>,
    /// The rendered prompt.
    pub prompt: String,
    /// Generation parameters.
    pub params: RunParams,
    /// Unix milliseconds.
    pub created_at: i64,
    /// The panes, in order.
    pub panes: Vec<PaneView>,
}

/// Stores a run for this visitor's session (created on first use, as an HttpOnly cookie) and returns its id.
#[server(endpoint = "start_run", input = server_fn::codec::Json)]
pub async fn start_run(request: RunRequest) -> Result<String, ServerFnError> {
    let state = expect_context::<crate::state::AppState>();
    ssr::store(&state, &request).await
}

/// The playground's form as a browser posts it without JavaScript (`inputs[name]`, `panes[i]` with `base` for
/// the base model): the run is stored and answered to the end on the server, then the browser is sent to `/r/:id`.
#[server(endpoint = "run_form")]
pub async fn run_form(
    task: String,
    inputs: BTreeMap<String, String>,
    panes: Vec<String>,
    max_new_tokens: u32,
    temperature: f32,
    top_p: f32,
    seed: u64,
) -> Result<String, ServerFnError> {
    let state = expect_context::<crate::state::AppState>();
    let panes = panes.into_iter().map(|p| (p != "base").then_some(p)).collect();
    let request = RunRequest { task, inputs, params: RunParams { max_new_tokens, temperature, top_p, seed }, panes };
    let id = ssr::store(&state, &request).await?;
    crate::run_stream::run_to_end(&state, &id).await.map_err(ServerFnError::new)?;
    leptos_axum::redirect(&format!("/r/{id}"));
    Ok(id)
}

/// A stored run, for anyone with its id.
#[server(endpoint = "get_run")]
pub async fn get_run(id: String) -> Result<Option<RunView>, ServerFnError> {
    let state = expect_context::<crate::state::AppState>();
    ssr::load_run(&state.db, &id).await.map_err(|e| ServerFnError::new(format!("database error: {e}")))
}

/// A page of this session's runs, newest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunPage {
    /// The runs of this page.
    pub runs: Vec<RunSummary>,
    /// Whether an older page exists.
    pub more: bool,
}

/// One line of the history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// The run id.
    pub id: String,
    /// The catalog task.
    pub task: Option<String>,
    /// The start of the prompt.
    pub excerpt: String,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Panes, and how many finished.
    pub panes: i64,
    /// Finished panes.
    pub finished: i64,
}

/// Runs shown per history page.
pub const HISTORY_PAGE: i64 = 20;

/// This session's runs, newest first, `HISTORY_PAGE` per page (0-based `page`).
#[server(endpoint = "list_runs")]
pub async fn list_runs(page: i64) -> Result<RunPage, ServerFnError> {
    let state = expect_context::<crate::state::AppState>();
    let Some(session) = crate::session::current(&state.db, false).await? else {
        return Ok(RunPage { runs: Vec::new(), more: false });
    };
    ssr::list_runs(&state.db, &session, page.max(0))
        .await
        .map_err(|e| ServerFnError::new(format!("database error: {e}")))
}

/// The number of tokens `text` has for the loaded model.
#[server(endpoint = "count_tokens", input = server_fn::codec::Json)]
pub async fn count_tokens(text: String) -> Result<usize, ServerFnError> {
    let state = expect_context::<crate::state::AppState>();
    let engine = state.engine.get().ok_or_else(|| ServerFnError::new("the model is still loading"))?;
    engine.tokenizer().encode(&text, true).map(|ids| ids.len()).map_err(|e| ServerFnError::new(e.to_string()))
}

#[cfg(feature = "ssr")]
pub(crate) mod ssr {
    //! Checks and SQL behind the run server functions.
    use super::*;
    use crate::catalog;
    use crate::state::AppState;
    use sqlx::{Row, SqlitePool};

    /// Checks `request` against the catalog and the engine's adapters; returns the rendered prompt.
    pub fn check(request: &RunRequest) -> Result<String, String> {
        let task = catalog::task(&request.task).ok_or_else(|| format!("unknown task `{}`", request.task))?;
        request.params.validate()?;
        if request.panes.is_empty() || request.panes.len() > MAX_PANES {
            return Err(format!("a run has 1 to {MAX_PANES} panes"));
        }
        for (name, value) in &request.inputs {
            if !task.variables.contains(name) {
                return Err(format!("`{name}` is not a variable of this task's template"));
            }
            if value.trim().is_empty() {
                return Err(format!("`{name}` is empty"));
            }
        }
        for pane in request.panes.iter().flatten() {
            engine::AdapterId::new(pane).map_err(|e| e.to_string())?;
        }
        catalog::render(&task.template, &request.inputs).map_err(|e| e.to_string())
    }

    /// Checks `request` and stores it for this visitor's session (created, with its cookie, on first use).
    pub async fn store(state: &AppState, request: &RunRequest) -> Result<String, ServerFnError> {
        let session = crate::session::current(&state.db, true).await?.expect("created when asked");
        let prompt = check(request).map_err(ServerFnError::new)?;
        insert_run(&state.db, &session, request, &prompt)
            .await
            .map_err(|e| ServerFnError::new(format!("database error: {e}")))
    }

    /// Inserts the run and one empty output per pane.
    pub async fn insert_run(db: &SqlitePool, session: &str, r: &RunRequest, prompt: &str) -> sqlx::Result<String> {
        let id = uuid::Uuid::new_v4().to_string();
        let mut tx = db.begin().await?;
        sqlx::query(
            "INSERT INTO runs (id, session_id, task_id, inputs, prompt, params, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&id)
        .bind(session)
        .bind(&r.task)
        .bind(serde_json::to_string(&r.inputs).unwrap_or_default())
        .bind(prompt)
        .bind(serde_json::to_string(&r.params).unwrap_or_default())
        .bind(crate::state::now_ms())
        .execute(&mut *tx)
        .await?;
        for (i, adapter) in r.panes.iter().enumerate() {
            sqlx::query("INSERT INTO outputs (run_id, pane, adapter_id) VALUES (?, ?, ?)")
                .bind(&id)
                .bind(i as i64)
                .bind(adapter)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(id)
    }

    /// Stores a finished (or failed) pane.
    pub async fn finish_pane(db: &SqlitePool, run: &str, p: &PaneView) -> sqlx::Result<()> {
        sqlx::query(
            "UPDATE outputs SET text = ?, finish_reason = ?, error = ?, generated_tokens = ?, ttft_ms = ?, \
             tokens_per_s = ? WHERE run_id = ? AND pane = ?",
        )
        .bind(&p.text)
        .bind(&p.finish_reason)
        .bind(&p.error)
        .bind(p.generated_tokens)
        .bind(p.ttft_ms)
        .bind(p.tokens_per_s)
        .bind(run)
        .bind(p.pane)
        .execute(db)
        .await?;
        Ok(())
    }

    /// A run with its panes.
    pub async fn load_run(db: &SqlitePool, id: &str) -> sqlx::Result<Option<RunView>> {
        let Some(row) = sqlx::query("SELECT id, task_id, inputs, prompt, params, created_at FROM runs WHERE id = ?")
            .bind(id)
            .fetch_optional(db)
            .await?
        else {
            return Ok(None);
        };
        let panes = sqlx::query(
            "SELECT pane, adapter_id, text, finish_reason, error, generated_tokens, ttft_ms, tokens_per_s \
             FROM outputs WHERE run_id = ? ORDER BY pane",
        )
        .bind(id)
        .fetch_all(db)
        .await?
        .into_iter()
        .map(|r| PaneView {
            pane: r.get("pane"),
            adapter: r.get("adapter_id"),
            text: r.get("text"),
            finish_reason: r.get("finish_reason"),
            error: r.get("error"),
            generated_tokens: r.get("generated_tokens"),
            ttft_ms: r.get("ttft_ms"),
            tokens_per_s: r.get("tokens_per_s"),
        })
        .collect();
        Ok(Some(RunView {
            id: row.get("id"),
            task: row.get("task_id"),
            inputs: serde_json::from_str(row.get::<&str, _>("inputs")).unwrap_or_default(),
            prompt: row.get("prompt"),
            params: serde_json::from_str(row.get::<&str, _>("params")).unwrap_or_default(),
            created_at: row.get("created_at"),
            panes,
        }))
    }

    /// A page of a session's runs, newest first.
    pub async fn list_runs(db: &SqlitePool, session: &str, page: i64) -> sqlx::Result<RunPage> {
        let rows = sqlx::query(
            "SELECT r.id, r.task_id, substr(r.prompt, 1, 160) AS excerpt, r.created_at, \
               (SELECT COUNT(*) FROM outputs o WHERE o.run_id = r.id) AS panes, \
               (SELECT COUNT(*) FROM outputs o WHERE o.run_id = r.id AND o.finish_reason IS NOT NULL) AS finished \
             FROM runs r WHERE r.session_id = ? ORDER BY r.created_at DESC, r.rowid DESC LIMIT ? OFFSET ?",
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

        #[sqlx::test(migrations = "../migrations")]
        async fn history_pages_newest_first_and_per_session(db: SqlitePool) {
            let me = crate::api::session::ssr::create_session(&db).await.unwrap();
            let other = crate::api::session::ssr::create_session(&db).await.unwrap();
            let inputs: BTreeMap<String, String> = [("question".to_string(), "1+1?".to_string())].into();
            let req = RunRequest { task: "gsm8k".into(), inputs, params: RunParams::default(), panes: vec![None] };
            let mut mine = Vec::new();
            for i in 0..(HISTORY_PAGE + 5) {
                mine.push(insert_run(&db, &me, &req, &format!("prompt {i}")).await.unwrap());
            }
            insert_run(&db, &other, &req, "not mine").await.unwrap();
            let first = list_runs(&db, &me, 0).await.unwrap();
            assert_eq!(first.runs.len(), HISTORY_PAGE as usize);
            assert!(first.more);
            assert_eq!(first.runs[0].id, *mine.last().unwrap(), "newest first");
            let second = list_runs(&db, &me, 1).await.unwrap();
            assert_eq!(second.runs.len(), 5);
            assert!(!second.more);
            assert_eq!(second.runs[4].id, mine[0]);
            assert!(first.runs.iter().chain(&second.runs).all(|r| r.excerpt != "not mine" && r.panes == 1));
        }

        #[sqlx::test(migrations = "../migrations")]
        async fn a_run_is_stored_with_its_panes_and_finished_panes_are_kept(db: SqlitePool) {
            let session = crate::api::session::ssr::create_session(&db).await.unwrap();
            let inputs: BTreeMap<String, String> = [("sentence".to_string(), "a fine film".to_string())].into();
            let req = RunRequest {
                task: "glue_sst2".into(),
                inputs,
                params: RunParams::default(),
                panes: vec![Some("glue_sst2".into()), None],
            };
            let id = insert_run(&db, &session, &req, "the prompt").await.unwrap();
            let run = load_run(&db, &id).await.unwrap().unwrap();
            assert_eq!(run.prompt, "the prompt");
            assert_eq!(run.inputs["sentence"], "a fine film");
            assert_eq!(run.panes.len(), 2);
            assert_eq!(run.panes[0].adapter.as_deref(), Some("glue_sst2"));
            assert_eq!(run.panes[1].finish_reason, None);
            let done = PaneView {
                text: "1".into(),
                finish_reason: Some("eos".into()),
                generated_tokens: Some(2),
                ttft_ms: Some(12.5),
                tokens_per_s: Some(30.0),
                ..run.panes[1].clone()
            };
            finish_pane(&db, &id, &done).await.unwrap();
            let run = load_run(&db, &id).await.unwrap().unwrap();
            assert_eq!(run.panes[1], done);
            assert!(load_run(&db, "no-such-run").await.unwrap().is_none());
        }
    }
}
