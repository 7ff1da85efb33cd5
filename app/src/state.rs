//! Server-side state shared by the axum router and every server function (through Leptos' context): one value
//! holding the process's database pool, engine, generations in flight and limits.

use crate::context::EngineSlot;
use crate::db::Db;
use crate::limits::{ClientLimits, SessionLimiter};
use crate::run::executor::Executor;
use crate::train::worker::Training;
use axum::extract::FromRef;
use leptos::prelude::LeptosOptions;
use std::sync::Arc;

/// What a request handler or server function can reach on the server.
#[derive(Clone, FromRef)]
pub struct AppState {
    /// The one connection pool of the process.
    pub db: Db,
    /// Leptos' site options (paths of the WASM bundle, site address).
    pub leptos: LeptosOptions,
    /// Display name of the loaded base model.
    pub model_name: Arc<str>,
    /// The inference engine, once its model has loaded.
    pub engine: EngineSlot,
    /// The panes generating in this process.
    pub runs: Executor,
    /// How fast one client may create new visitor sessions.
    pub sessions: SessionLimiter,
    /// Per-client limits on generations.
    pub clients: ClientLimits,
    /// Training jobs, when this server trains (`None` in tests that do not).
    pub training: Option<Training>,
}

impl AppState {
    /// State around `db` and `engine`, with default limits.
    pub fn new(db: Db, leptos: LeptosOptions, model_name: &str, engine: EngineSlot) -> Self {
        Self {
            db,
            leptos,
            model_name: Arc::from(model_name),
            engine,
            runs: Executor::default(),
            sessions: SessionLimiter::default(),
            clients: ClientLimits::default(),
            training: None,
        }
    }
}
