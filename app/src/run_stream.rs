//! `GET /runs/{id}/stream`: the answers of a stored run as server-sent events. Each pane's generation is submitted
//! to the engine in-process (no HTTP hop); their events are merged and sent as `{"pane", "text"}` pieces, then
//! `{"pane", "done": {...}}` (stored in SQLite) or `{"pane", "error"}`, and a last `event: end`. Panes already
//! finished are replayed from the database. Closing the stream (Stop, or leaving the page) cancels the
//! generations. Server-side only.

use crate::api::run::{ssr as runs, PaneView, RunView};
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use engine::{AdapterId, Event, GenerateRequest, Prompt, SamplingParams};
use futures_util::stream::{self, StreamExt};
use serde_json::json;
use std::convert::Infallible;

/// The handler.
pub async fn run_events(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let run = match runs::load_run(&state.db, &id).await {
        Ok(Some(run)) => run,
        Ok(None) => return (StatusCode::NOT_FOUND, "no such run").into_response(),
        Err(e) => {
            tracing::error!("loading run {id}: {e}");
            return (StatusCode::INTERNAL_SERVER_ERROR, "database error").into_response();
        }
    };
    let events = pane_events(state, run).map(Ok::<_, Infallible>);
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}

/// Runs every pending pane of a stored run to its end (the no-JavaScript path); the results are stored.
pub async fn run_to_end(state: &AppState, id: &str) -> Result<(), String> {
    let run = runs::load_run(&state.db, id).await.map_err(|e| e.to_string())?.ok_or_else(|| format!("no run {id}"))?;
    pane_events(state.clone(), run).for_each(|_| async {}).await;
    Ok(())
}

fn request(run: &RunView, adapter: Option<&str>) -> Result<GenerateRequest, String> {
    let adapter = adapter.map(AdapterId::new).transpose().map_err(|e| e.to_string())?;
    let p = &run.params;
    let sampling = if p.temperature > 0.0 {
        SamplingParams {
            temperature: Some(p.temperature),
            top_p: (p.top_p < 1.0).then_some(p.top_p),
            seed: p.seed,
            ..SamplingParams::default()
        }
    } else {
        SamplingParams::greedy()
    };
    Ok(GenerateRequest {
        prompt: Prompt::Text(run.prompt.clone()),
        adapter,
        sampling,
        max_new_tokens: p.max_new_tokens as usize,
        stop: Vec::new(),
    })
}

fn piece(pane: i64, text: &str) -> SseEvent {
    SseEvent::default().data(json!({ "pane": pane, "text": text }).to_string())
}

fn finished(p: &PaneView) -> SseEvent {
    let body = match &p.error {
        Some(e) => json!({ "pane": p.pane, "error": e }),
        None => json!({ "pane": p.pane, "done": {
            "finish_reason": p.finish_reason, "generated_tokens": p.generated_tokens,
            "ttft_ms": p.ttft_ms, "tokens_per_s": p.tokens_per_s } }),
    };
    SseEvent::default().data(body.to_string())
}

/// Every pane's events, merged; pending panes are generated now.
fn pane_events(state: AppState, run: RunView) -> impl futures_util::Stream<Item = SseEvent> + Send {
    let mut done = Vec::new();
    let mut live = Vec::new();
    for pane in &run.panes {
        if pane.finish_reason.is_some() || pane.error.is_some() {
            done.push(stream::iter([piece(pane.pane, &pane.text), finished(pane)]).boxed());
            continue;
        }
        live.push(generate_pane(state.clone(), run.clone(), pane.clone()).boxed());
    }
    let end = stream::once(async { SseEvent::default().event("end").data("{}") });
    stream::select_all(done.into_iter().chain(live)).chain(end)
}

/// One pane: submit, forward pieces, store the result.
fn generate_pane(
    state: AppState,
    run: RunView,
    mut pane: PaneView,
) -> impl futures_util::Stream<Item = SseEvent> + Send {
    stream::once(async move {
        let submitted = match state.engine.get() {
            None => Err("the model is still loading; try again shortly".to_string()),
            Some(engine) => {
                request(&run, pane.adapter.as_deref()).and_then(|r| engine.generate(r).map_err(|e| pane_error(&e)))
            }
        };
        let events: futures_util::stream::BoxStream<'static, SseEvent> = match submitted {
            Err(e) => {
                pane.error = Some(e);
                pane.finish_reason = Some("error".into());
                store(&state, &run.id, &pane).await;
                stream::iter([finished(&pane)]).boxed()
            }
            Ok(gen) => stream::unfold(
                (gen, pane, state, run.id.clone(), false),
                |(mut gen, mut pane, state, id, over)| async move {
                    if over {
                        return None;
                    }
                    match gen.next_event().await {
                        Some(Ok(Event::Token(t))) => {
                            pane.text.push_str(&t.text);
                            Some((piece(pane.pane, &t.text), (gen, pane, state, id, false)))
                        }
                        Some(Ok(Event::Finished(f))) => {
                            let decode = f.timings.total.saturating_sub(f.timings.time_to_first_token).as_secs_f64();
                            pane.finish_reason = Some(engine_reason(f.reason).into());
                            pane.generated_tokens = Some(f.generated_tokens as i64);
                            pane.ttft_ms = Some(f.timings.time_to_first_token.as_secs_f64() * 1e3);
                            pane.tokens_per_s =
                                (decode > 0.0).then(|| (f.generated_tokens.saturating_sub(1)) as f64 / decode);
                            store(&state, &id, &pane).await;
                            Some((finished(&pane), (gen, pane, state, id, true)))
                        }
                        Some(Err(e)) => {
                            pane.error = Some(pane_error(&e));
                            pane.finish_reason = Some("error".into());
                            store(&state, &id, &pane).await;
                            Some((finished(&pane), (gen, pane, state, id, true)))
                        }
                        None => None,
                    }
                },
            )
            .boxed(),
        };
        events
    })
    .flatten()
}

fn engine_reason(r: engine::FinishReason) -> &'static str {
    match r {
        engine::FinishReason::Length => "length",
        engine::FinishReason::Eos => "eos",
        engine::FinishReason::StopSequence => "stop",
    }
}

/// What a pane shows when its generation cannot run.
fn pane_error(e: &engine::Error) -> String {
    match e {
        engine::Error::UnknownAdapter(id) => {
            format!(
                "the adapter `{id}` is not installed on this server (an adapter folder named `{id}` in --adapters-dir)"
            )
        }
        engine::Error::Overloaded { .. } => "the server is busy (queue full); try again in a moment".into(),
        other => other.to_string(),
    }
}

async fn store(state: &AppState, run: &str, pane: &PaneView) {
    if let Err(e) = runs::finish_pane(&state.db, run, pane).await {
        tracing::error!("storing pane {} of run {run}: {e}", pane.pane);
    }
}
