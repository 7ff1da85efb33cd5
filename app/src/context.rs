//! What a request handler knows about its request and the process around it: the engine once it has loaded
//! ([`EngineSlot`]), the client's address ([`ClientAddr`]), a refusal with its HTTP status ([`Refusal`]), and the
//! time stamps stored in the database. Server-side only.

use engine::EngineHandle;
use leptos::prelude::ServerFnError;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

/// The engine handle, filled once when the model has loaded. The server listens before that, so that `/health`
/// can say "loading" and pages can say "the model is not ready" instead of refusing connections.
#[derive(Clone, Default)]
pub struct EngineSlot(Arc<OnceLock<EngineHandle>>);

impl EngineSlot {
    /// A slot that already holds `engine`.
    pub fn ready(engine: EngineHandle) -> Self {
        let slot = Self::default();
        slot.fill(engine);
        slot
    }

    /// Puts the loaded engine in the slot; a second call is ignored.
    pub fn fill(&self, engine: EngineHandle) {
        let _ = self.0.set(engine);
    }

    /// The engine, or `None` while the model is loading.
    pub fn get(&self) -> Option<&EngineHandle> {
        self.0.get()
    }
}

/// The address of the client a request came from: the peer's, or with `--trust-proxy` the last of
/// `X-Forwarded-For`. The server's router puts it in every request's extensions; limits are kept per address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub IpAddr);

impl ClientAddr {
    /// This request's client (the unspecified address when the router did not say, as in unit tests).
    pub async fn current() -> Self {
        leptos_axum::extract::<axum::Extension<ClientAddr>>()
            .await
            .map_or(ClientAddr(IpAddr::from([0, 0, 0, 0])), |axum::Extension(addr)| addr)
    }
}

/// Milliseconds since the Unix epoch, the time stamps stored in the database.
pub fn now_ms() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

/// Why a server function refused a request, with the HTTP status it is answered with (a server function's error is
/// otherwise a 500): 403 for what the visitor may not do, 422 for what is wrong with the request, 429 over a limit,
/// 503 while the model loads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The status.
    pub status: axum::http::StatusCode,
    /// What was wrong, for the visitor.
    pub message: String,
}

impl Refusal {
    /// A refusal with `status`.
    pub fn new(status: axum::http::StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    /// 422: something about the request is wrong.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(axum::http::StatusCode::UNPROCESSABLE_ENTITY, message)
    }

    /// 403: the visitor may not do this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(axum::http::StatusCode::FORBIDDEN, message)
    }

    /// 500 for a database failure: logged here with its cause, answered without it (no SQL or file paths reach a
    /// visitor).
    pub fn database(e: sqlx::Error) -> Self {
        tracing::error!("database error: {e}");
        Self::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "the server could not read or write its database; try again",
        )
    }
}

impl From<Refusal> for ServerFnError {
    fn from(r: Refusal) -> Self {
        if let Some(res) = leptos::prelude::use_context::<leptos_axum::ResponseOptions>() {
            res.set_status(r.status);
        }
        ServerFnError::new(r.message)
    }
}

/// A database failure as a server function answers it (see [`Refusal::database`]).
pub fn db_error(e: sqlx::Error) -> ServerFnError {
    Refusal::database(e).into()
}
