//! Running a checked request through the engine: admission, then either collecting every event (non-streaming
//! routes) or waiting for the first one so that a failure before any token still gets a proper HTTP status
//! (streaming routes). Metrics of every finished generation are recorded here.

use super::error::ApiError;
use crate::metrics;
use engine::{EngineHandle, Event, Finished, GenerateRequest, GenerationStream, Prepared, TokenEvent};

/// The engine, or 503 while the model is still loading.
pub fn engine(state: &crate::AppState) -> Result<&EngineHandle, ApiError> {
    state.engine.get().ok_or_else(not_ready)
}

/// What a request gets while the model is still loading.
pub fn not_ready() -> ApiError {
    ApiError::new(super::error::ErrorKind::NotReady, "the model is still loading; retry shortly")
}

/// The label of an adapter in metrics and logs; the base model is `base`, and every merge of adapters is
/// `(merged)`, which no adapter id can be (each merge has an id of its own and clients choose merges freely: one
/// label keeps the metrics' label set bounded; the engine's log lines name the merge).
pub fn adapter_label(request: &GenerateRequest) -> String {
    match &request.adapter {
        None => "base".to_string(),
        Some(id) if id.is_merge() => "(merged)".to_string(),
        Some(id) => id.to_string(),
    }
}

/// Tells the HTTP metrics middleware which adapter a response was for.
#[derive(Clone, Debug)]
pub struct AdapterLabel(pub String);

/// A generation that has been admitted to the engine.
#[derive(Debug)]
pub struct Running {
    /// Its events.
    pub stream: GenerationStream,
    /// Its adapter's label.
    pub adapter: String,
}

/// Submits a prepared request (see [`super::params::prepare`]); fails with 429 when the queue is full.
pub fn submit(engine: &EngineHandle, prepared: Prepared) -> Result<Running, ApiError> {
    let adapter = adapter_label(prepared.request());
    let stream = engine.submit(prepared)?;
    Ok(Running { stream, adapter })
}

/// Every token and the final summary of one continuation of a generation.
#[derive(Debug)]
pub struct Collected {
    /// The tokens, in order.
    pub tokens: Vec<TokenEvent>,
    /// The summary.
    pub finished: Finished,
}

/// Waits for the whole generation: each continuation's tokens and summary, in the order of their index (one
/// unless the request asked for `n`). Dropping the future (the client went away) cancels it.
pub async fn collect_all(mut running: Running) -> Result<Vec<Collected>, ApiError> {
    let mut tokens: Vec<Vec<TokenEvent>> = Vec::new();
    let mut finished: Vec<Option<Finished>> = Vec::new();
    while let Some(event) = running.stream.next_event().await {
        let choice = match &event {
            Ok(Event::Token(t)) => t.choice,
            Ok(Event::Finished(f)) => f.choice,
            Err(_) => 0,
        };
        if tokens.len() <= choice {
            tokens.resize_with(choice + 1, Vec::new);
            finished.resize_with(choice + 1, || None);
        }
        match event? {
            Event::Token(t) => tokens[choice].push(t),
            Event::Finished(f) => {
                metrics::observe_generation(&running.adapter, &f);
                finished[choice] = Some(f);
            }
        }
    }
    (tokens.into_iter().zip(finished))
        .map(|(tokens, finished)| {
            let finished = finished.ok_or_else(|| ApiError::internal("a continuation ended without a final event"))?;
            Ok(Collected { tokens, finished })
        })
        .collect::<Result<Vec<_>, ApiError>>()
        .and_then(|all| match all.is_empty() {
            true => Err(ApiError::internal("the engine closed a stream without a final event")),
            false => Ok(all),
        })
}

/// [`collect_all`] for a request of one continuation.
pub async fn collect(running: Running) -> Result<Collected, ApiError> {
    let mut all = collect_all(running).await?;
    Ok(all.swap_remove(0))
}

/// Waits for the first event, so that a failure before the first token (an adapter that fails to load) is an
/// HTTP error rather than an event in a 200 stream.
pub async fn first_event(running: &mut Running) -> Result<Event, ApiError> {
    match running.stream.next_event().await {
        Some(Ok(event)) => {
            if let Event::Finished(f) = &event {
                metrics::observe_generation(&running.adapter, f);
            }
            Ok(event)
        }
        Some(Err(e)) => Err(e.into()),
        None => Err(ApiError::internal("the engine closed a stream without a final event")),
    }
}

/// The events of a generation whose first event has been read, to the stream's end (a final event per
/// continuation), recording the final events' metrics. Dropping the stream (the client disconnected) cancels the
/// generation.
pub fn events(first: Event, running: Running) -> impl futures_util::Stream<Item = Result<Event, ApiError>> + Send {
    futures_util::stream::unfold((Some(first), Some(running)), |(first, running)| async move {
        if let Some(event) = first {
            return Some((Ok(event), (None, running)));
        }
        let mut running = running?;
        match running.stream.next_event().await? {
            Ok(Event::Finished(f)) => {
                metrics::observe_generation(&running.adapter, &f);
                Some((Ok(Event::Finished(f)), (None, Some(running))))
            }
            Ok(event) => Some((Ok(event), (None, Some(running)))),
            Err(e) => Some((Err(e.into()), (None, None))),
        }
    })
}
