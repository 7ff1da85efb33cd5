//! Server-side state shared by the axum router and every server function (through Leptos' context).

use axum::extract::FromRef;
use leptos::prelude::LeptosOptions;
use sqlx::SqlitePool;
use std::sync::Arc;

/// What a request handler or server function can reach on the server.
#[derive(Clone, FromRef)]
pub struct AppState {
    /// The one connection pool of the process.
    pub db: SqlitePool,
    /// Leptos' site options (paths of the WASM bundle, site address).
    pub leptos: LeptosOptions,
    /// Display name of the loaded base model.
    pub model_name: Arc<str>,
}

/// Milliseconds since the Unix epoch, the time stamps stored in the database.
pub fn now_ms() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}
