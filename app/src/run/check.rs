//! Checking a run before it is stored: the catalog's task and inputs, and every pane through the engine's request
//! contract (the app has no range checks of its own); and the engine request of each pane, its template filled
//! with the inputs as content.

use super::executor::describe;
use super::store;
use super::types::{RunParams, RunRequest, RunView, MAX_PANES};
use crate::context::Refusal;
use crate::state::AppState;
use axum::http::StatusCode;
use catalog::Piece;
use engine::{AdapterId, GenerateRequest, Prompt, PromptPart, SamplingParams};

/// Checks `request` against the catalog and, for every pane, the engine's request contract, then stores it for
/// this visitor's session (created now if need be: only an accepted run creates one). Returns the run's id, or
/// what is wrong, in the app's words. A pane whose adapter is not installed does not stop the run: that pane will
/// say so and the others answer.
pub async fn store_checked(state: &AppState, request: &RunRequest) -> Result<String, Refusal> {
    let task =
        catalog::task(&request.task).ok_or_else(|| Refusal::invalid(format!("unknown task `{}`", request.task)))?;
    if request.panes.is_empty() || request.panes.len() > MAX_PANES {
        return Err(Refusal::invalid(format!("a run has 1 to {MAX_PANES} panes")));
    }
    for (name, value) in &request.inputs {
        if !task.variables.contains(name) {
            return Err(Refusal::invalid(format!("`{name}` is not a variable of this task's template")));
        }
        if value.trim().is_empty() {
            return Err(Refusal::invalid(format!("`{name}` is empty")));
        }
    }
    let prompt = catalog::render(&task.template, &request.inputs).map_err(|e| Refusal::invalid(e.to_string()))?;
    check_trained(state, request).await?;
    let loading = || Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "the model is still loading; try again shortly");
    let engine = state.engine.get().cloned().ok_or_else(loading)?;
    let addr = crate::context::ClientAddr::current().await.0;
    state.clients.request(addr).map_err(|e| Refusal::new(StatusCode::TOO_MANY_REQUESTS, e.to_string()))?;
    let checks: Vec<Result<GenerateRequest, String>> = request
        .panes
        .iter()
        .map(|pane| pane_request(&request.task, &request.inputs, &request.params, pane.as_deref()))
        .collect();
    let refusal = tokio::task::spawn_blocking(move || {
        checks.into_iter().find_map(|check| match check.map(|r| engine.prepare(r)) {
            Err(message) => Some(message),
            Ok(Ok(_)) | Ok(Err(engine::Error::UnknownAdapter(_))) => None,
            Ok(Err(e)) => Some(describe(&e)),
        })
    })
    .await
    .map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    if let Some(message) = refusal {
        return Err(Refusal::invalid(message));
    }
    let session = crate::session::current_or_new(state).await?;
    store::insert_run(&state.db, &session, request, &prompt).await.map_err(|e| {
        tracing::error!("storing a run: {e}");
        Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, "the server could not store the run; try again")
    })
}

/// A pane may use a trained adapter (`trained/<job>`) only when it is finished and this session's own or
/// published: the gallery's privacy holds for runs too.
async fn check_trained(state: &AppState, request: &RunRequest) -> Result<(), Refusal> {
    let trained: Vec<(&str, &str)> = request
        .panes
        .iter()
        .flatten()
        .filter_map(|a| crate::train::job_of_adapter(a).map(|job| (a.as_str(), job)))
        .collect();
    if trained.is_empty() {
        return Ok(());
    }
    let session = crate::session::current(state).await?;
    for (adapter, job) in trained {
        let found =
            crate::train::store::visible(&state.db, job, session.as_deref()).await.map_err(Refusal::database)?;
        if !found.is_some_and(|j| j.status == crate::train::JobStatus::Done) {
            return Err(Refusal::invalid(format!(
                "`{adapter}` is neither a finished adapter of your own nor a published one"
            )));
        }
    }
    Ok(())
}

/// The engine request of one pane of a run: the task's template filled with the inputs, each input as content
/// (so special-token text a visitor types stays text), and the run's generation parameters.
pub fn pane_request(
    task: &str,
    inputs: &std::collections::BTreeMap<String, String>,
    params: &RunParams,
    adapter: Option<&str>,
) -> Result<GenerateRequest, String> {
    let task = catalog::task(task).ok_or_else(|| format!("unknown task `{task}`"))?;
    let parts = catalog::render_pieces(&task.template, inputs)
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|p| match p {
            Piece::Template(t) => PromptPart::Template(t),
            Piece::Value(v) => PromptPart::Content(v),
        })
        .collect();
    let adapter = adapter.map(AdapterId::new).transpose().map_err(|e| e.to_string())?;
    let sampling = if params.temperature > 0.0 {
        SamplingParams {
            temperature: Some(params.temperature),
            top_p: (params.top_p != 1.0).then_some(params.top_p),
            seed: params.seed,
            ..SamplingParams::default()
        }
    } else {
        SamplingParams { top_p: (params.top_p != 1.0).then_some(params.top_p), ..SamplingParams::greedy() }
    };
    let constraint = match (params.constrained, adapter.is_none()) {
        (true, true) => Some(
            task.constraint
                .as_ref()
                .map(output_constraint)
                .ok_or_else(|| format!("the task `{}` has no output format to constrain to", task.id))?,
        ),
        _ => None,
    };
    Ok(GenerateRequest {
        prompt: Prompt::Parts { parts, add_bos: true },
        adapter,
        sampling,
        max_new_tokens: params.max_new_tokens as usize,
        constraint,
        ..GenerateRequest::default()
    })
}

/// A task's output format as the engine's constraint.
pub fn output_constraint(c: &catalog::OutputConstraint) -> engine::Constraint {
    match c {
        catalog::OutputConstraint::Choice(labels) => engine::Constraint::Choice(labels.clone()),
        catalog::OutputConstraint::Regex(rx) => engine::Constraint::Regex(rx.clone()),
        catalog::OutputConstraint::JsonSchema(schema) => engine::Constraint::JsonSchema(schema.clone()),
    }
}

/// The engine request of `pane` of a stored run.
pub fn stored_pane_request(run: &RunView, adapter: Option<&str>) -> Result<GenerateRequest, String> {
    let task = run.task.as_deref().ok_or("this run has no task")?;
    pane_request(task, &run.inputs, &run.params, adapter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_constrain_switch_holds_the_base_panes_to_the_tasks_format_and_leaves_adapters_free() {
        let task = catalog::task("glue_sst2").expect("in the catalog");
        let params = RunParams { constrained: true, ..RunParams::default() };
        let base = pane_request(&task.id, &task.examples[0], &params, None).unwrap();
        assert_eq!(base.constraint, Some(engine::Constraint::Choice(vec!["0".into(), "1".into()])));
        let tuned = pane_request(&task.id, &task.examples[0], &params, Some("glue_sst2")).unwrap();
        assert_eq!(tuned.constraint, None, "the adapter runs as it was trained");
        let free = pane_request(&task.id, &task.examples[0], &RunParams::default(), None).unwrap();
        assert_eq!(free.constraint, None);
        let ner = catalog::task("conllpp").expect("in the catalog");
        let json = pane_request(&ner.id, &ner.examples[0], &params, None).unwrap();
        assert!(matches!(json.constraint, Some(engine::Constraint::JsonSchema(_))));
        let legal = catalog::task("legal").expect("in the catalog");
        let refused = pane_request(&legal.id, &legal.examples[0], &params, None).unwrap_err();
        assert!(refused.contains("has no output format"), "{refused}");
    }
}
