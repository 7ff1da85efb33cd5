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

/// The label of an adapter in metrics and logs; the base model is `base`.
pub fn adapter_label(request: &GenerateRequest) -> String {
    request.adapter.as_ref().map_or_else(|| "base".to_string(), |id| id.to_string())
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

/// Every token and the final summary of a generation.
#[derive(Debug)]
pub struct Collected {
    /// The tokens, in order.
    pub tokens: Vec<TokenEvent>,
    /// The summary.
    pub finished: Finished,
}

/// Waits for the whole generation. Dropping the future (the client went away) cancels it.
pub async fn collect(mut running: Running) -> Result<Collected, ApiError> {
    let mut tokens = Vec::new();
    while let Some(event) = running.stream.next_event().await {
        match event? {
            Event::Token(t) => tokens.push(t),
            Event::Finished(finished) => {
                metrics::observe_generation(&running.adapter, &finished);
                return Ok(Collected { tokens, finished });
            }
        }
    }
    Err(ApiError::internal("the engine closed a stream without a final event"))
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

/// The events of a generation whose first event has been read, as a stream that records the final event's
/// metrics. Dropping the stream (the client disconnected) cancels the generation.
pub fn events(first: Event, running: Running) -> impl futures_util::Stream<Item = Result<Event, ApiError>> + Send {
    futures_util::stream::unfold((Some(first), Some(running)), |(first, running)| async move {
        if let Some(event) = first {
            return Some((Ok(event), (None, running)));
        }
        let mut running = running?;
        match running.stream.next_event().await? {
            Ok(Event::Finished(f)) => {
                metrics::observe_generation(&running.adapter, &f);
                Some((Ok(Event::Finished(f)), (None, None)))
            }
            Ok(event) => Some((Ok(event), (None, Some(running)))),
            Err(e) => Some((Err(e.into()), (None, None))),
        }
    })
}
