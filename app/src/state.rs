//! Server-side state shared by the axum router and every server function (through Leptos' context).

use axum::extract::FromRef;
use engine::EngineHandle;
use leptos::prelude::LeptosOptions;
use sqlx::SqlitePool;
use std::sync::{Arc, OnceLock};

/// What a request handler or server function can reach on the server.
#[derive(Clone, FromRef)]
pub struct AppState {
    /// The one connection pool of the process.
    pub db: SqlitePool,
    /// Leptos' site options (paths of the WASM bundle, site address).
    pub leptos: LeptosOptions,
    /// Display name of the loaded base model.
    pub model_name: Arc<str>,
    /// The inference engine, once its model has loaded.
    pub engine: EngineSlot,
}

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

/// Milliseconds since the Unix epoch, the time stamps stored in the database.
pub fn now_ms() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}
