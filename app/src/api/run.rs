//! Runs: one prompt written for a catalog task, answered by several panes (the task's adapter, the base model,
//! other adapters). `start_run` checks a run through the engine's request contract and stores it for the visitor's
//! session; the browser then opens `/runs/{id}/stream` (server-sent [`PaneEvent`]s, see [`crate::run`]) and each
//! pane's answer streams in, stored as it streams. `get_run` and `list_runs` read runs back for `/r/:id` and
//! `/history`; `stop_run` stops a run's generations.

use leptos::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most panes in one run (the compare page's limit).
pub const MAX_PANES: usize = 4;
/// The largest `max_new_tokens` the app's form offers (the engine's own limit is what is enforced).
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

/// Why a generation ended: the engine's `FinishReason`, with its names (the browser cannot link the engine; the
/// server converts with one exhaustive match, and the names are stored as they are).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// `max_new_tokens` reached.
    Length,
    /// The model produced an end-of-sequence token.
    Eos,
    /// A stop sequence appeared in the text.
    StopSequence,
}

impl FinishReason {
    /// The stored name: `length`, `eos`, `stop_sequence`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Length => "length",
            Self::Eos => "eos",
            Self::StopSequence => "stop_sequence",
        }
    }

    /// The reason with this stored name.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Length, Self::Eos, Self::StopSequence].into_iter().find(|r| r.as_str() == name)
    }
}

/// Where a pane stands. Stored in the database as [`PaneStatus::as_str`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaneStatus {
    /// Not started.
    #[default]
    Pending,
    /// Generating.
    Running,
    /// Finished (see its finish reason).
    Done,
    /// Stopped by the visitor, or everyone watching it left; its text so far is kept.
    Cancelled,
    /// Cut off by a server restart; its text so far is kept, and its run's owner can run it again.
    Interrupted,
    /// It could not run (the message says why).
    Error,
}

impl PaneStatus {
    /// The name shown on the page (`data-status`) and stored: `pending`, `running`, `done`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Done => "done",
            Self::Cancelled => "cancelled",
            Self::Interrupted => "interrupted",
            Self::Error => "error",
        }
    }

    /// The status with this stored name.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Pending, Self::Running, Self::Done, Self::Cancelled, Self::Interrupted, Self::Error]
            .into_iter()
            .find(|s| s.as_str() == name)
    }

    /// Whether the pane will not change any more (by itself).
    pub fn is_final(self) -> bool {
        matches!(self, Self::Done | Self::Cancelled | Self::Error)
    }
}

/// A finished pane's figures.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PaneTimings {
    /// Tokens generated.
    pub generated_tokens: i64,
    /// Time to first token, in milliseconds.
    pub ttft_ms: f64,
    /// Decode speed.
    pub tokens_per_s: Option<f64>,
}

/// One pane of a stored run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PaneView {
    /// Column index.
    pub pane: i64,
    /// The adapter, `None` for the base model.
    pub adapter: Option<String>,
    /// The answer so far (the whole answer once done).
    pub text: String,
    /// Where it stands.
    pub status: PaneStatus,
    /// Why it ended, when done.
    pub finish_reason: Option<FinishReason>,
    /// The error, when it could not run.
    pub error: Option<String>,
    /// Figures, when done.
    pub timings: Option<PaneTimings>,
}

/// What `/runs/{id}/stream` sends, as the JSON data of each server-sent event (the browser reads the same type).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PaneEvent {
    /// More of a pane's text (on opening, the text it already has).
    Text {
        /// The pane.
        pane: i64,
        /// The text to append.
        text: String,
    },
    /// A pane's state changed: it ended, or (for a run the visitor does not own) it is not generating.
    Status {
        /// The pane.
        pane: i64,
        /// Where it stands now.
        status: PaneStatus,
        /// Why it ended, when done.
        finish_reason: Option<FinishReason>,
        /// The error, when it could not run.
        error: Option<String>,
        /// Figures, when done.
        timings: Option<PaneTimings>,
    },
}

impl PaneEvent {
    /// The pane it is about.
    pub fn pane(&self) -> i64 {
        match self {
            Self::Text { pane, .. } | Self::Status { pane, .. } => *pane,
        }
    }

    /// The status event of a stored pane.
    pub fn status_of(p: &PaneView) -> Self {
        Self::Status {
            pane: p.pane,
            status: p.status,
            finish_reason: p.finish_reason,
            error: p.error.clone(),
            timings: p.timings,
        }
    }
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

/// Checks a run through the engine's request contract and stores it for this visitor's session (created, as an
/// HttpOnly cookie, only once the run is accepted); returns its id.
#[server(endpoint = "start_run", input = server_fn::codec::Json)]
pub async fn start_run(request: RunRequest) -> Result<String, ServerFnError> {
    let state = expect_context::<crate::state::AppState>();
    Ok(crate::run::store_checked(&state, &request).await?)
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
    let id = crate::run::store_checked(&state, &request).await?;
    crate::run::stream::run_to_end(&state, &id).await.map_err(ServerFnError::new)?;
    leptos_axum::redirect(&format!("/r/{id}"));
    Ok(id)
}

/// A stored run, for anyone with its id. Opening it is what lets a session vote on it.
#[server(endpoint = "get_run")]
pub async fn get_run(id: String) -> Result<Option<RunView>, ServerFnError> {
    let state = expect_context::<crate::state::AppState>();
    let run = crate::run::store::load_run(&state.db, &id).await.map_err(crate::state::db_error)?;
    if run.is_some() {
        crate::session::record_view(&state, &id).await?;
    }
    Ok(run)
}

/// Stops this session's run: every pane still generating ends as `cancelled`, with its text so far.
#[server(endpoint = "stop_run")]
pub async fn stop_run(id: String) -> Result<usize, ServerFnError> {
    let state = expect_context::<crate::state::AppState>();
    let refused = || crate::state::Refusal::forbidden("only the session that made a run can stop it");
    let Some(session) = crate::session::current(&state).await? else { return Err(refused().into()) };
    let owner = crate::run::store::owner(&state.db, &id).await.map_err(crate::state::db_error)?;
    if owner.as_deref() != Some(session.as_str()) {
        return Err(refused().into());
    }
    Ok(state.runs.cancel_run(&id))
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
    let Some(session) = crate::session::current(&state).await? else {
        return Ok(RunPage { runs: Vec::new(), more: false });
    };
    crate::run::store::list_runs(&state.db, &session, page.max(0)).await.map_err(crate::state::db_error)
}

/// The number of tokens `text` has for the loaded model.
#[server(endpoint = "count_tokens", input = server_fn::codec::Json)]
pub async fn count_tokens(text: String) -> Result<usize, ServerFnError> {
    let state = expect_context::<crate::state::AppState>();
    let loading =
        || crate::state::Refusal::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "the model is still loading");
    let engine = state.engine.get().ok_or_else(loading)?;
    let limits = engine.limits();
    if text.len() > limits.max_prompt_bytes {
        let message = format!("more than the limit of {} tokens", limits.max_input_tokens);
        return Err(crate::state::Refusal::invalid(message).into());
    }
    let engine = engine.clone();
    let ids = tokio::task::spawn_blocking(move || engine.tokenizer().encode(&text, true))
        .await
        .map_err(|e| ServerFnError::new(e.to_string()))?;
    ids.map(|ids| ids.len()).map_err(|e| ServerFnError::new(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_the_wire() {
        for s in [PaneStatus::Pending, PaneStatus::Running, PaneStatus::Done, PaneStatus::Cancelled] {
            assert_eq!(PaneStatus::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for r in [FinishReason::Length, FinishReason::Eos, FinishReason::StopSequence] {
            assert_eq!(FinishReason::parse(r.as_str()), Some(r));
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
        let event = PaneEvent::Text { pane: 1, text: "hi".into() };
        assert_eq!(serde_json::to_value(&event).unwrap(), serde_json::json!({"type": "text", "pane": 1, "text": "hi"}));
    }
}
