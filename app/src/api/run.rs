//! The run server functions: `start_run` checks a run through the engine's request contract and stores it for the
//! visitor's session (the browser then opens `/runs/{id}/stream`, see [`crate::run`]); `run_form` is the same
//! without JavaScript, answered to the end; `get_run` and `list_runs` read runs back for `/r/:id` and `/history`;
//! `stop_run` stops a run's generations; `count_tokens` counts a prompt's tokens for the preview.
// `run_form`'s arguments are the HTML form's fields, by name (one struct would rename them `form[...]`); the
// server macro's code for them is in this module too.
#![allow(clippy::too_many_arguments)]

use crate::run::types::{RunPage, RunRequest, RunView};
use leptos::prelude::*;
use std::collections::BTreeMap;

/// Checks a run through the engine's request contract and stores it for this visitor's session (created, as an
/// HttpOnly cookie, only once the run is accepted); returns its id.
#[server(endpoint = "start_run", input = server_fn::codec::Json)]
pub async fn start_run(request: RunRequest) -> Result<String, ServerFnError> {
    let state = expect_context::<crate::state::AppState>();
    Ok(crate::run::check::store_checked(&state, &request).await?)
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
    constrained: Option<String>,
) -> Result<String, ServerFnError> {
    let state = expect_context::<crate::state::AppState>();
    let panes = panes.into_iter().map(|p| (p != "base").then_some(p)).collect();
    // A checkbox is sent only when checked.
    let constrained = constrained.is_some();
    let params = crate::run::types::RunParams { max_new_tokens, temperature, top_p, seed, constrained };
    let request = RunRequest { task, inputs, params, panes };
    let id = crate::run::check::store_checked(&state, &request).await?;
    crate::run::stream::run_to_end(&state, &id).await.map_err(ServerFnError::new)?;
    leptos_axum::redirect(&format!("/r/{id}"));
    Ok(id)
}

/// A stored run, for anyone with its id. Opening it is what lets a session vote on it.
#[server(endpoint = "get_run")]
pub async fn get_run(id: String) -> Result<Option<RunView>, ServerFnError> {
    let state = expect_context::<crate::state::AppState>();
    let run = crate::run::store::load_run(&state.db, &id).await.map_err(crate::context::db_error)?;
    if run.is_some() {
        crate::session::record_view(&state, &id).await?;
    }
    Ok(run)
}

/// Stops this session's run: every pane still generating ends as `cancelled`, with its text so far.
#[server(endpoint = "stop_run")]
pub async fn stop_run(id: String) -> Result<usize, ServerFnError> {
    let state = expect_context::<crate::state::AppState>();
    let refused = || crate::context::Refusal::forbidden("only the session that made a run can stop it");
    let Some(session) = crate::session::current(&state).await? else { return Err(refused().into()) };
    let owner = crate::run::store::owner(&state.db, &id).await.map_err(crate::context::db_error)?;
    if owner.as_deref() != Some(session.as_str()) {
        return Err(refused().into());
    }
    Ok(state.runs.cancel_run(&id))
}

/// This session's runs, newest first, `HISTORY_PAGE` per page (0-based `page`).
#[server(endpoint = "list_runs")]
pub async fn list_runs(page: i64) -> Result<RunPage, ServerFnError> {
    let state = expect_context::<crate::state::AppState>();
    let Some(session) = crate::session::current(&state).await? else {
        return Ok(RunPage { runs: Vec::new(), more: false });
    };
    crate::run::store::list_runs(&state.db, &session, page.max(0)).await.map_err(crate::context::db_error)
}

/// The number of tokens `text` has for the loaded model.
#[server(endpoint = "count_tokens", input = server_fn::codec::Json)]
pub async fn count_tokens(text: String) -> Result<usize, ServerFnError> {
    let state = expect_context::<crate::state::AppState>();
    let loading =
        || crate::context::Refusal::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "the model is still loading");
    let engine = state.engine.get().ok_or_else(loading)?;
    let limits = engine.limits();
    if text.len() > limits.max_prompt_bytes {
        let message = format!("more than the limit of {} tokens", limits.max_input_tokens);
        return Err(crate::context::Refusal::invalid(message).into());
    }
    let engine = engine.clone();
    let ids = tokio::task::spawn_blocking(move || engine.tokenizer().encode(&text, true))
        .await
        .map_err(|e| ServerFnError::new(e.to_string()))?;
    ids.map(|ids| ids.len()).map_err(|e| ServerFnError::new(e.to_string()))
}
