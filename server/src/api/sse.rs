//! Server-sent events shared by both APIs: the keep-alive and the final error event sent when a generation fails
//! after its stream has started.

use super::error::{ApiError, Flavor};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use std::convert::Infallible;
use std::time::Duration;

/// Comment lines sent while no token is ready, so that proxies do not close a quiet stream.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// An SSE response over `events`.
pub fn response<S>(events: S) -> Response
where
    S: Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response()
}

/// `event: error` with the API's error body as data; the last event of a failed stream.
pub fn error_event(error: &ApiError, flavor: Flavor) -> Event {
    Event::default().event("error").data(error.body(flavor).to_string())
}

/// An event whose data is `value` as JSON.
pub fn json_event(value: &impl serde::Serialize) -> Event {
    match serde_json::to_string(value) {
        Ok(data) => Event::default().data(data),
        Err(e) => Event::default().event("error").data(format!("{{\"error\":\"cannot encode event: {e}\"}}")),
    }
}
